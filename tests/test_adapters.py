"""Layer adapters: Conv1d, ConvTranspose1d, MultiheadAttention's in_proj_weight, a user-registered type."""

import pytest
import torch
from torch import nn

from equiproj import ProjectionRegulariser, constrain_, declare, project_, report, split_, unconstrain_
from equiproj.actions import (ADAPTERS, HomAction, LayerAdapter, adapter_for, feature_map_action, register_adapter,
                              supported_types)
from equiproj.groups import cyclic, finite_group
from equiproj.testing import assert_equivariant


def flip1d():
    """The reflection x -> -x of the line: a group whose defining representation is 1 x 1."""
    return finite_group([torch.tensor([[-1.0]])], name="Flip1")


@pytest.mark.parametrize("kind", ["conv", "tconv"])
def test_conv1d_layers_are_equivariant_after_projection(kind, dtype):
    G = flip1d()
    rin, rout = G.regular() + G.trivial(), 2 * G.regular()
    torch.manual_seed(0)
    if kind == "conv":
        layer = nn.Conv1d(rin.dim, rout.dim, 5, padding=2)
    else:
        layer = nn.ConvTranspose1d(rin.dim, rout.dim, 3, padding=1)
    layer = layer.to(dtype)
    declare(layer, rin, rout)
    x = torch.randn(3, rin.dim, 11, dtype=dtype)
    before = assert_equivariant(layer, x, feature_map_action(rin), feature_map_action(rout), raise_error=False)
    assert not before.passed
    project_(layer)
    assert_equivariant(layer, x, feature_map_action(rin), feature_map_action(rout))
    assert report(layer)[0].relative_defect < 1e-6


def test_conv_transpose1d_bias_on_the_columns_side():
    G = flip1d()
    layer = nn.ConvTranspose1d(G.regular().dim, G.regular().dim, 3)
    declare(layer, G.regular(), G.regular())
    A = layer.equiproj_spec.projector.action
    assert A.bias_on_rows is False and A.bias_rep.dim == 2


def _attention(E=8, heads=2, per_head=True, seed=0, dtype=torch.float64):
    G = cyclic(4)
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, heads, batch_first=True).to(dtype)
    emb = (E // 4) * G.regular()
    head = ((E // heads) // 4) * G.regular()
    declare(mha, emb, head if per_head else heads * head)
    declare(mha.out_proj, heads * head, emb)
    return mha, emb


@pytest.mark.parametrize("per_head", [True, False], ids=["per-head", "whole"])
def test_multihead_attention_in_proj_is_declared_and_projected(per_head, dtype):
    mha, emb = _attention(per_head=per_head, dtype=dtype)
    spec = mha.equiproj_spec
    assert spec.weight_name == "in_proj_weight" and spec.bias_name == "in_proj_bias"
    assert spec.projector.action.weight_shape == (24, 8)
    f = lambda x: mha(x, x, x, need_weights=False)[0]  # noqa: E731
    x = torch.randn(2, 5, 8, dtype=dtype)
    assert not assert_equivariant(f, x, emb, emb, raise_error=False).passed
    reg = ProjectionRegulariser(mha, lambda_perp=1.0, scheme="penalty")
    assert float(reg()) > 0.1
    project_(mha)
    assert float(reg()) < 1e-5
    assert_equivariant(f, x, emb, emb)


def test_multihead_attention_constrain_split_and_errors():
    mha, emb = _attention()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    f = lambda x: mha(x, x, x, need_weights=False)[0]  # noqa: E731
    constrain_(mha)
    assert_equivariant(f, x, emb, emb)
    unconstrain_(mha)
    split_(mha)
    assert any("in_proj_weight.original1" in n for n, _ in mha.named_parameters())
    bad = nn.MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match="embed_dim / num_heads = 4"):
        declare(bad, emb, cyclic(4).trivial() + cyclic(4).trivial())
    with pytest.raises(ValueError, match="kdim/vdim"):
        declare(nn.MultiheadAttention(8, 2, kdim=4, vdim=4), emb, emb)


@pytest.mark.parametrize("method", ["rpp", "per", "weight-sample"])
def test_weight_based_baselines_use_the_adapters_tensor_names(method):
    """RPP, PER and weight-sample read the layer's declared tensors through its adapter, so
    nn.MultiheadAttention's in_proj_weight / in_proj_bias work like any weight."""
    from equiproj.baselines import make_method

    mha, emb = _attention()
    model = nn.Sequential(mha.out_proj)  # a container holding both declared layers
    model.add_module("attn", mha)
    opts = {"rpp": {"lambda_free": 1.0}, "per": {"lambda_": 1.0}, "weight-sample": {"lambda_": 1.0, "k": 3}}[method]
    m = make_method(method, model, init="keep", **opts)
    first = float(m.penalty().detach())
    if method == "rpp":  # the free paths start at zero on the in_proj tensors too
        names = {n for n, _ in mha.named_parameters()}
        assert "parametrizations.in_proj_weight.original" in names and "parametrizations.in_proj_bias.original" in names
        free = m.free_parameters()
        assert len(free) == 4 and float(m.free_sq()) == 0 and first > 0  # both layers; the broad prior on P(A)
        with torch.no_grad():
            for p in free:
                p.add_(0.1)
        assert float(m.free_sq().detach()) == pytest.approx(0.01 * sum(p.numel() for p in free))
    else:
        assert first > 1e-3  # random weights are not equivariant
        project_(model)
        assert float(m.penalty().detach()) < 1e-10 * max(first, 1.0)
    f = lambda x: mha(x, x, x, need_weights=False)[0]  # noqa: E731
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.isfinite(f(x)).all()


def test_a_new_layer_type_is_one_adapter():
    class Dense(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.w = nn.Parameter(torch.randn(n_out, n_in, dtype=torch.float64))
            self.b = nn.Parameter(torch.randn(n_out, dtype=torch.float64))

        def forward(self, x):
            return x @ self.w.T + self.b

    class DenseAdapter(LayerAdapter):
        types = (Dense,)
        weight_name, bias_name = "w", "b"

        def channels(self, m):
            return m.w.shape[1], m.w.shape[0]

        def action(self, m, in_rep, out_rep, name, **options):
            self.check(m, in_rep, out_rep, name)
            return HomAction(in_rep, out_rep)

    adapter = register_adapter(DenseAdapter())
    try:
        G = cyclic(4)
        layer = Dense(4, 8)
        assert Dense in supported_types() and adapter_for(layer) is adapter
        declare(layer, G.regular(), 2 * G.regular())
        reg = ProjectionRegulariser(layer, lambda_perp=1.0)  # default split scheme: parametrises w and b
        assert float(reg()) > 0
        project_(layer)
        assert_equivariant(layer, torch.randn(3, 4, dtype=torch.float64), G.regular(), 2 * G.regular())
        with pytest.raises(ValueError, match="in_rep dimension 8 does not match in_channels 4"):
            declare(Dense(4, 8), 2 * G.regular(), 2 * G.regular())
    finally:
        ADAPTERS.remove(adapter)


def test_unsupported_type_names_the_supported_ones():
    with pytest.raises(TypeError, match="Conv1d.*MultiheadAttention|MultiheadAttention.*Conv1d"):
        declare(nn.GRU(4, 4), cyclic(4).regular(), cyclic(4).regular())
