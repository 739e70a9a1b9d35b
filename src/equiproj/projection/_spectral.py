"""The spectral route: isotypic blocks and Schur's lemma (private module).

In the bases ``Q_out``, ``Q_in`` of the isotypic decompositions an equivariant map has zero
blocks between different irreps, and every ``k x k`` block between copies of the same irrep
``psi`` lies in the commutant ``End_G(psi)`` (1-, 2- or 4-dimensional for irreps of real,
complex or quaternionic type). With an orthonormal basis ``E_j`` of the commutant
(``<E_i, E_j>_F = k delta_ij``) the projection is

    P(W) = Q_out [ sum_j <E_j, B>_F / k * E_j  on every block B ] Q_in^T,

exact for continuous groups as long as the representations are band-limited.
"""

from __future__ import annotations

import torch

from ..groups import Representation
from ._base import PairProjector, RouteNotApplicable

__all__ = ["SpectralPair"]

_F64 = torch.float64


#: Largest ``d_out * d_in`` whose pair map :meth:`SpectralPair.project_copies` materialises.
_DENSE_COPIES_MAX = 256


class SpectralPair(PairProjector):
    """Block mask plus commutant projection in the isotypic bases of one pair of field types."""

    route = "spectral"

    def __init__(self, t_out: Representation, t_in: Representation):
        if not t_out.group.has_irreps:
            raise RouteNotApplicable(
                f"route 'spectral' needs the irreps of {t_out.group.name}, which equiproj does not provide: "
                "use route='basis'"
            )
        super().__init__(t_out, t_in)
        iso_o, iso_i = t_out.isotypic(), t_in.isotypic()
        self._Qo, self._Qi = iso_o.Q, iso_i.Q
        self._id_o = bool(torch.equal(iso_o.Q, torch.eye(self.d_out, dtype=_F64)))
        self._id_i = bool(torch.equal(iso_i.Q, torch.eye(self.d_in, dtype=_F64)))
        self.blocks = []
        dim = 0
        for psi, mo, oo in zip(iso_o.irreps, iso_o.multiplicities, iso_o.offsets):
            mi = iso_i.multiplicity(psi)
            if mi == 0:
                continue
            oi = iso_i.offsets[iso_i.irreps.index(psi)]
            E = psi.endomorphisms()
            self.blocks.append((oo, mo, oi, mi, psi.dim, E))
            dim += mo * mi * E.shape[0]
        self.dim = dim

    def _copies_plan(self):
        """``(mask, wide)``: ``mask`` (``d_out x d_in``, isotypic coordinates) keeps the entries of
        blocks whose commutant is the scalars on a 1-dimensional irrep (they pass unchanged);
        ``wide`` lists the other blocks (projected as in :meth:`project`)."""
        plan = getattr(self, "_plan", None)
        if plan is None:
            mask = torch.zeros(self.d_out, self.d_in, dtype=_F64)
            wide = []
            for j, (oo, mo, oi, mi, k, E) in enumerate(self.blocks):
                if k == 1 and E.shape[0] == 1:
                    mask[oo:oo + mo, oi:oi + mi] = 1.0
                else:
                    wide.append((j, oo, mo, oi, mi, k, E))
            plan = self._plan = (mask, wide)
        return plan

    def project_copies(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`project` for copies ``X`` of shape ``(N, d_out, d_in)``.

        For small pairs (``d_out d_in <= 256``) the map this route computes is materialised once,
        as the ``(d_out d_in)^2`` matrix whose rows are the projections of the unit matrices, and
        applied with one matrix product (many copies of a small pair are limited by the number of
        operations, not by arithmetic); larger pairs use plain matrix products for the changes of
        basis and a mask for the blocks of 1-dimensional irreps."""
        N = X.shape[0]
        n = self.d_out * self.d_in
        if n <= _DENSE_COPIES_MAX:
            if getattr(self, "_dense", None) is None:
                E = torch.eye(n, dtype=_F64).reshape(n, self.d_out, self.d_in)
                self._dense = self._project_copies(E).reshape(n, n)
            return (X.reshape(N, n) @ self._t("dense", self._dense, X)).reshape(N, self.d_out, self.d_in)
        return self._project_copies(X)

    def _project_copies(self, X: torch.Tensor) -> torch.Tensor:
        mask, wide = self._copies_plan()
        N = X.shape[0]
        Xs = X
        if not self._id_i:
            Xs = (Xs.reshape(N * self.d_out, self.d_in) @ self._t("Qi", self._Qi, X)).reshape(N, self.d_out, self.d_in)
        if not self._id_o:
            Xs = self._t("QoT", lambda: self._Qo.T.contiguous(), X) @ Xs
        Y = Xs * self._t("mask", mask, X)
        for j, oo, mo, oi, mi, k, E in wide:
            B = Xs[:, oo:oo + mo * k, oi:oi + mi * k].reshape(N, mo, k, mi, k)
            Et = self._t(("E", j), E, X)
            c = torch.einsum("napbq,epq->nabe", B, Et) / k
            Y[:, oo:oo + mo * k, oi:oi + mi * k] = torch.einsum("nabe,epq->napbq", c, Et).reshape(N, mo * k, mi * k)
        if not self._id_o:
            Y = self._t("Qo", self._Qo, X) @ Y
        if not self._id_i:
            Y = (Y.reshape(N * self.d_out, self.d_in) @ self._t("QiT", lambda: self._Qi.T.contiguous(), X)).reshape(
                N, self.d_out, self.d_in)
        return Y

    @classmethod
    def cost(cls, t_out, t_in):
        if not t_out.group.has_irreps:
            return None
        return 2.0 * (t_out.dim + t_in.dim) + 40.0

    def project(self, X):
        Xs = X
        if not self._id_o:
            Xs = torch.einsum("ba,...nbmd->...namd", self._t("Qo", self._Qo, X), Xs)
        if not self._id_i:
            Xs = torch.einsum("...nbmd,dc->...nbmc", Xs, self._t("Qi", self._Qi, X))
        Y = torch.zeros_like(Xs)
        for j, (oo, mo, oi, mi, k, E) in enumerate(self.blocks):
            B = Xs[..., oo:oo + mo * k, :, oi:oi + mi * k]
            B = B.reshape(*B.shape[:-3], mo, k, B.shape[-2], mi, k)  # (..., n, mo, k, n', mi, k)
            if E.shape[0] == 1:  # real type: multiples of the identity
                c = torch.diagonal(B, dim1=-4, dim2=-1).sum(-1) / k  # (..., n, mo, n', mi)
                Bp = c[..., :, None, :, :, None] * self._t(("eye", k), lambda: torch.eye(k, dtype=_F64), X)[
                    :, None, None, :]
            else:
                Et = self._t(("E", j), E, X)
                c = torch.einsum("...apnbq,epq->...anbe", B, Et) / k
                Bp = torch.einsum("...anbe,epq->...apnbq", c, Et)
            Y[..., oo:oo + mo * k, :, oi:oi + mi * k] = Bp.reshape(*Bp.shape[:-6], Bp.shape[-6], mo * k,
                                                                   Bp.shape[-3], mi * k)
        if not self._id_o:
            Y = torch.einsum("ab,...nbmd->...namd", self._t("Qo", self._Qo, X), Y)
        if not self._id_i:
            Y = torch.einsum("...nbmd,cd->...nbmc", Y, self._t("Qi", self._Qi, X))
        return Y
