"""Group knowledge lives in Group methods: harmonics, matrices, escnn elements; no import circle in groups/."""

import ast
from pathlib import Path

import pytest
import torch

from equiproj.actions import harmonic_representation, harmonics
from equiproj.baselines import grid_symmetries
from equiproj.groups import cyclic, dihedral, o2, o3, octahedral, so2, so3

F64 = torch.float64
GROUPS = Path(__file__).resolve().parents[1] / "src" / "equiproj" / "groups"


def _imports(path: Path):
    """Modules of equiproj.groups that ``path`` imports anywhere (top level or inside functions),
    not counting imports under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skip and node.level == 1 and node.module:
            out.add(node.module)
    return out


def test_groups_modules_import_in_one_direction():
    graph = {p.stem: {m for m in _imports(p) if (GROUPS / f"{m}.py").exists()} for p in GROUPS.glob("_*.py")}
    seen, stack = set(), []

    def visit(n):
        if n in stack:
            raise AssertionError(f"import circle in equiproj.groups: {' -> '.join(stack[stack.index(n):] + [n])}")
        if n in seen:
            return
        stack.append(n)
        for m in graph.get(n, ()):
            visit(m)
        stack.pop()
        seen.add(n)

    for n in graph:
        visit(n)
    assert "_group" in graph["_finite"] and "_decompose" not in graph["_rep"]


@pytest.mark.parametrize("G", [cyclic(4), cyclic(6), dihedral(3), so2(), o2()], ids=lambda G: G.name)
@pytest.mark.parametrize("l", [0, 1, 2, 3])
def test_harmonic_representation_moves_the_harmonics(G, l):
    H = G.harmonic_representation(l)
    assert harmonic_representation(G, l) is H or harmonic_representation(G, l).key == H.key
    g = G.elements() if G.is_finite else G.sample(5, generator=torch.Generator().manual_seed(0))
    M = G.standard()(g, dtype=F64)
    x = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    Y = harmonics(l, x)  # (7, dim)
    Yg = torch.stack([harmonics(l, x @ m.T) for m in M])  # Y(g x)
    HY = torch.einsum("nab,pb->npa", H(g, dtype=F64), Y)
    assert torch.allclose(Yg, HY, atol=1e-10)


def test_harmonics_in_space():
    for G in (octahedral(), so3(), o3()):
        g = G.elements()[:6] if G.is_finite else G.sample(4, generator=torch.Generator().manual_seed(0))
        M = G.standard()(g, dtype=F64)
        x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
        for l in (1, 2):
            H = G.harmonic_representation(l)
            Yg = torch.stack([harmonics(l, x @ m.T) for m in M])
            assert torch.allclose(Yg, torch.einsum("nab,pb->npa", H(g, dtype=F64), harmonics(l, x)), atol=1e-10)


def test_contains_matrices_and_grid_symmetries():
    from equiproj.baselines._util import _signed_permutations

    S = _signed_permutations(2)
    assert int(so2().contains_matrices(S).sum()) == 4 and int(o2().contains_matrices(S).sum()) == 8
    assert int(cyclic(4).contains_matrices(S).sum()) == 4 and int(cyclic(8).contains_matrices(S).sum()) == 4
    S3 = _signed_permutations(3)
    assert int(so3().contains_matrices(S3).sum()) == 24 and int(o3().contains_matrices(S3).sum()) == 48
    assert grid_symmetries(so2(), (3, 3)).shape[0] == 4


def test_a_renamed_group_keeps_its_knowledge():
    G = so2()
    G.name = "rotations of the plane"  # nothing dispatches on the name
    try:
        assert G.harmonic_representation(2).key == G.irrep(2).key
        assert grid_symmetries(G, (5, 5)).shape[0] == 4
    finally:
        G.name = "SO(2)"


def test_escnn_element_args_follow_the_elements():
    args = cyclic(4).escnn_element_args(torch.tensor([0, 1, 3]))
    assert [a for a, _ in args] == [(0,), (1,), (3,)]
    args = dihedral(3).escnn_element_args(torch.tensor([1, 4]))  # r, and r f
    assert [a[0][0] for a, _ in args] == [0, 1]
    (r, kw), = so3().escnn_element_args(so3().sample(1, generator=torch.Generator().manual_seed(0)))
    assert kw == {"param": "MAT"} and r[0].shape == (3, 3)
