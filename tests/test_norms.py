import numpy as np
import pytest
import torch

from equiproj.norms import MixedNorm, SpectralNorm, get_norm

F64 = torch.float64
ALL = ["fro", "fro2", "spectral", "spectral_exact", "nuclear", "max", "l1", "l21", "l3,2", "l2,inf"]


def _m(seed=0, shape=(5, 7)):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _numpy_ref(name, M):
    A = M.numpy()
    if name == "fro":
        return np.linalg.norm(A, "fro")
    if name == "fro2":
        return np.linalg.norm(A, "fro") ** 2
    if name in ("spectral", "spectral_exact"):
        return np.linalg.svd(A, compute_uv=False)[0]
    if name == "nuclear":
        return np.linalg.svd(A, compute_uv=False).sum()
    if name == "max":
        return np.abs(A).max()
    if name == "l1":
        return np.abs(A).sum()
    p, q = {"l21": (2, 1), "l3,2": (3, 2), "l2,inf": (2, np.inf)}[name]
    rows = (np.abs(A) ** p).sum(1) ** (1 / p)
    return rows.max() if np.isinf(q) else (rows ** q).sum() ** (1 / q)


@pytest.mark.parametrize("name", ALL)
def test_values_against_numpy(name):
    M = _m()
    n = get_norm(name)
    if name == "spectral":
        n = SpectralNorm(n_iter=200)
    assert abs(float(n(M)) - _numpy_ref(name, M)) < 1e-9


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_float64(name):
    M = _m(1, (4, 3)).requires_grad_(True)
    n = SpectralNorm(n_iter=100) if name == "spectral" else get_norm(name)
    assert torch.autograd.gradcheck(lambda x: n(x), (M,), eps=1e-6, atol=1e-5)


def test_batched_norms():
    M = _m(2, (3, 4, 5))
    for name in ALL:
        n = SpectralNorm(n_iter=200) if name == "spectral" else get_norm(name)
        out = n(M)
        assert out.shape == (3,)
        assert abs(float(out[1]) - _numpy_ref(name, M[1])) < 1e-8


def test_spectral_power_iteration_is_warm_started():
    M = _m(3, (30, 20))
    exact = float(torch.linalg.matrix_norm(M, ord=2))
    n = SpectralNorm(n_iter=1)
    vals = [float(n(M)) for _ in range(60)]
    assert vals[0] < exact
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))  # monotone by warm start
    assert abs(vals[-1] - exact) < 1e-6 * exact
    # fresh() forgets the state
    assert abs(float(n.fresh().fresh()(M)) - exact) < 1e-6 * exact  # a copy keeps the converged vector
    assert float(SpectralNorm(n_iter=1)(M)) == pytest.approx(vals[0])


def test_frobenius_gradient_at_zero_is_finite():
    M = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    get_norm("fro")(M).backward()
    assert torch.isfinite(M.grad).all() and M.grad.abs().max() == 0


def test_errors():
    with pytest.raises(ValueError, match="unknown norm 'frobenious'.*fro"):
        get_norm("frobenious")
    with pytest.raises(ValueError, match="p >= 1"):
        MixedNorm(0.5, 1)
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        get_norm("fro")(torch.ones(3))
