"""escnn as an independent oracle for the steerable subspaces (skipped without escnn).

Run with escnn installed (``pip install -e ".[escnn]"``; escnn needs gfortran and numpy<2):
``python -m pytest tests/test_escnn_oracle.py``.
"""

import numpy as np
import pytest
import torch

escnn = pytest.importorskip("escnn")
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

from equiproj import Projector  # noqa: E402
from equiproj.actions import KernelAction  # noqa: E402
from equiproj.groups import cyclic, so2, so3  # noqa: E402

F64 = torch.float64


def _escnn_span(conv) -> torch.Tensor:
    cols = []
    with torch.no_grad():
        for i in range(conv.weights.numel()):
            conv.weights.zero_()
            conv.weights[i] = 1
            f, _ = conv.expand_parameters()
            cols.append(f.double().reshape(-1))
    U, S, _ = torch.linalg.svd(torch.stack(cols, 1), full_matrices=False)
    return U[:, : int((S > 1e-9 * S[0]).sum())]


def _our_span(rin, rout, ks) -> torch.Tensor:
    P = Projector(KernelAction(rin, rout, ks))
    D = P.total_dim
    I = torch.eye(D, dtype=F64).reshape(D, rout.dim, rin.dim, *ks)
    U, S, _ = torch.linalg.svd(P.project(I).reshape(D, D))
    return U[:, : int((S > 0.5).sum())]


def _same_span(A, B):
    assert A.shape == B.shape, (A.shape, B.shape)
    assert 1 - float(torch.linalg.svdvals(A.T @ B).min()) < 1e-8


@pytest.mark.parametrize("k", [3, 5])
def test_c8_regular_matches_r2conv(k):
    gs = gspaces.rot2dOnR2(8)
    ft = enn.FieldType(gs, [gs.regular_repr])
    E = _escnn_span(enn.R2Conv(ft, ft, kernel_size=k, bias=False))
    _same_span(E, _our_span(cyclic(8).regular(), cyclic(8).regular(), (k, k)))


@pytest.mark.parametrize("ein, eout", [([1], [2]), ([0, 1], [1]), ([2], [0, 3])])
def test_so2_irreps_match_r2conv(ein, eout):
    gs = gspaces.rot2dOnR2(N=-1, maximum_frequency=8)
    conv = enn.R2Conv(enn.FieldType(gs, [gs.irrep(i) for i in ein]), enn.FieldType(gs, [gs.irrep(i) for i in eout]),
                      kernel_size=5, bias=False)
    G = so2()
    rin = sum((G.irrep(i) for i in ein[1:]), G.irrep(ein[0]))
    rout = sum((G.irrep(i) for i in eout[1:]), G.irrep(eout[0]))
    _same_span(_escnn_span(conv), _our_span(rin, rout, (5, 5)))


def _escnn_to_ours(l: int) -> torch.Tensor:
    """Orthogonal T with D_escnn^l(R) T = T D_ours^l(R) (exact quadrature average)."""
    G = so3()
    eso3 = escnn.group.so3_group(6)
    R, w = G.quadrature(2 * l)
    Dours = G.irrep(l)(R, dtype=F64)
    Desc = torch.tensor(np.stack([eso3.irrep(l)(eso3.element(r.numpy(), param="MAT")) for r in R]), dtype=F64)
    X = torch.randn(2 * l + 1, 2 * l + 1, dtype=F64, generator=torch.Generator().manual_seed(l))
    T = torch.einsum("n,nij,jk,nlk->il", w, Desc, X, Dours)
    return T / (T.T @ T).diagonal().mean().sqrt()


@pytest.mark.parametrize("lin, lout", [(1, 1), (0, 2), (2, 1)])
def test_so3_irreps_match_r3conv(lin, lout):
    gs = gspaces.rot3dOnR3(maximum_frequency=4)
    eso3 = gs.fibergroup
    k = 5
    conv = enn.R3Conv(enn.FieldType(gs, [eso3.irrep(lin)]), enn.FieldType(gs, [eso3.irrep(lout)]),
                      kernel_size=k, bias=False)
    E = _escnn_span(conv)
    Q = _our_span(so3().irrep(lin), so3().irrep(lout), (k, k, k))
    Ti, To = _escnn_to_ours(lin), _escnn_to_ours(lout)
    # escnn's irreps differ from e3nn's by the intertwiners T; its voxel frame is ours with the
    # axes reversed and the last one flipped (a proper rotation)
    Qk = Q.T.reshape(-1, 2 * lout + 1, 2 * lin + 1, k, k, k)
    X = torch.einsum("ab,nbcxyz,dc->nadxyz", To, Qk, Ti).permute(0, 1, 2, 5, 4, 3).flip(-1)
    _same_span(E, X.reshape(X.shape[0], -1).T)


# ------------------------------------------------------------------ interop: escnn types in equiproj

from equiproj.interop.escnn import EscnnRepresentation, from_escnn, group_from_escnn  # noqa: E402


def test_group_mapping_and_matrices():
    from escnn import group as eg

    assert group_from_escnn(eg.cyclic_group(8)) == cyclic(8)
    assert group_from_escnn(eg.so3_group(2)) == so3()
    C8 = eg.cyclic_group(8)
    rep = from_escnn(C8.regular_representation)
    assert rep.permutation is not None and rep.group == cyclic(8)
    D = eg.dihedral_group(4)
    rd = from_escnn(D.irrep(1, 1))
    from equiproj.groups import dihedral

    G = dihedral(4)
    assert torch.allclose(rd(G.elements(), dtype=F64), G.standard()(G.elements(), dtype=F64), atol=1e-12)
    S = from_escnn(eg.so3_group(3).irrep(2))
    assert isinstance(S, EscnnRepresentation)
    g = so3().sample(4, generator=torch.Generator().manual_seed(0))
    h = so3().sample(4, generator=torch.Generator().manual_seed(1))
    assert (S(so3().compose(g, h), dtype=F64) - S(g, dtype=F64) @ S(h, dtype=F64)).abs().max() < 1e-10
    assert [p.label for p in S.isotypic().irreps] == [2]


def test_field_types_drive_our_layers_and_match_escnn():
    gs = gspaces.rot2dOnR2(8)
    ft_in = enn.FieldType(gs, [gs.regular_repr, gs.irrep(1)])
    ft_out = enn.FieldType(gs, [gs.regular_repr])
    E = _escnn_span(enn.R2Conv(ft_in, ft_out, kernel_size=5, bias=False))
    _same_span(E, _our_span(from_escnn(ft_in), from_escnn(ft_out), (5, 5)))


def test_so3_field_types_in_escnn_basis():
    gs = gspaces.rot3dOnR3(maximum_frequency=4)
    ir = gs.fibergroup.irrep
    ft_in, ft_out = enn.FieldType(gs, [ir(1)]), enn.FieldType(gs, [ir(0), ir(2)])
    k = 3
    E = _escnn_span(enn.R3Conv(ft_in, ft_out, kernel_size=k, bias=False))
    Q = _our_span(from_escnn(ft_in), from_escnn(ft_out), (k, k, k))
    X = Q.T.reshape(-1, 6, 3, k, k, k).permute(0, 1, 2, 5, 4, 3).flip(-1)  # escnn's voxel frame
    _same_span(E, X.reshape(X.shape[0], -1).T)
