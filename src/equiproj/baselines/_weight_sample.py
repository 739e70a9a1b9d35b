r"""Sampled weight-space constraint ``||g . W - W||^2`` (private module)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ..actions import KernelAction
from ..regularise import declared_layers
from ._base import Method, register_method
from ._util import ElementSampler, check_options, grid_symmetries, layer_bias, layer_weight, nonneg_float, pos_int

__all__ = ["WeightSampleMethod"]


@register_method("weight-sample")
class WeightSampleMethod(Method):
    r"""Sampled weight-space constraint in the style of Wang, Walters and Yu (2022).

    For every declared layer ``l`` with weight ``W_l``, bias ``b_l`` and weight action
    ``g . W`` (:class:`equiproj.actions.HomAction`, :class:`equiproj.actions.KernelAction`):

    .. math::

        R = \lambda \sum_l \frac{1}{n_l} \sum_{i=1}^{n_l}
            \Big( \|g_i . W_l - W_l\|_F^2 + \|\rho_l(g_i) b_l - b_l\|_2^2 \Big)

    (sums of squares over all entries; ``rho_l = action.bias_rep``; the bias term only where
    the layer has a bias and ``include_bias``, default the layer's own ``spec.include_bias``).
    The elements are drawn afresh per layer and call, as in :class:`SampleOutputMethod`. It
    vanishes exactly when every ``W_l`` is invariant under the sampled elements; with all
    elements of a finite group that is ``W_l = P(W_l)``, and ``||W - P(W)|| <= max_g ||g.W - W||``.

    Kernels of groups that do not map the grid onto itself (steerable kernels of SO(2),
    O(2), SO(3), O(3), C_N and D_N with N not in {1, 2, 4}): moving a kernel by such an
    element needs interpolation, which is not an exact group action on the grid. This method
    samples those layers among the **grid symmetries** of their group instead (quarter turns,
    and the reflections for O(2) and D_N; the 24 or 48 symmetries of the cube in 3D), where
    the action is an exact permutation. The penalty then only sees that finite subgroup: it
    vanishes on kernels in the steerable subspace, but also on any kernel invariant under
    the grid subgroup. Groups with no grid symmetry besides the identity (e.g. C3) are refused.

    Cost: ``n_l`` moved copies of every weight per step (no forward pass).

    Parameters
    ----------
    model : nn.Module
        With declared layers.
    lambda_ : float
        Weight (default ``1e-2``).
    k : int
        Elements per layer and step (default 1).
    seed : int
        Seed of the method's own ``torch.Generator``.
    include_identity : bool
        Sample finite groups (and grid symmetries) among all elements.
    include_bias : bool, optional
        Override every layer's ``spec.include_bias``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(8)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular()))
    >>> m = make_method("weight-sample", model, k=3, init="keep")   # keep the random weights
    >>> bool(m.penalty() > 0)
    True
    >>> from equiproj import project_
    >>> _ = project_(model)
    >>> float(m.penalty().detach()) < 1e-10
    True
    """

    name = "weight-sample"
    needs_batch = False
    weight_option = "lambda_"
    _options = ("lambda_", "k", "seed", "include_identity", "include_bias")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, k: int = 1, seed: int = 0,
                 include_identity: bool = False, include_bias: Optional[bool] = None, **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        self.k = pos_int(self.name, "k", k)
        self.include_identity = bool(include_identity)
        self.include_bias = include_bias
        self.layers = declared_layers(model)
        if not self.layers:
            raise ValueError(f"method {self.name!r}: the model has no declared layers: build it from equiproj.nn "
                             "layers or call equiproj.declare_model(model, group) first")
        self.sampler = ElementSampler(seed)
        #: per layer: a finite pool of elements (identity first), or None for Haar samples
        self.pools: Dict[str, Optional[torch.Tensor]] = {}
        for name, _, spec in self.layers:
            action, G = spec.projector.action, spec.group
            if isinstance(action, KernelAction) and not action.exact:
                pool = grid_symmetries(G, action.kernel_size)
                if pool.shape[0] < 2:
                    raise ValueError(
                        f"method {self.name!r}: layer '{name}' is a steerable kernel of {G.name}, whose only symmetry "
                        f"of the {'x'.join(map(str, action.kernel_size))} grid is the identity, so no kernel can be "
                        "moved exactly; use method 'projection' or 'sample-output' for this layer"
                    )
                self.pools[name] = pool
            else:
                self.pools[name] = G.elements() if G.is_finite else None

    def terms(self) -> Dict[str, torch.Tensor]:
        """Per layer ``mean_i ||g_i . W - W||^2 (+ bias term)`` (differentiable, before ``lambda_``)."""
        res = {}
        for name, m, spec in self.layers:
            action = spec.projector.action
            g = self.sampler.sample(spec.group, self.k, self.include_identity, pool=self.pools[name])
            n = g.shape[0]
            W = layer_weight(m, spec)
            t = (action.act(g, W) - W.unsqueeze(0)).pow(2).sum()
            b = layer_bias(m, spec, self.include_bias)
            if b is not None:
                R = action.bias_rep(g, dtype=b.dtype).to(b.device)
                t = t + (torch.einsum("nij,j->ni", R, b) - b).pow(2).sum()
            res[name or "<model>"] = t / n
        return res

    def penalty(self, batch=None) -> torch.Tensor:
        return self.lambda_ * torch.stack(list(self.terms().values())).sum()

    __call__ = penalty

    def __repr__(self):
        return f"WeightSampleMethod(lambda_={self.lambda_}, k={self.k}, {len(self.layers)} layers)"
