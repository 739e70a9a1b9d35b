import pytest
import torch

from equiproj import LinearProjector
from equiproj.groups import cyclic, dihedral, so2, so3, symmetric
from equiproj.projection import BASIS_MAX_DIM, RouteNotApplicable

from conftest import CASE_IDS, CASES, TOL, character_dimension, dense_reference_projector, test_elements

F64 = torch.float64


def routes_for(G):
    return ["spatial", "spectral", "basis", "auto"] if G.is_finite else ["spectral", "basis", "auto"]


def _rand(shape, dtype, seed=0):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_routes_agree_with_dense_reference(case):
    _, G, rin, rout = case
    S = dense_reference_projector(rin, rout)
    W = _rand((3, rout.dim, rin.dim), F64)
    ref = (W.reshape(3, -1) @ S.T).reshape(W.shape)
    for route in routes_for(G):
        P = LinearProjector(rin, rout, route=route)
        out = P.project(W)
        assert (out - ref).abs().max() < 1e-10, route
        assert P.dim == round(float(torch.trace(S))), route


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_projection_properties(case, dtype):
    _, G, rin, rout = case
    tol = TOL[dtype]
    A, B = _rand((rout.dim, rin.dim), dtype, 1), _rand((rout.dim, rin.dim), dtype, 2)
    g = test_elements(G)
    for route in routes_for(G):
        P = LinearProjector(rin, rout, route=route)
        PA, PB = P.project(A), P.project(B)
        assert PA.dtype == dtype
        # idempotent
        assert (P.project(PA) - PA).abs().max() < tol
        # self-adjoint for the Frobenius inner product
        assert abs(float((PA * B).sum() - (A * PB).sum())) < tol * 10 * A.numel() ** 0.5
        # equivariant image under (sampled) group elements
        gPA = P.action.act(g, PA)
        assert (gPA - PA).abs().max() < tol * 10
        # orthogonal split
        nA, nP, nR = (float(torch.linalg.norm(x)) ** 2 for x in (A, PA, A - PA))
        assert abs(nA - nP - nR) < tol * 10 * nA


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_dimension_matches_characters(case):
    _, G, rin, rout = case
    expected = character_dimension(rin, rout)
    assert abs(expected - round(expected)) < 1e-9
    for route in routes_for(G):
        assert LinearProjector(rin, rout, route=route).dim == round(expected)


def test_non_equivariant_weights_are_moved_and_equivariant_ones_kept():
    G = cyclic(6)
    P = LinearProjector(2 * G.regular(), G.regular())
    W = _rand((6, 12), F64)
    g = G.elements()
    assert (P.action.act(g, W) - W).abs().max() > 0.1
    PW = P.project(W)
    assert torch.allclose(P.project(PW), PW, atol=1e-14)


def test_batches_devices_and_gradients():
    G = so3()
    rin, rout = G.irrep(0) + G.irrep(1), 2 * G.irrep(1)
    P = LinearProjector(rin, rout)
    W = _rand((4, 5, rout.dim, rin.dim), F64)
    out = P.project(W)
    assert out.shape == W.shape
    assert torch.allclose(out[2, 3], P.project(W[2, 3]), atol=1e-14)
    Wg = _rand((rout.dim, rin.dim), F64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: P.project(w), (Wg,))
    # P is self-adjoint, so the gradient of <C, P(W)> is P(C)
    C = _rand((rout.dim, rin.dim), F64, 3)
    (P.project(Wg) * C).sum().backward()
    assert torch.allclose(Wg.grad, P.project(C), atol=1e-12)


def test_bias_projection_onto_invariant_vectors():
    G = dihedral(4)
    rout = G.trivial() + G.regular() + G.standard()
    P = LinearProjector(G.regular(), rout)
    b = _rand((rout.dim,), F64)
    Pb = P.project_bias(b)
    # mean over the regular block, zero on the standard block, the trivial entry kept
    assert torch.allclose(Pb[0], b[0])
    assert torch.allclose(Pb[1:9], b[1:9].mean().expand(8), atol=1e-14)
    assert Pb[9:].abs().max() < 1e-14
    M = rout(G.elements(), dtype=F64)
    assert (M @ Pb - Pb).abs().max() < 1e-13


def test_auto_picks_cheap_routes():
    G = cyclic(8)  # small permutation pairs: a matmul with an 8-column basis beats index ops
    assert set(LinearProjector(8 * G.regular(), 8 * G.regular()).routes.values()) == {"basis"}
    G = cyclic(40)  # large permutation pairs: orbit means
    assert set(LinearProjector(G.regular(), G.regular()).routes.values()) == {"spatial"}
    G = dihedral(12)  # dense irreps of a large group: no spatial averaging
    assert "spatial" not in LinearProjector(3 * G.irrep(1, 1), G.irrep(1, 1)).routes.values()
    P = LinearProjector(so3().irrep(2) + so3().irrep(1), so3().irrep(1))
    assert set(P.routes.values()) <= {"spectral", "basis"}


def test_permutation_spatial_is_an_orbit_mean():
    G = cyclic(4)
    P = LinearProjector(G.regular(), G.regular(), route="spatial")
    W = _rand((4, 4), F64)
    out = P.project(W)
    # circulant: entry (a, b) is the mean of W along its (wrapped) diagonal
    for a in range(4):
        for b in range(4):
            diag = torch.stack([W[(a + k) % 4, (b + k) % 4] for k in range(4)])
            assert torch.allclose(out[a, b], diag.mean())


def test_symmetric_group_permutation_projection():
    G = symmetric(4)
    P = LinearProjector(G.standard(), G.standard(), route="spatial")
    assert P.dim == 2  # a I + b 11^T
    W = _rand((4, 4), F64)
    out = P.project(W)
    diag, off = W.diagonal().mean(), (W.sum() - W.diagonal().sum()) / 12
    expected = torch.full((4, 4), float(off), dtype=F64)
    expected.fill_diagonal_(float(diag))
    assert torch.allclose(out, expected, atol=1e-14)


# ------------------------------------------------------------------ errors


def test_route_that_does_not_apply():
    G = so3()
    with pytest.raises(RouteNotApplicable, match="spatial.*continuous"):
        LinearProjector(G.standard(), G.standard(), route="spatial")
    big = cyclic(70).regular()
    assert big.dim ** 2 > BASIS_MAX_DIM
    with pytest.raises(RouteNotApplicable, match="basis route"):
        LinearProjector(big, big, route="basis")
    with pytest.raises(ValueError, match="unknown route"):
        LinearProjector(G.standard(), G.standard(), route="fourier")


def test_shape_mismatch_names_expected_and_actual():
    G = cyclic(4)
    P = LinearProjector(2 * G.regular(), G.regular())
    with pytest.raises(ValueError, match=r"shape \(4, 7\).*expected \(\.\.\., 4, 8\)"):
        P.project(torch.zeros(4, 7))


def test_mixing_groups_is_an_error():
    with pytest.raises(ValueError, match="C4.*SO\\(2\\)|SO\\(2\\).*C4"):
        LinearProjector(cyclic(4).regular(), so2().standard())
