r"""Relaxed scale-space convolutions (private module; the scale case of the smoke experiment).

Scale is not a compact group, and equiproj's :class:`~equiproj.groups.Group` objects do not
describe it; the scale models here follow the scale-equivariant convolutions of Sosnovik,
Szmaja and Smeulders (ICLR 2020) and Wang, Walters and Yu (ICML 2022, their scale models): one
base filter, applied at several dilations ``sigma_1 < ... < sigma_S``. The projection penalty
of Berndt and Stühmer still applies, because the strict (weight-tied) layers form a linear
subspace of the materialised kernels: ``P`` is the orthogonal projection onto it
(:class:`ScaleKernelProjector`), a least-squares fit rather than a group average.

Dilation. A ``k x k`` filter ``psi`` (``k = 2 r + 1``) is a continuous function by bilinear
interpolation, ``psi(x) = sum_{ij} psi_ij Lambda(x_1 - i) Lambda(x_2 - j)`` with the hat
``Lambda(t) = max(0, 1 - |t|)``; at scale ``sigma`` it is sampled as

.. math:: (D_\sigma \psi)(u) = \sigma^{-2} \psi(u / \sigma), \qquad u \in \{-R, \dots, R\}^2,

on the ``(2R + 1)^2`` grid of the largest scale (``R = ceil(sigma_S (r + 1)) - 1``, so
``D_1`` is the identity embedded in the centre). The factor ``sigma^{-2}`` keeps the filter's
sum, so a smooth input gives the same response at every scale. For the continuous dilation
``(L_\lambda x)(u) = x(u / \lambda)``, ``D_\sigma \psi * L_\lambda x = L_\lambda (D_{\sigma / \lambda}
\psi * x)``: dilating the input moves the response one step along a geometric scale axis
(exactly in the continuum; up to interpolation on the grid and the truncated axis).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ScaleKernelProjector", "RelaxedScaleConv2d", "RelaxedScaleSteerableConv2d", "dilation_matrices"]


def _check_scales(scales: Sequence[float], layer: str) -> Tuple[float, ...]:
    try:
        sc = tuple(float(s) for s in scales)
    except TypeError:
        raise ValueError(f"{layer}: scales must be a sequence of numbers, got {scales!r}") from None
    if not sc or any(not (s >= 1) for s in sc) or any(b <= a for a, b in zip(sc, sc[1:])):
        raise ValueError(f"{layer}: scales must be increasing and >= 1, got {scales!r}")
    return sc


def dilation_matrices(scales: Sequence[float], kernel_size: int, dtype=torch.float64) -> torch.Tensor:
    r"""The one-dimensional dilations ``d_s`` ``(S, K, k)``, ``d_s[a, i] = Lambda(a / sigma_s - i) / sigma_s``
    (``a`` and ``i`` centred), so that ``D_s psi = d_s psi d_s^T`` for a ``k x k`` filter ``psi``
    and ``K = 2 R + 1`` the size of the largest scale's kernel.

    >>> d = dilation_matrices((1.0, 2.0), 3)
    >>> tuple(d.shape)
    (2, 7, 3)
    >>> bool(torch.equal(d[0, 2:5], torch.eye(3, dtype=d.dtype)))   # scale 1: the identity, centred
    True
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"dilation_matrices: kernel_size must be a positive odd integer, got {kernel_size!r}")
    sc = _check_scales(scales, "dilation_matrices")
    r = (kernel_size - 1) // 2
    R = max(int(math.ceil(s * (r + 1) - 1e-9)) - 1 for s in sc)
    a = torch.arange(-R, R + 1, dtype=dtype)
    i = torch.arange(-r, r + 1, dtype=dtype)
    out = torch.stack([(1 - (a[:, None] / s - i[None, :]).abs()).clamp_min(0) / s for s in sc])
    return out


class ScaleKernelProjector:
    r"""Orthogonal projection of per-scale kernels onto the weight-tied (strictly scale-equivariant) ones.

    For stacked kernels ``K = (K_1, ..., K_S)`` (shape ``(S, ..., K, K)``, leading channel axes
    arbitrary) the strict kernels are ``(D_1 phi, ..., D_S phi)`` for one ``k x k`` filter
    ``phi``; ``P`` is the orthogonal projection onto them in the Frobenius inner product:

    .. math:: P(K)_s = D_s \phi^*, \qquad \phi^* = M^{-1} \sum_s D_s^T K_s, \qquad M = \sum_s D_s^T D_s,

    (``M`` is invertible because ``D_1`` embeds the filter unchanged). ``P`` is idempotent and
    self-adjoint; ``K - P(K)`` is orthogonal to every strict kernel.

    Examples
    --------
    >>> import torch
    >>> P = ScaleKernelProjector((1.0, 2.0), 3)
    >>> K = torch.randn(2, 4, 5, 7, 7, dtype=torch.float64)
    >>> PK = P.project(K)
    >>> bool(torch.allclose(P.project(PK), PK)), abs(float((PK * (K - PK)).sum())) < 1e-10
    (True, True)
    """

    def __init__(self, scales: Sequence[float], kernel_size: int):
        self.scales = _check_scales(scales, "ScaleKernelProjector")
        self.kernel_size = kernel_size
        d = dilation_matrices(self.scales, kernel_size)  # (S, K, k) float64
        A = torch.einsum("sai,saj->sij", d, d)            # d_s^T d_s, (S, k, k)
        k = kernel_size
        Ms = torch.stack([torch.kron(a, a) for a in A])    # D_s^T D_s on flattened filters, (S, k^2, k^2)
        self._d64, self._Ms64 = d, Ms
        self._Minv64 = torch.linalg.inv(Ms.sum(0))
        self._cache = {}
        self.size = int(d.shape[1])
        self.k2 = k * k

    def _mats(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=like.device, dtype=like.dtype)
                                     for t in (self._d64, self._Ms64, self._Minv64))
        return self._cache[key]

    def dilate(self, psi: torch.Tensor) -> torch.Tensor:
        """``(S, ..., k, k) -> (S, ..., K, K)``: ``D_s`` applied to the ``s``-th filters."""
        d, _, _ = self._mats(psi)
        return torch.einsum("sai,s...ij,sbj->s...ab", d, psi, d)

    def fit(self, K: torch.Tensor) -> torch.Tensor:
        """``phi^*`` ``(..., k, k)``: the least-squares filter of kernels ``(S, ..., K, K)``."""
        if K.shape[0] != len(self.scales) or tuple(K.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"ScaleKernelProjector: expected kernels (S={len(self.scales)}, ..., {self.size}, "
                             f"{self.size}), got {tuple(K.shape)}")
        d, _, Minv = self._mats(K)
        b = torch.einsum("sai,s...ab,sbj->...ij", d, K, d)  # sum_s D_s^T K_s
        flat = b.reshape(*b.shape[:-2], self.k2) @ Minv.T
        return flat.reshape(b.shape)

    def project(self, K: torch.Tensor) -> torch.Tensor:
        """``P(K)``, same shape as ``K``."""
        phi = self.fit(K)
        return self.dilate(phi.unsqueeze(0).expand(len(self.scales), *phi.shape))

    def defect_of_filters(self, psi: torch.Tensor) -> torch.Tensor:
        r"""``||K - P(K)||_F^2`` for ``K_s = D_s psi_s`` (``psi`` ``(S, ..., k, k)``) without
        materialising ``K``: ``sum_s delta_s^T M_s delta_s`` with ``delta_s = psi_s - M^{-1}
        sum_t M_t psi_t``."""
        _, Ms, Minv = self._mats(psi)
        f = psi.reshape(psi.shape[0], -1, self.k2)                # (S, n, k^2)
        mean = torch.einsum("ab,sbc,snc->na", Minv, Ms, f)        # (n, k^2)
        delta = f - mean
        return torch.einsum("sna,sab,snb->", delta, Ms, delta)


def _check_ints(layer: str, **values) -> None:
    for nm, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{layer}: {nm} must be a positive integer, got {v!r}")


def _scale_conv(layer, x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The convolution of a scale layer with its kernels ``K`` ``(S, O, C, K, K)``: lifting
    (``C`` channels in) or scale by scale (``C * S`` channels in, field-major), ``O * S`` out."""
    S, O, C = K.shape[0], K.shape[1], K.shape[2]
    name = type(layer).__name__
    if layer.lifting:
        if x.shape[1] != C:
            raise ValueError(f"{name}: expected {C} input channels, got {x.shape[1]}")
        y = F.conv2d(x, K.transpose(0, 1).reshape(O * S, C, *K.shape[-2:]), padding=layer.padding)
    else:
        B, CS, H, W = x.shape
        if CS != C * S:
            raise ValueError(f"{name}: expected {C} scale fields x {S} scales = {C * S} input channels, got {CS}")
        xs = x.reshape(B, C, S, H, W).transpose(1, 2).reshape(B, S * C, H, W)
        y = F.conv2d(xs, K.reshape(S * O, C, *K.shape[-2:]), padding=layer.padding, groups=S)
        y = y.reshape(B, S, O, *y.shape[-2:]).transpose(1, 2).reshape(B, O * S, *y.shape[-2:])
    if layer.bias is not None:
        y = y + layer.bias.repeat_interleave(S).view(1, -1, 1, 1)
    return y


class RelaxedScaleConv2d(nn.Module):
    r"""Relaxed scale-space convolution: ``L`` filter banks, combined with weights per scale.

    With filter banks ``psi_l`` (``(C_out, C_in, k, k)`` each) and combination weights
    ``w_l(s)``, the kernel at scale ``s`` is ``K_s = D_s sum_l w_l(s) psi_l`` (dilation
    ``D_s``: module docstring). A *lifting* layer maps ``C_in`` ordinary channels to ``C_out``
    scale fields, ``y[o, s] = sum_c K_s[o, c] * x[c]``; a hidden layer maps scale fields to scale
    fields scale by scale (Wang et al.'s scale models use this one-scale filter),
    ``y[o, s] = sum_c K_s[o, c] * x[c, s]``. Scale fields carry ``C * S`` channels, field-major
    (channel ``c * S + s``), like the regular fields of ``C_N``. When ``w_l(s)`` does not
    depend on ``s`` the layer is the scale-equivariant convolution with the filter
    ``sum_l w_l psi_l``: dilating the input by ``sigma_{s+1} / sigma_s`` (geometric scales)
    moves the response one scale up, up to interpolation.

    The relaxation penalty is ``sum_l sum_s |w_l(s + 1) - w_l(s)|`` (the scale axis is not
    cyclic); the projection defect is ``||K - P(K)||_F`` with ``P`` the orthogonal projection
    onto the weight-tied kernels (:class:`ScaleKernelProjector`), in closed form through the
    ``k^2 x k^2`` Gram matrices ``M_s = D_s^T D_s``.

    Parameters
    ----------
    in_channels, out_channels : int
        Ordinary channels in (lifting) or scale fields in; scale fields out.
    kernel_size : int
        Odd size ``k`` of the base filter; the materialised kernels are ``K x K`` (the largest scale).
    scales : sequence of float
        Increasing dilations ``>= 1``; default ``(1, sqrt 2, 2)``.
    num_banks : int
    lifting : bool
    bias : bool
        One bias per output field, shared by the scales.
    equal_weights : bool
        One combination weight per bank for all scales: the strict layer.

    Examples
    --------
    >>> import torch
    >>> conv = RelaxedScaleConv2d(2, 3, 3, scales=(1.0, 2.0), lifting=True)
    >>> y = conv(torch.randn(1, 2, 16, 16))
    >>> tuple(y.shape), tuple(conv.kernel().shape)           # 3 fields x 2 scales; 7 x 7 at scale 2
    ((1, 6, 16, 16), (2, 3, 2, 7, 7))
    >>> float(conv.projection_defect().detach()) < 1e-6         # combination weights start equal
    True
    >>> with torch.no_grad():
    ...     _ = conv.relaxed_weights[:, 1].add_(0.5)
    >>> float(conv.projection_defect().detach()) > 1e-3
    True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 scales: Sequence[float] = (1.0, 2 ** 0.5, 2.0), num_banks: int = 2, lifting: bool = False,
                 bias: bool = True, equal_weights: bool = False, dtype=None, device=None):
        super().__init__()
        name = type(self).__name__
        _check_ints(name, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                    num_banks=num_banks)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (a centred filter), got {kernel_size}")
        self.scales = _check_scales(scales, name)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.num_banks, self.lifting, self.equal_weights = num_banks, bool(lifting), bool(equal_weights)
        self._projector = ScaleKernelProjector(self.scales, kernel_size)
        self.padding = self._projector.size // 2
        S = len(self.scales)
        std = 1.0 / math.sqrt(in_channels * kernel_size ** 2 * num_banks)
        self.filters = nn.Parameter(torch.empty(num_banks, out_channels, in_channels, kernel_size, kernel_size,
                                                dtype=dtype, device=device).uniform_(-math.sqrt(3) * std,
                                                                                     math.sqrt(3) * std))
        #: combination weights w_l(s): (L, S), or (L, 1) shared by all scales when equal_weights
        self.relaxed_weights = nn.Parameter(torch.ones(num_banks, 1 if equal_weights else S, dtype=dtype,
                                                       device=device))
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device)) if bias else None

    @property
    def N(self) -> int:
        """The number of scales (the size of the relaxed axis, as ``N`` for ``C_N`` layers)."""
        return len(self.scales)

    def _weights(self) -> torch.Tensor:
        return self.relaxed_weights.expand(self.num_banks, self.N)

    def filters_per_scale(self) -> torch.Tensor:
        """``psi_s = sum_l w_l(s) psi_l``: ``(S, C_out, C_in, k, k)``."""
        return torch.einsum("ls,loikj->soikj", self._weights(), self.filters)

    def kernel(self) -> torch.Tensor:
        """The materialised kernels ``(S, C_out, C_in, K, K)``."""
        return self._projector.dilate(self.filters_per_scale())

    def projector(self) -> ScaleKernelProjector:
        """The projector onto the weight-tied kernels of :meth:`kernel`."""
        return self._projector

    def forward(self, x):
        return _scale_conv(self, x, self.kernel())

    def relaxation_penalty(self, norm: str = "l1") -> torch.Tensor:
        """``sum_l sum_s |w_l(s + 1) - w_l(s)|`` (``'l2'``: squares); zero exactly when the
        combination weights are the same at every scale."""
        w = self.relaxed_weights
        if w.shape[1] == 1:
            return w.sum() * 0
        d = w[:, 1:] - w[:, :-1]
        if norm == "l1":
            return d.abs().sum()
        if norm == "l2":
            return d.pow(2).sum()
        raise ValueError(f"relaxation penalty norm must be 'l1' or 'l2', got {norm!r}")

    def projection_defect(self) -> torch.Tensor:
        """``||K - P(K)||_F`` in closed form (:meth:`ScaleKernelProjector.defect_of_filters`), differentiable."""
        sq = self._projector.defect_of_filters(self.filters_per_scale())
        return sq.clamp_min(1e-30).sqrt()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"scales={tuple(round(s, 3) for s in self.scales)}, num_banks={self.num_banks}, "
                f"lifting={self.lifting}, equal_weights={self.equal_weights}")



class RelaxedScaleSteerableConv2d(nn.Module):
    r"""Relaxed scale-steerable convolution: coefficients of dilated basis filters that depend on
    the kernel position (the scale analogue of :class:`RelaxedSteerableConv2d`; Wang et al.'s
    relaxed scale-steerable model relaxes its basis coefficients the same way).

    With the ``k^2`` pixel filters ``e_j`` of a ``k x k`` kernel as the basis and their
    dilations ``D_s e_j`` (module docstring), the kernel at scale ``s`` and position ``u`` of the
    ``K x K`` grid is

    .. math:: K_s[o, c](u) = \sum_j w_{ocj}(u)\, (D_s e_j)(u).

    When the coefficients do not depend on ``u`` this is ``D_s`` of the filter ``sum_j w_{ocj}
    e_j``: the strict scale-equivariant layer (the same family as
    :class:`RelaxedScaleConv2d` with equal weights). The relaxation penalty is the mean
    absolute difference of the coefficients at consecutive positions (row-major, as
    :meth:`RelaxedSteerableConv2d.relaxation_penalty`); the projection defect is ``||K - P(K)||_F``
    of the materialised kernels with :class:`ScaleKernelProjector`. ``lifting``, the layout,
    the bias and the scales are those of :class:`RelaxedScaleConv2d`.

    Examples
    --------
    >>> import torch
    >>> conv = RelaxedScaleSteerableConv2d(2, 3, 3, scales=(1.0, 2.0), lifting=True)
    >>> tuple(conv(torch.randn(1, 2, 16, 16)).shape), float(conv.projection_defect().detach()) < 1e-6
    ((1, 6, 16, 16), True)
    >>> with torch.no_grad():
    ...     _ = conv.relaxed_weights[..., 10].add_(1.0)      # one kernel position
    >>> float(conv.projection_defect().detach()) > 1e-3, float(conv.relaxation_penalty().detach()) > 0
    (True, True)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 scales: Sequence[float] = (1.0, 2 ** 0.5, 2.0), lifting: bool = False, bias: bool = True,
                 equal_weights: bool = False, dtype=None, device=None):
        super().__init__()
        name = type(self).__name__
        _check_ints(name, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (a centred filter), got {kernel_size}")
        self.scales = _check_scales(scales, name)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.lifting, self.equal_weights = bool(lifting), bool(equal_weights)
        self._projector = ScaleKernelProjector(self.scales, kernel_size)
        self.padding = self._projector.size // 2
        k2, S, Kn = kernel_size ** 2, len(self.scales), self._projector.size
        dtype = dtype or torch.get_default_dtype()
        unit = torch.eye(k2, dtype=torch.float64).reshape(k2, kernel_size, kernel_size)
        basis = self._projector.dilate(unit.expand(S, k2, kernel_size, kernel_size))  # (S, k^2, K, K)
        self.register_buffer("basis", basis.reshape(S, k2, Kn * Kn).to(dtype=dtype, device=device), persistent=False)
        std = 1.0 / math.sqrt(in_channels * k2)
        coef = torch.empty(out_channels, in_channels, k2, 1, dtype=dtype, device=device).uniform_(-math.sqrt(3) * std,
                                                                                                  math.sqrt(3) * std)
        self.relaxed_weights = nn.Parameter(coef if equal_weights else coef.repeat(1, 1, 1, Kn * Kn).contiguous())
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device)) if bias else None

    @property
    def N(self) -> int:
        """The number of scales."""
        return len(self.scales)

    @property
    def num_banks(self) -> int:
        """The number of basis filters per channel pair (``k^2``)."""
        return self.kernel_size ** 2

    def _weights(self) -> torch.Tensor:
        return self.relaxed_weights.reshape(-1, self.relaxed_weights.shape[-1])

    def kernel(self) -> torch.Tensor:
        """The materialised kernels ``(S, C_out, C_in, K, K)``."""
        Kn = self._projector.size
        w = self.relaxed_weights.expand(-1, -1, -1, Kn * Kn)
        K = torch.einsum("ocju,sju->socu", w, self.basis.to(w.dtype))
        return K.reshape(len(self.scales), self.out_channels, self.in_channels, Kn, Kn)

    def projector(self) -> ScaleKernelProjector:
        return self._projector

    def forward(self, x):
        return _scale_conv(self, x, self.kernel())

    def relaxation_penalty(self, norm: str = "l1") -> torch.Tensor:
        """The mean of ``|w(u) - w(u')|`` (``'l2'``: of the squares) over consecutive kernel
        positions; zero exactly when the coefficients do not depend on the position."""
        w = self.relaxed_weights
        if w.shape[-1] == 1:
            return w.sum() * 0
        d = w[..., 1:] - w[..., :-1]
        if norm == "l1":
            return d.abs().mean()
        if norm == "l2":
            return d.pow(2).mean()
        raise ValueError(f"relaxation penalty norm must be 'l1' or 'l2', got {norm!r}")

    def projection_defect(self) -> torch.Tensor:
        """``||K - P(K)||_F`` of the materialised kernels, differentiable."""
        K = self.kernel()
        sq = (K - self._projector.project(K)).pow(2).sum()
        return sq.clamp_min(1e-30).sqrt()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"scales={tuple(round(s, 3) for s in self.scales)}, lifting={self.lifting}, "
                f"equal_weights={self.equal_weights}")
