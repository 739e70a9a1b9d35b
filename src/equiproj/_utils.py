"""Small numerical helpers shared by every layer of the package (private)."""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, Hashable, Tuple

import torch

__all__ = [
    "ORTHOGONALITY_TOL",
    "check_orthogonal",
    "orthogonalize",
    "null_space_psd",
    "block_diag_batch",
    "digest",
    "TensorCache",
    "resolve_dtype",
]

#: Largest entry of ``|M^T M - I|`` accepted for a matrix that claims to be orthogonal.
ORTHOGONALITY_TOL = 1e-6


def resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Return ``dtype`` or the default floating dtype, refusing non-floating types."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"expected a real floating dtype (float32 or float64), got {dtype}")
    return dtype


def check_orthogonal(M: torch.Tensor, what: str, tol: float = ORTHOGONALITY_TOL) -> None:
    """Raise ``ValueError`` unless every matrix in ``M`` (shape (..., d, d)) is orthogonal."""
    if M.ndim < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{what}: expected square matrices of shape (..., d, d), got shape {tuple(M.shape)}")
    M = M.to(torch.float64)
    eye = torch.eye(M.shape[-1], dtype=torch.float64, device=M.device)
    err = (M.transpose(-1, -2) @ M - eye).abs().amax().item() if M.numel() else 0.0
    if not err <= tol:
        raise ValueError(
            f"{what} is not orthogonal: max |M^T M - I| = {err:.3g} > {tol:g}. equiproj only works with "
            "real orthogonal representations; orthogonalise explicitly with "
            "equiproj.groups.orthogonalize(M) if this is intended."
        )


def orthogonalize(M: torch.Tensor) -> torch.Tensor:
    """Nearest orthogonal matrix (polar factor ``U V^T`` of ``M = U S V^T``), batched.

    Examples
    --------
    >>> import torch
    >>> Q = orthogonalize(torch.tensor([[2.0, 0.1], [0.0, 1.0]], dtype=torch.float64))
    >>> bool(torch.allclose(Q.T @ Q, torch.eye(2, dtype=torch.float64)))
    True
    """
    U, _, Vh = torch.linalg.svd(M)
    return U @ Vh


def null_space_psd(M: torch.Tensor, rtol: float = 1e-9) -> torch.Tensor:
    """Orthonormal basis (columns) of the null space of a symmetric PSD matrix ``M`` (float64).

    ``M`` is typically ``sum_c A_c^T A_c`` for stacked linear constraints ``A_c x = 0``; an
    eigenvalue ``lam`` counts as zero when ``lam <= rtol * max(1, lam_max)``.
    """
    M = 0.5 * (M + M.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(M)
    scale = max(1.0, float(evals.abs().max())) if evals.numel() else 1.0
    keep = evals <= rtol * scale
    return evecs[:, keep].contiguous()


def block_diag_batch(blocks) -> torch.Tensor:
    """Block-diagonal matrices from a list of batched blocks ``(n, d_i, d_i)`` -> ``(n, D, D)``."""
    n = blocks[0].shape[0]
    D = sum(b.shape[-1] for b in blocks)
    out = blocks[0].new_zeros((n, D, D))
    o = 0
    for b in blocks:
        d = b.shape[-1]
        out[:, o:o + d, o:o + d] = b
        o += d
    return out


def digest(t: torch.Tensor) -> str:
    """A short content hash of a tensor (used as a cache key for user-given matrices)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha1(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class TensorCache:
    """Per (device, dtype) copies of float64 master tensors, built on first use.

    Projectors keep their matrices once in float64 on the CPU and hand out converted copies;
    nothing is rebuilt per training step.
    """

    def __init__(self) -> None:
        self._store: Dict[Tuple[Hashable, str, torch.dtype], torch.Tensor] = {}

    def get(self, name: Hashable, master: torch.Tensor | Callable[[], torch.Tensor],
            device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        key = (name, str(device), dtype)
        t = self._store.get(key)
        if t is None:
            m = master() if callable(master) else master
            t = m.to(device=device, dtype=dtype if (dtype is not None and m.is_floating_point()) else m.dtype)
            self._store[key] = t
        return t

    def clear(self) -> None:
        self._store.clear()
