"""The spatial route: group averaging over the elements of a finite group (private module).

``P(W) = 1/|G| sum_g rho_out(g) W rho_in(g)^T``. When both field types are permutation
representations the average is a mean over the orbits of the index pairs, computed with one
``index_add`` and one gather (no dense products, cost independent of ``|G|``): because
``g -> g^{-1}(a, b)`` hits every point of the orbit of ``(a, b)`` equally often, the group
average of ``W`` at ``(a, b)`` is the mean of ``W`` over that orbit.
"""

from __future__ import annotations

import torch

from ..groups import Representation
from ._base import PairProjector, RouteNotApplicable

__all__ = ["SpatialPair"]

_F64 = torch.float64


def permutation_table(t: Representation):
    """``t.permutation`` (``src[g, i]`` with ``(rho(g) x)[i] = x[src[g, i]]``), or, for a
    representation of a finite group whose matrices happen to be permutation matrices (the
    trivial irrep, ``trivial (x) grid``, ...), the table read off the matrices; else ``None``."""
    perm = t.permutation
    if perm is not None or not t.group.is_finite:
        return perm
    key = (t.group.key, t.key)
    if key not in _PERM_TABLES:
        R = t(t.group.elements(), dtype=_F64)
        is_perm = bool(((R == 0) | (R == 1)).all()) and bool((R.sum(-1) == 1).all()) and bool((R.sum(-2) == 1).all())
        _PERM_TABLES[key] = R.argmax(-1) if is_perm else None
    return _PERM_TABLES[key]


_PERM_TABLES: dict = {}


class SpatialPair(PairProjector):
    """Group averaging for one pair of field types of a finite group."""

    route = "spatial"

    def __init__(self, t_out: Representation, t_in: Representation, chunk: int = 8):
        G = t_out.group
        if not G.is_finite:
            raise RouteNotApplicable(
                f"route 'spatial' averages over the elements of a finite group, but {G.name} is "
                "continuous: use route='spectral' or route='basis'"
            )
        super().__init__(t_out, t_in)
        self.order = G.order
        self.chunk = chunk
        so, si = permutation_table(t_out), permutation_table(t_in)
        if so is not None and si is not None:
            self.mode = "orbit"
            src = (so[:, :, None] * self.d_in + si[:, None, :]).reshape(G.order, -1)
            reps = src.min(dim=0).values  # smallest index of each orbit
            uniq, orbit = torch.unique(reps, return_inverse=True)
            self._orbit = orbit
            self._inv_counts = 1.0 / torch.bincount(orbit).to(_F64)
            self.dim = int(uniq.numel())
        else:
            self.mode = "dense"
            g = G.elements()
            self._Ro = t_out(g, dtype=_F64)
            self._Ri = t_in(g, dtype=_F64)
            chi = torch.diagonal(self._Ro, dim1=-2, dim2=-1).sum(-1) * torch.diagonal(self._Ri, dim1=-2, dim2=-1).sum(-1)
            self.dim = int(round(float(chi.mean())))

    @classmethod
    def cost(cls, t_out, t_in):
        G = t_out.group
        if not G.is_finite:
            return None
        if permutation_table(t_out) is not None and permutation_table(t_in) is not None:
            return 40.0
        return float(G.order) * (t_out.dim + t_in.dim) + 10.0

    def project(self, X):
        if self.mode == "orbit":
            orbit = self._t("orbit", self._orbit, X)
            inv = self._t("inv_counts", self._inv_counts, X)
            # (..., n_o, d_o, n_i, d_i) -> (..., d_o * d_i, n_o * n_i): orbit sums over whole rows
            nd = X.ndim
            lead = list(range(nd - 4))
            Y = X.permute(*lead, nd - 3, nd - 1, nd - 4, nd - 2)  # (..., d_o, d_i, n_o, n_i)
            lead, (no, ni) = Y.shape[:-4], Y.shape[-2:]
            Y = Y.reshape(*lead, self.d_out * self.d_in, no * ni)
            sums = Y.new_zeros(*lead, self.dim, no * ni).index_add(-2, orbit, Y)
            out = (sums * inv[:, None]).index_select(-2, orbit)
            out = out.reshape(*lead, self.d_out, self.d_in, no, ni)
            return out.permute(*range(nd - 4), nd - 2, nd - 4, nd - 1, nd - 3)
        Ro, Ri = self._t("Ro", self._Ro, X), self._t("Ri", self._Ri, X)
        out = None
        for s in range(0, self.order, self.chunk):
            T = torch.einsum("gab,...nbmd->...gnamd", Ro[s:s + self.chunk], X)
            part = torch.einsum("...gnamd,gcd->...namc", T, Ri[s:s + self.chunk])
            out = part if out is None else out + part
        return out / self.order
