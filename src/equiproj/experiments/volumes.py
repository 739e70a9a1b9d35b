r"""Experiment 'volumes': SO(3) / O(3) classification of 3D shape volumes (the paper's section 4.4).

Data: :mod:`equiproj.data.volumes` (rendered shapes with a canonical pose or uniform rotations,
a rod pair separable only by orientation, a mirror-helix pair; ``docs/data/volumes.md``).

Model: :class:`ResNet3d`, the 3D ResNet of Berndt and Stühmer (2026, section 4.4; their
``network_new.py``), scaled by a width ``c`` (fields per layer) and a band limit ``L``:

* block 1: conv k7 (``c`` fields) -> conv k5 (``2c``), skip conv k7; anti-aliased average
  pooling with stride 2;
* block 2: conv k3 stride 2 (``4c``) -> average pooling k5 stride 2 -> conv k3 stride 2
  (``6c``), skip: average pooling twice and conv k3 stride 2;
* block 3: conv k3 (``6c``) -> average pooling k3 -> 1x1 conv to ``8c`` trivial channels, skip
  conv k3;
* global average pooling, BatchNorm1d -> ELU -> Linear.

Every convolution is a :class:`equiproj.nn.RepConv3d` declared for SO(3) or O(3) (9 penalised
layers, as in the paper). A field is gated: irreps of degree ``0..L`` (for O(3) with the
natural parity ``(-1)^l``) plus one gate scalar per non-trivial irrep. Two variants
(``norm=...``):

* ``"field"`` (default, the strict model needs it): :class:`equiproj.nn.FieldBatchNorm`
  (per-channel on scalars and gates, norm-based on the irreps), ELU on the scalars, sigmoid
  gates on the irreps (:class:`equiproj.nn.GatedNonlinearity`). With ``P(W) = W`` in every layer
  the network is exactly invariant under the 24 rotations of the cube (and, for O(3), the 48
  of the full octahedral group), which map the grid onto itself, and approximately under all of
  SO(3) / O(3) (the steerable kernels are sampled on the grid).
* ``"channel"`` (the paper's code): ``nn.BatchNorm3d`` and ELU on every channel, gates used as
  ordinary channels. Per-channel normalisation and pointwise ELU on non-trivial fields are not
  equivariant, so this network is not invariant even when ``P(W) = W``.

Deviation from the paper: the input is resized to ``2^m + 1`` voxels per side (17 for 16^3, 33 for
28^3 and 32^3, or ``resize=...``) rather than 29, so that every stride-2 step sees an odd size and
samples a grid that is symmetric about the centre; with 29 the third stride-2 step (on 8 voxels)
breaks the cube symmetry.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from ..groups import o3, so3  # noqa: F401  (o3: for users of gated_field)
from ..nn import FieldBatchNorm, GatedNonlinearity, RepConv3d

__all__ = ["ResNet3d", "gated_field", "odd_size"]


def gated_field(group, L: int):
    """The gated field type of ``group`` (SO(3) or O(3)) up to degree ``L``: ``(scalars, gated)``,
    one trivial scalar and the irreps of degree ``1..L`` (for O(3) of parity ``(-1)^l``).

    >>> s, g = gated_field(so3(), 3)
    >>> s.dim, g.dim, len(g.fields)
    (1, 15, 3)
    """
    if L < 1:
        raise ValueError(f"the band limit L of the gated fields must be >= 1, got {L}")
    if group.name == "SO(3)":
        irr = [group.irrep(l) for l in range(1, L + 1)]
    elif group.name == "O(3)":
        irr = [group.irrep(l, (-1) ** l) for l in range(1, L + 1)]
    else:
        raise ValueError(f"ResNet3d is declared for SO(3) or O(3), got {group.name}")
    gated = irr[0] if len(irr) == 1 else sum(irr[1:], irr[0])
    return group.trivial(), gated


def odd_size(n: int) -> int:
    """The smallest ``2^m + 1 >= max(n, 17)``: each of the network's four stride-2 steps then
    halves an odd size (17 -> 9 -> 5 -> 3 -> 2)."""
    m = max(4, math.ceil(math.log2(max(n - 1, 1))))
    return 2 ** m + 1


def _check_resize(n: int) -> None:
    sizes = [n]
    for _ in range(3):
        sizes.append((sizes[-1] + 1) // 2)
    if any(s % 2 == 0 for s in sizes):
        raise ValueError(f"ResNet3d: resize={n} gives the sizes {sizes} before its four stride-2 steps; they must "
                         f"all be odd for the cube rotations to act on every grid (use 2^m + 1 >= 17, e.g. "
                         f"{odd_size(n)})")


def _avg_pool(x: torch.Tensor, k: int, stride: int = 1) -> torch.Tensor:
    """``k^3`` average pooling with padding ``k // 2`` that averages over the voxels inside the
    grid only (symmetric about the centre, and defined on grids smaller than the kernel)."""
    pad = (k // 2,) * 6
    ones = x.new_ones((1, 1) + tuple(x.shape[2:]))
    num = nn.functional.avg_pool3d(nn.functional.pad(x, pad), k, stride=stride)
    den = nn.functional.avg_pool3d(nn.functional.pad(ones, pad), k, stride=stride)
    return num / den


class _Unit(nn.Module):
    """conv -> norm -> nonlinearity -> dropout, on representations (the output carries ``out_rep``)."""

    def __init__(self, conv: RepConv3d, gate: Optional[GatedNonlinearity], norm: str, dropout: float):
        super().__init__()
        self.conv, self.gate, self.kind = conv, gate, norm
        rep = conv.out_rep
        self.norm = FieldBatchNorm(rep) if norm == "field" else nn.BatchNorm3d(rep.dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_rep = gate.out_rep if (gate is not None and norm == "field") else rep

    def forward(self, x):
        h = self.norm(self.conv(x))
        if self.kind == "field":
            if self.gate is not None:
                h = self.gate(h.movedim(1, -1)).movedim(-1, 1)
            else:
                h = nn.functional.elu(h)
        else:
            h = nn.functional.elu(h)
        return self.drop(h)


class ResNet3d(nn.Module):
    r"""The paper's 3D ResNet on SO(3) / O(3) gated fields (see the module docstring).

    Parameters
    ----------
    n_classes : int
    group : SO3 or O3
    width : int
        ``c``: fields of the first convolution (then ``2c, 4c, 6c, 6c`` and ``8c`` trivial channels).
    L : int
        Band limit of the gated fields (the paper: 3 for SO(3), 2 for O(3)).
    norm : {"field", "channel"}
        Equivariant normalisation and gates, or per-channel BatchNorm3d and ELU (the paper's code).
    kernels : sequence of 3 ints
        Kernel sizes of block 1 (main, second, skip); the paper's ``(7, 5, 7)``.
    input_size : int
        Side of the input volumes; resized (trilinear, corners aligned) to ``resize``.
    resize : int, optional
        Default :func:`odd_size` of ``input_size``.
    dropout : float
        After every unit (training mode only; elementwise, so not equivariant while training).
    equivariant : bool
        Constrain every convolution to its equivariant subspace (the strict model).

    Examples
    --------
    >>> net = ResNet3d(3, so3(), width=1, L=1, kernels=(3, 3, 3), input_size=8)
    >>> net.eval()(torch.randn(2, 1, 8, 8, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, n_classes: int, group=None, width: int = 2, L: int = 3, norm: str = "field",
                 kernels=(7, 5, 7), input_size: int = 28, resize: Optional[int] = None, dropout: float = 0.0,
                 equivariant: bool = False):
        super().__init__()
        group = so3() if group is None else group
        if norm not in ("field", "channel"):
            raise ValueError(f"ResNet3d: norm must be 'field' or 'channel', got {norm!r}")
        if width < 1:
            raise ValueError(f"ResNet3d: width must be >= 1, got {width}")
        k1, k2, k3 = (int(k) for k in kernels)
        if any(k % 2 == 0 for k in (k1, k2, k3)):
            raise ValueError(f"ResNet3d: kernel sizes must be odd (centred kernels), got {tuple(kernels)}")
        self.group, self.width, self.L, self.norm_kind = group, int(width), int(L), norm
        self.input_size = int(input_size)
        self.resize = odd_size(self.input_size) if resize is None else int(resize)
        _check_resize(self.resize)
        scal, gated = gated_field(group, L)
        triv = group.trivial()
        kw = dict(equivariant=equivariant)

        def gate_for(c: int) -> GatedNonlinearity:
            return GatedNonlinearity(c * gated, n_scalars=c, scalar_fn=nn.functional.elu)

        def unit(rep_in, c: int, k: int, stride: int = 1, trivial_out: bool = False) -> _Unit:
            if trivial_out:
                conv = RepConv3d(rep_in, c * triv, k, stride=stride, padding=k // 2, **kw)
                return _Unit(conv, None, norm, dropout)
            gate = gate_for(c)
            conv = RepConv3d(rep_in, gate.in_rep, k, stride=stride, padding=k // 2, **kw)
            return _Unit(conv, gate, norm, dropout)

        def out_rep_of(c: int):
            """What a unit with ``c`` gated fields outputs (the skip convolutions' output)."""
            g = gate_for(c)
            return g.out_rep if norm == "field" else g.in_rep

        c = self.width
        r0 = triv
        self.b1_main = nn.ModuleList([unit(r0, c, k1)])
        self.b1_main.append(unit(self.b1_main[0].out_rep, 2 * c, k2))
        self.b1_skip = RepConv3d(r0, out_rep_of(2 * c), k3, padding=k3 // 2, **kw)
        r1 = out_rep_of(2 * c)
        self.b2_a = unit(r1, 4 * c, 3, stride=2)
        self.b2_b = unit(self.b2_a.out_rep, 6 * c, 3, stride=2)
        self.b2_skip = RepConv3d(r1, out_rep_of(6 * c), 3, stride=2, padding=1, **kw)
        r2 = out_rep_of(6 * c)
        self.b3_a = unit(r2, 6 * c, 3)
        self.b3_b = unit(self.b3_a.out_rep, 8 * c, 1, trivial_out=True)
        self.b3_skip = RepConv3d(r2, 8 * c * triv, 3, padding=1, **kw)
        self.head_norm = nn.BatchNorm1d(8 * c)
        self.head = nn.Linear(8 * c, n_classes)

    def convolutions(self) -> List[RepConv3d]:
        return [m for m in self.modules() if isinstance(m, RepConv3d)]

    def forward(self, x):
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"ResNet3d expects volumes of shape (B, 1, D, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != (self.resize,) * 3:
            x = nn.functional.interpolate(x, size=(self.resize,) * 3, mode="trilinear", align_corners=True)
        h = x
        for u in self.b1_main:
            h = u(h)
        h = _avg_pool(h + self.b1_skip(x), 3, 2)
        s = self.b2_skip(_avg_pool(_avg_pool(h, 3, 2), 3, 2))
        h = self.b2_b(_avg_pool(self.b2_a(h), 5, 2))
        h = h + s
        s = self.b3_skip(h)
        h = self.b3_b(_avg_pool(self.b3_a(h), 3)) + s
        z = h.mean(dim=(-3, -2, -1))
        return self.head(nn.functional.elu(self.head_norm(z)))
