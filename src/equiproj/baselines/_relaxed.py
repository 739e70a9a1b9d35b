r"""Relaxed group convolutions for C_N (Wang, Walters, Yu 2022) (private module).

Feature maps on the group (regular fields) carry ``C * N`` channels, field-major: channel
``c * N + h`` is field ``c`` at rotation ``h`` (the layout of ``C * cyclic(N).regular()`` in
:mod:`equiproj.groups`), so :func:`equiproj.transform_feature_map` with that representation is
the group action on them: ``(r . f)[c, h](x) = f[c, h - r](r^{-1} x)``.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from ..actions import transform_feature_map
from ..groups import cyclic
from ._base import Method, register_method
from ._util import check_options, nonneg_float

__all__ = ["RelaxedLiftingConv2d", "RelaxedGroupConv2d", "GroupPool2d", "relaxed_cnn", "rotate_kernels",
           "RelaxedMethod"]


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
                 mode: str = "bilinear", dtype=None, device=None):
        super().__init__()
        self._init_common(in_channels, out_channels, kernel_size, N, num_banks, stride, padding, dilation, bias,
                          equal_weights, mode, dtype, device)
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
            ks.append(rotate_kernels(comb, g, self.N, self.mode))
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


@register_method("relaxed")
class RelaxedMethod(Method):
    r"""The relaxation penalty of the relaxed group convolutions in a model.

    .. math:: R = \lambda \sum_{\text{layers}} \sum_{l=1}^L \sum_{h \in C_N} |w_l(h) - w_l(h - 1)|

    (``norm='l2'``: squared differences). Wang, Walters and Yu (2022) penalise the
    differences of the relaxed weights across group elements so that the model stays close to
    equivariant; this cyclic first-difference form is ours. It is zero exactly when every
    layer's combination weights are equal across rotations, i.e. when the model is a
    strictly equivariant group CNN. ``method.model`` is the model unchanged; it must contain
    :class:`RelaxedLiftingConv2d` or :class:`RelaxedGroupConv2d` layers (e.g.
    :func:`relaxed_cnn`).

    Parameters
    ----------
    model : nn.Module
    lambda_ : float
        Weight (default ``1e-2``).
    norm : {'l1', 'l2'}

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> m = make_method("relaxed", relaxed_cnn(1, 1, width=2, depth=3), lambda_=0.1)
    >>> float(m.penalty().detach())         # weights start equal
    0.0
    """

    name = "relaxed"
    needs_batch = False
    weight_option = "lambda_"
    _options = ("lambda_", "norm")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, norm: str = "l1", **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        if norm not in ("l1", "l2"):
            raise ValueError(f"method {self.name!r}: option norm must be 'l1' or 'l2', got {norm!r}")
        self.norm = norm
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _RelaxedConv)]
        if not self.layers:
            raise ValueError(f"method {self.name!r}: the model has no RelaxedLiftingConv2d or RelaxedGroupConv2d "
                             "layers; build one with equiproj.baselines.relaxed_cnn or these layers")

    def terms(self) -> Dict[str, torch.Tensor]:
        return {n or "<model>": m.relaxation_penalty(self.norm) for n, m in self.layers}

    def penalty(self, batch=None) -> torch.Tensor:
        return self.lambda_ * torch.stack(list(self.terms().values())).sum()

    __call__ = penalty

    def report(self) -> List[dict]:
        """Per layer: name, N, banks, the relaxation penalty and the largest spread
        ``max_h w_l(h) - min_h w_l(h)``."""
        rows = []
        with torch.no_grad():
            for n, m in self.layers:
                w = m._weights()
                rows.append(dict(name=n or "<model>", N=m.N, num_banks=m.num_banks,
                                 penalty=float(m.relaxation_penalty(self.norm)),
                                 spread=float((w.amax(1) - w.amin(1)).max())))
        return rows

    def __repr__(self):
        return f"RelaxedMethod(lambda_={self.lambda_}, norm={self.norm!r}, {len(self.layers)} layers)"
