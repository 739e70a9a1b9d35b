"""Use escnn groups, representations and field types with equiproj (optional; needs escnn).

escnn (Cesa, Lang and Weiler) is an optional dependency: ``pip install -e ".[escnn]"`` (it needs
``gfortran`` for py3nj and ``numpy<2``). Nothing else in equiproj imports it.

* :func:`group_from_escnn`: the equiproj group of an escnn group (C_N, D_N, SO(2), O(2), SO(3),
  O(3)).
* :func:`from_escnn`: an equiproj representation from an escnn ``Representation`` or
  ``FieldType`` (a direct sum over its fields). Its matrices are escnn's, evaluated at the escnn
  element that corresponds to each equiproj element (matched through the defining matrices), so
  every projector, layer and metric of equiproj works with escnn's bases. Finite groups get a
  table (a permutation representation when escnn's matrices are permutations); continuous groups
  are decomposed numerically into equiproj's irreps.

Examples
--------
>>> from escnn import gspaces, nn as enn                         # doctest: +SKIP
>>> from equiproj.interop.escnn import from_escnn                 # doctest: +SKIP
>>> gs = gspaces.rot2dOnR2(8)                                     # doctest: +SKIP
>>> rep = from_escnn(enn.FieldType(gs, 3 * [gs.regular_repr]))    # doctest: +SKIP
>>> rep.dim, rep.group.name                                       # doctest: +SKIP
(24, 'C8')
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from ..groups import (DirectSum, Group, PermutationRep, Representation, TableRep, cyclic, dihedral, o2, o3, so2,
                      so3)

__all__ = ["group_from_escnn", "from_escnn", "EscnnRepresentation"]

_F64 = torch.float64


def _escnn():
    try:
        import escnn  # noqa: F401
        from escnn import group as eg
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "equiproj.interop.escnn needs escnn: pip install -e \".[escnn]\" (escnn needs gfortran and numpy<2)"
        ) from err
    return eg


def group_from_escnn(G) -> Group:
    """The equiproj group corresponding to an escnn group."""
    eg = _escnn()
    if isinstance(G, eg.CyclicGroup):
        return cyclic(G.order())
    if isinstance(G, eg.DihedralGroup):
        return dihedral(G.order() // 2)
    if isinstance(G, eg.SO2):
        return so2()
    if isinstance(G, eg.O2):
        return o2()
    if isinstance(G, eg.SO3):
        return so3()
    if isinstance(G, eg.O3):
        return o3()
    raise ValueError(f"escnn group {G} has no equiproj counterpart (supported: C_N, D_N, SO(2), O(2), SO(3), O(3))")


def _escnn_elements(G_esc, group: Group, g: torch.Tensor) -> List:
    """escnn elements corresponding to a batch of equiproj elements (the group says how,
    :meth:`equiproj.groups.Group.escnn_element_args`)."""
    return [G_esc.element(*args, **kw) for args, kw in group.escnn_element_args(g)]


def _band_limit(rep_esc) -> int:
    L = 0
    for irr_id in rep_esc.irreps:
        ids = irr_id if isinstance(irr_id, tuple) else (irr_id,)
        L = max(L, max(abs(int(x)) for x in ids) if ids else 0)
    return L


class EscnnRepresentation(Representation):
    """An escnn representation of a continuous group, evaluated by escnn at corresponding
    elements and decomposed numerically into equiproj's irreps."""

    def __init__(self, rep_esc, group: Group):
        super().__init__(group, rep_esc.size, f"escnn:{rep_esc.name}")
        self.rep_esc = rep_esc
        self._band = _band_limit(rep_esc)

    @property
    def key(self):
        return ("escnn", self.rep_esc.name)

    @property
    def band_limit(self):
        return self._band

    def _matrices(self, g):
        els = _escnn_elements(self.rep_esc.group, self.group, g.cpu())
        return torch.tensor(np.stack([self.rep_esc(e) for e in els]), dtype=_F64, device=g.device)

    def lie_algebra(self):
        dec = self.decompose()
        blocks = [psi.lie_algebra() for psi in dec.irreps]
        L = blocks[0].shape[0]
        X = torch.zeros(L, self.dim, self.dim, dtype=_F64)
        o = 0
        for b in blocks:
            X[:, o:o + b.shape[-1], o:o + b.shape[-1]] = b
            o += b.shape[-1]
        return dec.Q @ X @ dec.Q.T


def _from_rep(rep_esc) -> Representation:
    group = group_from_escnn(rep_esc.group)
    if not group.is_finite:
        return EscnnRepresentation(rep_esc, group)
    els = _escnn_elements(rep_esc.group, group, group.elements())
    table = torch.tensor(np.stack([rep_esc(e) for e in els]), dtype=_F64)
    rounded = table.round()
    is_perm = bool(((table - rounded).abs() < 1e-9).all()) and bool((rounded.sum(-1) == 1).all()) and \
        bool(((rounded == 0) | (rounded == 1)).all())
    if is_perm:
        src = rounded.argmax(-1)  # rho(g)[a, src[g, a]] = 1
        return PermutationRep(group, src, name=f"escnn:{rep_esc.name}", check=True)
    return TableRep(group, table, name=f"escnn:{rep_esc.name}", check=True)


def from_escnn(obj) -> Representation:
    """An equiproj representation from an escnn ``Representation`` or ``FieldType``."""
    eg = _escnn()
    if isinstance(obj, eg.Representation):
        return _from_rep(obj)
    reps = getattr(obj, "representations", None)
    if reps is not None:  # a FieldType
        parts = [_from_rep(r) for r in reps]
        return parts[0] if len(parts) == 1 else DirectSum(parts)
    raise TypeError(f"from_escnn expects an escnn Representation or FieldType, got {type(obj).__name__}")
