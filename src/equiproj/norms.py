r"""Matrix norms for the projection penalty.

Every norm maps matrices of shape ``(..., m, n)`` to a tensor of shape ``(...)`` and is
differentiable. For a convolution the matrix is the unfolding ``c_out x (c_in k^d)`` of the
kernel (plus a bias column when biases are penalised); see ``docs/norms.md``.

========================  ===========================================================
name                      value
========================  ===========================================================
``'fro'``                 :math:`\|M\|_F = (\sum_{ij} M_{ij}^2)^{1/2}`
``'fro2'``                :math:`\|M\|_F^2`
``'spectral'``            largest singular value by power iteration, warm-started
``'spectral_exact'``      largest singular value by SVD
``'nuclear'``             sum of singular values
``'max'``                 :math:`\max_{ij} |M_{ij}|`
``'l1'``                  :math:`\sum_{ij} |M_{ij}|`
``'l21'``, ``'mixed'``    :math:`\|M\|_{p,q} = (\sum_i (\sum_j |M_{ij}|^p)^{q/p})^{1/q}`,
                          rows (output units) first; ``'l21'`` is ``p=2, q=1``
========================  ===========================================================

:class:`ConvOperatorNorm` is different: it sees the kernel ``(c_out, c_in, *k)`` itself and
returns the exact operator norm of the convolution with circular padding on a given input
size (the largest singular value over all spatial frequencies).

Examples
--------
>>> import torch
>>> from equiproj.norms import get_norm
>>> M = torch.tensor([[3.0, 0.0], [0.0, -4.0]])
>>> [round(float(get_norm(n)(M)), 4) for n in ["fro", "fro2", "spectral_exact", "nuclear", "max", "l1", "l21"]]
[5.0, 25.0, 4.0, 7.0, 4.0, 7.0, 7.0]
"""

from __future__ import annotations

import copy
import math
import re
from typing import Callable, Optional, Union

import torch

__all__ = [
    "Norm", "Frobenius", "FrobeniusSquared", "SpectralNorm", "NuclearNorm", "MaxNorm", "L1Norm",
    "MixedNorm", "ConvOperatorNorm", "get_norm", "NORM_NAMES",
]


class Norm:
    """Base class: ``norm(M)`` for ``M`` of shape ``(..., m, n)`` returns shape ``(...)``; complex
    matrices are accepted (moduli of entries, singular values of the complex matrix).

    A norm with ``kernel_norm = True`` receives weights in their own shape (e.g. convolution
    kernels ``(c_out, c_in, *k)``) instead of the matrix view, and no bias.
    """

    name = "norm"
    kernel_norm = False

    def __call__(self, M: torch.Tensor) -> torch.Tensor:
        if M.ndim < 2:
            raise ValueError(f"norm '{self.name}' expects matrices of shape (..., m, n), got shape {tuple(M.shape)}")
        return self._norm(M)

    def _norm(self, M: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fresh(self) -> "Norm":
        """A copy without state (each regularised layer gets its own)."""
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Frobenius(Norm):
    """Frobenius norm; its gradient at zero is taken as zero."""

    name = "fro"

    def _norm(self, M):
        return torch.linalg.vector_norm(M.flatten(-2), ord=2, dim=-1)


class FrobeniusSquared(Norm):
    """Squared Frobenius norm (smooth; a weight decay on the chosen part)."""

    name = "fro2"

    def _norm(self, M):
        if M.is_complex():
            M = torch.view_as_real(M).flatten(-2)
        return (M * M).sum((-2, -1))


class SpectralNorm(Norm):
    r"""Largest singular value :math:`\sigma_1(M)`.

    By default ``n_iter`` steps of power iteration per call, warm-started from the previous
    call's singular vector (as in ``torch.nn.utils.spectral_norm``); the value
    ``u^T M v`` is differentiable with gradient ``u v^T``. ``exact=True`` uses an SVD.
    """

    name = "spectral"

    def __init__(self, n_iter: int = 1, exact: bool = False, eps: float = 1e-12, seed: int = 0):
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.n_iter, self.exact, self.eps, self.seed = n_iter, exact, eps, seed
        self._u: Optional[torch.Tensor] = None
        if exact:
            self.name = "spectral_exact"

    def _norm(self, M):
        if self.exact:
            return torch.linalg.matrix_norm(M, ord=2)
        with torch.no_grad():
            u = self._u
            if u is None or u.shape != M.shape[:-1] or u.device != M.device or u.dtype != M.dtype:
                g = torch.Generator().manual_seed(self.seed)
                u = torch.randn(M.shape[:-1], generator=g, dtype=torch.float64).to(M.device, M.dtype)
                u = u / u.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            Md = M.detach()
            for _ in range(self.n_iter):
                v = (Md.mH @ u[..., None])[..., 0]
                v = v / v.norm(dim=-1, keepdim=True).clamp_min(self.eps)
                u = (Md @ v[..., None])[..., 0]
                u = u / u.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            v = (Md.mH @ u[..., None])[..., 0]
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            self._u = u
        val = (u.conj()[..., None, :] @ M @ v[..., :, None])[..., 0, 0]
        return val.real if val.is_complex() else val

    def __repr__(self):
        return f"SpectralNorm(n_iter={self.n_iter}, exact={self.exact})"


class NuclearNorm(Norm):
    """Sum of singular values (SVD)."""

    name = "nuclear"

    def _norm(self, M):
        return torch.linalg.matrix_norm(M, ord="nuc")


class MaxNorm(Norm):
    """Largest absolute entry."""

    name = "max"

    def _norm(self, M):
        return M.abs().amax(dim=(-2, -1))


class L1Norm(Norm):
    """Sum of absolute entries."""

    name = "l1"

    def _norm(self, M):
        return M.abs().sum(dim=(-2, -1))


class MixedNorm(Norm):
    r""":math:`\|M\|_{p,q}`: the ``p``-norm of every row, then the ``q``-norm of those."""

    def __init__(self, p: float = 2.0, q: float = 1.0):
        for name, x in (("p", p), ("q", q)):
            if not (x >= 1):
                raise ValueError(f"mixed norm needs {name} >= 1 (or inf), got {x}")
        self.p, self.q = float(p), float(q)
        self.name = f"l{_fmt(p)},{_fmt(q)}"

    def _norm(self, M):
        rows = torch.linalg.vector_norm(M, ord=self.p, dim=-1)
        return torch.linalg.vector_norm(rows, ord=self.q, dim=-1)

    def __repr__(self):
        return f"MixedNorm(p={_fmt(self.p)}, q={_fmt(self.q)})"


class ConvOperatorNorm(Norm):
    r"""Exact operator norm of a convolution with circular padding on inputs of ``input_size``.

    With circular padding a convolution is block-circulant, so it is diagonalised by the
    discrete Fourier transform over positions: its singular values are those of the
    ``c_out x c_in`` matrices :math:`\hat K(\omega) = \sum_x K(x) e^{-2 \pi i \omega x / N}`,
    and the operator norm is :math:`\max_\omega \sigma_1(\hat K(\omega))`. Differentiable
    (complex SVD). Weights without spatial dimensions (``nn.Linear``) get the spectral norm.
    Biases are not part of the linear operator and are not penalised by this norm.

    Examples
    --------
    >>> import torch
    >>> K = torch.zeros(1, 1, 3, 3); K[0, 0, 1, 1] = 2.0      # 2 x identity
    >>> float(ConvOperatorNorm((8, 8))(K))
    2.0
    """

    kernel_norm = True

    def __init__(self, input_size):
        self.input_size = tuple(int(n) for n in input_size)
        self.name = f"conv_op{'x'.join(map(str, self.input_size))}"

    def _norm(self, K):
        d = len(self.input_size)
        if K.ndim < 2 + d:  # a matrix: plain spectral norm
            return torch.linalg.matrix_norm(K, ord=2)
        ks = K.shape[-d:]
        if any(k > n for k, n in zip(ks, self.input_size)):
            raise ValueError(f"kernel size {tuple(ks)} exceeds the input size {self.input_size} of ConvOperatorNorm")
        Kf = torch.fft.fftn(K, s=self.input_size, dim=tuple(range(-d, 0)))
        Kf = Kf.movedim(-d - 2, -1).movedim(-d - 2, -1)  # (..., *N, c_out, c_in)
        sv = torch.linalg.matrix_norm(Kf, ord=2)
        return sv.flatten(-d).amax(-1)

    def __repr__(self):
        return f"ConvOperatorNorm(input_size={self.input_size})"


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else (str(int(x)) if float(x).is_integer() else str(x))


_FACTORIES = {
    "fro": Frobenius, "frobenius": Frobenius,
    "fro2": FrobeniusSquared, "fro_squared": FrobeniusSquared, "frobenius_squared": FrobeniusSquared,
    "spectral": SpectralNorm, "spectral_exact": lambda: SpectralNorm(exact=True),
    "nuclear": NuclearNorm, "max": MaxNorm, "l1": L1Norm, "l21": lambda: MixedNorm(2, 1),
    "mixed": lambda: MixedNorm(2, 1),
}

#: The names accepted by :func:`get_norm` (besides ``'l<p>,<q>'``).
NORM_NAMES = ("fro", "fro2", "spectral", "spectral_exact", "nuclear", "max", "l1", "l21")


def get_norm(spec: Union[str, Norm, Callable]) -> Norm:
    """A fresh norm object from a name (see the module table), ``'l<p>,<q>'``, or a norm.

    Raises ``ValueError`` naming the accepted names for an unknown one.
    """
    if isinstance(spec, Norm):
        return spec
    if callable(spec) and not isinstance(spec, str):
        return _CallableNorm(spec)
    if not isinstance(spec, str):
        raise TypeError(f"norm must be a name or a Norm, got {type(spec).__name__}")
    key = spec.strip().lower()
    if key in _FACTORIES:
        return _FACTORIES[key]()
    m = re.fullmatch(r"(?:l|mixed)\(?\s*([0-9.]+|inf)\s*,\s*([0-9.]+|inf)\s*\)?", key)
    if m:
        return MixedNorm(float(m.group(1)), float(m.group(2)))
    raise ValueError(f"unknown norm {spec!r}: choose one of {', '.join(NORM_NAMES)} or 'l<p>,<q>' (e.g. 'l2,1')")


class _CallableNorm(Norm):
    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def _norm(self, M):
        return self.fn(M)
