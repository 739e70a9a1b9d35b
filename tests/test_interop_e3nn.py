"""e3nn interop: irreps strings, layout and basis against e3nn itself; elements from matrices."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from e3nn import o3 as e3o3
from torch import nn

import equiproj
from equiproj import LinearProjector
from equiproj.groups import cyclic, dihedral, o2, o3, so2, so3
from equiproj.interop.e3nn import from_e3nn, to_e3nn

F64 = torch.float64


@contextlib.contextmanager
def default_float64():
    """e3nn computes Wigner matrices and weights in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _rotations(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = so3().sample(n, generator=g)
    # near e3nn's poles (rotations about y, where its Euler angles degenerate) and exact quarter turns
    t = torch.tensor([0.0, 1e-9, 1e-4, math.pi / 2, math.pi - 1e-7], dtype=F64)
    c, s, z, o = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    Ry = torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)
    return torch.cat([R, Ry])


IRREPS = "2x1o + 3x0e + 2e + 1x3o + 4o + 0o + 1e + 2x4e"


@pytest.mark.parametrize("l", range(5))
def test_irreps_match_e3nn_D_from_matrix(l):
    R = _rotations()
    G = o3()
    with default_float64():
        for p in (1, -1):
            for sign in (1.0, -1.0):
                Rs = sign * R
                ours = G.irrep(l, p)(G.elements_from_matrices(Rs))
                ref = e3o3.Irrep(l, p).D_from_matrix(Rs)
                assert ours.dtype == F64
                assert (ours - ref).abs().max().item() < 1e-10
        ours = so3().irrep(l)(so3().elements_from_matrices(R))
        assert (ours - e3o3.Irrep(l, (-1) ** l).D_from_matrix(R)).abs().max().item() < 1e-10


def test_from_e3nn_layout_and_order():
    R = _rotations(10)
    rep = from_e3nn(IRREPS, o3())
    with default_float64():
        ref = e3o3.Irreps(IRREPS).D_from_matrix(R)
        assert rep.dim == e3o3.Irreps(IRREPS).dim
        torch.testing.assert_close(rep(o3().elements_from_matrices(R)), ref, rtol=0, atol=1e-10)
        # SO(3) drops the parities; the layout is the same
        rot = from_e3nn(IRREPS, so3())
        assert rot == from_e3nn("2x1e + 3x0e + 2e + 3e + 4e + 0e + 1e + 2x4e", so3())
        torch.testing.assert_close(rot(R), ref, rtol=0, atol=1e-10)
    # Irreps and Irrep objects
    assert from_e3nn(e3o3.Irreps("4x0e + 2x1o")) == 4 * o3().trivial() + 2 * o3().irrep(1, -1)
    assert from_e3nn(e3o3.Irrep("1o"), so3()) == so3().irrep(1)
    assert from_e3nn("0x0e + 2x1o") == 2 * o3().irrep(1, -1)


def test_to_e3nn_round_trip_and_errors():
    assert to_e3nn(from_e3nn(IRREPS, o3())) == e3o3.Irreps(IRREPS)
    S = so3()
    assert str(to_e3nn(S.trivial() + 2 * S.irrep(1) + S.irrep(1) + S.irrep(3))) == "1x0e+3x1o+1x3o"
    with pytest.raises(ValueError, match="not an irrep of SO\\(3\\) in e3nn's basis"):
        to_e3nn(S.standard() * S.standard())
    with pytest.raises(ValueError, match="so3\\(\\) or o3\\(\\)"):
        to_e3nn(cyclic(4).regular())
    with pytest.raises(ValueError, match="not an e3nn irreps string"):
        from_e3nn("4x0q")
    with pytest.raises(TypeError, match="not of 'C4'"):
        from_e3nn("1o", cyclic(4))
    with pytest.raises(ValueError, match="dimension 0"):
        from_e3nn("0x1o")
    with pytest.raises(TypeError, match="from_e3nn\\('4x0e \\+ 2x1o', o\\(3\\)\\(\\)\\)"):
        o3().irreps("4x0e + 2x1o")


def test_e3nn_features_go_through_unchanged():
    """An e3nn equivariant linear map is equivariant for equiproj, and e3nn's spherical harmonics
    transform by from_e3nn's matrices."""
    ir_in, ir_out = "4x0e + 2x1o + 1x2e + 1o", "2x0e + 3x1o + 2e + 0o"
    with default_float64():
        torch.manual_seed(0)
        lin = e3o3.Linear(ir_in, ir_out)
        rin, rout = from_e3nn(ir_in), from_e3nn(ir_out)
        W = lin(torch.eye(rin.dim)).T  # (out, in) in e3nn's layout
        P = LinearProjector(rin, rout, route="spectral")
        assert (P.project(W) - W).abs().max().item() < 1e-10
        assert P.dim == lin.weight.numel()  # e3nn's free parameters span Hom_G exactly
        x = torch.randn(7, 3)
        R = _rotations(5)
        sh = e3o3.Irreps.spherical_harmonics(4)
        rep = from_e3nn(sh)
        Y = e3o3.spherical_harmonics(sh, x, normalize=True)
        for Rk in R:
            Y_rot = e3o3.spherical_harmonics(sh, x @ Rk.T, normalize=True)
            D = rep(o3().elements_from_matrices(Rk[None]))[0]
            assert (Y_rot - Y @ D.T).abs().max().item() < 1e-10


def test_declare_accepts_e3nn_strings():
    layer = nn.Linear(10, 6)
    equiproj.declare(layer, "4x0e + 2x1o", "3x0e + 1x1o")
    spec = getattr(layer, equiproj.regularise.SPEC_ATTR)
    assert spec.group == o3() and spec.projector.action.in_rep == from_e3nn("4x0e + 2x1o")
    # the other argument's group decides
    layer = nn.Linear(3, 4)
    equiproj.declare(layer, so3().irrep(1), "1x0e + 1x1o")
    assert getattr(layer, equiproj.regularise.SPEC_ATTR).group == so3()
    mlp = nn.Sequential(nn.Linear(3, 16), nn.Linear(16, 1))
    declared = equiproj.declare_model(mlp, so3(), in_rep="1o", hidden="4x0e + 4x1o", out_rep="0e")
    assert [(n, i, o) for n, i, o in declared] == [("0", so3().irrep(1), 4 * so3().trivial() + 4 * so3().irrep(1)),
                                                  ("1", 4 * so3().trivial() + 4 * so3().irrep(1), so3().trivial())]
    mlp = nn.Sequential(nn.Linear(3, 4))
    equiproj.declare_model(mlp, o3(), hidden="0e", layers={"0": ("1o", "1x0e + 1x1e")})
    assert getattr(mlp[0], equiproj.regularise.SPEC_ATTR).projector.action.out_rep == o3().trivial() + o3().irrep(1, 1)
    with pytest.raises(TypeError, match="describes a representation of SO\\(3\\) or O\\(3\\), but the group is C4"):
        equiproj.declare_model(nn.Sequential(nn.Linear(4, 4)), cyclic(4), in_rep="4x0e")
    with pytest.raises(TypeError, match="an e3nn irreps string such as"):
        equiproj.declare(nn.Linear(3, 3), 3, "1o")


def test_elements_from_matrices():
    # SO(3), O(3): the matrices themselves, checked, in their dtype
    R = so3().sample(5, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert torch.equal(so3().elements_from_matrices(R), R)
    with pytest.raises(ValueError, match="determinant"):
        so3().elements_from_matrices(-R)
    assert o3().elements_from_matrices(-R).shape == (5, 3, 3)
    with pytest.raises(ValueError, match="orthogonal"):
        o3().elements_from_matrices(1.01 * R)
    # SO(2), O(2) and finite groups: back to their own encodings
    for G in (so2(), o2(), cyclic(4), dihedral(3)):
        g = G.elements() if G.is_finite else G.sample(6, generator=torch.Generator().manual_seed(2))
        M = G.standard()(g, dtype=F64)
        back = G.elements_from_matrices(M)
        torch.testing.assert_close(G.standard()(back, dtype=F64), M, rtol=0, atol=1e-12)
        if G.is_finite:
            assert torch.equal(back, g)
    with pytest.raises(ValueError, match="determinant \\+1"):
        so2().elements_from_matrices(torch.diag(torch.tensor([1.0, -1.0]))[None])
    with pytest.raises(ValueError, match="not the defining matrix of an element of C4"):
        cyclic(4).elements_from_matrices(so2().standard()(torch.tensor([0.3]), dtype=F64))
