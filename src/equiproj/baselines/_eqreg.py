r"""Feature-level sample-based regulariser in the style of EQ-Reg (private module)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..actions import transform_feature_map
from ..regularise import declared_layers
from ._base import register_method
from ._sample import SampledMethod, run_copies, transformed_inputs
from ._util import as_action, check_options, infer_group, nonneg_float, pos_int

__all__ = ["EqRegMethod"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _feature_action(module: nn.Module, rep) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """How an element acts on the output of a declared layer: feature maps for convolutions,
    the representation on the last dimension otherwise."""
    if isinstance(module, _CONVS):
        perm = rep.permutation

        def move(g, y):
            if perm is None:
                return transform_feature_map(y, g, rep)
            # permutation fields (regular, ...): gather the channels, then move the positions alone
            src = perm[rep.group.as_elements(g)[0]].to(y.device)
            y = y.index_select(1, src)
            B, C = y.shape[:2]
            moved = transform_feature_map(y.reshape(B * C, 1, *y.shape[2:]), g, rep.group.trivial())
            return moved.reshape(y.shape)

        return move

    def act(g, y):
        R = rep(g, dtype=y.dtype).to(y.device)[0]
        return y @ R.T

    return act


@register_method("eqreg")
class EqRegMethod(SampledMethod):
    r"""Feature-level sample-based regulariser in the style of EQ-Reg (Bai, Fu, Xie, Meng 2025).

    The batch and ``n`` transformed copies go through the model; at every declared layer
    ``l`` (output ``phi_l``, output representation ``rho_l = spec.projector.action.bias_rep``)
    the mismatch between the features of the transformed input and the transformed features
    is penalised:

    .. math::

        R(x) = \lambda \, \frac{1}{|L|} \sum_{l \in L} \frac{1}{n} \sum_{i=1}^n
               \operatorname{mean}\big( (\phi_l(g_i x) - g_i \cdot \phi_l(x))^2 \big)

    ``mean`` is over all entries (batch, channels, positions), so every layer counts alike
    whatever its size; ``L`` are the declared layers the forward pass reaches (a layer called
    several times contributes the mean over its calls). With ``reduction='sum'`` the layers
    are summed instead of averaged. Convolution outputs move as feature maps
    (:func:`equiproj.transform_feature_map`: channels by ``rho_l``, positions by the grid
    action, interpolated for rotations that do not map the grid onto itself); other layers by
    ``rho_l`` on the last dimension. With ``act_out`` given, the model output counts as one
    more layer. The elements are drawn as in :class:`SampleOutputMethod`.

    Cost: as :class:`SampleOutputMethod` (``n + 1`` stacked copies through the model) plus
    one transformation of every declared layer's output per element; the captured features
    stay alive until the backward pass (they are part of the graph anyway).

    Parameters
    ----------
    model : nn.Module
        With declared layers (:func:`equiproj.declare_model`, :mod:`equiproj.nn`).
    lambda_, k, act_in, group, input_fn, seed, include_identity, batched :
        As in :class:`SampleOutputMethod`; ``group`` defaults to the actions' group or that of
        the declared layers.
    act_out : Representation or callable, optional
        Also penalise the model output.
    reduction : {'mean', 'sum'}
        Over layers.

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), 2 * G.regular()), torch.nn.ReLU(),
    ...                             RepLinear(2 * G.regular(), G.regular()))
    >>> m = make_method("eqreg", model, act_in=G.regular(), k=3, init="keep")   # keep the random weights
    >>> bool(m.penalty([torch.randn(8, 4)]) > 0)
    True
    """

    name = "eqreg"
    needs_batch = True
    weight_option = "lambda_"
    _options = ("lambda_", "k", "act_in", "act_out", "group", "input_fn", "seed", "include_identity", "batched",
                "reduction")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, k: int = 1, act_in=None, act_out=None,
                 group=None, input_fn: Optional[Callable] = None, seed: int = 0, include_identity: bool = False,
                 batched: bool = True, reduction: str = "mean", **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        self.k = pos_int(self.name, "k", k)
        if act_in is None:
            raise ValueError(f"method {self.name!r}: option act_in is required (a Representation or a callable "
                             "(g, x) -> g.x), got None")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"method {self.name!r}: option reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.layers = declared_layers(model)
        if not self.layers:
            raise ValueError(f"method {self.name!r}: the model has no declared layers: build it from equiproj.nn "
                             "layers or call equiproj.declare_model(model, group) first")
        self.act_in = as_action(self.name, "act_in", act_in)
        self.act_out = None if act_out is None else as_action(self.name, "act_out", act_out)
        acts = (act_in,) if act_out is None else (act_in, act_out)
        self.group = infer_group(self.name, group, *acts, fallback=[s.group for _, _, s in self.layers])
        for name, _, spec in self.layers:
            if spec.group != self.group:
                raise ValueError(f"method {self.name!r}: layer '{name}' is declared for {spec.group.name}, but the "
                                 f"penalty samples {self.group.name}")
        self._feature_acts = {name: _feature_action(m, spec.projector.action.bias_rep)
                              for name, m, spec in self.layers}
        self._init_sampling(input_fn, seed, include_identity, batched)

    def _capture(self, x: torch.Tensor, copies: List[torch.Tensor]):
        store: Dict[str, List[torch.Tensor]] = {name: [] for name, _, _ in self.layers}
        handles = []
        for name, m, _ in self.layers:
            handles.append(m.register_forward_hook(lambda mod, inp, out, _n=name: store[_n].append(out)))
        try:
            outs = run_copies(self.model, x, copies, self.batched, self.name)
        finally:
            for h in handles:
                h.remove()
        n = len(copies) + 1
        chunks: Dict[str, List[List[torch.Tensor]]] = {}
        for name, calls in store.items():
            if not calls:
                continue
            if self.batched:
                chunks[name] = [list(c.split(x.shape[0], dim=0)) for c in calls]
            else:
                per_run = len(calls) // n
                chunks[name] = [[calls[r * per_run + j] for r in range(n)] for j in range(per_run)]
        return outs, chunks

    def terms(self, batch) -> Dict[str, torch.Tensor]:
        """Per layer (and ``'<output>'`` with ``act_out``) the differentiable mean squared mismatch,
        averaged over the sampled elements."""
        x = self.input_fn(batch)
        g = self.sample()
        n = g.shape[0]
        outs, chunks = self._capture(x, transformed_inputs(self.act_in, g, x))
        if not chunks:
            raise ValueError(f"method {self.name!r}: the forward pass reached none of the declared layers")
        res: Dict[str, torch.Tensor] = {}
        for name, calls in chunks.items():
            act = self._feature_acts[name]
            t = None
            for parts in calls:
                for i in range(n):
                    d = (parts[i + 1] - act(g[i:i + 1], parts[0])).pow(2).mean()
                    t = d if t is None else t + d
            res[name] = t / (n * len(calls))
        if self.act_out is not None:
            t = sum((outs[i + 1] - self.act_out(g[i:i + 1], outs[0])).pow(2).mean() for i in range(n))
            res["<output>"] = t / n
        return res

    def penalty(self, batch=None) -> torch.Tensor:
        if batch is None:
            raise ValueError(f"method {self.name!r} needs the batch: call penalty(batch)")
        terms = list(self.terms(batch).values())
        total = torch.stack(terms).sum()
        if self.reduction == "mean":
            total = total / len(terms)
        return self.lambda_ * total

    __call__ = penalty

    def __repr__(self):
        return (f"EqRegMethod(lambda_={self.lambda_}, k={self.k}, group={self.group.name}, "
                f"{len(self.layers)} layers, reduction={self.reduction!r})")
