r"""Relaxed group convolutions for C_N (Wang, Walters, Yu 2022) (private module).

Feature maps on the group (regular fields) carry ``C * N`` channels, field-major: channel
``c * N + h`` is field ``c`` at rotation ``h`` (the layout of ``C * cyclic(N).regular()`` in
:mod:`equiproj.groups`), so :func:`equiproj.transform_feature_map` with that representation is
the group action on them: ``(r . f)[c, h](x) = f[c, h - r](r^{-1} x)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..actions import KernelAction, transform_feature_map
from ..groups import Representation, cyclic
from ..projection import Projector
from ._base import Method, register_method
from ._relaxed_scale import RelaxedScaleConv2d, RelaxedScaleSteerableConv2d
from ._util import check_options, nonneg_float

__all__ = ["RelaxedLiftingConv2d", "RelaxedGroupConv2d", "RelaxedSteerableConv2d", "GroupPool2d", "relaxed_cnn",
           "rotate_kernels", "RelaxedMethod", "RelaxedLayerReport"]


def rotate_kernels(K: torch.Tensor, r: int, N: int, mode: str = "bilinear") -> torch.Tensor:
    """``K(g_r^{-1} x)``: spatial rotation by ``2 pi r / N`` of kernels ``(..., k, k)``.

    Exact (``torch.rot90``) when the rotation maps the grid onto itself (``4 r / N`` an integer);
    otherwise bilinear interpolation about the kernel centre with zeros outside
    (:func:`equiproj.transform_feature_map`), so equivariance then holds only up to
    discretisation.
    """
    r = r % N
    if (4 * r) % N == 0:
        return torch.rot90(K, 4 * r // N, dims=(-2, -1))
    shape = K.shape
    G = cyclic(N)
    flat = K.reshape(-1, 1, *shape[-2:])
    return transform_feature_map(flat, r, G.trivial(), mode=mode).reshape(shape)


class _RelaxedConv(nn.Module):
    """Common part: relaxed combination weights ``w_l(h)`` and the relaxation penalty."""

    def _init_common(self, in_channels, out_channels, kernel_size, N, num_banks, stride, padding, dilation,
                     bias, equal_weights, mode, dtype, device):
        for nm, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size),
                      ("N", N), ("num_banks", num_banks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: {nm} must be a positive integer, got {v!r}")
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"{type(self).__name__}: mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.N, self.num_banks = N, num_banks
        self.stride, self.padding, self.dilation, self.mode = stride, padding, dilation, mode
        self.equal_weights = bool(equal_weights)
        self.group = cyclic(N)
        self.exact = (4 % N == 0)  # N in {1, 2, 4}: every rotation maps the grid onto itself
        #: combination weights w_l(h): (L, N), or (L, 1) shared by all h when equal_weights
        self.relaxed_weights = nn.Parameter(torch.ones(num_banks, 1 if equal_weights else N, dtype=dtype,
                                                       device=device))
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device)) if bias else None

    def _weights(self) -> torch.Tensor:
        return self.relaxed_weights.expand(self.num_banks, self.N)

    def relaxation_penalty(self, norm: str = "l1") -> torch.Tensor:
        r"""``sum_l sum_h |w_l(h) - w_l(h - 1)|`` (``'l1'``) or its squares (``'l2'``), ``h`` cyclic:
        zero exactly when every ``w_l`` is the same for all rotations."""
        w = self.relaxed_weights
        if w.shape[1] == 1:
            return w.sum() * 0
        d = w - torch.roll(w, 1, dims=1)
        if norm == "l1":
            return d.abs().sum()
        if norm == "l2":
            return d.pow(2).sum()
        raise ValueError(f"relaxation penalty norm must be 'l1' or 'l2', got {norm!r}")

    def projection_defect(self) -> torch.Tensor:
        r"""``||K - P(K)||_F`` for the materialised kernel ``K`` (:meth:`kernel`), in closed form.

        For ``N`` in {1, 2, 4} the group acts exactly on the grid and the projection ``P`` onto
        the equivariant kernels replaces every combination weight ``w_l(h)`` by its mean over
        the group, ``\bar w_l``; with ``delta(h) = w(h) - \bar w`` and the Gram matrix
        ``Gamma_{lm} = <psi_l, psi_m>`` of the filter banks (summed over the relative rotations
        of a group convolution)

        .. math:: \|K - P K\|_F^2 = \sum_{h \in C_N} \delta(h)^T \Gamma \delta(h),

        because every rotated copy of a filter (and the orthogonal mixing of vector inputs) has
        the same norm. Equal to ``Projector(KernelAction(in_rep, out_rep, k)).project`` applied
        to :meth:`kernel` (see :meth:`projector`), at the cost of an ``L x L`` Gram matrix.
        """
        if not self.exact:
            raise NotImplementedError(f"{type(self).__name__}: the closed-form projection defect needs N in {{1, 2, 4}} "
                                      f"(rotations that map the grid onto itself), got N = {self.N}")
        w = self._weights()
        d = w - w.mean(dim=1, keepdim=True)  # (L, N)
        f = self.filters.reshape(self.num_banks, -1)
        gram = f @ f.T
        sq = torch.einsum("lh,lm,mh->", d, gram, d)
        return sq.clamp_min(1e-30).sqrt()  # the clamp keeps the gradient finite (zero) at an equivariant kernel

    def kernel_reps(self):
        """``(in_rep, out_rep)`` of the materialised kernel."""
        G = self.group
        in_rep = self.in_channels * G.regular() if isinstance(self, RelaxedGroupConv2d) else self.in_rep
        return in_rep, self.out_channels * G.regular()

    def projector(self) -> Projector:
        """The projector onto the equivariant kernels of :meth:`kernel` (:class:`equiproj.Projector` of the
        kernel action), built once."""
        if getattr(self, "_projector", None) is None:
            i, o = self.kernel_reps()
            self._projector = Projector(KernelAction(i, o, (self.kernel_size, self.kernel_size)))
        return self._projector

    def _conv(self, x, weight):
        b = None if self.bias is None else self.bias.repeat_interleave(self.N)
        return F.conv2d(x, weight, b, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, N={self.N}, "
                f"num_banks={self.num_banks}, stride={self.stride}, padding={self.padding}, "
                f"equal_weights={self.equal_weights}, rotations={'exact' if self.exact else self.mode}")


class RelaxedLiftingConv2d(_RelaxedConv):
    r"""Relaxed lifting convolution for ``C_N``: ordinary channels in, regular fields out.

    With ``L`` filter banks ``psi_l`` (``(C_out, C_in, k, k)`` each) and combination weights
    ``w_l(g)``, the output at rotation ``g`` is the cross-correlation with the kernel

    .. math:: K_g = \sum_{l=1}^L w_l(g)\, \psi_l(g^{-1} x),

    i.e. ``y[o, g] = sum_c f_c * K_g[o, c]`` (output channel ``o * N + g``). When ``w_l(g)``
    does not depend on ``g`` this is the lifting convolution with the filter
    ``sum_l w_l psi_l``, equivariant: ``y(r . f) = r . y(f)`` (exactly for ``N`` in {1, 2, 4}
    and square inputs with symmetric padding; up to interpolation error otherwise). The bias
    is one per output field (invariant).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels, output fields (``out_channels * N`` output channels).
    kernel_size : int
        Odd sizes keep the rotation centre on a pixel.
    in_rep : Representation, optional
        The representation of ``C_N`` on the input channels (default: ``in_channels`` trivial
        channels), e.g. ``10 * cyclic(4).standard()`` for ten velocity fields. The kernel of
        output rotation ``g`` is then ``K_g = (sum_l w_l(g) psi_l)(g^{-1} x) rho_in(g)^{-1}``:
        rotated, with the input components mixed back, so that equal weights give an
        equivariant map from ``in_rep`` fields to regular fields.
    N : int
        Order of the rotation group.
    num_banks : int
        ``L``.
    stride, padding, dilation, bias :
        As in ``nn.Conv2d``.
    equal_weights : bool
        Share ``w_l`` across rotations: the strictly equivariant lifting convolution.
    mode : {'bilinear', 'nearest'}
        Interpolation of kernel rotations that do not map the grid onto itself.

    Examples
    --------
    >>> import torch
    >>> from equiproj.actions import transform_feature_map
    >>> conv = RelaxedLiftingConv2d(1, 2, 3, N=4, padding=1, equal_weights=True)
    >>> x = torch.randn(1, 1, 8, 8, dtype=torch.float32)
    >>> y1 = conv(torch.rot90(x, 1, dims=(-2, -1)))
    >>> y2 = transform_feature_map(conv(x), 1, 2 * conv.group.regular())
    >>> bool(torch.allclose(y1, y2, atol=1e-6))
    True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, N: int = 4, num_banks: int = 2,
                 stride=1, padding=0, dilation=1, bias: bool = True, equal_weights: bool = False,
                 mode: str = "bilinear", in_rep: Optional[Representation] = None, dtype=None, device=None):
        super().__init__()
        self._init_common(in_channels, out_channels, kernel_size, N, num_banks, stride, padding, dilation, bias,
                          equal_weights, mode, dtype, device)
        if in_rep is None:
            in_rep = in_channels * self.group.trivial()
        if in_rep.dim != in_channels:
            raise ValueError(f"RelaxedLiftingConv2d: in_rep {in_rep.name} has dimension {in_rep.dim}, but in_channels "
                             f"is {in_channels}; pass in_channels={in_rep.dim}")
        if in_rep.group.name != self.group.name:
            raise ValueError(f"RelaxedLiftingConv2d: in_rep must be a representation of C{N} (cyclic({N})), "
                             f"got one of {in_rep.group.name}")
        self.in_rep = in_rep
        self._mix = not all(f.is_trivial() for f in in_rep.fields)
        if self._mix:
            R = in_rep(self.group.elements(), dtype=torch.float64)
            self.register_buffer("rho_inv", torch.linalg.inv(R).to(dtype=dtype or torch.get_default_dtype(),
                                                                   device=device), persistent=False)
        std = 1.0 / math.sqrt(in_channels * kernel_size ** 2 * num_banks)
        self.filters = nn.Parameter(torch.empty(num_banks, out_channels, in_channels, kernel_size, kernel_size,
                                                dtype=dtype, device=device).uniform_(-math.sqrt(3) * std,
                                                                                     math.sqrt(3) * std))

    def kernel(self) -> torch.Tensor:
        """The full kernel ``(C_out * N, C_in, k, k)``."""
        w = self._weights()
        ks = []
        for g in range(self.N):
            comb = torch.einsum("l,loikj->oikj", w[:, g], self.filters)
            rot = rotate_kernels(comb, g, self.N, self.mode)
            if self._mix:  # K_g = rot(comb) rho_in(g)^{-1}
                rot = torch.einsum("ockj,ci->oikj", rot, self.rho_inv[g].to(rot.dtype))
            ks.append(rot)
        K = torch.stack(ks, dim=1)  # (O, N, C, k, k)
        return K.reshape(self.out_channels * self.N, self.in_channels, self.kernel_size, self.kernel_size)

    def forward(self, x):
        return self._conv(x, self.kernel())


class RelaxedGroupConv2d(_RelaxedConv):
    r"""Relaxed group convolution for ``C_N``: regular fields in and out.

    With ``L`` filter banks ``psi_l`` (``(C_out, C_in, N, k, k)`` each; the third index is
    the relative rotation) and combination weights ``w_l(h)`` indexed by the *input* rotation
    ``h``, the kernel from input rotation ``h`` to output rotation ``g`` is

    .. math:: K_{g,h}(x) = \sum_{l=1}^L w_l(h)\, \psi_l(g^{-1} h)(g^{-1} x),

    and ``y[o, g] = sum_{c, h} f[c, h] * K_{g,h}[o, c]``. When ``w_l(h)`` does not depend on
    ``h`` this is the group convolution with the filter ``sum_l w_l psi_l``, equivariant under
    ``(r . f)[c, h](x) = f[c, r^{-1} h](r^{-1} x)`` (exactly for ``N`` in {1, 2, 4}; up to
    interpolation error otherwise).

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output fields (``* N`` channels each).
    kernel_size, N, num_banks, stride, padding, dilation, bias, equal_weights, mode :
        As in :class:`RelaxedLiftingConv2d`.

    Examples
    --------
    >>> import torch
    >>> from equiproj.actions import transform_feature_map
    >>> conv = RelaxedGroupConv2d(2, 3, 3, N=4, padding=1)
    >>> R_in, R_out = 2 * conv.group.regular(), 3 * conv.group.regular()
    >>> x = torch.randn(1, 8, 8, 8)
    >>> def err():
    ...     with torch.no_grad():
    ...         y1, y2 = conv(transform_feature_map(x, 1, R_in)), transform_feature_map(conv(x), 1, R_out)
    ...     return float((y1 - y2).abs().max())
    >>> err() < 1e-5                        # combination weights start equal
    True
    >>> with torch.no_grad():
    ...     _ = conv.relaxed_weights[:, 0].add_(1.0)
    >>> err() > 1e-2, float(conv.relaxation_penalty().detach()) > 0
    (True, True)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, N: int = 4, num_banks: int = 2,
                 stride=1, padding=0, dilation=1, bias: bool = True, equal_weights: bool = False,
                 mode: str = "bilinear", dtype=None, device=None):
        super().__init__()
        self._init_common(in_channels, out_channels, kernel_size, N, num_banks, stride, padding, dilation, bias,
                          equal_weights, mode, dtype, device)
        std = 1.0 / math.sqrt(in_channels * N * kernel_size ** 2 * num_banks)
        self.filters = nn.Parameter(torch.empty(num_banks, out_channels, in_channels, N, kernel_size, kernel_size,
                                                dtype=dtype, device=device).uniform_(-math.sqrt(3) * std,
                                                                                     math.sqrt(3) * std))

    def kernel(self) -> torch.Tensor:
        """The full kernel ``(C_out * N, C_in * N, k, k)``."""
        w = self._weights()
        ks = []
        for g in range(self.N):
            rolled = torch.roll(self.filters, shifts=g, dims=3)  # rolled[..., h, :, :] = psi[..., h - g, :, :]
            comb = torch.einsum("lh,loihkj->oihkj", w, rolled)
            ks.append(rotate_kernels(comb, g, self.N, self.mode))
        K = torch.stack(ks, dim=1)  # (O, N_out, C, N_in, k, k)
        return K.reshape(self.out_channels * self.N, self.in_channels * self.N, self.kernel_size, self.kernel_size)

    def forward(self, x):
        return self._conv(x, self.kernel())


def _field_type(rep: Representation, side: str, layer: str):
    """The single field type of ``rep`` (``m * field``) and its multiplicity."""
    fields = rep.fields
    first = fields[0]
    if any(f.key != first.key for f in fields):
        raise ValueError(f"{layer}: {side}_rep must be copies of one field type (e.g. 8 * G.regular()), got {rep.name}")
    return first, len(fields)


def _equivariant_basis(in_field: Representation, out_field: Representation, k: int) -> torch.Tensor:
    """An orthonormal basis ``(B, d_out, d_in, k, k)`` (float64) of the equivariant kernels from one
    ``in_field`` to one ``out_field``: the range of their projector, from the SVD of its matrix."""
    P = Projector(KernelAction(in_field, out_field, (k, k)))
    D = out_field.dim * in_field.dim * k * k
    eye = torch.eye(D, dtype=torch.float64).reshape(D, out_field.dim, in_field.dim, k, k)
    M = torch.stack([P.project(e) for e in eye]).reshape(D, D)
    U, S, _ = torch.linalg.svd(M)
    B = int((S > 0.5).sum())
    return U[:, :B].T.reshape(B, out_field.dim, in_field.dim, k, k).contiguous()


class RelaxedSteerableConv2d(nn.Module):
    r"""Relaxed steerable convolution (Wang, Walters, Yu 2022): an equivariant kernel basis with
    coefficients that depend on the kernel position.

    With an orthonormal basis ``Q_b`` (``b = 1..B``) of the ``C_N``-equivariant kernels from one
    input field to one output field (the range of :class:`equiproj.Projector`; e2cnn's basis in
    the original), the kernel from input field ``i`` to output field ``o`` is

    .. math:: K_{oi}(y) = \sum_b w_{obi}(y)\, Q_b(y),

    with coefficients that may change from one kernel position ``y`` to the next. When they do
    not, ``K`` is equivariant: ``K(g y) = rho_out(g) K(y) rho_in(g)^T``. The relaxation penalty
    (:meth:`relaxation_penalty`) is Wang et al.'s mean absolute difference of the coefficients at
    consecutive kernel positions (row-major order); the projection defect is ``||K - P(K)||_F``
    with the projector of the whole kernel (:meth:`projector`). The bias is one per output
    field times the field's invariant vector (none for fields without invariants, such as
    vectors).

    Parameters
    ----------
    in_rep, out_rep : Representation
        Copies of one field type each, of the same group (exact on the grid: C2, C4).
    kernel_size : int
    padding : int
    bias : bool
    equal_weights : bool
        One coefficient for all positions: the strictly equivariant steerable convolution.

    Examples
    --------
    >>> import torch
    >>> from equiproj.actions import transform_feature_map
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> conv = RelaxedSteerableConv2d(2 * G.standard(), 3 * G.regular(), 3, padding=1)
    >>> x = torch.randn(1, 4, 8, 8)
    >>> with torch.no_grad():
    ...     y1 = conv(transform_feature_map(x, 1, conv.in_rep))
    ...     y2 = transform_feature_map(conv(x), 1, conv.out_rep)
    >>> bool(torch.allclose(y1, y2, atol=1e-5)), float(conv.projection_defect().detach()) < 1e-5   # equivariant start
    (True, True)
    """

    def __init__(self, in_rep: Representation, out_rep: Representation, kernel_size: int, padding: int = 0,
                 bias: bool = True, equal_weights: bool = False, dtype=None, device=None):
        super().__init__()
        name = type(self).__name__
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"{name}: kernel_size must be a positive integer, got {kernel_size!r}")
        if in_rep.group.name != out_rep.group.name:
            raise ValueError(f"{name}: in_rep and out_rep must belong to one group, got {in_rep.group.name} "
                             f"and {out_rep.group.name}")
        self.in_rep, self.out_rep, self.kernel_size, self.padding = in_rep, out_rep, kernel_size, padding
        self.group = in_rep.group
        self.in_field, self.c_in = _field_type(in_rep, "in", name)
        self.out_field, self.c_out = _field_type(out_rep, "out", name)
        self.equal_weights = bool(equal_weights)
        dtype = dtype or torch.get_default_dtype()
        basis = _equivariant_basis(self.in_field, self.out_field, kernel_size)
        # saved with the weights: an SVD basis is only defined up to signs and rotations, which may
        # differ between machines, and the coefficients mean nothing without their basis
        self.register_buffer("basis", basis.to(dtype=dtype, device=device))
        B, k2 = basis.shape[0], kernel_size ** 2
        # He-like scale: E[K^2] = 2 / fan_in on average over the basis
        std = math.sqrt(2.0 * self.out_field.dim / (self.c_in * B))
        coef = torch.randn(self.c_out, B, self.c_in, 1, dtype=dtype, device=device) * std
        self.relaxed_weights = nn.Parameter(coef if equal_weights else coef.repeat(1, 1, 1, k2).contiguous())
        # invariant direction of the output field (bias), if any
        R = self.out_field(self.group.elements(), dtype=torch.float64)
        U, S, _ = torch.linalg.svd(R.mean(0))
        inv = U[:, :int((S > 0.5).sum())]
        self.register_buffer("bias_dirs", inv.T.to(dtype=dtype, device=device))  # (r, d_out)
        if bias and inv.shape[1] > 0:
            self.bias = nn.Parameter(torch.zeros(self.c_out, inv.shape[1], dtype=dtype, device=device))
        else:
            self.bias = None
        self._projector = None

    def kernel(self) -> torch.Tensor:
        """The full kernel ``(out_rep.dim, in_rep.dim, k, k)``."""
        k = self.kernel_size
        Q = self.basis.reshape(*self.basis.shape[:3], k * k)  # (B, p, q, y)
        w = self.relaxed_weights.expand(-1, -1, -1, k * k)    # (o, B, i, y)
        K = torch.einsum("bpqy,obiy->opiqy", Q, w)
        return K.reshape(self.out_rep.dim, self.in_rep.dim, k, k)

    def full_bias(self) -> Optional[torch.Tensor]:
        if self.bias is None:
            return None
        return (self.bias @ self.bias_dirs).reshape(-1)

    def forward(self, x):
        return F.conv2d(x, self.kernel(), self.full_bias(), padding=self.padding)

    def relaxation_penalty(self, norm: str = "l1") -> torch.Tensor:
        """Wang et al.'s penalty: the mean of ``|w(y) - w(y')|`` (``'l2'``: of the squares) over
        consecutive kernel positions ``y, y'`` (row-major); zero exactly when the coefficients do
        not depend on the position."""
        w = self.relaxed_weights
        if w.shape[-1] == 1:
            return w.sum() * 0
        d = w[..., 1:] - w[..., :-1]
        if norm == "l1":
            return d.abs().mean()
        if norm == "l2":
            return d.pow(2).mean()
        raise ValueError(f"relaxation penalty norm must be 'l1' or 'l2', got {norm!r}")

    def kernel_reps(self):
        return self.in_rep, self.out_rep

    def projector(self) -> Projector:
        """The projector onto the equivariant kernels of the whole layer (built once)."""
        if self._projector is None:
            self._projector = Projector(KernelAction(self.in_rep, self.out_rep, (self.kernel_size, self.kernel_size)))
        return self._projector

    def projection_defect(self) -> torch.Tensor:
        """``||K - P(K)||_F`` of the materialised kernel, differentiable."""
        K = self.kernel()
        sq = (K - self.projector().project(K)).pow(2).sum()
        return sq.clamp_min(1e-30).sqrt()

    @property
    def N(self) -> int:
        return self.group.order

    @property
    def num_banks(self) -> int:
        return int(self.basis.shape[0])

    def _weights(self) -> torch.Tensor:
        return self.relaxed_weights.reshape(-1, self.relaxed_weights.shape[-1])

    def extra_repr(self):
        return (f"{self.in_rep.name} -> {self.out_rep.name} of {self.group.name}, kernel_size={self.kernel_size}, "
                f"basis={self.num_banks}, padding={self.padding}, equal_weights={self.equal_weights}")


class GroupPool2d(nn.Module):
    """Mean over the ``N`` rotations of every regular field: ``(B, C * N, H, W) -> (B, C, H, W)``
    (invariant fields, i.e. ordinary channels that rotate with the image)."""

    def __init__(self, N: int):
        super().__init__()
        self.N = N

    def forward(self, x):
        B, CN = x.shape[:2]
        if CN % self.N:
            raise ValueError(f"GroupPool2d: {CN} channels are not a multiple of N = {self.N}")
        return x.reshape(B, CN // self.N, self.N, *x.shape[2:]).mean(2)


def relaxed_cnn(in_channels: int = 1, out_channels: int = 1, width: int = 4, depth: int = 3, N: int = 4,
                num_banks: int = 2, kernel_size: int = 3, equal_weights: bool = False, dtype=None,
                device=None) -> nn.Sequential:
    """A small image-to-image relaxed ``C_N`` CNN: lifting convolution, ``depth - 2`` group
    convolutions (``width`` regular fields each), ReLUs, pooling over the group and a 1x1
    convolution to ``out_channels``. Equivariant for rotations of square inputs when
    ``equal_weights`` (and ``N`` in {1, 2, 4}).

    Examples
    --------
    >>> import torch
    >>> net = relaxed_cnn(1, 1, width=2, depth=3)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 1, 8, 8])
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"relaxed_cnn: depth must be an integer >= 2, got {depth!r}")
    kw = dict(N=N, num_banks=num_banks, padding=kernel_size // 2, equal_weights=equal_weights, dtype=dtype,
              device=device)
    layers: List[nn.Module] = [RelaxedLiftingConv2d(in_channels, width, kernel_size, **kw), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [RelaxedGroupConv2d(width, width, kernel_size, **kw), nn.ReLU()]
    layers += [GroupPool2d(N), nn.Conv2d(width, out_channels, 1, dtype=dtype, device=device)]
    return nn.Sequential(*layers)


@dataclass
class RelaxedLayerReport:
    """One relaxed layer of :meth:`RelaxedMethod.report`: the relaxation penalty, the largest
    spread of its relaxed weights, and the Frobenius norms of its materialised kernel ``K``, of
    ``P(K)`` and of the defect ``K - P(K)`` (``relative_defect = defect_norm / weight_norm``)."""

    name: str
    N: int
    num_banks: int
    penalty: float
    spread: float
    weight_norm: float
    defect_norm: float
    relative_defect: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key):  # rows used to be dicts
        return getattr(self, key)


_RELAXED_TYPES = (_RelaxedConv, RelaxedSteerableConv2d, RelaxedScaleConv2d, RelaxedScaleSteerableConv2d)
_PENALTIES = ("relaxation", "projection")


@register_method("relaxed")
class RelaxedMethod(Method):
    r"""Penalties for relaxed group and steerable convolutions: Wang et al.'s relaxation penalty,
    or the projection penalty on their materialised kernels.

    ``penalty='relaxation'`` (default):

    .. math:: R = \lambda \sum_{\text{layers}} \sum_{l=1}^L \sum_{h \in C_N} |w_l(h) - w_l(h - 1)|

    for relaxed group convolutions (``norm='l2'``: squared differences) and Wang et al.'s mean
    absolute difference of the coefficients at consecutive kernel positions for
    :class:`RelaxedSteerableConv2d`. Wang, Walters and Yu (2022) penalise these differences so
    that the model stays close to equivariant; the cyclic first-difference form for group
    convolutions is ours. ``penalty='projection'``:

    .. math:: R = \lambda \sum_{\text{layers}} \|K - P(K)\|_F,

    with ``K`` the layer's materialised kernel and ``P`` the orthogonal projection onto the
    equivariant kernels (Berndt and Stuehmer 2026; closed form through the Gram matrix of the
    filter banks for group convolutions, :meth:`RelaxedGroupConv2d.projection_defect`). Both
    are zero exactly when every layer is strictly equivariant. ``method.model`` is the model
    unchanged; it must contain relaxed layers (e.g. :func:`relaxed_cnn`).

    Parameters
    ----------
    model : nn.Module
    lambda_ : float
        Weight (default ``1e-2``).
    norm : {'l1', 'l2'}
        Of the relaxation penalty.
    penalty : {'relaxation', 'projection'}

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> m = make_method("relaxed", relaxed_cnn(1, 1, width=2, depth=3), lambda_=0.1)
    >>> float(m.penalty().detach())         # weights start equal
    0.0
    >>> p = make_method("relaxed", relaxed_cnn(1, 1, width=2, depth=3), lambda_=0.1, penalty="projection")
    >>> float(p.penalty().detach()) < 1e-12
    True
    """

    name = "relaxed"
    needs_batch = False
    weight_option = "lambda_"
    _options = ("lambda_", "norm", "penalty")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, norm: str = "l1", penalty: str = "relaxation",
                 **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        if norm not in ("l1", "l2"):
            raise ValueError(f"method {self.name!r}: option norm must be 'l1' or 'l2', got {norm!r}")
        if penalty not in _PENALTIES:
            raise ValueError(f"method {self.name!r}: option penalty must be 'relaxation' or 'projection', got {penalty!r}")
        self.norm = norm
        self.kind = penalty
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _RELAXED_TYPES)]
        if not self.layers:
            raise ValueError(f"method {self.name!r}: the model has no RelaxedLiftingConv2d, RelaxedGroupConv2d, "
                             "RelaxedSteerableConv2d or RelaxedScale(Steerable)Conv2d layers; build one with "
                             "equiproj.baselines.relaxed_cnn or these "
                             "layers")

    def terms(self) -> Dict[str, torch.Tensor]:
        if self.kind == "projection":
            return {n or "<model>": m.projection_defect() for n, m in self.layers}
        return {n or "<model>": m.relaxation_penalty(self.norm) for n, m in self.layers}

    def penalty(self, batch=None) -> torch.Tensor:
        return self.lambda_ * torch.stack(list(self.terms().values())).sum()

    __call__ = penalty

    def report(self) -> List[RelaxedLayerReport]:
        """Per layer: name, N, banks, the relaxation penalty, the largest spread of the relaxed
        weights (``max_h w_l(h) - min_h w_l(h)``, or over kernel positions for steerable layers)
        and the projection defect of the materialised kernel."""
        rows = []
        with torch.no_grad():
            for n, m in self.layers:
                w = m._weights()
                K = m.kernel()
                wn = float(torch.linalg.vector_norm(K))
                dn = float(torch.linalg.vector_norm(K - m.projector().project(K)))
                rows.append(RelaxedLayerReport(name=n or "<model>", N=m.N, num_banks=m.num_banks,
                                               penalty=float(m.relaxation_penalty(self.norm)),
                                               spread=float((w.amax(1) - w.amin(1)).max()), weight_norm=wn,
                                               defect_norm=dn, relative_defect=dn / wn if wn > 0 else 0.0))
        return rows

    def __repr__(self):
        return (f"RelaxedMethod(lambda_={self.lambda_}, penalty={self.kind!r}, norm={self.norm!r}, "
                f"{len(self.layers)} layers)")
