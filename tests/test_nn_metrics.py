import pytest
import torch
from torch import nn

from equiproj import LinearProjector
from equiproj.groups import cyclic, dihedral, o2, so3
from equiproj.metrics import equivariance_error, orbit_defect, rep_action
from equiproj.nn import GatedNonlinearity, NormNonlinearity, PointwiseNonlinearity, RepLinear

F64 = torch.float64


def test_pointwise_rejects_non_permutation_representations():
    with pytest.raises(ValueError, match="permutation.*NormNonlinearity"):
        PointwiseNonlinearity(so3().standard())
    PointwiseNonlinearity(3 * so3().trivial())  # scalars are fine


@pytest.mark.parametrize("G, rep", [(o2(), 2 * o2().irrep(1, 1) + o2().irrep(1, 2) + o2().irrep(1, 0)),
                                    (so3(), so3().irrep(0) + 2 * so3().irrep(2) + so3().irrep(1))])
def test_norm_nonlinearity_is_equivariant(G, rep):
    act = NormNonlinearity(rep).double()
    with torch.no_grad():
        act.bias.uniform_(-1, 1)
    x = torch.randn(7, rep.dim, dtype=F64)
    err = equivariance_error(act, x, rep, rep, generator=torch.Generator().manual_seed(0))
    assert err.max < 1e-12
    assert not torch.allclose(act(x), x)


def test_gated_nonlinearity_is_equivariant_and_nonlinear():
    G = so3()
    gate = GatedNonlinearity(G.standard() + G.irrep(2), n_scalars=2)
    assert gate.in_rep.dim == 2 + 2 + 8 and gate.out_rep.dim == 10
    x = torch.randn(5, gate.in_rep.dim, dtype=F64)
    err = equivariance_error(gate, x, gate.in_rep, gate.out_rep, generator=torch.Generator().manual_seed(1))
    assert err.max < 1e-12
    assert torch.allclose(gate(2 * x), 2 * gate(x)) is False
    with pytest.raises(ValueError, match="last dimension 12"):
        gate(torch.zeros(3, 11))


def test_equivariant_o3_mlp_end_to_end():
    G = so3()
    torch.manual_seed(0)
    gate = GatedNonlinearity(4 * G.standard(), n_scalars=8)
    model = nn.Sequential(RepLinear(2 * G.standard(), gate.in_rep, equivariant=True), gate,
                          RepLinear(gate.out_rep, G.trivial() + G.standard(), equivariant=True)).double()
    x = torch.randn(20, 6, dtype=F64)
    err = equivariance_error(model, x, 2 * G.standard(), G.trivial() + G.standard(),
                             generator=torch.Generator().manual_seed(0), n_samples=8)
    assert err.max < 1e-12
    assert len(err.per_element) == 8


def test_equivariance_error_all_elements_of_a_finite_group():
    G = dihedral(4)
    layer = RepLinear(G.regular(), G.regular()).double()
    x = torch.randn(4, 8, dtype=F64)
    err = equivariance_error(layer, x, G.regular(), G.regular())
    assert len(err.per_element) == G.order
    assert err.per_element[0] < 1e-14  # the identity
    assert err.max > 0.1 and err.mean <= err.max
    assert set(err.as_dict()) == {"max", "mean", "n_elements"}
    with pytest.raises(ValueError, match="group="):
        equivariance_error(layer, x, lambda g, x: x, lambda g, x: x)
    act = rep_action(G.regular())
    assert torch.allclose(act(G.elements()[:1], x), x)


@pytest.mark.parametrize("norm", ["fro", "spectral_exact", "nuclear"])
@pytest.mark.parametrize("G, rin, rout", [
    (cyclic(6), 2 * cyclic(6).regular(), cyclic(6).standard() + cyclic(6).regular()),
    (dihedral(5), dihedral(5).regular(), 2 * dihedral(5).standard()),
])
def test_orbit_bound(norm, G, rin, rout):
    """||W - P(W)|| <= sup_g ||g.W - W|| <= 2 ||W - P(W)|| (unitarily invariant norms)."""
    P = LinearProjector(rin, rout)
    for seed in range(3):
        W = torch.randn(rout.dim, rin.dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
        d = float(P.defect(W, norm))
        s = float(orbit_defect(W, P, G.elements(), norm))
        assert d <= s + 1e-10 and s <= 2 * d + 1e-10


def test_orbit_upper_bound_for_a_continuous_group():
    G = so3()
    P = LinearProjector(G.irrep(1) + G.irrep(2), 2 * G.irrep(1))
    W = torch.randn(6, 8, dtype=F64)
    s = float(orbit_defect(W, P, G.sample(64, generator=torch.Generator().manual_seed(0))))
    d = float(P.defect(W))
    assert 0 < s <= 2 * d + 1e-10
