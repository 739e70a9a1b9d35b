r"""The projection regulariser as a Lightning callback (optional; ``pip install -e ".[lightning]"``).

:class:`ProjectionRegulariserCallback` adds

.. math::

    \sum_l \lambda_\perp \|W_l - P(W_l)\| + \lambda_G \|P(W_l)\|

over the declared layers of a ``LightningModule`` to its training, without changing the
module: after the task loss has been back-propagated and before every optimizer step it adds the
penalty's gradient to the gradients of the declared layers' parameters (those of the optimizer
that steps). The step then sees the gradient of ``task loss + penalty`` — gradient clipping,
accumulation, mixed precision (after unscaling) and manual optimisation included — and the
logged task loss stays the task loss. For proximal training schemes (``scheme="proximal"`` or
``"split-proximal"``, where :class:`equiproj.ProjectionRegulariser` supports them) the callback
calls ``regulariser.attach(optimizer)`` on every optimizer instead and adds no gradient.

It logs ``equiproj/penalty`` at every optimizer step and, every ``log_every_n_steps`` training
steps (default: the trainer's), the relative defect ``||W - P(W)|| / ||W||`` of every declared
layer as ``equiproj/defect/<layer name>``; the same figures are kept in ``callback.history``.
With ``project_at_end=True`` the declared layers are replaced by their equivariant parts when
fitting ends (:func:`equiproj.project_`).

Examples
--------
>>> import lightning.pytorch as pl                                   # doctest: +SKIP
>>> from equiproj.integrations.lightning import ProjectionRegulariserCallback   # doctest: +SKIP
>>> callback = ProjectionRegulariserCallback(lambda_perp=1e-2, project_at_end=True)   # doctest: +SKIP
>>> pl.Trainer(max_epochs=10, callbacks=[callback]).fit(module, loader)   # doctest: +SKIP

``tests/test_lightning.py`` runs a real ``lightning.Trainer`` on a CPU and checks the weights
against a plain loop that adds ``reg()`` to the loss.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

import torch

from ..regularise import DEFAULT_SCHEME, ProjectionRegulariser, declared_layers, project_

try:  # the unified package first, then the standalone one
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from pytorch_lightning import Callback
    except ImportError as err:
        raise ImportError(
            "equiproj.integrations.lightning needs Lightning: pip install -e \".[lightning]\" "
            "(or pip install lightning)"
        ) from err

__all__ = ["ProjectionRegulariserCallback"]

_PROXIMAL = ("proximal", "split-proximal")


class ProjectionRegulariserCallback(Callback):
    r"""Add the projection penalty to a LightningModule's training; log per-layer defects.

    Parameters
    ----------
    lambda_perp, lambda_G : float
        Weights of ``||W - P(W)||`` and ``||P(W)||`` (see :class:`equiproj.ProjectionRegulariser`).
    norm : str or Norm
        The penalty norm.
    scheme : str
        The training scheme (:class:`equiproj.ProjectionRegulariser`, default ``"split"``): for
        ``"split"`` and ``"penalty"`` the penalty's gradient is added before each step (the split
        parametrisation is registered in ``setup``, before ``configure_optimizers``, so its
        parameters reach the optimizers; to give ``B`` its own learning rate ``perp_lr``, build the
        optimizer from ``callback.regulariser.param_groups(module.parameters(), lr)``, else a
        warning says that it trains at the common rate); the proximal schemes are attached to the
        optimizers.
    include_bias : bool, optional
        Override every layer's ``include_bias``.
    log_every_n_steps : int, optional
        How often to log the per-layer defects (default: ``trainer.log_every_n_steps``; 0: never).
    project_at_end : bool
        Project the declared layers onto their equivariant parts in ``on_fit_end``.
    prog_bar : bool
        Show the penalty in the progress bar.

    Attributes
    ----------
    regulariser : ProjectionRegulariser
        Built in ``setup`` around the LightningModule (its declared layers).
    history : list of dict
        ``{"step", "penalty", "defects": {layer: relative defect}}`` at every logging step.
    """

    def __init__(self, lambda_perp: float, lambda_G: float = 0.0, norm="fro", scheme: str = DEFAULT_SCHEME,
                 include_bias: Optional[bool] = None, log_every_n_steps: Optional[int] = None,
                 project_at_end: bool = False, prog_bar: bool = False):
        super().__init__()
        self.lambda_perp, self.lambda_G, self.norm = lambda_perp, lambda_G, norm
        self.scheme, self.include_bias = scheme, include_bias
        self.log_every_n_steps, self.project_at_end, self.prog_bar = log_every_n_steps, project_at_end, prog_bar
        self.regulariser: Optional[ProjectionRegulariser] = None
        self.history: List[Dict[str, Any]] = []
        self._params: List[torch.nn.Parameter] = []
        self._last_penalty: Optional[float] = None

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Build the regulariser (before ``configure_optimizers``, so that a split scheme's extra
        parameters reach the optimizers)."""
        if stage != "fit" or self.regulariser is not None:
            return
        self.regulariser = ProjectionRegulariser(pl_module, self.lambda_perp, lambda_G=self.lambda_G, norm=self.norm,
                                                 include_bias=self.include_bias, scheme=self.scheme)

    def on_fit_start(self, trainer, pl_module) -> None:
        reg = self.regulariser
        seen, self._params = set(), []
        for _, m, _ in declared_layers(pl_module):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    self._params.append(p)
        if hasattr(reg, "attach"):  # proximal schemes register a post-step hook (a no-op otherwise)
            for opt in trainer.optimizers:
                reg.attach(opt)
        perp = {id(t) for t in reg.perp_parameters()}
        if perp and reg.perp_lr not in (None, 1.0):
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    ids = {id(p) for p in g["params"]}
                    if ids & perp and ids - perp:
                        warnings.warn(
                            f"the split scheme's tensors B share an optimizer parameter group with other parameters, "
                            f"so they train at the same learning rate instead of perp_lr={reg.perp_lr:g} times it: "
                            "build the optimizer in configure_optimizers from "
                            "self.trainer.callbacks[i].regulariser.param_groups(self.parameters(), lr)", stacklevel=2)
                        return

    @property
    def adds_penalty(self) -> bool:
        """Whether the penalty's gradient is added before each step (not for proximal schemes)."""
        return self.scheme not in _PROXIMAL

    # ------------------------------------------------------------------ training
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        reg = self.regulariser
        if reg is None:
            return
        in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self._params if id(p) in in_opt and p.requires_grad]
        if self.adds_penalty and params:
            with torch.enable_grad():
                penalty = reg()
                grads = torch.autograd.grad(penalty, params, allow_unused=True)
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g.to(p.grad.dtype))
        else:
            with torch.no_grad():
                penalty = reg()
        value = penalty.detach()
        self._last_penalty = float(value)
        pl_module.log("equiproj/penalty", value, on_step=True, on_epoch=False, prog_bar=self.prog_bar)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        step = trainer.global_step
        if not every or self.regulariser is None or (step - 1) % every:
            return
        rows = self.regulariser.report()
        defects = {r.name: r.relative_defect for r in rows}
        for name, value in defects.items():
            pl_module.log(f"equiproj/defect/{name}", value, on_step=True, on_epoch=False)
        self.history.append({"step": step, "penalty": self._last_penalty, "defects": defects})

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.project_at_end and self.regulariser is not None:
            if hasattr(self.regulariser, "project_"):
                self.regulariser.project_()
            else:  # pragma: no cover - every regulariser has project_
                project_(pl_module)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
