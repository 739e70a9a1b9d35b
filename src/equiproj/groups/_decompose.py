"""Numerical decomposition of representations into irreducibles (private module).

The method needs only an exact way to integrate over the group: all elements of a finite
group, or the group's exact quadrature rule for band-limited functions (``G.quadrature``).

1. A random symmetric ``H`` is averaged over the group, ``C = int rho(g) H rho(g)^T dg``. ``C``
   commutes with every ``rho(g)``; for generic ``H`` each eigenspace of ``C`` is one irreducible
   copy (also for irreps of complex and quaternionic type, whose self-adjoint commutant
   elements still have eigenspaces of one copy).
2. Each eigenspace ``B`` is matched with a known irrep ``psi`` through characters, and aligned
   with it by the intertwiner ``T = int rho_B(g) X psi(g)^T dg`` (random ``X``), which is a
   multiple of an orthogonal matrix by Schur's lemma. The embedding ``B T`` satisfies
   ``rho(g) B T = B T psi(g)``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from ._rep import Decomposition, Irrep, Representation

__all__ = ["decompose_numerically", "irreducible_subspaces", "group_average_conjugation"]

_F64 = torch.float64


def group_average_conjugation(rep: Representation, H: torch.Tensor, elements, weights) -> torch.Tensor:
    """``sum_q w_q rho(g_q) H rho(g_q)^T`` for a symmetric ``H`` (float64, chunked)."""
    d = rep.dim
    n = len(weights)
    chunk = max(1, (1 << 22) // max(1, d * d))
    C = torch.zeros(d, d, dtype=_F64)
    for s in range(0, n, chunk):
        g = elements[s:s + chunk]
        w = weights[s:s + chunk]
        Y = rep.act(g, H)  # rho(g) H, (c, d, d)
        Z = rep.act(g, Y.transpose(-1, -2).contiguous())  # rho(g) H rho(g)^T (H symmetric)
        C += torch.einsum("q,qij->ij", w, Z)
    return 0.5 * (C + C.T)


def irreducible_subspaces(rep: Representation, elements, weights, generator: torch.Generator,
                          rel_gap: float = 1e-7) -> List[torch.Tensor]:
    """Orthonormal bases ``B`` (d x k) of irreducible invariant subspaces spanning ``R^d``."""
    d = rep.dim
    H = torch.randn(d, d, dtype=_F64, generator=generator)
    H = H + H.T
    C = group_average_conjugation(rep, H, elements, weights)
    evals, V = torch.linalg.eigh(C)
    scale = max(1e-300, float(evals.abs().max()))
    out, start = [], 0
    for i in range(1, d + 1):
        if i == d or (evals[i] - evals[i - 1]) > rel_gap * scale:
            out.append(V[:, start:i])
            start = i
    return out


class _Retry(Exception):
    pass


def _identify(rep: Representation, B: torch.Tensor, elements, weights, candidates: Sequence[Irrep],
              generator: torch.Generator, memo: dict) -> Tuple[Irrep, torch.Tensor]:
    """Find the irrep ``psi`` carried by subspace ``B`` and the embedding ``B T``."""
    k = B.shape[1]
    R_B = B.T @ rep.act(elements, B)  # (n, k, k)
    chi_B = torch.diagonal(R_B, dim1=-2, dim2=-1).sum(-1)
    for psi in candidates:
        if psi.dim != k:
            continue
        if psi.key not in memo:
            P = psi._matrices(elements)
            chi = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1)
            memo[psi.key] = (P, chi, float((weights * chi * chi).sum()))
        P, chi, e = memo[psi.key]
        overlap = float((weights * chi_B * chi).sum())
        if abs(overlap) < 0.5 * e:
            continue
        if abs(overlap - e) > 1e-6 * e:
            raise _Retry()
        X = torch.randn(k, k, dtype=_F64, generator=generator)
        T = torch.einsum("q,qij,jk,qlk->il", weights, R_B, X, P)
        TtT = T.T @ T
        c = float(torch.diagonal(TtT).mean())
        if c < 1e-10:
            raise _Retry()
        T = T / math.sqrt(c)
        if (T.T @ T - torch.eye(k, dtype=_F64)).abs().max() > 1e-8:
            raise _Retry()
        return psi, B @ T
    raise _Retry()


def decompose_numerically(rep: Representation, candidates: Optional[Sequence[Irrep]] = None,
                          attempts: int = 5) -> Decomposition:
    """Decompose ``rep`` into the group's irreps (see the module docstring)."""
    G = rep.group
    L = rep.band_limit
    elements, weights = G.quadrature(2 * L)
    if candidates is None:
        candidates = G.irreps_up_to(L)
    memo: dict = {}
    for attempt in range(attempts):
        gen = torch.Generator().manual_seed(7919 + 104729 * attempt)
        try:
            irreps, cols = [], []
            for B in irreducible_subspaces(rep, elements, weights, gen):
                psi, E = _identify(rep, B, elements, weights, candidates, gen, memo)
                irreps.append(psi)
                cols.append(E)
            Q = torch.cat(cols, dim=1)
            if (Q.T @ Q - torch.eye(rep.dim, dtype=_F64)).abs().max() > 1e-8:
                raise _Retry()
            return Decomposition(tuple(irreps), Q)
        except _Retry:
            continue
    raise RuntimeError(
        f"could not decompose {rep.name} of {G.name} into irreps after {attempts} attempts; "
        "the representation may not be orthogonal or not a homomorphism"
    )
