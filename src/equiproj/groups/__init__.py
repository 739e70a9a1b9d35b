"""Groups and their real orthogonal representations.

Finite groups: :func:`cyclic`, :func:`dihedral`, :func:`symmetric`, :func:`finite_group`, and
the symmetries of the cube :func:`octahedral` (24 rotations) and :func:`full_octahedral` (48).
Continuous groups: :func:`so2`, :func:`o2`, :func:`so3`, :func:`o3`; and :func:`orthogonal` /
:func:`special_orthogonal` for any ``n`` (no irreps: the basis route only).

Every group ``G`` offers ``G.trivial()``, ``G.irrep(...)``, ``G.standard()``,
``G.sample(n, generator=...)`` and ``G.quadrature(L)``; finite groups also ``G.elements()``
and ``G.regular()``. Representations combine with ``+``, ``n * rho``, ``rho1 * rho2`` (tensor
product) and ``rho.change_basis(B)``, evaluate with ``rho(g)`` to ``(n, d, d)`` matrices and
know their isotypic decomposition (``rho.isotypic()``).

Examples
--------
>>> import torch
>>> from equiproj.groups import so3
>>> G = so3()
>>> rho = G.standard() * G.standard()          # 3 x 3 matrices: l = 0 + 1 + 2
>>> iso = rho.isotypic()
>>> [psi.label for psi in iso.irreps], iso.multiplicities
([0, 1, 2], (1, 1, 1))
"""

from .._utils import orthogonalize
from ._continuous import O2, O3, SO2, SO3, o2, o3, so2, so3, wigner_D
from ._finite import (CyclicGroup, DihedralGroup, MatrixGroup, SymmetricGroup, cyclic, dihedral,
                      finite_group, full_octahedral, octahedral, symmetric)
from ._group import FiniteGroup, Group
from ._lie import MatrixLieGroup, orthogonal, special_orthogonal
from ._rep import (ChangeOfBasis, Decomposition, DirectSum, Irrep, Isotypic, PermutationRep,
                   Representation, TableRep, TensorProduct, direct_sum, invariant_basis, tensor)

__all__ = [
    "Group", "FiniteGroup", "CyclicGroup", "DihedralGroup", "SymmetricGroup", "MatrixGroup",
    "SO2", "O2", "SO3", "O3", "MatrixLieGroup", "orthogonal", "special_orthogonal",
    "cyclic", "dihedral", "symmetric", "finite_group", "octahedral", "full_octahedral", "so2", "o2", "so3", "o3",
    "Representation", "Irrep", "DirectSum", "TensorProduct", "ChangeOfBasis", "TableRep",
    "PermutationRep", "Decomposition", "Isotypic",
    "direct_sum", "tensor", "invariant_basis", "orthogonalize", "wigner_D",
]
