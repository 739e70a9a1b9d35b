"""equiproj.testing: assert_equivariant, assert_projector, the dtype fixture, check_equivariance."""

import pytest
import torch

from equiproj import LinearProjector, Projector, project_
from equiproj.actions import KernelAction
from equiproj.groups import cyclic, dihedral, so2, so3
from equiproj.nn import RepConv2d, RepLinear
from equiproj.testing import TOLERANCES, assert_equivariant, assert_projector, tolerance


def test_assert_equivariant_passes_and_reports(dtype):
    G = dihedral(4)
    x = torch.randn(6, 8, dtype=dtype)
    r = assert_equivariant(lambda v: v.sum(-1, keepdim=True), x, G.regular(), G.trivial())
    assert r.passed and r.n_elements == 8 and r.rtol == TOLERANCES[dtype] and r.dtype == str(dtype)
    assert r.max_error <= tolerance(dtype)


def test_assert_equivariant_fails_with_the_worst_element(dtype):
    G = cyclic(4)
    x = torch.randn(3, 4, dtype=dtype)
    with pytest.raises(AssertionError, match="not equivariant in .*element"):
        assert_equivariant(lambda v: v.flip(-1), x, G.regular(), G.regular())
    r = assert_equivariant(lambda v: v.flip(-1), x, G.regular(), G.regular(), raise_error=False)
    assert not r.passed and r.worst_element is not None and r.max_error > 0.1
    # a tiny perturbation passes in float32 but not in float64
    eps = 1e-7
    f = lambda v: v + eps * v[..., :1]  # noqa: E731
    r = assert_equivariant(f, x, G.regular(), G.regular(), raise_error=False)
    assert r.passed == (dtype == torch.float32)


def test_assert_equivariant_flags_non_finite_outputs():
    G = cyclic(4)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_equivariant(lambda v: v * float("nan"), torch.randn(2, 4), G.regular(), G.regular())


@pytest.mark.parametrize("P", [
    LinearProjector(2 * cyclic(5).regular(), cyclic(5).regular() + cyclic(5).trivial()),
    LinearProjector(dihedral(3).standard() + dihedral(3).trivial(), 2 * dihedral(3).regular(), route="spectral"),
    LinearProjector(so2().irrep(1) + so2().irrep(2), 2 * so2().irrep(1) + so2().irrep(0)),
    LinearProjector(so3().irrep(1), so3().irrep(1) + so3().irrep(2)),
    Projector(KernelAction(cyclic(4).regular(), 2 * cyclic(4).regular(), (3, 3))),
], ids=["C5", "D3-spectral", "SO2", "SO3", "C4-kernel"])
def test_assert_projector_on_correct_projectors(P, dtype):
    r = assert_projector(P, dtype=dtype)
    assert r.passed and r.dim == r.character_dim


def test_assert_projector_catches_a_wrong_projector():
    G = cyclic(4)
    P = LinearProjector(G.regular(), G.regular())

    class Half(LinearProjector):  # not idempotent
        def project(self, W):
            return 0.5 * super().project(W)

    bad = Half(G.regular(), G.regular())
    with pytest.raises(AssertionError, match="not the orthogonal projection"):
        assert_projector(bad)
    r = assert_projector(P)
    assert r.idempotence_error < 1e-12 and r.adjointness_error < 1e-12


def test_check_equivariance_on_layers(dtype):
    G = cyclic(4)
    lin = RepLinear(G.regular(), 2 * G.regular()).to(dtype)
    assert not lin.check_equivariance().passed  # a random init is not equivariant
    project_(lin)
    assert lin.check_equivariance().passed
    conv = RepConv2d(G.regular(), G.regular() + G.trivial(), 3, padding=1).to(dtype)
    project_(conv)
    r = conv.check_equivariance()
    assert r.passed and r.n_elements == 4
    conv_eq = RepConv2d(G.trivial(), G.regular(), 3, padding=1, equivariant=True).to(dtype)
    assert conv_eq.check_equivariance(raise_error=True).passed
