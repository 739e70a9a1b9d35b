"""Experiment 'volumes': the 3D ResNet on SO(3) / O(3) fields, the experiment and its CLI."""

import pytest
import torch

from equiproj.actions import transform_feature_map
from equiproj.baselines import make_method
from equiproj.data.volumes import VolumeConfig, render_volumes, sample_poses
from equiproj.experiments.volumes import ResNet3d, odd_size
from equiproj.groups import full_octahedral, o3, octahedral, so3


def _net(G, norm="field", seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(width=1, L=1, kernels=(3, 3, 3), input_size=8)
    opts.update(kw)
    return ResNet3d(4, G, norm=norm, **opts)


def _trained_stats(net, x):
    """A few training-mode forwards so that the batch norms hold non-trivial running statistics."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net.eval()


def _cube_error(net, x, F):
    E = F.standard()(F.elements(), dtype=torch.float32)
    with torch.no_grad():
        y = net(x)
        errs = [float((net(transform_feature_map(x, E[i:i + 1], so3().trivial() if F.order == 24 else
                                                 o3().trivial())) - y).abs().max()) for i in range(F.order)]
    return max(errs) / float(y.abs().max())


def test_odd_size():
    assert [odd_size(n) for n in (8, 16, 17, 28, 32, 33)] == [17, 17, 17, 33, 33, 33]


@pytest.mark.parametrize("G,F", [(so3(), octahedral()), (o3(), full_octahedral())])
def test_strict_model_is_invariant_under_the_cube_rotations(G, F):
    x = torch.randn(4, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    net = _net(G, L=2)
    make_method("strict", net)
    _trained_stats(net, x)
    assert _cube_error(net, x, F) < 1e-5
    # the same weights without the constraint are far from invariant
    plain = _trained_stats(make_method("plain", _net(G, L=2)).model, x)
    assert _cube_error(plain, x, F) > 1e-2


def test_per_channel_norms_break_invariance_even_when_strict():
    """The paper's variant (BatchNorm3d and ELU on every channel) is not invariant with P(W) = W."""
    x = torch.randn(4, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    net = _net(so3(), norm="channel")
    make_method("strict", net)
    _trained_stats(net, x)
    assert _cube_error(net, x, octahedral()) > 1e-3


def test_mirror_images_separable_under_so3_not_under_o3():
    """An O(3)-invariant network gives a volume and its mirror image the same output; an
    SO(3)-invariant one does not (weakly at initialisation: chiral invariants need deep gated paths)."""
    x = torch.randn(4, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    gap = {}
    for G in (so3(), o3()):
        net = _net(G, L=2, seed=3)
        make_method("strict", net)
        net = _trained_stats(net, x)
        with torch.no_grad():
            y, y_mirror, y_rot = net(x), net(x.flip(2)), net(x.flip(2).flip(3))
        scale = float(y.abs().max())
        gap[G.name] = float((y - y_mirror).abs().max()) / scale
        assert float((y - y_rot).abs().max()) < 2e-6 * scale  # two flips: a rotation of the cube
    assert gap["O(3)"] < 2e-6
    assert gap["SO(3)"] > 2e-5
    # the data's mirror helices are exact mirror images (tests/test_data_volumes.py), so O(3) cannot separate them
    cfg = VolumeConfig(size=8, rotation_std_deg=0.0, offset=0.0)
    poses = sample_poses(cfg, 1, torch.Generator().manual_seed(0))
    poses = {k: v.repeat(2, *([1] * (v.ndim - 1))) for k, v in poses.items()}
    v = render_volumes(["helix_right", "helix_left"], poses, 8)
    with torch.no_grad():
        out = net(v)
    assert float((out[0] - out[1]).abs().max()) < 1e-5 * float(out.abs().max())


def test_lambda_controls_the_defect():
    x = torch.randn(8, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    defects = {}
    for lam in (1e-4, 10.0):
        net = _net(so3(), seed=0)
        m = make_method("projection", net, lambda_perp=lam, seed=0)
        opt = torch.optim.Adam(m.regulariser.param_groups(lr=1e-2) if hasattr(m, "regulariser") else net.parameters())
        for _ in range(15):
            loss = torch.nn.functional.cross_entropy(net(x), y) + m.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        defects[lam] = sum(r.defect_norm for r in m.report())
    assert defects[10.0] < 0.2 * defects[1e-4]
    assert defects[1e-4] > 0


def test_model_errors():
    with pytest.raises(ValueError, match="norm must be"):
        ResNet3d(3, so3(), norm="batch")
    with pytest.raises(ValueError, match="odd"):
        ResNet3d(3, so3(), kernels=(4, 3, 3))
    with pytest.raises(ValueError, match="29, 15, 8"):
        ResNet3d(3, so3(), resize=29)
    with pytest.raises(ValueError, match="SO\\(3\\) or O\\(3\\)"):
        ResNet3d(3, octahedral())
    with pytest.raises(ValueError, match="expects volumes"):
        _net(so3())(torch.zeros(2, 2, 8, 8, 8))


# ---------------------------------------------------------------------------------- the experiment

from pathlib import Path  # noqa: E402

from equiproj.cli import main  # noqa: E402
from equiproj.experiments import RunConfig, report, run  # noqa: E402
from equiproj.experiments.volumes import cube_elements, multiclass_auc  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("volumes-runs"))


@pytest.fixture(scope="module")
def rows(out, tmp_path_factory):
    """ci preset, 3 steps: projection (SO(3), two weights) and strict O(3) through the CLI, plain SO(3)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "volumes-cache"))
    try:
        res = {}
        for lam in ("0.001", "1.0"):
            assert main(["run", "volumes", "--preset", "ci", "--method", "projection", "--option", "group=so3",
                         "--lambda-perp", lam, "--steps", "3", "--quiet", "--out", out]) == 0
        for r in [RunConfig("volumes", method="projection", lambda_perp=lam, steps=3, options={"group": "so3"})
                  for lam in (1e-3, 1.0)]:
            res[("projection", r.lambda_perp)] = run(r, out, progress=False)  # finished: read back
        assert main(["run", "volumes", "--preset", "ci", "--method", "strict", "--option", "group=o3", "--lambda-perp",
                     "0", "--steps", "3", "--quiet", "--out", out]) == 0
        for m, g in (("strict", "o3"), ("plain", "so3")):  # strict O(3): finished by the CLI, read back
            res[(m, g)] = run(RunConfig("volumes", method=m, lambda_perp=0.0, steps=3, options={"group": g}), out,
                              progress=False)
    finally:
        mp.undo()
    return res


def test_runs_and_metrics(rows):
    for key, r in rows.items():
        for k in ("accuracy", "auc", "sel_accuracy", "sel_auc", "rod_pair_accuracy", "helix_pair_accuracy"):
            assert 0.0 <= r[k] <= 1.0, (key, k)
        assert r["steps_trained"] == 3 and r["reported"] == "selected"
        assert r["equiv_cube"] >= 0 and r["equiv_haar"] >= 0
    # exactly invariant on the grid when strict, not otherwise; interpolated rotations are approximate
    strict = rows[("strict", "o3")]
    assert strict["equiv_cube"] < 1e-5 and strict["cube_prediction_changes"] == 0.0
    assert strict["equiv_haar"] > 10 * strict["equiv_cube"]
    assert rows[("plain", "so3")]["equiv_cube"] > 100 * strict["equiv_cube"]
    assert rows[("strict", "o3")]["group"] == "O(3)" and rows[("plain", "so3")]["group"] == "SO(3)"
    assert rows[("projection", 1.0)]["defect_sum"] < rows[("projection", 1e-3)]["defect_sum"]


def test_layers_report(out, rows):
    import json

    r = rows[("projection", 1e-3)]
    layers = json.loads((Path(out) / "runs" / r["run_id"] / "layers.json").read_text())
    assert len(layers) == 9 and all(layer["defect_norm"] >= 0 for layer in layers)


def test_report(out, rows):
    text = report(out)
    assert "## volumes" in text and "| SO(3), field norms | projection | split |" in text
    assert "volumes_ci_lambda.png" in text and (Path(out) / "figures" / "volumes_ci_lambda.png").exists()


@pytest.mark.parametrize("options,message", [({"group": "so2"}, "option group"), ({"norm": "layer"}, "option norm"),
                                              ({"rotation": "random"}, "option rotation"), ({"L": 0}, "option L"),
                                              ({"colour": 1}, "unknown options")])
def test_option_errors(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run(RunConfig("volumes", options=options), str(tmp_path), progress=False)


def test_cli_error(tmp_path, capsys):
    assert main(["run", "volumes", "--option", "group=so2", "--out", str(tmp_path)]) == 2
    assert "option group must be" in capsys.readouterr().err


def test_multiclass_auc_against_a_pairwise_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(40, 3, generator=g).round(decimals=1)  # with ties
    y = torch.randint(3, (40,), generator=g)
    ref = []
    for c in range(3):
        pos, neg = s[y == c, c].tolist(), s[y != c, c].tolist()
        ref.append(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)))
    assert multiclass_auc(s, y) == pytest.approx(sum(ref) / 3, abs=1e-12)


def test_cube_elements_map_the_grid_onto_itself():
    from equiproj.actions import grid_permutation

    for G, n in ((so3(), 24), (o3(), 48)):
        E = cube_elements(G)
        assert E.shape == (n, 3, 3) and grid_permutation(E.double(), (5, 5, 5)) is not None
        G.as_elements(E)  # valid elements of the group


def test_projector_state_is_orders_of_magnitude_below_dense_bases():
    from equiproj.benchmarks.volumes import projector_memory
    from equiproj.regularise import declared_layers

    for G in (so3(), o3()):
        net = ResNet3d(9, G, width=2, L=2, kernels=(5, 3, 5), input_size=16)
        mem = projector_memory(net)
        layers = declared_layers(net)
        assert len(layers) == 9
        # independent count of a dense basis of the kernels: every layer's weight size times its equivariant dimension
        dense = sum(m.weight.numel() * spec.projector.dim * 4 for _, m, spec in layers)
        assert mem["dense_q_bytes"] == dense
        assert 0 < mem["projector_bytes"] * 1000 < mem["dense_q_bytes"]
