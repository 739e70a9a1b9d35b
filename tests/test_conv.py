import math

import pytest
import torch
from torch import nn

from equiproj import (Projector, ProjectionRegulariser, declare, declare_model, format_report,
                      project_)
from equiproj.actions import (KernelAction, SteerableConfig, feature_map_action, grid_representation,
                              harmonic_representation, harmonics, transform_feature_map)
from equiproj.groups import cyclic, dihedral, full_octahedral, o2, o3, octahedral, so2, so3, tensor
from equiproj.metrics import equivariance_error
from equiproj.models import CNN3d, UNet2d
from equiproj.nn import RepConv2d, RepConv3d
from equiproj.norms import ConvOperatorNorm
from equiproj.projection import RouteNotApplicable

from conftest import dense_reference_projector

F64 = torch.float64


def _act(rep):
    return feature_map_action(rep)


# ------------------------------------------------------------------ grid actions


def test_grid_action_matches_rot90_and_flip_on_an_asymmetric_image():
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    C4, D4 = cyclic(4), dihedral(4)
    triv3 = 3 * C4.trivial()
    for a in range(4):
        assert torch.equal(transform_feature_map(x, a, triv3), torch.rot90(x, a, dims=(-2, -1)))
    # D4: element a + 4b = r^a f^b, f = flip of the last axis
    t = 3 * D4.trivial()
    assert torch.equal(transform_feature_map(x, 4, t), torch.flip(x, dims=(-1,)))
    for a in range(4):
        expected = torch.rot90(torch.flip(x, dims=(-1,)), a, dims=(-2, -1))
        assert torch.equal(transform_feature_map(x, a + 4, t), expected)
    # the action is a group action: (gh) . x = g . (h . x)
    for g in range(8):
        for h in range(8):
            gh = int(D4.compose(g, h))
            assert torch.equal(transform_feature_map(x, gh, t),
                               transform_feature_map(transform_feature_map(x, h, t), g, t))
    # an even-sized grid works too
    y = torch.randn(1, 1, 6, 6)
    assert torch.equal(transform_feature_map(y, 1, C4.trivial()), torch.rot90(y, 1, dims=(-2, -1)))


def test_channels_move_with_the_representation():
    G = cyclic(4)
    x = torch.randn(1, 4, 5, 5)
    y = transform_feature_map(x, 1, G.regular())
    # regular channels are cyclically shifted, positions rotated
    assert torch.equal(y, torch.rot90(x, 1, dims=(-2, -1))[:, [3, 0, 1, 2]])


def test_which_groups_act_exactly_on_grids():
    assert grid_representation(cyclic(4), (3, 3)) is not None
    assert grid_representation(dihedral(4), (5, 5)) is not None
    assert grid_representation(dihedral(1), (3, 4)) is not None  # a flip works on a rectangle
    assert grid_representation(cyclic(4), (3, 4)) is None       # a quarter turn does not
    assert grid_representation(cyclic(8), (3, 3)) is None
    assert grid_representation(so2(), (3, 3)) is None
    assert grid_representation(octahedral(), (3, 3, 3)) is not None
    assert grid_representation(full_octahedral(), (2, 2, 2)) is not None
    with pytest.raises(ValueError, match="2-dimensional space but the grid"):
        grid_representation(cyclic(4), (3, 3, 3))


# ------------------------------------------------------------------ exact kernel projection


@pytest.mark.parametrize("G, rin, rout, ks", [
    (cyclic(4), cyclic(4).regular() + cyclic(4).irrep(1), cyclic(4).regular() + cyclic(4).trivial(), (3, 3)),
    (dihedral(4), dihedral(4).regular(), dihedral(4).standard() + dihedral(4).trivial(), (3, 3)),
    (dihedral(2), dihedral(2).regular(), dihedral(2).regular(), (3, 4)),
    (cyclic(2), cyclic(2).regular(), cyclic(2).irrep(1), (2, 2)),
    (octahedral(), octahedral().irrep(3), octahedral().trivial() + octahedral().irrep(2), (3, 3, 3)),
])
def test_kernel_routes_agree_with_dense_reference(G, rin, rout, ks):
    A = KernelAction(rin, rout, ks)
    assert A.exact
    S = dense_reference_projector(tensor(rin, A.grid), rout)
    W = torch.randn(2, rout.dim, rin.dim, *ks, dtype=F64, generator=torch.Generator().manual_seed(1))
    ref = (W.reshape(2, -1) @ S.T).reshape(W.shape)
    for route in ("spatial", "spectral", "basis", "auto"):
        P = Projector(A, route=route)
        out = P.project(W)
        assert (out - ref).abs().max() < 1e-10, route
        assert P.dim == round(float(torch.trace(S)))
        assert (A.act(G.elements(), out[0]) - out[0]).abs().max() < 1e-10


def test_c4_rep_conv2d_is_equivariant_end_to_end_after_projection():
    G = cyclic(4)
    torch.manual_seed(0)
    rin, rout = 2 * G.regular() + G.trivial(), 3 * G.regular()
    conv = RepConv2d(rin, rout, 3, padding=1)
    x = torch.randn(4, rin.dim, 12, 12)
    assert equivariance_error(conv, x, _act(rin), _act(rout), group=G).max > 0.3
    project_(conv)
    err = equivariance_error(conv, x, _act(rin), _act(rout), group=G)
    assert err.max < 1e-5
    # strided and dilated convolutions keep it when the geometry allows (odd sizes)
    conv2 = RepConv2d(rin, rout, 3, stride=2, padding=2, dilation=2, equivariant=True)
    x2 = torch.randn(2, rin.dim, 13, 13)
    assert equivariance_error(conv2, x2, _act(rin), _act(rout), group=G).max < 1e-5


def test_cube_rep_conv3d_is_equivariant_end_to_end_after_projection():
    G = octahedral()
    torch.manual_seed(0)
    rin, rout = G.trivial() + G.irrep(3), G.regular()
    conv = RepConv3d(rin, rout, 3, padding=1)
    x = torch.randn(2, rin.dim, 7, 7, 7)
    assert equivariance_error(conv, x, _act(rin), _act(rout), group=G).max > 0.3
    project_(conv)
    assert equivariance_error(conv, x, _act(rin), _act(rout), group=G).max < 1e-5


def test_hard_mode_conv_stays_equivariant_while_training():
    G = dihedral(4)
    torch.manual_seed(0)
    conv = RepConv2d(G.trivial(), G.regular(), 3, padding=1, equivariant=True)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(4, 1, 9, 9)
    for _ in range(3):
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
    assert equivariance_error(conv, x, _act(G.trivial()), _act(G.regular()), group=G).max < 1e-5


# ------------------------------------------------------------------ steerable subspaces


def test_harmonics_transform_by_the_harmonic_representation():
    for G in (so2(), o2(), cyclic(6), dihedral(3)):
        g = G.sample(5, generator=torch.Generator().manual_seed(0)) if not G.is_finite else G.elements()
        M = G.standard()(g, dtype=F64)
        x = torch.randn(7, 2, dtype=F64)
        for l in range(4):
            H = harmonic_representation(G, l)(g, dtype=F64)
            lhs = torch.stack([harmonics(l, x @ m.T) for m in M])
            rhs = torch.einsum("gij,xj->gxi", H, harmonics(l, x))
            assert (lhs - rhs).abs().max() < 1e-12, (G, l)
    for G in (so3(), o3()):
        g = G.sample(5, generator=torch.Generator().manual_seed(0))
        x = torch.randn(7, 3, dtype=F64)
        for l in range(4):
            H = harmonic_representation(G, l)(g, dtype=F64)
            lhs = torch.stack([harmonics(l, x @ m.T) for m in g])
            rhs = torch.einsum("gij,xj->gxi", H, harmonics(l, x))
            assert (lhs - rhs).abs().max() < 1e-12, (G, l)


@pytest.mark.parametrize("G, rin, rout, ks, grid_elements", [
    (so2(), so2().irrep(0) + so2().irrep(1), so2().irrep(1) + so2().irrep(2), (5, 5),
     torch.tensor([math.pi / 2, math.pi, 1.5 * math.pi], dtype=F64)),
    (o2(), o2().irrep(1, 1), o2().trivial() + o2().irrep(1, 2), (5, 5),
     torch.tensor([[math.pi / 2, 0.0], [0.0, 1.0], [math.pi, 1.0]], dtype=F64)),
    (cyclic(8), cyclic(8).regular(), cyclic(8).regular(), (5, 5), torch.tensor([2, 4, 6])),
    (so3(), so3().irrep(0) + so3().irrep(1), so3().irrep(1) + so3().irrep(2), (3, 3, 3),
     octahedral().standard()(octahedral().elements(), dtype=F64)),
    (o3(), o3().irrep(1, -1), o3().irrep(0, 1) + o3().irrep(1, 1), (3, 3, 3),
     full_octahedral().standard()(full_octahedral().elements(), dtype=F64)),
])
def test_steerable_projection_is_exact_under_grid_symmetries(G, rin, rout, ks, grid_elements):
    A = KernelAction(rin, rout, ks)
    assert not A.exact
    P = Projector(A)
    assert set(P.routes.values()) == {"basis"}
    W = torch.randn(3, rout.dim, rin.dim, *ks, dtype=F64, generator=torch.Generator().manual_seed(0))
    PW = P.project(W)
    assert (P.project(PW) - PW).abs().max() < 1e-12
    assert 0 < P.dim < P.total_dim
    moved = A.act(grid_elements, PW)
    assert (moved - PW).abs().max() < 1e-10
    # the unprojected kernel is not equivariant
    assert (A.act(grid_elements, W) - W).abs().max() > 0.1


def test_steerable_discretisation_error_is_measured_and_small_for_smooth_kernels():
    """Under rotations that do not map the grid onto itself the projected layer is equivariant up
    to discretisation (interpolation of the feature maps, sampling of the kernel)."""
    G = so2()
    torch.manual_seed(0)
    rin, rout = G.trivial(), G.irrep(0) + G.irrep(1)
    # no bias: a constant output would fill the corners that a rotation of the frame empties
    conv = RepConv2d(rin, rout, 5, padding=2, equivariant=True, bias=False).double()
    free = RepConv2d(rin, rout, 5, padding=2, bias=False).double()
    # a smooth input (a sum of wide Gaussians) inside a disc, so rotation loses nothing
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    x = sum(torch.exp(-((xx - 16 - 6 * math.cos(t)) ** 2 + (yy - 16 - 6 * math.sin(t)) ** 2) / 18)
            for t in (0.3, 2.0, 4.0)).double()[None, None]
    angles = torch.tensor([math.pi / 2, math.pi / 4, 0.3], dtype=F64)
    e_proj = equivariance_error(conv, x, _act(rin), _act(rout), elements=angles)
    e_free = equivariance_error(free, x, _act(rin), _act(rout), elements=angles)
    assert e_proj.per_element[0] < 1e-10          # quarter turn: exact
    assert (e_proj.per_element[1:] < 0.1).all()   # other angles: discretisation only
    assert (e_proj.per_element[1:] < 0.5 * e_free.per_element[1:]).all()


def test_steerable_defaults_and_band_limit():
    cfg = SteerableConfig.default(5)
    assert cfg.rings == (0.0, 1.0, 2.0) and cfg.max_degree == (0, 2, 2) and cfg.sigma == (0.005, 0.6, 0.4)
    small = Projector(KernelAction(so2().irrep(0), so2().irrep(0), (5, 5), band_limit=0))
    big = Projector(KernelAction(so2().irrep(0), so2().irrep(0), (5, 5)))
    assert small.dim == big.dim == 3  # isotropic kernels: one per ring
    lo = Projector(KernelAction(so2().irrep(0), so2().irrep(1), (5, 5), band_limit=0))
    hi = Projector(KernelAction(so2().irrep(0), so2().irrep(1), (5, 5), band_limit=1))
    assert lo.dim == 0 and hi.dim == 4


def test_steerable_errors():
    A = KernelAction(so2().irrep(1), so2().irrep(1), (3, 3))
    for route in ("spatial", "spectral"):
        with pytest.raises(RouteNotApplicable, match="does not act exactly on a 3x3 grid.*basis"):
            Projector(A, route=route)
    with pytest.raises(ValueError, match="square or cubic"):
        KernelAction(so2().irrep(1), so2().irrep(1), (3, 5))
    with pytest.raises(ValueError, match="3-dimensional space, but the kernel"):
        KernelAction(so3().irrep(1), so3().irrep(1), (3, 3))
    with pytest.raises(ValueError, match="cannot move a kernel exactly"):
        A.act(torch.tensor([0.3], dtype=F64), torch.zeros(2, 2, 3, 3))


# ------------------------------------------------------------------ existing models


def test_declare_model_on_a_stock_unet_then_project():
    G = cyclic(4)
    torch.manual_seed(0)
    net = UNet2d(1, 1, width=8, depth=2, residual=False)
    declared = declare_model(net, G)
    assert len(declared) == 13
    assert declared[0][1].dim == 1 and declared[-1][2].dim == 1
    reg = ProjectionRegulariser(net, lambda_perp=1.0)
    rows = reg.report()
    assert len(rows) == 13 and all(r.relative_defect > 0.5 for r in rows)
    assert "relative defect" in format_report(rows)
    reg().backward()
    x = torch.randn(2, 1, 16, 16)
    triv = G.trivial()
    assert equivariance_error(net, x, _act(triv), _act(triv), group=G).max > 1e-3
    project_(net)
    assert equivariance_error(net, x, _act(triv), _act(triv), group=G).max < 1e-5
    assert all(r.defect_norm < 1e-4 * max(r.weight_norm, 1) for r in reg.report())


def test_declare_model_3d_cnn_and_errors():
    G = octahedral()
    net = CNN3d(1, 3, width=24, depth=2)
    declare_model(net, G)
    x = torch.randn(2, 1, 8, 8, 8)
    project_(net)
    assert equivariance_error(net, x, _act(G.trivial()), lambda g, y: y, group=G).max < 1e-5
    bad = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 1, 3))
    with pytest.raises(ValueError, match=r"layer '0': 6 output channels are not a multiple of 4"):
        declare_model(bad, cyclic(4))
    with pytest.raises(ValueError, match="hidden=<field type>"):
        declare_model(nn.Sequential(nn.Conv2d(1, 6, 3)), so2())
    with pytest.raises(ValueError, match="no supported layer named"):
        declare_model(nn.Sequential(nn.Conv2d(1, 4, 3)), cyclic(4), layers={"head": None})
    # per-layer overrides and a continuous group with an explicit hidden field type
    H = so2().irrep(0) + so2().irrep(1)
    m = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 2, 5, padding=2))
    out = declare_model(m, so2(), hidden=H, out_rep=so2().irrep(1))
    assert out[-1][2] == so2().irrep(1)
    assert ProjectionRegulariser(m, 1.0)().item() > 0


def test_declare_checks_conv_channels_and_types():
    G = cyclic(4)
    with pytest.raises(ValueError, match="in_rep dimension 4 does not match in_channels 3 of layer 'c'"):
        declare(nn.Conv2d(3, 4, 3), G.regular(), G.regular(), name="c")
    with pytest.raises(ValueError, match="grouped convolution"):
        declare(nn.Conv2d(4, 4, 3, groups=2), G.regular(), G.regular())


def test_transposed_conv_projection_and_bias():
    G = cyclic(4)
    tconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
    declare(tconv, 2 * G.regular(), G.regular())
    project_(tconv)
    x = torch.randn(1, 8, 6, 6)
    err = equivariance_error(tconv, x, _act(2 * G.regular()), _act(G.regular()), group=G)
    assert err.max < 1e-5
    b = tconv.bias.detach()
    assert torch.allclose(b, b.mean().expand(4))  # invariant vectors of a regular field: constants


# ------------------------------------------------------------------ conv norms


def _dense_circular_conv(K, N):
    c_out, c_in, k, _ = K.shape
    cols = []
    for i in range(c_in * N * N):
        e = torch.zeros(c_in * N * N, dtype=K.dtype)
        e[i] = 1
        x = e.reshape(1, c_in, N, N)
        p = k // 2
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (p, p, p, p), mode="circular"), K)
        cols.append(y.reshape(-1))
    return torch.stack(cols, 1)


def test_conv_operator_norm_is_exact_and_differentiable():
    K = torch.randn(3, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    n = ConvOperatorNorm((6, 6))
    assert abs(float(n(K)) - float(torch.linalg.matrix_norm(_dense_circular_conv(K, 6), ord=2))) < 1e-10
    Kg = K.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda k: n(k), (Kg,), eps=1e-6, atol=1e-5)
    # in the regulariser: per layer, on the kernel's non-equivariant part
    G = cyclic(4)
    conv = RepConv2d(G.regular(), G.regular(), 3, padding=1).double()
    reg = ProjectionRegulariser(conv, lambda_perp=1.0, norm=ConvOperatorNorm((8, 8)))
    d = conv.weight - conv.projector.project(conv.weight)
    assert torch.allclose(reg(), n.__class__((8, 8))(d))
    assert reg.report()[0].norm == "conv_op8x8"
    lin = ProjectionRegulariser(nn.Sequential(declare(nn.Linear(4, 4), G.regular(), G.regular())),
                                lambda_perp=1.0, norm=ConvOperatorNorm((8, 8)))
    assert lin().item() > 0
