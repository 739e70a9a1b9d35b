"""Helpers shared by the baselines: option checks, actions, group elements (private module).

Shared options
--------------
Some options describe the *experiment* rather than the method: the symmetry group, how it
acts on inputs and outputs, how to get the model input from a batch, the seed, the starting
point of the weights (``init``, applied by :func:`equiproj.baselines.make_method`). An experiment
may pass them to every method; the methods that do not use them accept and ignore them
(:data:`SHARED_OPTIONS`). Every other unknown option raises a ``TypeError`` that names it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch

from ..actions import grid_permutation
from ..groups import Group, Representation
from ..metrics import rep_action

__all__ = ["SHARED_OPTIONS", "check_options", "nonneg_float", "pos_int", "as_action", "infer_group",
           "default_input_fn", "ElementSampler", "grid_symmetries", "param_like", "layer_weight", "layer_bias"]

#: Options an experiment may pass to every method; methods that do not use them ignore them.
SHARED_OPTIONS = frozenset({"seed", "act_in", "act_out", "group", "input_fn", "init"})

_F64 = torch.float64


def layer_weight(m: torch.nn.Module, spec) -> torch.Tensor:
    """The declared weight of layer ``m`` (``spec.weight_name``: ``weight``, ``in_proj_weight`` of
    ``nn.MultiheadAttention``, ...), as its adapter names it."""
    return getattr(m, spec.weight_name)


def layer_bias(m: torch.nn.Module, spec, include_bias: Optional[bool] = None) -> Optional[torch.Tensor]:
    """The bias of layer ``m`` when it is penalised (``include_bias``, default the declaration's),
    else ``None``."""
    from ..regularise import _penalised_bias

    return getattr(m, spec.bias_name) if _penalised_bias(m, spec, include_bias) else None


def check_options(method: str, unknown: dict, known: Iterable[str]) -> None:
    """Raise a ``TypeError`` for options that are neither known to ``method`` nor shared."""
    bad = sorted(set(unknown) - SHARED_OPTIONS)
    if bad:
        raise TypeError(
            f"method {method!r}: unknown option(s) {', '.join(map(repr, bad))}; it accepts "
            f"{', '.join(sorted(known))} (and ignores the shared options {', '.join(sorted(SHARED_OPTIONS))})"
        )


def nonneg_float(method: str, name: str, value) -> float:
    """``value`` as a finite float >= 0, or a ``ValueError`` naming the option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"method {method!r}: option {name} must be a non-negative number, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"method {method!r}: option {name} must be a finite number >= 0, got {value!r}")
    return v


def pos_int(method: str, name: str, value) -> int:
    """``value`` as an int >= 1, or a ``ValueError`` naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"method {method!r}: option {name} must be a positive integer, got {value!r}")
    return int(value)


def as_action(method: str, name: str, a) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A callable ``(g, x) -> g . x`` from a representation (acting on the last dimension) or a
    callable (e.g. :class:`equiproj.actions.feature_map_action`)."""
    if isinstance(a, Representation):
        return rep_action(a)
    if callable(a):
        return a
    raise TypeError(
        f"method {method!r}: option {name} must be an equiproj.groups.Representation (acting on the last "
        f"dimension) or a callable (g, x) -> g.x such as feature_map_action(rep), got {type(a).__name__}"
    )


def _group_of(a) -> Optional[Group]:
    if isinstance(a, Representation):
        return a.group
    g = getattr(a, "group", None)
    return g if isinstance(g, Group) else None


def infer_group(method: str, group, *actions, fallback: Sequence[Group] = ()) -> Group:
    """The group: ``group`` if given (checked against the actions), else that of the actions,
    else the single group in ``fallback`` (e.g. of the declared layers)."""
    found = [g for g in (_group_of(a) for a in actions) if g is not None]
    if group is not None:
        if not isinstance(group, Group):
            raise TypeError(f"method {method!r}: option group must be an equiproj.groups.Group, got "
                            f"{type(group).__name__}")
        for g in found:
            if g != group:
                raise ValueError(f"method {method!r}: option group is {group.name} but an action acts by {g.name}")
        return group
    if found:
        for g in found[1:]:
            if g != found[0]:
                raise ValueError(f"method {method!r}: act_in acts by {found[0].name} but act_out by {g.name}")
        return found[0]
    distinct = []
    for g in fallback:
        if g not in distinct:
            distinct.append(g)
    if len(distinct) == 1:
        return distinct[0]
    raise ValueError(f"method {method!r}: cannot infer the group from the actions; pass group=<equiproj.groups.Group>")


def default_input_fn(batch):
    """The model input of a batch: ``batch[0]`` for a list or tuple, the batch itself for a tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and len(batch) > 0:
        return batch[0]
    raise TypeError(f"cannot take the model input from a batch of type {type(batch).__name__}: pass "
                    "input_fn=lambda batch: ... to the method")


class ElementSampler:
    """Draws group elements with its own ``torch.Generator`` (seeded, on the CPU).

    * finite groups (or a finite ``pool`` of elements whose first entry is the identity):
      ``k`` distinct elements uniformly among the non-identity ones (all of them when ``k``
      is at least their number); with ``include_identity`` among all of them;
    * continuous groups: ``k`` independent Haar samples (the identity has measure zero).
    """

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict:
        """The generator's state (checkpointed by :func:`equiproj.train.fit`, so that a resumed run
        draws the elements an uninterrupted one draws)."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.seed = int(state.get("seed", self.seed))
        self.generator.set_state(state["generator"])

    def sample(self, group: Group, k: int, include_identity: bool = False,
               pool: Optional[torch.Tensor] = None) -> torch.Tensor:
        if pool is None and group.is_finite:
            pool = group.elements()
        if pool is not None:
            cand = pool if include_identity else pool[1:]
            n = cand.shape[0]
            if n == 0:
                raise ValueError(f"{group.name}: there is no non-identity element to sample from")
            if k >= n:
                return cand
            return cand[torch.randperm(n, generator=self.generator)[:k]]
        return group.sample(k, generator=self.generator)


def _signed_permutations(d: int) -> torch.Tensor:
    """All ``2^d d!`` signed permutation matrices of size ``d`` (float64), the identity first."""
    import itertools

    mats = []
    for perm in itertools.permutations(range(d)):
        for signs in itertools.product((1.0, -1.0), repeat=d):
            M = torch.zeros(d, d, dtype=_F64)
            for i, (j, s) in enumerate(zip(perm, signs)):
                M[i, j] = s
            mats.append(M)
    return torch.stack(mats)


def _to_elements(group: Group, mats: torch.Tensor) -> Optional[torch.Tensor]:
    """Elements of a continuous group with the given defining matrices (the ones it contains)."""
    try:
        keep = group.contains_matrices(mats)
    except NotImplementedError:
        return None
    return group.elements_from_matrices(mats[keep])


def grid_symmetries(group: Group, kernel_size: Sequence[int]) -> torch.Tensor:
    """The elements of ``group`` that map a kernel grid onto itself (the identity first).

    Finite groups: those of their elements; SO(2), O(2), SO(3), O(3): the quarter turns (and
    reflections, for O(n)) among the signed permutation matrices.
    """
    size = tuple(int(s) for s in kernel_size)
    if group.is_finite:
        cand = group.elements()
    else:
        cand = _to_elements(group, _signed_permutations(len(size)))
        if cand is None:
            raise ValueError(f"no list of grid symmetries is known for {group.name}")
    mats = group.standard()(cand, dtype=_F64)
    keep = [i for i in range(mats.shape[0]) if grid_permutation(mats[i:i + 1], size) is not None]
    return cand[torch.tensor(keep, dtype=torch.long)]


def param_like(model: torch.nn.Module):
    """``(dtype, device)`` of the model's first floating-point parameter (defaults otherwise)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")
