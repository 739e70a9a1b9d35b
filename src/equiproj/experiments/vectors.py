r"""Experiment 'vectors': O(5) invariant regression, O(3) inertia and modified inertia.

Tasks (:func:`equiproj.data.make_vector_task`): ``o5`` (input two O(5) vectors, output an
invariant scalar), ``inertia`` (5 masses and 5 positions, output the inertia tensor in
``V (x) V``) and ``modified_inertia``, whose target ``I + c (I e_z) e_z^T`` keeps only the
symmetries fixing the z axis; ``c`` is the experiment's ``level`` (default 0.3).

Models. ``arch=emlp`` (default): an equivariant MLP in the spirit of EMLP (Finzi, Welling and
Wilson 2021) built from :class:`equiproj.nn.RepLinear` layers: every block maps its input ``h``
to a few vectors ``b`` (a linear layer), forms the bilinear features ``b (x) b``
(:class:`equiproj.nn.TensorSquare`), and applies a linear layer and a gated nonlinearity to
``[h, b (x) b]``. Its weights are free; the methods pull them towards equivariance (projection
penalty, RPP, PER, sampled penalties) or constrain them (strict). ``arch=mlp``: a plain MLP on
the raw coordinates (method ``plain``), the non-equivariant reference. ``model=small`` shrinks the
equivariant MLP so that PER's dense per-layer projectors fit in memory (with the default model
PER's memory guard refuses: one layer would need a 39.7 GB matrix).

Initialisation: the regularised models start from the equivariant projection of their random
initialisation (the strict model's starting point; RPP's free path likewise starts at zero), so
that the penalty controls how much non-equivariance the data pulls in; ``--option init=random``
starts from the raw initialisation instead (much of which is non-equivariant and has to be
removed first).

Targets are divided by their root mean square on the training split (one scalar, which keeps
every task equivariant), so the MSE is relative to the mean squared target. Metrics: test MSE,
and the sampled relative equivariance error of the model under the task's full group (O(5) or
O(3)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from ..data.vectors import make_vector_task
from ..groups import o3, orthogonal
from ..metrics import equivariance_error
from ..nn import GatedNonlinearity, RepLinear, TensorSquare
from ..regularise import equivariant_init_
from ..train import TrainConfig
from ._core import Experiment, RunConfig, Setup, figures_dir, markdown_table, register_experiment, save_figure

__all__ = ["task_representations", "EquivariantMLP", "VectorsExperiment"]


def task_representations(task: str):
    """``(group, in_rep, out_rep)`` of a vector task."""
    if task == "o5":
        G = orthogonal(5)
        return G, 2 * G.standard(), G.trivial()
    G = o3()
    V = G.standard()
    return G, 5 * G.trivial() + 5 * V, V * V


class EquivariantMLP(nn.Module):
    """Blocks ``h -> gate(W [h, (B h) (x) (B h)])`` and a linear read-out of ``[h, (B h) (x) (B h)]``.

    Parameters
    ----------
    in_rep, out_rep : Representation
    n_scalars, n_vectors : int
        Hidden width: scalars (through ReLU) and gated vector fields per block.
    n_bilinear : int
        Vectors fed to the tensor square in every block.
    n_bilinear_scalars : int
        Scalars fed to the tensor square (their products with vectors give mass-weighted
        positions and the like).
    depth : int
        Number of gated blocks.
    """

    def __init__(self, in_rep, out_rep, n_scalars: int = 16, n_vectors: int = 8, n_bilinear: int = 3,
                 depth: int = 2, n_bilinear_scalars: int = 0):
        super().__init__()
        G = in_rep.group
        V, triv = G.standard(), G.trivial()
        self.blocks = nn.ModuleList()
        rho = in_rep
        B = n_bilinear * V if not n_bilinear_scalars else n_bilinear_scalars * triv + n_bilinear * V
        for _ in range(depth):
            gate = GatedNonlinearity(n_vectors * V, n_scalars=n_scalars)
            square = TensorSquare(B)
            self.blocks.append(nn.ModuleDict(dict(
                to_bilinear=RepLinear(rho, B, bias=False), square=square,
                mix=RepLinear(rho + square.out_rep, gate.in_rep), gate=gate)))
            rho = gate.out_rep
        square = TensorSquare(B)
        self.to_bilinear = RepLinear(rho, B, bias=False)
        self.square = square
        self.readout = RepLinear(rho + square.out_rep, out_rep)
        self.in_rep, self.out_rep = in_rep, out_rep

    def forward(self, x):
        h = x
        for blk in self.blocks:
            q = blk["square"](blk["to_bilinear"](h))
            h = blk["gate"](blk["mix"](torch.cat([h, q], dim=-1)))
        q = self.square(self.to_bilinear(h))
        return self.readout(torch.cat([h, q], dim=-1))


def plain_mlp(d_in: int, d_out: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


@register_experiment
class VectorsExperiment(Experiment):
    name = "vectors"
    description = "O(5) regression, O(3) inertia and modified inertia (EMLP family) with equivariant MLPs"
    presets = {
        "ci": dict(data="ci", steps=1500, batch_size=64, lr=1e-2, n_scalars=16, n_vectors=16, n_bilinear=10,
                   n_bilinear_scalars=5, depth=1, mlp_hidden=128, eval_samples=16, grad_clip=1.0),
        "paper": dict(data="paper", steps=20000, batch_size=128, lr=3e-3, n_scalars=32, n_vectors=24,
                      n_bilinear=12, n_bilinear_scalars=8, depth=2, mlp_hidden=384, eval_samples=64,
                      grad_clip=1.0),
    }
    methods = ("projection", "plain", "strict", "sample-output", "rpp", "per")
    level_name = "c (modified inertia)"
    default_level = None
    default_sweep = {"method": ["plain", "strict", "projection"], "lambda_perp": [1e-2, 3e-2, 1e-1, 3e-1, 1.0]}

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        unknown = set(cfg.options) - {"task", "arch", "init", "model"}
        if unknown:
            raise ValueError(f"unknown options for vectors: {sorted(unknown)} (known: task, arch, init, model)")
        if cfg.options.get("model", "default") not in ("default", "small"):
            raise ValueError(f"option model must be 'default' or 'small', got {cfg.options['model']!r}")
        if cfg.options.get("init", "equivariant") not in ("equivariant", "random"):
            raise ValueError(f"option init must be 'equivariant' or 'random', got {cfg.options['init']!r}")
        task = cfg.options.get("task", "modified_inertia")
        if task not in ("o5", "inertia", "modified_inertia"):
            raise ValueError(f"option task must be 'o5', 'inertia' or 'modified_inertia', got {task!r}")
        arch = cfg.options.get("arch", "emlp")
        if arch not in ("emlp", "mlp"):
            raise ValueError(f"option arch must be 'emlp' or 'mlp', got {arch!r}")
        if arch == "mlp" and cfg.method not in ("plain", "sample-output"):
            raise ValueError("the plain MLP has no declared layers: use method 'plain' or 'sample-output'")
        if task == "o5" and cfg.method == "per":
            raise ValueError("PER needs an exact dense projector, which equiproj cannot integrate for O(5)")

    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        task = cfg.options.get("task", "modified_inertia")
        arch = cfg.options.get("arch", "emlp")
        c = 0.3 if cfg.level is None else float(cfg.level)
        data = make_vector_task(task, preset["data"], seed=cfg.seed, c=c)
        scale = data["y_train"].pow(2).mean().sqrt()
        for k in ("y_train", "y_val", "y_test"):
            data[k] = data[k] / scale
        G, rin, rout = task_representations(task)
        torch.manual_seed(cfg.seed)
        if arch == "emlp":
            if cfg.options.get("model", "default") == "small":  # small enough for PER's dense matrices
                preset = dict(preset, n_scalars=8, n_vectors=6, n_bilinear=5, n_bilinear_scalars=2)
            model = EquivariantMLP(rin, rout, preset["n_scalars"], preset["n_vectors"], preset["n_bilinear"],
                                   preset["depth"], preset["n_bilinear_scalars"])
            if cfg.options.get("init", "equivariant") == "equivariant" and cfg.method != "plain":
                equivariant_init_(model, rescale=False)
        else:
            model = plain_mlp(rin.dim, rout.dim, preset["mlp_hidden"])
        model = model.to(device)
        tr = (data["x_train"].to(device), data["y_train"].to(device))
        val = (data["x_val"].to(device), data["y_val"].to(device))
        te = (data["x_test"].to(device), data["y_test"].to(device))

        def loss_fn(m, batch):
            return nn.functional.mse_loss(m(batch[0]), batch[1])

        def mse(m, split):
            with torch.no_grad():
                return float(nn.functional.mse_loss(m(split[0]), split[1]))

        def eval_fn(m):
            return {"val_mse": mse(m, val)}

        n = preset["eval_samples"]

        def final_metrics(m):
            gen = torch.Generator().manual_seed(1000 + cfg.seed)
            elements = G.sample(n, generator=gen, dtype=torch.float32)
            err = equivariance_error(m, te[0], rin, rout, elements=elements.to(device) if G.is_finite else elements)
            return {"test_mse": mse(m, te), "val_mse": mse(m, val), "equivariance_error": err.mean,
                    "equivariance_error_max": err.max, "task": task, "arch": arch}

        tc = TrainConfig(steps=preset["steps"], batch_size=preset["batch_size"], lr=preset["lr"], optimizer="adam",
                         schedule="cosine", grad_clip=preset.get("grad_clip"), log_every=max(1, preset["steps"] // 20),
                         eval_every=max(1, preset["steps"] // 5), checkpoint_every=max(1, preset["steps"] // 4))
        return Setup(model=model, train_data=tr, loss_fn=loss_fn, train_config=tc, final_metrics=final_metrics,
                     eval_fn=eval_fn, method_options=dict(act_in=rin, act_out=rout, group=G))

    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        parts = [f"## vectors\n\n{self.description}. MSE on the test split, relative to the mean squared "
                 "target; equivariance error: mean relative error under sampled elements of O(5) / O(3).\n"]
        for task in sorted({r.get("task") for r in rows if r.get("task")}):
            rs = [r for r in rows if r.get("task") == task]
            parts.append(f"### {task}\n")
            parts.append(markdown_table(rs, ["arch", "method", "norm", "lambda_perp", "level"],
                                        ["test_mse", "equivariance_error", "time_per_step_s"],
                                        {"level": "c", "test_mse": "test MSE", "equivariance_error": "equiv. error",
                                         "time_per_step_s": "s / step"}))
            fig = self._lambda_plot(rs, task, out, plt)
            if fig:
                parts.append(f"\n![{task}: test MSE and equivariance error against lambda_perp]({fig})\n")
        return "\n".join(parts)

    def _lambda_plot(self, rows, task, out, plt):
        """Test MSE and equivariance error against lambda_perp (Frobenius runs), one colour per c;
        the strict model dashed and the plain MLP dotted in the same colour."""
        proj = [r for r in rows if r["method"] == "projection" and r["lambda_perp"] > 0 and r.get("norm") == "fro"]
        if len({r["lambda_perp"] for r in proj}) < 2:
            return None

        def mean(rs, key):
            return sum(r[key] for r in rs) / len(rs)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
        levels = sorted({r.get("level") for r in proj}, key=lambda v: -1 if v is None else v)
        colours = plt.cm.viridis([i / max(1, len(levels) - 1) * 0.85 for i in range(len(levels))])
        for colour, lvl in zip(colours, levels):
            lab = "" if lvl is None else f"c={lvl:g}"
            pts = sorted({r["lambda_perp"] for r in proj if r.get("level") == lvl})
            groups = [[r for r in proj if r["lambda_perp"] == p and r.get("level") == lvl] for p in pts]
            a1.plot(pts, [mean(g, "test_mse") for g in groups], marker="o", color=colour, label=f"projection {lab}")
            a2.plot(pts, [mean(g, "equivariance_error") for g in groups], marker="o", color=colour)
            for name, style in (("strict", "--"), ("plain", ":")):
                rs = [r for r in rows if r["method"] == name and r.get("level") == lvl]
                if rs:
                    a1.axhline(mean(rs, "test_mse"), ls=style, color=colour, lw=1,
                               label=f"{name} {lab}" if name == "strict" else None)
        a1.plot([], [], ls=":", color="gray", label="plain MLP (dotted)")
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("lambda_perp")
        a1.set_ylabel("test MSE (relative)")
        a2.set_ylabel("equivariance error")
        a1.legend(fontsize=6, ncol=2)
        fig.suptitle(f"{task}: projection penalty (Frobenius) against strict (dashed) and plain MLP (dotted)",
                     fontsize=9)
        return save_figure(fig, figures_dir(out) / f"vectors_{task}_lambda.png")
