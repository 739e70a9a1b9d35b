"""The basis route: an orthonormal basis of the equivariant subspace (private module).

``Q`` (``d_out d_in x dim``) spans ``Hom_G(tau_in, tau_out)``; ``P(w) = Q (Q^T w)`` and
``||w - P(w)||^2 = ||w||^2 - ||Q^T w||^2``. By default ``Q`` is the null space of the stacked
generator constraints (``equiproj.groups.invariant_basis``): discrete generators of finite
groups, Lie-algebra generators (plus a reflection) of continuous groups. One small ``Q`` per
pair of field types serves every copy of that pair.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..groups import Representation, invariant_basis
from ._base import PairProjector, RouteNotApplicable, from_pairs_last, to_pairs_last

__all__ = ["BasisPair", "BASIS_MAX_DIM"]

#: Largest ``d_out * d_in`` for which the basis route solves the dense constraint system.
BASIS_MAX_DIM = 4096
_AUTO_MAX_DIM = 1024


class BasisPair(PairProjector):
    """``P(w) = Q Q^T w`` with an orthonormal basis ``Q`` of the equivariant maps."""

    route = "basis"

    def __init__(self, t_out: Representation, t_in, Q: Optional[torch.Tensor] = None):
        super().__init__(t_out, t_in)
        if Q is None:
            try:
                Q = invariant_basis([t_out, t_in], max_dim=BASIS_MAX_DIM)
            except ValueError as err:
                raise RouteNotApplicable(str(err)) from None
        Q = torch.as_tensor(Q, dtype=torch.float64)
        if Q.shape[0] != self.d_out * self.d_in:
            raise ValueError(f"basis has {Q.shape[0]} rows, expected d_out * d_in = {self.d_out * self.d_in}")
        self._Q = Q
        self.dim = Q.shape[1]

    @classmethod
    def cost(cls, t_out, t_in):
        """``None`` above ``_AUTO_MAX_DIM``; otherwise the cost needs the basis (see ``make_pair``)."""
        return None if t_out.dim * t_in.dim > _AUTO_MAX_DIM else 0.0

    def entry_cost(self) -> float:
        return 2.0 * self.dim + 8.0

    @property
    def Q(self) -> torch.Tensor:
        return self._Q

    def project(self, X):
        Q = self._t("Q", self._Q, X)
        Y = to_pairs_last(X)
        return from_pairs_last((Y @ Q) @ Q.T, self.d_out, self.d_in)
