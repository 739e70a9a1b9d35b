import math

import pytest
import torch

from equiproj._utils import block_diag_batch
from equiproj.groups import (cyclic, dihedral, finite_group, o2, o3, orthogonalize, so2, so3, symmetric, tensor,
                             wigner_D)

from conftest import CASE_IDS, CASES, quaternion_group, test_elements

F64 = torch.float64

FINITE = [cyclic(1), cyclic(2), cyclic(7), cyclic(8), dihedral(1), dihedral(2), dihedral(5), dihedral(6),
          symmetric(3), symmetric(4), quaternion_group()]
CONTINUOUS = [so2(), o2(), so3(), o3()]


def _irreps(G, L=3):
    return G.irreps() if G.is_finite else G.irreps(L)


def _pairs(G, n=10):
    g = test_elements(G, n)
    h = test_elements(G, n, seed=1) if not G.is_finite else g[torch.randperm(len(g), generator=torch.Generator().manual_seed(1))]
    return g, h


@pytest.mark.parametrize("G", FINITE + CONTINUOUS, ids=str)
def test_irreps_are_orthogonal_homomorphisms(G):
    g, h = _pairs(G)
    gh = G.compose(g, h)
    for psi in _irreps(G):
        A, B, AB = psi(g, dtype=F64), psi(h, dtype=F64), psi(gh, dtype=F64)
        eye = torch.eye(psi.dim, dtype=F64)
        assert (A @ A.transpose(1, 2) - eye).abs().max() < 1e-12, psi
        assert (A @ B - AB).abs().max() < 1e-11, psi
        assert (psi(G.inverse(g), dtype=F64) - A.transpose(1, 2)).abs().max() < 1e-11
        assert (psi(G.identity(1), dtype=F64)[0] - eye).abs().max() < 1e-14


@pytest.mark.parametrize("G", FINITE + CONTINUOUS, ids=str)
def test_irreps_are_irreducible_and_inequivalent(G):
    """Schur orthogonality of characters with exact integration: <chi_a, chi_b> = e_a delta_ab."""
    irreps = _irreps(G)
    L = max(p.band_limit for p in irreps)
    g, w = G.quadrature(2 * L)
    chis = torch.stack([p.character(g) for p in irreps])
    gram = torch.einsum("q,aq,bq->ab", w, chis, chis)
    e = torch.tensor([p.endomorphisms().shape[0] for p in irreps], dtype=F64)
    assert torch.allclose(gram, torch.diag(e), atol=1e-10)


def test_irrep_types():
    assert cyclic(8).irrep(1).type == "complex"
    assert cyclic(8).irrep(4).type == "real"
    assert dihedral(5).irrep(1, 2).type == "real"
    assert so2().irrep(3).type == "complex"
    assert o2().irrep(1, 2).type == "real"
    assert so3().irrep(3).type == "real"
    assert quaternion_group().irreps()[-1].type == "quaternionic"
    assert quaternion_group().irreps()[-1].dim == 4


@pytest.mark.parametrize("G", FINITE, ids=str)
def test_finite_group_irreps_complete(G):
    """sum over real irreps of dim^2 / dim End = |G| (the regular representation)."""
    total = sum(p.dim ** 2 / p.endomorphisms().shape[0] for p in G.irreps())
    assert abs(total - G.order) < 1e-9
    iso = G.regular().isotypic()
    for p, m in zip(iso.irreps, iso.multiplicities):
        assert m == p.dim // p.endomorphisms().shape[0]


@pytest.mark.parametrize("G", CONTINUOUS, ids=str)
def test_quadrature_is_exact(G):
    """int psi(g) dg = 0 for every non-trivial irrep up to the band limit, 1 for the trivial one."""
    L = 4
    g, w = G.quadrature(L)
    assert abs(float(w.sum()) - 1) < 1e-14
    for psi in G.irreps(L):
        avg = torch.einsum("q,qij->ij", w, psi(g, dtype=F64))
        expected = torch.ones(1, 1, dtype=F64) if psi.is_trivial() else torch.zeros(psi.dim, psi.dim, dtype=F64)
        assert torch.allclose(avg, expected, atol=1e-12), psi


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_isotypic_decomposition(case):
    _, G, rin, rout = case
    g = test_elements(G)
    for rho in (rin, rout):
        iso = rho.isotypic()
        Q = iso.Q
        assert torch.allclose(Q.T @ Q, torch.eye(rho.dim, dtype=F64), atol=1e-12)
        blocks = []
        for p, m in zip(iso.irreps, iso.multiplicities):
            blocks += [p(g, dtype=F64)] * m
        D = block_diag_batch(blocks)
        assert (rho(g, dtype=F64) @ Q - Q @ D).abs().max() < 1e-10
        # multiplicities equal character inner products
        L = rho.band_limit
        gq, w = G.quadrature(2 * L)
        chi = rho.character(gq)
        for p, m in zip(iso.irreps, iso.multiplicities):
            e = p.endomorphisms().shape[0]
            assert abs(float((w * chi * p.character(gq)).sum()) / e - m) < 1e-9


def test_regular_acts_by_indexing_and_matches_cayley_table():
    G = dihedral(4)
    reg = G.regular()
    assert reg.permutation is not None
    M = reg(G.elements(), dtype=F64)
    # rho(g) e_h = e_{gh}
    for g in range(G.order):
        for h in range(G.order):
            assert M[g, G.table[g, h], h] == 1


def test_symmetric_standard_is_natural_permutation_rep():
    G = symmetric(3)
    M = G.standard()(G.elements(), dtype=F64)
    for i, sigma in enumerate(G.permutations):
        for a in range(3):
            assert M[i, sigma[a], a] == 1
    iso = G.standard().isotypic()
    assert [p.dim for p in iso.irreps] == [1, 2]


def test_tensor_product_and_direct_sum_structure():
    G = so3()
    rho = G.standard() * G.standard()
    g = G.sample(5, generator=torch.Generator().manual_seed(0))
    R = G.standard()(g, dtype=F64)
    K = torch.einsum("nij,nkl->nikjl", R, R).reshape(5, 9, 9)
    assert torch.allclose(rho(g, dtype=F64), K, atol=1e-13)
    iso = rho.isotypic()
    assert [p.label for p in iso.irreps] == [0, 1, 2]
    s = G.trivial() + 2 * G.standard()
    assert s.dim == 7 and len(s.fields) == 3
    assert (3 * G.irrep(2)).dim == 15
    assert tensor(G.standard(), G.trivial()).dim == 3


def test_wigner_D_matches_e3nn_and_is_exact_near_poles():
    from e3nn.o3 import angles_to_matrix
    from e3nn.o3 import wigner_D as e3nn_wigner_D

    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.rand(6, dtype=F64, generator=gen) * s for s in (2 * math.pi, math.pi, 2 * math.pi))
    R = angles_to_matrix(a, b, c)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # e3nn's generators follow the default dtype
    try:
        for l in range(5):
            assert (wigner_D(l, R) - e3nn_wigner_D(l, a, b, c)).abs().max() < 1e-12
    finally:
        torch.set_default_dtype(old)
    G = so3()
    R = G.sample(6, generator=torch.Generator().manual_seed(2))
    # a rotation very close to the pole: homomorphism still holds to machine precision
    Rp = angles_to_matrix(torch.tensor(0.3, dtype=F64), torch.tensor(1e-9, dtype=F64), torch.tensor(0.7, dtype=F64))[None]
    D3 = wigner_D(3, Rp @ R[:1])
    assert (D3 - wigner_D(3, Rp) @ wigner_D(3, R[:1])).abs().max() < 1e-13


def test_sampling_is_reproducible_and_haar_like():
    for G in CONTINUOUS:
        a = G.sample(64, generator=torch.Generator().manual_seed(5))
        b = G.sample(64, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
    R = so3().sample(2000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch.linalg.det(R), torch.ones(2000, dtype=F64), atol=1e-12)
    # the Haar mean of a rotation matrix is zero
    assert R.mean(0).abs().max() < 0.05
    dets = torch.linalg.det(o3().sample(2000, generator=torch.Generator().manual_seed(0)))
    assert 0.4 < float((dets > 0).double().mean()) < 0.6
    g = cyclic(5).sample(1000, generator=torch.Generator().manual_seed(0))
    assert set(g.tolist()) == set(range(5))


def test_dtypes_of_evaluation():
    G = so3()
    g32 = G.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert G.irrep(2)(g32).dtype == torch.float32
    assert G.irrep(2)(g32, dtype=F64).dtype == F64
    assert cyclic(4).regular()(cyclic(4).elements(), dtype=torch.float32).dtype == torch.float32


# ------------------------------------------------------------------ errors


def test_non_orthogonal_matrices_are_rejected():
    G = cyclic(4)
    B = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match="not orthogonal"):
        G.standard().change_basis(B)
    with pytest.raises(ValueError, match="not orthogonal"):
        finite_group([torch.tensor([[0.0, 2.0], [-0.5, 0.0]])])
    with pytest.raises(ValueError, match="not orthogonal"):
        dihedral(3).representation([torch.eye(2) * 2, torch.eye(2)])
    # the explicit way out
    Q = orthogonalize(B)
    assert G.standard().change_basis(Q).dim == 2


def test_non_homomorphisms_are_rejected():
    G = cyclic(3)
    R = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # order 4, not a rep of C3
    with pytest.raises(ValueError, match="not a representation"):
        G.representation([R])


def test_representation_from_generator_images():
    G = dihedral(4)
    rho = G.representation(G.standard()(G.generators(), dtype=F64))
    assert torch.allclose(rho(G.elements(), dtype=F64), G.standard()(G.elements(), dtype=F64))


@pytest.mark.parametrize("call, match", [
    (lambda: cyclic(0), "positive integer"),
    (lambda: cyclic(4).irrep(5), "no irrep labelled"),
    (lambda: so2().irrep(-1), "integer >= 0"),
    (lambda: o2().irrep(0, 2), r"\(1, k\)"),
    (lambda: o3().irrep(1, 0), "parity"),
    (lambda: so3().regular(), "no finite-dimensional regular"),
    (lambda: so3().elements(), "continuous"),
    (lambda: cyclic(4).regular()(torch.tensor([7])), "out of range"),
    (lambda: cyclic(4).regular() + dihedral(4).regular(), "different groups"),
    (lambda: so3().standard()(torch.eye(3)[None] * 2), "orthogonal"),
    (lambda: so3().standard()(-torch.eye(3)[None]), "determinant"),
    (lambda: 0 * cyclic(4).regular(), "positive integer"),
])
def test_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
