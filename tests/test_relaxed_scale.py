"""Relaxed scale-space convolutions: the projector against a dense least-squares oracle, the
closed-form defect, approximate scale equivariance of the strict layers, the penalty's control
of the defect, and bad input."""

import math

import pytest
import torch
from torch.nn import functional as F

from equiproj.baselines import (GroupPool2d, RelaxedScaleConv2d, RelaxedScaleSteerableConv2d, ScaleKernelProjector,
                                make_method)
from equiproj.baselines._relaxed_scale import dilation_matrices
from equiproj.testing import tolerance

F64 = torch.float64


def _hat(t):
    return (1 - t.abs()).clamp_min(0)


def test_dilation_is_the_sampled_bilinear_filter():
    """D_s psi (u) = sigma^-2 psi(u / sigma), psi bilinear between its grid values: checked at every sample."""
    k, scales = 3, (1.0, 1.7, 2.5)
    P = ScaleKernelProjector(scales, k)
    psi = torch.randn(len(scales), k, k, dtype=F64)
    D = P.dilate(psi)
    K = D.shape[-1]
    R = (K - 1) // 2
    assert K == 2 * (math.ceil(2.5 * 2) - 1) + 1
    grid = torch.arange(-1, 2, dtype=F64)
    for s, sig in enumerate(scales):
        for a in range(K):
            for b in range(K):
                u, v = (a - R) / sig, (b - R) / sig
                ref = sum(psi[s, i, j] * _hat(u - grid[i]) * _hat(v - grid[j]) for i in range(3) for j in range(3))
                assert abs(float(D[s, a, b] - ref / sig ** 2)) < 1e-12
    # scale 1 is the filter itself, centred and zero-padded
    assert torch.equal(D[0, R - 1:R + 2, R - 1:R + 2], psi[0]) and float(D[0].abs().sum() - psi[0].abs().sum()) == 0


def test_projector_equals_the_dense_least_squares_projection(dtype):
    rt = tolerance(dtype)
    tol = dict(rtol=rt, atol=rt)
    scales, k = (1.0, 2 ** 0.5, 2.0), 3
    P = ScaleKernelProjector(scales, k)
    d = dilation_matrices(scales, k)
    K = d.shape[1]
    # independent oracle: the matrix of psi -> (D_s psi)_s by unit filters, and its least-squares projection
    cols = []
    for e in torch.eye(k * k, dtype=F64):
        f = e.reshape(k, k)
        cols.append(torch.cat([(d[s] @ f @ d[s].T).reshape(-1) for s in range(len(scales))]))
    B = torch.stack(cols, dim=1)                                   # (S K^2, k^2)
    Pd = B @ torch.linalg.pinv(B)
    W = torch.randn(len(scales), 4, 2, K, K, dtype=F64)
    ref = (Pd @ W.permute(1, 2, 0, 3, 4).reshape(8, -1).T).T.reshape(4, 2, len(scales), K, K).permute(2, 0, 1, 3, 4)
    out = P.project(W.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **tol)
    # idempotent, self-adjoint, orthogonal residual; the image is exactly the weight-tied kernels
    torch.testing.assert_close(P.project(out), out, **tol)
    V = torch.randn_like(W).to(dtype)
    assert abs(float((P.project(V) * W.to(dtype)).sum() - (V * out).sum())) < 10 * rt * W.numel()
    tied = P.dilate(torch.randn(4, 2, k, k, dtype=F64).expand(len(scales), 4, 2, k, k))
    torch.testing.assert_close(P.project(tied), tied)


def test_closed_form_defect_matches_the_projector_and_vanishes_for_tied_weights(dtype):
    rt = tolerance(dtype)
    tol = dict(rtol=rt, atol=rt)
    conv = RelaxedScaleConv2d(3, 2, 3, scales=(1.0, 1.5, 2.0, 2.5), num_banks=3, dtype=dtype)
    assert float(conv.projection_defect().detach()) < 1e-6        # starts tied
    with torch.no_grad():
        conv.relaxed_weights.normal_()
    K = conv.kernel()
    direct = torch.linalg.vector_norm(K - conv.projector().project(K))
    torch.testing.assert_close(conv.projection_defect(), direct, **tol)
    assert float(direct) > 1e-2
    strict = RelaxedScaleConv2d(3, 2, 3, num_banks=3, equal_weights=True, dtype=dtype)
    with torch.no_grad():
        strict.relaxed_weights.normal_()
    assert strict.relaxed_weights.shape == (3, 1) and float(strict.projection_defect().detach()) < 1e-6
    assert float(strict.relaxation_penalty()) == 0.0
    with torch.no_grad():
        conv.relaxed_weights.copy_(torch.tensor([[1.0, 2.0, 4.0, 4.0]], dtype=dtype).expand(3, 4))
    assert float(conv.relaxation_penalty()) == pytest.approx(3 * 3.0)  # non-cyclic first differences


def _smooth(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, n // 4, n // 4, generator=g, dtype=F64)
    return F.interpolate(x, size=(n, n), mode="bicubic", align_corners=False)


def test_strict_layers_are_approximately_scale_equivariant_relaxed_ones_are_not():
    """Dilating a smooth input by 2 moves the response from scale 1 to scale 2 (lifting and
    scale-by-scale hidden layer), up to interpolation; unequal combination weights break it."""
    torch.manual_seed(0)
    lift = RelaxedScaleConv2d(2, 3, 3, scales=(1.0, 2.0), num_banks=2, lifting=True, bias=False, dtype=F64)
    hid = RelaxedScaleConv2d(3, 2, 3, scales=(1.0, 2.0), num_banks=2, bias=False, dtype=F64)

    def net(x):
        return hid(torch.relu(lift(x)))

    def err():
        x = _smooth(32)
        x2 = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (L_2 x)
        with torch.no_grad():
            y, y2 = net(x), net(x2)
        y_s1 = y[:, 0::2]                                        # scale 1 of every field
        y2_s2 = y2[:, 1::2]                                      # scale 2 of the dilated input
        ref = F.interpolate(y_s1, scale_factor=2, mode="bilinear", align_corners=False)
        inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))   # away from the zero padding
        return float(torch.linalg.vector_norm((y2_s2 - ref)[inner]) / torch.linalg.vector_norm(ref[inner]))

    strict = err()
    assert strict < 0.1
    with torch.no_grad():
        for m in (lift, hid):
            m.relaxed_weights[:, 1] = torch.tensor([1.8, -0.6], dtype=F64)
    assert err() > 3 * strict and err() > 0.2


@pytest.mark.parametrize("layer", [RelaxedScaleConv2d, RelaxedScaleSteerableConv2d])
def test_projection_penalty_controls_the_defect_of_a_scale_network(layer):
    """Fitting a non-equivariant target: the larger the weight of the projection penalty, the smaller the defect."""
    def train(lam):
        torch.manual_seed(1)
        net = torch.nn.Sequential(layer(1, 2, 3, scales=(1.0, 2.0), lifting=True), torch.nn.ReLU(),
                                  layer(2, 1, 3, scales=(1.0, 2.0)), GroupPool2d(2))
        method = make_method("relaxed", net, lambda_=lam, penalty="projection")
        opt = torch.optim.Adam(net.parameters(), lr=2e-2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 1, 12, 12, generator=g)
        y = torch.roll(x, 1, dims=-1) - 0.5 * x                 # a fine-scale target: pulls the scales apart
        for _ in range(120):
            opt.zero_grad()
            loss = F.mse_loss(net(x), y) + method.penalty()
            loss.backward()
            opt.step()
        rows = method.report()
        assert [r.N for r in rows] == [2, 2]
        return sum(r.defect_norm for r in rows)

    d = [train(lam) for lam in (0.0, 1e-2, 1.0)]
    assert d[0] > 1e-2 and d[0] > d[1] > d[2] and d[2] < 0.2 * d[0]


def test_steerable_scale_layer_with_constant_coefficients_is_the_dilated_filter(dtype):
    rt = tolerance(dtype)
    conv = RelaxedScaleSteerableConv2d(3, 2, 3, scales=(1.0, 1.5, 2.5), dtype=dtype)
    S, Kn = 3, conv.projector().size
    phi = conv.relaxed_weights[..., 0].detach().reshape(2, 3, 3, 3)   # coefficients start equal at every position
    ref = conv.projector().dilate(phi.expand(S, 2, 3, 3, 3))
    torch.testing.assert_close(conv.kernel().detach(), ref, rtol=rt, atol=rt)
    assert float(conv.projection_defect().detach()) < 10 * rt and float(conv.relaxation_penalty().detach()) == 0
    strict = RelaxedScaleSteerableConv2d(3, 2, 3, equal_weights=True, dtype=dtype)
    assert strict.relaxed_weights.shape == (2, 3, 9, 1) and float(strict.projection_defect().detach()) < 10 * rt
    with torch.no_grad():
        conv.relaxed_weights[:, :, :, Kn * (Kn // 2) + Kn // 2] += 1.0  # the centre position only
    K = conv.kernel().detach()
    torch.testing.assert_close(conv.projection_defect().detach(), torch.linalg.vector_norm(K - conv.projector().project(K)),
                               rtol=rt, atol=rt)
    assert float(conv.projection_defect().detach()) > 0.1
    # the same strict family as the banked layer: a tied banked kernel is a fixed point of this projector
    banked = RelaxedScaleConv2d(3, 2, 3, scales=(1.0, 1.5, 2.5), dtype=dtype)
    Kb = banked.kernel().detach()
    torch.testing.assert_close(conv.projector().project(Kb), Kb, rtol=rt, atol=rt)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="RelaxedScaleConv2d: scales must be increasing"):
        RelaxedScaleConv2d(1, 1, 3, scales=(2.0, 1.0))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        RelaxedScaleConv2d(1, 1, 4)
    conv = RelaxedScaleConv2d(2, 3, 3, scales=(1.0, 2.0))
    with pytest.raises(ValueError, match="expected 2 scale fields x 2 scales = 4 input channels, got 3"):
        conv(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="RelaxedScaleSteerableConv2d: expected 4 input channels, got 3"):
        RelaxedScaleSteerableConv2d(4, 1, 3, lifting=True)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="expected kernels"):
        conv.projector().project(torch.randn(3, 1, 1, 7, 7))
