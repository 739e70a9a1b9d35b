"""Shared fixtures: dtypes with tolerances, representative groups and representations."""

from __future__ import annotations


import torch

# The suite's models are small: one thread is much faster than torch's default on a CI machine's
# few (often shared) cores, where threads oversubscribe them (measured: 15-30 times on 2 busy cores).
torch.set_num_threads(1)

from equiproj.groups import cyclic, dihedral, finite_group, o2, o3, orthogonalize, so2, so3, symmetric  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


from equiproj.testing import dtype  # noqa: E402,F401  (the shipped fixture: float64 and float32)


def quaternion_group():
    i = torch.tensor([[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]])
    j = torch.tensor([[0.0, 0, -1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, -1, 0, 0]])
    return finite_group([i, j], name="Q8")


def _rotated_standard(G, seed=3):
    B = orthogonalize(torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return G.standard().change_basis(B)


def rep_cases():
    """(id, group, in_rep, out_rep): multiplicities > 1 and irreps of real, complex and
    quaternionic type, tensor products and changes of basis."""
    C8 = cyclic(8)
    D6 = dihedral(6)
    S4 = symmetric(4)
    Q8 = quaternion_group()
    C3 = cyclic(3)
    SO2, O2, SO3, O3 = so2(), o2(), so3(), o3()
    return [
        ("C8", C8, 2 * C8.regular() + C8.irrep(1) + C8.irrep(4), C8.regular() + C8.standard() + 2 * C8.irrep(2)),
        ("D6", D6, D6.regular() + 2 * D6.irrep(1, 1) + D6.irrep(1, 3),
         2 * D6.standard() + D6.irrep(0, 3) + D6.regular()),
        ("S4", S4, S4.standard() + S4.irrep(2), 2 * S4.standard() + S4.irrep(3) + S4.trivial()),
        ("Q8", Q8, 2 * Q8.standard() + Q8.irrep(1), Q8.standard() + Q8.regular()),
        ("C3-basis-change", C3, 2 * _rotated_standard(C3) + C3.trivial(), C3.regular() + _rotated_standard(C3)),
        ("SO2", SO2, 2 * SO2.irrep(0) + 2 * SO2.irrep(1) + SO2.irrep(3),
         SO2.irrep(0) + SO2.irrep(1) + 2 * SO2.irrep(3) + SO2.standard() * SO2.standard()),
        ("O2", O2, O2.irrep(0, 0) + O2.irrep(1, 0) + 2 * O2.irrep(1, 1) + O2.irrep(1, 2),
         2 * O2.irrep(1, 0) + O2.irrep(1, 2) + O2.standard() * O2.standard()),
        ("SO3", SO3, 2 * SO3.irrep(0) + 2 * SO3.irrep(1) + SO3.irrep(2),
         SO3.irrep(0) + SO3.irrep(1) + SO3.standard() * SO3.standard() + SO3.irrep(2)),
        ("O3", O3, O3.irrep(0, 1) + O3.irrep(0, -1) + 2 * O3.irrep(1, -1) + O3.irrep(2, 1),
         O3.irrep(0, 1) + 2 * O3.irrep(1, 1) + O3.standard() * O3.standard() + O3.irrep(1, -1)),
        # tensor products of sums are split into products of summands (a permuted direct sum)
        ("O3-tensor-of-sums", O3, (O3.trivial() + 2 * O3.standard()) * (O3.trivial() + O3.standard()),
         O3.irrep(1, -1) + (O3.trivial() + O3.standard()) * O3.standard()),
        ("D4-tensor-of-sums", dihedral(4), (dihedral(4).trivial() + dihedral(4).standard()) * dihedral(4).regular(),
         dihedral(4).regular() + dihedral(4).standard()),
    ]


CASES = rep_cases()
CASE_IDS = [c[0] for c in CASES]


def test_elements(G, n=12, seed=0):
    """All elements of a finite group, else Haar samples."""
    return G.elements() if G.is_finite else G.sample(n, generator=torch.Generator().manual_seed(seed))


test_elements.__test__ = False  # not a test


def dense_reference_projector(rin, rout):
    """Slow, obviously correct reference: the matrix of ``W -> int rho_out(g) W rho_in(g)^T dg``
    on vec(W) (row-major), by exact integration (all elements / the group's quadrature)."""
    G = rin.group
    g, w = G.quadrature(rin.band_limit + rout.band_limit)
    Ro, Ri = rout(g, dtype=torch.float64), rin(g, dtype=torch.float64)
    K = torch.einsum("nab,ncd->nacbd", Ro, Ri).reshape(len(w), rout.dim * rin.dim, rout.dim * rin.dim)
    return torch.einsum("n,nij->ij", w, K)


def character_dimension(rin, rout):
    """dim Hom_G(V_in, V_out) = int chi_in(g) chi_out(g) dg (exact integration)."""
    G = rin.group
    g, w = G.quadrature(rin.band_limit + rout.band_limit)
    return float((w * rin.character(g) * rout.character(g)).sum())
