"""Nonlinearities that commute with the group action (private module).

* Pointwise functions commute with permutation representations (regular fields, S_n).
* A norm nonlinearity rescales every field by a function of its norm; the norm of a field is
  invariant for any orthogonal representation.
* A gated nonlinearity multiplies every field by a function of its own invariant gate scalar.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..actions import FieldLayout
from ..groups import Representation

__all__ = ["PointwiseNonlinearity", "NormNonlinearity", "GatedNonlinearity", "TensorSquare"]


def _acts_by_permutation(rep: Representation) -> bool:
    if rep.permutation is not None:
        return True
    return all(f.is_trivial() for f in rep.fields)


class PointwiseNonlinearity(nn.Module):
    """``x -> fn(x)`` elementwise, allowed only on permutation (or trivial) representations.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.nn import PointwiseNonlinearity
    >>> act = PointwiseNonlinearity(3 * cyclic(4).regular())
    >>> act(torch.tensor([[-1.0, 2.0] * 6])).tolist()[0][:2]
    [0.0, 2.0]
    """

    def __init__(self, rep: Representation, fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu):
        super().__init__()
        if not _acts_by_permutation(rep):
            raise ValueError(
                f"a pointwise nonlinearity commutes only with permutation representations, but {rep.name} of "
                f"{rep.group.name} is not one: use NormNonlinearity or GatedNonlinearity"
            )
        self.rep, self.fn = rep, fn

    def forward(self, x):
        return self.fn(x)


class NormNonlinearity(nn.Module):
    r"""Per field ``f``: ``x_f -> x_f * fn(||x_f|| + b_f)`` with a learnable bias ``b_f``.

    Equivariant for any orthogonal representation, because ``||rho(g) x_f|| = ||x_f||``.
    """

    def __init__(self, rep: Representation, fn: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
                 bias: bool = True, eps: float = 1e-12):
        super().__init__()
        self.rep, self.fn, self.eps = rep, fn, eps
        self.layout = FieldLayout.of(rep)
        n_fields = sum(self.layout.counts)
        self.bias = nn.Parameter(torch.zeros(n_fields)) if bias else None
        if self.layout.perm is not None:
            self.register_buffer("perm", self.layout.perm, persistent=False)
            self.register_buffer("inverse", self.layout.inverse, persistent=False)
        else:
            self.perm = self.inverse = None

    def forward(self, x):
        if x.shape[-1] != self.rep.dim:
            raise ValueError(f"NormNonlinearity expects last dimension {self.rep.dim}, got {x.shape[-1]}")
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        outs, f0 = [], 0
        for sl, n, d in zip(self.layout.slices, self.layout.counts, self.layout.dims):
            v = x[..., sl].reshape(*x.shape[:-1], n, d)
            r = torch.linalg.vector_norm(v, dim=-1)
            if self.bias is not None:
                r = r + self.bias[f0:f0 + n]
            outs.append((v * self.fn(r)[..., None]).reshape(*x.shape[:-1], n * d))
            f0 += n
        y = torch.cat(outs, dim=-1)
        return y.index_select(-1, self.inverse) if self.inverse is not None else y


class GatedNonlinearity(nn.Module):
    r"""Gated nonlinearity: scalars through ``scalar_fn``, every gated field times ``gate_fn(gate)``.

    The input carries ``in_rep = n_scalars * trivial + n_gates * trivial + gated``, with one
    gate per field of ``gated``; the output carries ``out_rep = n_scalars * trivial + gated``.
    Build the preceding layer with ``RepLinear(..., gate.in_rep)``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import so3
    >>> from equiproj.nn import GatedNonlinearity
    >>> G = so3()
    >>> gate = GatedNonlinearity(2 * G.standard(), n_scalars=3)
    >>> gate.in_rep.dim, gate.out_rep.dim
    (11, 9)
    """

    def __init__(self, gated: Representation, n_scalars: int = 0,
                 scalar_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
                 gate_fn: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid):
        super().__init__()
        G = gated.group
        self.gated, self.n_scalars = gated, int(n_scalars)
        self.scalar_fn, self.gate_fn = scalar_fn, gate_fn
        fields = gated.fields
        self.n_gates = len(fields)
        sizes = torch.tensor([f.dim for f in fields])
        self.register_buffer("gate_index", torch.repeat_interleave(torch.arange(self.n_gates), sizes),
                             persistent=False)
        triv = G.trivial()
        parts = ([self.n_scalars * triv] if self.n_scalars else []) + [self.n_gates * triv, gated]
        self.in_rep = parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])
        self.out_rep = (self.n_scalars * triv + gated) if self.n_scalars else gated

    def forward(self, x):
        if x.shape[-1] != self.in_rep.dim:
            raise ValueError(f"GatedNonlinearity expects last dimension {self.in_rep.dim}, got {x.shape[-1]}")
        s, g, v = torch.split(x, [self.n_scalars, self.n_gates, self.gated.dim], dim=-1)
        gates = self.gate_fn(g).index_select(-1, self.gate_index)
        return torch.cat([self.scalar_fn(s), v * gates], dim=-1)


class TensorSquare(nn.Module):
    r"""``x -> x (x) x``: an equivariant quadratic map from ``rep`` to ``rep * rep``.

    For orthogonal ``rho``, ``(rho(g) x) (x) (rho(g) x) = (rho(g) (x) rho(g)) (x (x) x)``, so the map
    commutes with the action; followed by a linear layer from ``out_rep`` it yields inner
    products, outer products and other bilinear features (as in EMLP's bilinear layers).

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import so3
    >>> sq = TensorSquare(so3().standard())
    >>> sq.out_rep.dim, sq(torch.ones(2, 3)).shape
    (9, torch.Size([2, 9]))
    """

    def __init__(self, rep: Representation):
        super().__init__()
        self.rep = rep
        self.out_rep = rep * rep

    def forward(self, x):
        if x.shape[-1] != self.rep.dim:
            raise ValueError(f"TensorSquare expects last dimension {self.rep.dim}, got {x.shape[-1]}")
        return (x[..., :, None] * x[..., None, :]).flatten(-2)
