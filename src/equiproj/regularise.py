r"""The projection regulariser: penalty, per-layer report, in-place and hard projection.

A *declared* layer carries a :class:`LayerSpec` (its projector) in the attribute
``equiproj_spec``. :class:`equiproj.nn.RepLinear` declares itself; :func:`declare` attaches
representations to a layer of an existing model without rewriting it.

For every declared layer ``l`` with weight ``W_l`` and bias ``b_l`` the penalty is

.. math::

    \sum_l \lambda_\perp \|[W_l - P(W_l),\ b_l - P(b_l)]\| + \lambda_G \|[P(W_l),\ P(b_l)]\|

where ``[W, b]`` is the weight matrix with the bias appended as a column (the affine map), so
that every norm sees one matrix. ``P(b)`` is the projection onto the invariant vectors of
``rho_out``; biases are left out with ``include_bias=False``.

The same objective can be optimised by different *training schemes* (``scheme=`` of
:class:`ProjectionRegulariser`, see ``docs/training.md``): the penalty added to the loss
(``"penalty"``, the paper's), the split parametrisation ``W = P(A) + (I - P) B`` with the
penalty in the loss (``"split"``), an exact proximal step after every optimiser step
(``"proximal"``), or both (``"split-proximal"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Tuple

import math
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from .actions import adapter_for, supported_types
from .groups import Representation
from .norms import Frobenius, FrobeniusSquared, Norm, SpectralNorm, get_norm
from .projection import Projector
from .projection._batched import BatchedFrobenius, BatchedSplit, BatchEntry, safe_sqrt

__all__ = [
    "LayerSpec", "declare", "declare_model", "declared_layers", "ProjectionRegulariser", "LayerReport", "project_",
    "equivariant_init_", "initialise_", "INIT_MODES",
    "constrain_", "unconstrain_", "split_", "SplitParametrization", "report", "format_report", "SPEC_ATTR",
    "SCHEMES", "DEFAULT_SCHEME", "DEFAULT_PERP_LR",
]

#: Name of the attribute that marks a declared layer.
SPEC_ATTR = "equiproj_spec"


@dataclass
class LayerSpec:
    """A declared layer: its projector and whether its bias is penalised."""

    projector: Projector
    include_bias: bool = True
    #: The layer's attributes holding the weight and the bias (from its adapter, see
    #: :func:`equiproj.actions.adapter_for`; ``in_proj_weight`` for ``nn.MultiheadAttention``).
    weight_name: str = "weight"
    bias_name: str = "bias"

    @property
    def group(self):
        return self.projector.group

    def attr(self, role: str) -> str:
        """The attribute name of ``role`` (``"weight"`` or ``"bias"``)."""
        return self.weight_name if role == "weight" else self.bias_name


def _as_representations(*reps, group=None):
    from .interop.e3nn import as_representations  # Representations pass through; e3nn strings

    return as_representations(*reps, group=group)


def _action_for(module: nn.Module, in_rep: Representation, out_rep: Representation, name: str, **kw):
    """The weight action of a supported module type (through its adapter), dimensions checked."""
    if not isinstance(in_rep, Representation) or not isinstance(out_rep, Representation):
        raise TypeError(f"layer '{name}': in_rep and out_rep must be equiproj.groups.Representation objects")
    return adapter_for(module, name).action(module, in_rep, out_rep, name, **kw)


def declare(module: nn.Module, in_rep: Representation, out_rep: Representation, route: str = "auto",
            include_bias: bool = True, name: Optional[str] = None, **kw) -> nn.Module:
    """Declare the representations of an existing layer so that it is regularised.

    Parameters
    ----------
    module : nn.Linear (or a convolution, see :mod:`equiproj.actions`)
    in_rep, out_rep : Representation or str
        Representations on the input and output features; their dimensions must match. An
        e3nn irreps string (``"4x0e + 2x1o"``) is read by :func:`equiproj.interop.e3nn.from_e3nn`,
        for the group of the other argument (``o3()`` if both are strings).
    route : str
        Projection route (see :class:`equiproj.Projector`).
    include_bias : bool
        Penalise the non-invariant part of the bias too.
    name : str, optional
        Name used in error messages (defaults to the module's class name).

    Returns the module itself.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from equiproj import declare, ProjectionRegulariser
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> _ = declare(model[0], 2 * G.regular(), 4 * G.regular())
    >>> _ = declare(model[2], 4 * G.regular(), G.trivial())
    >>> reg = ProjectionRegulariser(model, lambda_perp=1e-2)
    >>> [r.name for r in reg.report()]
    ['0', '2']
    """
    in_rep, out_rep = _as_representations(in_rep, out_rep)  # also e3nn strings such as "4x0e + 2x1o"
    label = name or type(module).__name__
    kw = {k: v for k, v in kw.items() if v is not None}
    action = _action_for(module, in_rep, out_rep, label, **kw)
    adapter = adapter_for(module, label)
    setattr(module, SPEC_ATTR, LayerSpec(Projector(action, route=route), include_bias=include_bias,
                                         weight_name=adapter.weight_name, bias_name=adapter.bias_name))
    return module


def _channels(m: nn.Module) -> Tuple[int, int]:
    return adapter_for(m).channels(m)


def declare_model(model: nn.Module, group, in_rep: Optional[Representation] = None,
                  out_rep: Optional[Representation] = None, hidden: Optional[Representation] = None,
                  layers: Optional[dict] = None, skip=(), route: str = "auto", include_bias: bool = True,
                  replace_norms=False, strict: bool = False, example_input=None,
                  **kw) -> List[Tuple[str, Representation, Representation]]:
    """Declare every ``Linear``, ``Conv{2,3}d`` and ``ConvTranspose{2,3}d`` of an existing model.

    The model's input channels (those of its first such layer, in module order) carry
    ``in_rep`` (default: ``c * trivial``), its output channels (those of its last layer) carry
    ``out_rep`` (default: ``c * trivial``), and every other channel dimension carries copies of
    the field type ``hidden`` (default: ``group.regular()``), so each hidden width must be a
    multiple of ``hidden.dim`` (``|G|`` for regular fields); for ``so3()`` and ``o3()`` every
    representation may be an e3nn irreps string (``hidden="8x0e + 4x1o"``). ``layers`` maps a layer name to its
    own ``(in_rep, out_rep)``; layers named in ``skip`` are left undeclared. After
    :func:`project_` such a model is exactly equivariant for groups that map the grid onto
    itself, provided its nonlinearities, normalisations and poolings commute with the action
    (pointwise functions and max pooling do on regular fields; per-channel normalisation does
    not). ``replace_norms=True`` (or ``{name: rep}``) replaces torch's BatchNorm, GroupNorm and
    LayerNorm by :class:`equiproj.nn.FieldBatchNorm` / :class:`equiproj.nn.FieldLayerNorm`
    (:func:`equiproj.replace_norms_`). Then :func:`equiproj.check_model` warns once per module that
    does not commute with the action (``strict=True``: raises; ``example_input``: an input whose
    forward pass gives the sizes that strided layers need).

    Returns the list of ``(name, in_rep, out_rep)`` that was declared.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from equiproj import declare_model, project_
    >>> from equiproj.groups import cyclic
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    >>> [(name, i.dim, o.dim) for name, i, o in declare_model(model, cyclic(4))]
    [('0', 1, 8), ('2', 8, 1)]
    """
    in_rep, out_rep, hidden = _as_representations(in_rep, out_rep, hidden, group=group)
    layers = {k: v if v is None else _as_representations(*v, group=group) for k, v in (layers or {}).items()}
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, supported_types()) and name not in skip]
    if not candidates:
        raise ValueError("declare_model: the model has no nn.Linear or convolution layers")
    unknown = set(layers) - {name for name, _ in candidates}
    if unknown:
        raise ValueError(f"declare_model: no supported layer named {sorted(unknown)} in the model")
    if hidden is None:
        if not group.is_finite:
            raise ValueError(
                f"{group.name} has no regular representation: pass hidden=<field type>, e.g. "
                f"hidden=G.irrep(0) + G.irrep(1) + G.irrep(2) for SO(2)"
            )
        hidden = group.regular()
    triv = group.trivial()
    first, last = candidates[0][0], candidates[-1][0]

    def hidden_rep(c: int, name: str, side: str) -> Representation:
        if c % hidden.dim:
            raise ValueError(
                f"layer '{name}': {c} {side} channels are not a multiple of {hidden.dim}, the size of a "
                f"{hidden.name} field of {group.name}; change the width or pass layers={{'{name}': (in_rep, out_rep)}}"
            )
        return (c // hidden.dim) * hidden

    declared = []
    for name, m in candidates:
        c_in, c_out = _channels(m)
        if name in layers:
            r_in, r_out = layers[name]
        else:
            if name == first:
                r_in = in_rep if in_rep is not None else c_in * triv
            else:
                r_in = hidden_rep(c_in, name, "input")
            if name == last:
                r_out = out_rep if out_rep is not None else c_out * triv
            else:
                r_out = hidden_rep(c_out, name, "output")
        declare(m, r_in, r_out, route=route, include_bias=include_bias, name=name, **kw)
        declared.append((name, r_in, r_out))
    from ._checks import finish_declare_model  # replace_norms, then check_model

    finish_declare_model(model, hidden, replace_norms, strict, example_input)
    return declared


def declared_layers(model: nn.Module) -> List[Tuple[str, nn.Module, LayerSpec]]:
    """All declared layers of ``model`` as ``(name, module, spec)`` in module order."""
    out = []
    for name, m in model.named_modules():
        spec = getattr(m, SPEC_ATTR, None)
        if isinstance(spec, LayerSpec):
            out.append((name, m, spec))
    return out


# ---------------------------------------------------------------------------------- parametrisations

#: The training schemes of :class:`ProjectionRegulariser`.
SCHEMES = ("penalty", "split", "proximal", "split-proximal")
#: The scheme used when none is given (chosen by the measurements in ``docs/training.md``).
DEFAULT_SCHEME = "split"
#: The learning rate of ``B`` relative to the rest, in the split schemes (see ``docs/training.md``).
DEFAULT_PERP_LR = 0.1
_PROX_NORMS = ("fro", "fro2")


def _has(m: nn.Module, name: str) -> bool:
    """Whether the layer has a tensor ``name`` (a parametrised one counts)."""
    return parametrize.is_parametrized(m, name) or isinstance(getattr(m, name, None), torch.Tensor)


class SplitParametrization(nn.Module):
    r"""Parametrisation ``(A, B) -> P(A) + (I - P) B`` of a declared layer's weight (or bias).

    ``P`` is the layer's projector (``project_bias`` for a bias). Since ``P`` is an orthogonal
    projection, the weight ``W`` it produces has equivariant part ``P(W) = P(A)`` and
    non-equivariant part ``W - P(W) = (I - P) B``; the gradients of a loss with gradient ``g``
    with respect to ``W`` are ``P g`` for ``A`` and ``(I - P) g`` for ``B``, so the two parts get
    their own optimiser state. Evaluated as ``P(A - B) + B``: one projection per forward.

    Registered through ``torch.nn.utils.parametrize`` with two originals
    (``module.parametrizations.weight.original0`` is ``A``, ``original1`` is ``B``);
    :meth:`right_inverse` sets ``A = B = W``, so registration keeps the layer's weight, and
    assigning ``module.weight = W`` makes ``W`` the new weight. See :func:`split_`.

    Examples
    --------
    >>> import torch
    >>> from torch.nn.utils import parametrize
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> P = LinearProjector(cyclic(4).regular(), cyclic(4).regular())
    >>> layer = torch.nn.Linear(4, 4, bias=False).double()
    >>> W = layer.weight.detach().clone()
    >>> _ = parametrize.register_parametrization(layer, "weight", SplitParametrization(P))
    >>> bool(torch.allclose(layer.weight, W))                 # starts from the layer's weight
    True
    >>> A, B = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    >>> bool(torch.allclose(P.project(layer.weight), P.project(A)))
    True
    """

    def __init__(self, projector: Projector, bias: bool = False):
        super().__init__()
        self.projector = projector
        self.bias = bool(bias)
        #: the :class:`_SplitGroup` of the layers split together by :func:`split_` (``None``: alone)
        #: and this tensor's place in it
        self.group: Optional["_SplitGroup"] = None
        self.slot = 0

    def project(self, X: torch.Tensor) -> torch.Tensor:
        return self.projector.project_bias(X) if self.bias else self.projector.project(X)

    def forward(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        if self.group is not None and parametrize._cache_enabled:
            W = self.group.weight(self)
            if W is not None:
                return W
        return self.project(A - B) + B

    def right_inverse(self, W: torch.Tensor):
        # two distinct tensors (parametrize may alias the storage of what is returned)
        return W.detach().clone(), W.detach().clone()


class _TensorGroup:
    """Parametrised tensors of one call (:func:`split_` or :func:`constrain_`), evaluated together
    inside ``torch.nn.utils.parametrize.cached()`` (as :func:`equiproj.train.fit` does every step).

    The first member read in the context computes every member's tensor in one autograd node
    (:class:`equiproj.projection._batched.BatchedSplit`: ``W = P(A - B) + B`` for a split,
    ``W = P(V)`` for the hard constraint); the context's cache keeps the result until it closes,
    which is parametrize's own contract (the originals do not change inside it). Outside the
    context each tensor is computed alone. A member that is no longer registered
    (``unconstrain_``), or tensors of different dtypes or devices, make every member compute
    alone.
    """

    #: the names of a member's originals in its ParametrizationList
    originals: Tuple[str, ...] = ()

    def __init__(self, members: List[Tuple[nn.Module, str, nn.Module]]):
        self.members = members  # (module, tensor name, its parametrisation)
        for i, (_, _, p) in enumerate(members):
            p.group, p.slot = self, i
        self.batched = BatchedSplit([BatchEntry(p.projector, i, bias=p.bias) for i, (_, _, p) in enumerate(members)])

    def _originals(self) -> Optional[List[List[torch.Tensor]]]:
        lists: List[List[torch.Tensor]] = [[] for _ in self.originals]
        for m, pname, p in self.members:
            plist = getattr(getattr(m, "parametrizations", None), pname, None) if parametrize.is_parametrized(m) else None
            if plist is None or len(plist) != 1 or plist[0] is not p:
                return None
            for out, attr in zip(lists, self.originals):
                out.append(getattr(plist, attr))
        flat = [t for ts in lists for t in ts]
        if len({(t.dtype, t.device) for t in flat}) != 1 or flat[0].is_complex():
            return None
        return lists

    def _compute(self, *lists):
        raise NotImplementedError

    def weight(self, p: nn.Module) -> Optional[torch.Tensor]:
        cache, key = parametrize._cache, (id(self), "equiproj-tensor-group")
        out = cache.get(key)
        if out is None:
            lists = self._originals()
            if lists is None:
                return None
            out = self._compute(*lists)
            cache[key] = out
        return out[p.slot]


class _SplitGroup(_TensorGroup):
    """The split tensors of one :func:`split_` call: ``W = P(A - B) + B`` for all."""

    originals = ("original0", "original1")

    def _compute(self, As, Bs):
        return self.batched(As, Bs)


class _ConstrainedGroup(_TensorGroup):
    """The hard-constrained tensors of one :func:`constrain_` call: ``W = P(V)`` for all."""

    originals = ("original",)

    def _compute(self, Vs):
        return self.batched.project(Vs)


def _split_originals(m: nn.Module, name: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(A, B)`` when ``name`` is parametrised by a :class:`SplitParametrization` alone."""
    if not parametrize.is_parametrized(m, name):
        return None
    plist = getattr(m.parametrizations, name)
    if len(plist) == 1 and isinstance(plist[0], SplitParametrization):
        return plist.original0, plist.original1
    return None


def _is_split(m: nn.Module, name: str) -> bool:
    if not parametrize.is_parametrized(m, name):
        return False
    return isinstance(getattr(m.parametrizations, name)[0], SplitParametrization)


def _tensor_kind(m: nn.Module, name: str) -> int:
    """0: the layer has no tensor ``name``; 1: a tensor; 2: a parametrised one; 3: one parametrised
    by a :class:`SplitParametrization` (what :func:`_has` and :func:`_is_split` say, without
    evaluating a parametrisation)."""
    pd = m._modules.get("parametrizations")
    plist = None if pd is None else pd._modules.get(name)
    if plist is not None:
        return 3 if isinstance(plist._modules.get("0"), SplitParametrization) else 2
    return int(isinstance(getattr(m, name, None), torch.Tensor))


def _sources(m: nn.Module, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The tensors whose equivariant and non-equivariant parts are those of the layer's ``name``:
    ``(A, B)`` for a split parametrisation (``P(W) = P(A)``, ``W - P(W) = (I - P) B``), else the
    (possibly parametrised) tensor itself, twice."""
    ab = _split_originals(m, name)
    if ab is not None:
        return ab
    t = getattr(m, name)
    return t, t


def split_(model: nn.Module, include_bias: Optional[bool] = None) -> nn.Module:
    r"""Parametrise every declared layer as ``W = P(A) + (I - P) B`` (in place; the weights are kept).

    The weight of each declared layer, and its bias where the bias is penalised
    (``include_bias``, default each layer's own), gets a :class:`SplitParametrization`, with
    ``A = B =`` the current tensor, so the model's function does not change. Layers that are
    already split are left as they are; a layer parametrised otherwise (``constrain_``, RPP)
    raises. Build the optimiser *afterwards*: ``A`` and ``B`` are new parameters. Used by
    ``ProjectionRegulariser(scheme="split")``; :func:`unconstrain_` merges them back into plain
    weights.

    Cost: a second tensor per weight, and its optimiser state (for Adam: twice the optimiser
    memory of the declared layers); one projection per forward, computed for all the layers of
    one call in one autograd node inside ``torch.nn.utils.parametrize.cached()`` (which
    :func:`equiproj.train.fit` uses every step), layer by layer outside it.

    Examples
    --------
    >>> import torch
    >>> from equiproj import split_
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> layer = RepLinear(cyclic(4).regular(), cyclic(4).regular())
    >>> x = torch.randn(3, 4)
    >>> y = layer(x)
    >>> _ = split_(layer)
    >>> bool(torch.allclose(layer(x), y)), sorted(n for n, _ in layer.named_parameters())[:2]
    (True, ['parametrizations.bias.original0', 'parametrizations.bias.original1'])
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("split_: the model has no declared layers: build it from equiproj.nn layers or call "
                         "equiproj.declare(layer, in_rep, out_rep) first")
    members = []
    for name, m, spec in layers:
        use_bias = spec.include_bias if include_bias is None else include_bias
        for role in ("weight", "bias") if use_bias else ("weight",):
            pname = spec.attr(role)
            if not _has(m, pname) or _is_split(m, pname):
                continue
            if parametrize.is_parametrized(m, pname):
                raise ValueError(
                    f"split_: the {pname} of layer '{name or '<model>'}' is already parametrised (constrain_, RPP "
                    f"or equivariant=True); the split parametrisation needs an unconstrained layer")
            sp = SplitParametrization(spec.projector, bias=role == "bias")
            parametrize.register_parametrization(m, pname, sp)
            members.append((m, pname, sp))
    if len(members) > 1:  # evaluated together inside parametrize.cached()
        _SplitGroup(members)
    return model


def _assign(m: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``value`` the layer's effective ``name`` (through the parametrisation's
    ``right_inverse`` when it has one)."""
    with torch.no_grad():
        if parametrize.is_parametrized(m, name):
            setattr(m, name, value)
        else:
            getattr(m, name).copy_(value)


# ---------------------------------------------------------------------------------- parts and report


def _augment(M: torch.Tensor, b: torch.Tensor, on_rows: bool = True) -> torch.Tensor:
    """``[M, b]`` (the affine map) when the bias lives on the rows of ``M``; otherwise (transposed
    convolutions, whose matrix is that of the adjoint convolution) the block-diagonal
    ``[[M, 0], [0, b]]``."""
    if on_rows:
        return torch.cat([M, b[..., None]], dim=-1)
    top = torch.cat([M, M.new_zeros(*M.shape[:-1], 1)], dim=-1)
    bottom = torch.cat([M.new_zeros(*b.shape[:-1], b.shape[-1], M.shape[-1]), b[..., None]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _penalised_bias(m: nn.Module, spec: LayerSpec, include_bias: Optional[bool]) -> bool:
    use = spec.include_bias if include_bias is None else include_bias
    return bool(use) and _has(m, spec.bias_name)


def layer_parts(module: nn.Module, spec: LayerSpec, kernel: bool = False, include_bias: Optional[bool] = None,
                need_equivariant: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Equivariant and non-equivariant parts of the weight matrix with its bias (see
    :func:`_augment`), as matrices; with ``kernel=True`` the weight in its own shape, no bias.

    For a split layer the parts are ``P(A)`` and ``(I - P) B``, which are those of its weight.
    ``include_bias`` overrides the layer's own setting; with ``need_equivariant=False`` the
    equivariant part may be returned as ``None`` when it would cost an extra projection.
    """
    P = spec.projector
    we, wp = _sources(module, spec.weight_name)
    if kernel:
        PWp = P.project(wp)
        PWe = PWp if we is wp else (P.project(we) if need_equivariant else None)
        return PWe, wp - PWp
    Mp = P.as_matrix(wp)
    PMp = P._project_matrix(Mp)
    PMe = PMp if we is wp else (P._project_matrix(P.as_matrix(we)) if need_equivariant else None)
    if not _penalised_bias(module, spec, include_bias):
        return PMe, Mp - PMp
    be, bp = _sources(module, spec.bias_name)
    Pbp = P.project_bias(bp)
    Pbe = Pbp if be is bp else (P.project_bias(be) if PMe is not None else None)
    rows = P.action.bias_on_rows
    eq = _augment(PMe, Pbe, rows) if PMe is not None else None
    return eq, _augment(Mp - PMp, bp - Pbp, rows)


@dataclass
class LayerReport:
    """Per-layer equivariance figures (norms of the augmented matrix ``[W, b]``).

    ``relative_defect`` is ``defect_norm / weight_norm`` (0 for a zero weight); a layer with
    non-finite weights reports ``nan`` in every field (``finite`` is ``False``).
    """

    name: str
    group: str
    norm: str
    weight_norm: float
    equivariant_norm: float
    defect_norm: float
    relative_defect: float
    equivariant_dim: int
    total_dim: int
    finite: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def _report_norm(norm) -> Norm:
    n = get_norm(norm).fresh() if isinstance(norm, Norm) else get_norm(norm)
    if isinstance(n, SpectralNorm) and not n.exact:
        return SpectralNorm(exact=True)
    return n


def report(model: nn.Module, norm="fro", include_bias: Optional[bool] = None) -> List[LayerReport]:
    """Per-layer report of every declared layer of ``model`` (see :class:`LayerReport`).

    ``include_bias`` overrides the layers' own setting (as :class:`ProjectionRegulariser` does).
    """
    n = _report_norm(norm)
    rows = []
    with torch.no_grad():
        for name, m, spec in declared_layers(model):
            Peq, Pperp = layer_parts(m, spec, kernel=n.kernel_norm, include_bias=include_bias)
            finite = bool(torch.isfinite(Peq).all() and torch.isfinite(Pperp).all())
            if finite:
                full = Peq + Pperp
                wn, en, dn = float(n(full)), float(n(Peq)), float(n(Pperp))
                rel = dn / wn if wn > 0 else 0.0
            else:
                wn = en = dn = rel = float("nan")
            rows.append(LayerReport(
                name=name or "<model>", group=spec.group.name, norm=n.name, weight_norm=wn,
                equivariant_norm=en, defect_norm=dn, relative_defect=rel,
                equivariant_dim=spec.projector.dim, total_dim=spec.projector.total_dim, finite=finite,
            ))
    return rows


def format_report(rows: List[LayerReport]) -> str:
    """A Markdown table of a report."""
    lines = ["| layer | group | norm | ‖W‖ | ‖P(W)‖ | ‖W − P(W)‖ | relative defect | dim P / dim W |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.group} | {r.norm} | {r.weight_norm:.4g} | {r.equivariant_norm:.4g} | "
                     f"{r.defect_norm:.4g} | {r.relative_defect:.3e} | {r.equivariant_dim} / {r.total_dim} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the regulariser


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(map(repr, SCHEMES))} "
                         f"(see docs/training.md)")
    return scheme


class ProjectionRegulariser(nn.Module):
    r"""Penalty ``sum_l lambda_perp ||W_l - P(W_l)|| + lambda_G ||P(W_l)||`` over declared layers.

    Parameters
    ----------
    model : nn.Module
        A model with declared layers (:class:`equiproj.nn.RepLinear`, :func:`declare`).
    lambda_perp : float
        Weight of the non-equivariant part; large values approach strict equivariance.
    lambda_G : float
        Weight of the equivariant part (a decay on ``P(W)`` only).
    norm : str or Norm
        See :mod:`equiproj.norms`; every layer gets its own copy (power-iteration state).
    include_bias : bool, optional
        Override every layer's ``include_bias`` (the declarations are not changed).
    scheme : {'split', 'penalty', 'proximal', 'split-proximal'}
        How the objective ``task loss + penalty`` is optimised (``docs/training.md`` has the
        measurements behind the default):

        * ``'penalty'``: the penalty is a differentiable term to add to the loss (the paper's
          scheme). With Adam this trains badly at large weights: Adam's per-coordinate step
          sizes mix the equivariant and the non-equivariant directions.
        * ``'split'`` (default): every declared weight (and penalised bias) is parametrised as
          ``W = P(A) + (I - P) B`` (:func:`split_`, in place: build the optimiser afterwards)
          and the penalty, in the loss, acts on ``P(A)`` and ``(I - P) B``; the two parts get
          their own optimiser state. Large ``lambda_perp`` gives the strict model's training,
          zero a free layer.
        * ``'proximal'``: nothing is added to the loss; after every optimiser step the exact
          proximal map of the penalty with the step size ``t`` of the weight's parameter group
          (its current learning rate) is applied: for ``norm='fro'``
          ``W <- P(W) + max(0, 1 - t lambda_perp / ||W - P(W)||_F) (W - P(W))`` (and the same
          for ``P(W)`` with ``lambda_G``); for ``'fro2'`` the shrink ``1 / (1 + 2 t lambda)``
          (a decoupled decay, as in AdamW). Call :meth:`attach` with the optimiser. Other
          norms have no closed form here and fall back to ``'penalty'`` with a warning.
        * ``'split-proximal'``: the split parametrisation, with the proximal step applied to
          ``(I - P) B`` (and ``P(A)``); other norms fall back to ``'split'``.

    Examples
    --------
    >>> import torch
    >>> from equiproj import ProjectionRegulariser
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), 2 * G.regular()), torch.nn.ReLU(),
    ...                             RepLinear(2 * G.regular(), G.trivial()))
    >>> reg = ProjectionRegulariser(model, lambda_perp=0.1)   # the split scheme: parametrises the model
    >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # ... so build the optimiser afterwards
    >>> loss = reg()                       # differentiable scalar, add it to the task loss
    >>> loss.backward()
    >>> reg.project_()                     # weights := P(weights)
    >>> float(reg().detach()) < 1e-6
    True

    The proximal scheme instead acts after every optimiser step:

    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular()))
    >>> reg = ProjectionRegulariser(model, lambda_perp=1e3, scheme="proximal")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> _ = reg.attach(opt)
    >>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
    >>> reg.report()[0].defect_norm < 1e-6       # t * lambda_perp is large: the step removes the defect
    True
    """

    #: The projection penalty needs no data (the shared method interface, see equiproj.baselines).
    needs_batch = False

    def __init__(self, model: nn.Module, lambda_perp: float, lambda_G: float = 0.0, norm="fro",
                 include_bias: Optional[bool] = None, scheme: str = DEFAULT_SCHEME, perp_lr: Optional[float] = None):
        for nm, v in (("lambda_perp", lambda_perp), ("lambda_G", lambda_G)):
            try:
                ok = float(v) >= 0 and math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{nm} must be a finite number >= 0, got {v!r}")
        super().__init__()
        # the model is referenced, not registered: the regulariser's parameters() and state_dict()
        # are its own (the model's weights are saved with the model)
        self.__dict__["model"] = model
        self.lambda_perp, self.lambda_G = float(lambda_perp), float(lambda_G)
        self.norm_spec = norm
        self.include_bias = include_bias
        scheme = _check_scheme(scheme)
        base = get_norm(norm)
        if scheme in ("proximal", "split-proximal") and base.name not in _PROX_NORMS:
            fallback = "penalty" if scheme == "proximal" else "split"
            warnings.warn(f"scheme {scheme!r} needs the Frobenius norm ('fro' or 'fro2') for its closed-form "
                          f"proximal map; norm {base.name!r} is trained with scheme {fallback!r} instead",
                          stacklevel=2)
            scheme = fallback
        self.scheme = scheme
        self.layers = declared_layers(model)
        if not self.layers:
            raise ValueError(
                "the model has no declared layers: build it from equiproj.nn layers or call "
                "equiproj.declare(layer, in_rep, out_rep) first"
            )
        if perp_lr is not None:
            try:
                ok = float(perp_lr) > 0 and math.isfinite(float(perp_lr))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"perp_lr must be a finite number > 0, got {perp_lr!r}")
            if scheme not in ("split", "split-proximal"):
                raise ValueError(f"perp_lr (the step size of B in W = P(A) + (I - P) B) needs a split scheme, not "
                                 f"{scheme!r}: use scheme='split' or 'split-proximal', or leave perp_lr out")
        self.perp_lr = (DEFAULT_PERP_LR if perp_lr is None else float(perp_lr)) if scheme in (
            "split", "split-proximal") else None
        if scheme in ("split", "split-proximal"):
            split_(model, include_bias=include_bias)
        self._perp_norms = {name: base.fresh() for name, _, _ in self.layers}
        self._eq_norms = {name: base.fresh() for name, _, _ in self.layers}
        self._hook = None
        self._prox_value: Optional[float] = None
        self._prox_steps = None
        #: Whether the Frobenius penalty is computed by the batched plan (see ``equiproj.projection._batched``).
        self.batched = True
        self._batch = None
        self._batch_sig = None

    @property
    def norm_name(self) -> str:
        return get_norm(self.norm_spec).name

    @property
    def proximal(self) -> bool:
        """Whether the penalty acts through the proximal step (:meth:`attach`), not the loss."""
        return self.scheme in ("proximal", "split-proximal")

    # ------------------------------------------------------------------ the batched penalty
    def _structure(self) -> tuple:
        """What the batched plan depends on: whether there is an equivariant term and, per layer,
        whether weight and bias are split and whether the bias is penalised (evaluated at every
        step, so it reads the module dictionaries directly)."""
        sig = [self.lambda_G > 0]
        for _, m, spec in self.layers:
            w = _tensor_kind(m, spec.weight_name)
            b = _tensor_kind(m, spec.bias_name) if (
                spec.include_bias if self.include_bias is None else self.include_bias) else 0
            sig.append((w == 3, b == 3, b > 0))
        return tuple(sig)

    def _plan(self):
        """The batched Frobenius plan (``None`` for other norms), rebuilt when the structure changes."""
        if not self.batched:
            return None
        sig = self._structure()
        if self._batch is not None and self._batch_sig == sig:
            return self._batch
        if type(get_norm(self.norm_spec)) not in (Frobenius, FrobeniusSquared):
            return None
        if self._batch is None and not self._batchable():
            self.batched = False  # custom projectors or complex weights: layer by layer
            return None
        need_eq = sig[0]
        entries, getters = [], []
        for i, ((_, m, spec), (split_w, split_b, has_b)) in enumerate(zip(self.layers, sig[1:])):
            for role, split, on in (("weight", split_w, True), ("bias", split_b, has_b)):
                if not on:
                    continue
                bias, pname = role == "bias", spec.attr(role)
                if split:  # P(W) = P(A), W - P(W) = (I - P) B
                    entries.append(BatchEntry(spec.projector, i, bias=bias, perp=True, eq=False))
                    getters.append((m, pname, 1))
                    if need_eq:
                        entries.append(BatchEntry(spec.projector, i, bias=bias, perp=False, eq=True))
                        getters.append((m, pname, 0))
                else:
                    entries.append(BatchEntry(spec.projector, i, bias=bias))
                    getters.append((m, pname, None))
        squared = type(get_norm(self.norm_spec)) is FrobeniusSquared
        self._batch = (BatchedFrobenius(entries, len(self.layers), identity=squared), getters, squared)
        self._batch_sig = sig
        return self._batch

    def _batchable(self) -> bool:
        """Whether every declared layer has an equiproj ``Projector`` and real weights of one dtype
        and device (the stacked calls concatenate them)."""
        kinds = set()
        for _, m, spec in self.layers:
            if not isinstance(spec.projector, Projector):
                return False
            for pname in (spec.weight_name, spec.bias_name):
                for t in (_split_originals(m, pname) or (getattr(m, pname, None),)):
                    if isinstance(t, torch.Tensor):
                        if t.is_complex():
                            return False
                        kinds.add((t.dtype, t.device))
        return len(kinds) <= 1

    def _batched_terms(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        plan = self._plan()
        if plan is None:
            return None
        batched, getters, squared = plan
        tensors = self._plan_tensors(getters)
        perp2, eq2 = batched(tensors, need_eq=self.lambda_G > 0)
        if squared:
            return perp2, eq2
        return safe_sqrt(perp2), safe_sqrt(eq2)

    @staticmethod
    def _plan_tensors(getters) -> List[torch.Tensor]:
        out = []
        for m, pname, k in getters:
            if k is None:
                out.append(getattr(m, pname))
            else:
                out.append(getattr(getattr(m.parametrizations, pname), f"original{k}"))
        return out

    def terms(self) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
        """Per layer ``(name, ||non-equivariant part||, ||equivariant part||)`` (differentiable)."""
        both = self._batched_terms()
        if both is not None:
            perp, eq = both
            for i, (name, _, _) in enumerate(self.layers):
                yield name, perp[i], eq[i]
            return
        yield from self._layer_terms()

    def _layer_terms(self) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
        """:meth:`terms` layer by layer (every norm; the reference of the batched path)."""
        need_eq = self.lambda_G > 0
        for name, m, spec in self.layers:
            Peq, Pperp = layer_parts(m, spec, kernel=self._perp_norms[name].kernel_norm,
                                     include_bias=self.include_bias, need_equivariant=need_eq)
            perp = self._perp_norms[name](Pperp)
            eq = self._eq_norms[name](Peq) if need_eq else torch.zeros((), dtype=perp.dtype, device=perp.device)
            yield name, perp, eq

    def value(self) -> torch.Tensor:
        """The penalty's value at the current weights (differentiable), whatever the scheme."""
        plan = self._plan()
        if plan is not None:
            batched, getters, squared = plan
            return batched.penalty(self._plan_tensors(getters), self.lambda_perp, self.lambda_G, squared)
        total = None
        for _, perp, eq in self.terms():
            t = self.lambda_perp * perp + self.lambda_G * eq
            total = t if total is None else total + t
        return total

    def penalty(self, batch=None) -> torch.Tensor:
        """The term to add to the task loss (a scalar). ``batch`` is ignored: the penalty depends on
        the weights only (the argument keeps one interface with data-dependent regularisers).

        Under a proximal scheme the penalty acts through :meth:`attach`, so this returns its value
        without a gradient (for logging): the value after the last proximal step, or at the
        current weights before the first one.
        """
        if self.proximal:
            if self._prox_value is None:
                with torch.no_grad():
                    self._prox_value = float(self.value())
            p = next(iter(self.model.parameters()))
            if isinstance(self._prox_value, torch.Tensor):
                return self._prox_value.detach().to(dtype=p.dtype, device=p.device)
            return torch.tensor(self._prox_value, dtype=p.dtype, device=p.device)
        return self.value()

    def forward(self, batch=None) -> torch.Tensor:
        """``reg()`` is :meth:`penalty` (a module call, so ``torch.compile(reg)`` compiles it)."""
        return self.penalty(batch)

    def perp_parameters(self) -> List[torch.Tensor]:
        """The tensors ``B`` of the split layers (empty for the other schemes)."""
        out = []
        for _, m, spec in self.layers:
            for pname in (spec.weight_name, spec.bias_name):
                ab = _split_originals(m, pname)
                if ab is not None:
                    out.append(ab[1])
        return out

    def param_groups(self, params=None, lr: float = 1e-3) -> List[dict]:
        """Optimiser parameter groups: ``B`` of the split layers at ``perp_lr * lr``, the rest at ``lr``.

        ``params`` defaults to the model's parameters; pass the result to any torch optimiser,
        ``torch.optim.Adam(reg.param_groups(lr=3e-3))``. :func:`equiproj.train.fit` does this itself.
        Other schemes (or ``perp_lr == 1``) give one group.
        """
        params = list(self.model.parameters() if params is None else params)
        perp = {id(t) for t in self.perp_parameters()}
        rest = [p for p in params if id(p) not in perp]
        mine = [p for p in params if id(p) in perp]
        if not mine or self.perp_lr in (None, 1.0):
            return [{"params": params, "lr": lr}]
        return [{"params": rest, "lr": lr}, {"params": mine, "lr": lr * self.perp_lr}]

    # ------------------------------------------------------------------ the proximal step
    def attach(self, optimizer: torch.optim.Optimizer):
        """Apply the proximal step after every ``optimizer.step()`` (proximal schemes; a no-op
        returning ``None`` for the others).

        The hook (``Optimizer.register_step_post_hook``) runs only when the optimiser actually
        steps, so a step that AMP's ``GradScaler`` skips applies no proximal map. Attaching again
        (e.g. to a new optimiser) replaces the previous hook. Returns the hook's handle.
        """
        if not self.proximal:
            return None
        self.detach()
        self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.proximal_step(opt))
        return self._hook

    def detach(self) -> None:
        """Remove the hook installed by :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _shrink(self, n: float, t: float, lam: float) -> float:
        """The factor that the proximal map of ``t * lam * norm`` applies to a part of norm ``n``."""
        if lam == 0 or t == 0:
            return 1.0
        if self.norm_name == "fro2":
            return 1.0 / (1.0 + 2.0 * t * lam)
        return max(0.0, 1.0 - t * lam / n) if n > 0 else 1.0

    def proximal_step(self, optimizer: Optional[torch.optim.Optimizer] = None, lr: Optional[float] = None) -> None:
        r"""Apply the exact proximal map of the penalty to every declared layer (in place).

        The step size of a part is the current learning rate of the parameter group holding the
        tensor it is stored in (``W`` for a plain layer, ``B`` for ``(I - P) B`` and ``A`` for
        ``P(A)`` of a split one), or ``lr`` for all. Parts of layers whose tensors the optimiser
        does not hold are left alone. The objective is separable over the orthogonal split
        ``W = P(W) + (W - P(W))``, so the map shrinks the two parts independently.
        """
        if optimizer is None and lr is None:
            raise ValueError("proximal_step needs the optimizer (for its learning rates) or lr")
        if not self.proximal:
            return
        lrs = {} if optimizer is None else {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}

        def step_size(t: torch.Tensor) -> Optional[float]:
            if lr is not None:
                return float(lr)
            v = lrs.get(id(t))
            return None if v is None else float(v)

        sq = self.norm_name == "fro2"
        plan = self._plan()
        if plan is not None:
            self._batched_proximal(plan, step_size, sq)
            return
        value = 0.0
        with torch.no_grad():
            for name, m, spec in self.layers:
                P = spec.projector
                names = ("weight", "bias") if _penalised_bias(m, spec, self.include_bias) else ("weight",)
                parts = []  # (eq source, perp source, P(eq source), perp part)
                for role in names:
                    se, sp = _sources(m, spec.attr(role))
                    proj = P.project_bias if role == "bias" else P.project
                    Psp = proj(sp)
                    Pse = Psp if se is sp else (proj(se) if self.lambda_G > 0 else None)
                    parts.append((se, sp, Pse, sp - Psp))
                t_perp = step_size(parts[0][1])
                t_eq = step_size(parts[0][0])
                n_perp = math.sqrt(sum(float(torch.linalg.vector_norm(r)) ** 2 for _, _, _, r in parts))
                f_perp = 1.0 if t_perp is None else self._shrink(n_perp, t_perp, self.lambda_perp)
                n_eq, f_eq = 0.0, 1.0
                if self.lambda_G > 0:
                    n_eq = math.sqrt(sum(float(torch.linalg.vector_norm(q)) ** 2 for _, _, q, _ in parts))
                    f_eq = 1.0 if t_eq is None else self._shrink(n_eq, t_eq, self.lambda_G)
                for se, sp, Pse, r in parts:
                    if f_perp != 1.0:
                        sp.sub_((1.0 - f_perp) * r)
                    if f_eq != 1.0:
                        se.sub_((1.0 - f_eq) * Pse)
                a, b = n_perp * f_perp, n_eq * f_eq
                value += self.lambda_perp * (a * a if sq else a) + self.lambda_G * (b * b if sq else b)
        self._prox_value = value

    def _batched_proximal(self, plan, step_size, sq: bool) -> None:
        """:meth:`proximal_step` on the batched plan: the per-layer norms in one pass, the factors
        as tensors (no host synchronisation), the update in one more pass."""
        batched, getters, _ = plan
        tensors = self._plan_tensors(getters)
        L = len(self.layers)
        t_perp, t_eq = [0.0] * L, [0.0] * L  # step size 0: factor 1 (the part is left alone)
        # the step size of a part is that of its weight's tensor (as the layer-by-layer code)
        for i, (_, m, spec) in enumerate(self.layers):
            se, sp = _sources(m, spec.weight_name)
            a, b = step_size(sp), step_size(se)
            t_perp[i] = 0.0 if a is None else a
            t_eq[i] = 0.0 if b is None else b
        need_eq = self.lambda_G > 0
        ref = tensors[0]
        key = (tuple(t_perp), tuple(t_eq), ref.dtype, ref.device)
        if self._prox_steps is None or self._prox_steps[0] != key:  # kept while the step sizes stay
            self._prox_steps = (key, torch.tensor(t_perp, dtype=ref.dtype, device=ref.device),
                                torch.tensor(t_eq, dtype=ref.dtype, device=ref.device))
        _, tp, te = self._prox_steps

        def factors(perp2, eq2):
            fp = self._shrink_factors(perp2.clamp_min(0).sqrt(), tp, self.lambda_perp, sq)
            fe = self._shrink_factors(eq2.clamp_min(0).sqrt(), te, self.lambda_G, sq) if need_eq else None
            return fp, fe

        with torch.no_grad():
            perp2, eq2, f_perp, f_eq = batched.proximal_(tensors, factors, need_eq=need_eq)
            a = perp2.clamp_min(0).sqrt() * f_perp
            value = self.lambda_perp * (a * a if sq else a).sum()
            if need_eq:
                b = eq2.clamp_min(0).sqrt() * f_eq
                value = value + self.lambda_G * (b * b if sq else b).sum()
        self._prox_value = value

    def _shrink_factors(self, n: torch.Tensor, t: torch.Tensor, lam: float, sq: bool) -> torch.Tensor:
        """:meth:`_shrink` for vectors of norms and step sizes."""
        if lam == 0:
            return torch.ones_like(n)
        if sq:
            return 1.0 / (1.0 + 2.0 * t * lam)
        # 1 - t lam / n, at least 0; n = 0 gives 1/n = inf and the factor 0 (its part is 0 anyway),
        # t = 0 gives 0 * inf = nan and the factor 1 (a part the optimiser does not hold)
        return (1.0 - (t * lam) * n.reciprocal()).nan_to_num_(nan=1.0).clamp_min_(0.0)

    # ------------------------------------------------------------------ state, report
    def state_dict(self, *args, **kwargs) -> dict:
        """What a resumed run needs besides the weights: the power-iteration vectors of the
        spectral norms and the last proximal value (checkpointed by :func:`equiproj.train.fit`;
        plain tensors, floats and strings, so ``torch.load(..., weights_only=True)`` reads it)."""
        norms = {}
        for kind, table in (("perp", self._perp_norms), ("eq", self._eq_norms)):
            for name, n in table.items():
                u = getattr(n, "_u", None)
                if u is not None:
                    norms[f"{kind}/{name}"] = u.detach().cpu().clone()
        prox = self._prox_value
        prox = float(prox) if isinstance(prox, torch.Tensor) else prox
        return {"scheme": self.scheme, "prox_value": prox, "norm_state": norms}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        """Inverse of :meth:`state_dict` (``strict``: layer names the regulariser does not know raise)."""
        unknown = [k for k in state.get("norm_state", {}) if k.split("/", 1)[1] not in self._perp_norms]
        if strict and unknown:
            raise KeyError(f"load_state_dict: no declared layer for the saved norm state {sorted(unknown)}; "
                           f"the layers are {sorted(self._perp_norms)} (pass strict=False to skip them)")
        self._prox_value = state.get("prox_value")
        for key, u in state.get("norm_state", {}).items():
            kind, name = key.split("/", 1)
            table = self._perp_norms if kind == "perp" else self._eq_norms
            if name in table:
                p = next(iter(self.model.parameters()))
                table[name]._u = u.to(device=p.device)

    def report(self, norm=None) -> List[LayerReport]:
        """Per-layer figures in ``norm`` (default: the penalty's norm; spectral is exact here)."""
        return report(self.model, self.norm_spec if norm is None else norm, include_bias=self.include_bias)

    def project_(self) -> None:
        """Replace every declared layer's weights (and biases) by their equivariant parts."""
        project_(self.model)

    def __repr__(self) -> str:
        extra = "" if self.perp_lr is None else f", perp_lr={self.perp_lr:g}"
        return (f"ProjectionRegulariser({len(self.layers)} layers, lambda_perp={self.lambda_perp}, "
                f"lambda_G={self.lambda_G}, norm={self.norm_name!r}, scheme={self.scheme!r}{extra})")


# ---------------------------------------------------------------------------------- projection, init, constraint


def project_(model: nn.Module) -> nn.Module:
    """Replace the weights and biases of every declared layer by their equivariant parts.

    Biases are projected onto the invariant vectors of ``rho_out`` whatever ``include_bias``
    says, so that the result is exactly equivariant. Parametrised layers (split, strict, RPP)
    get the projected tensor through their ``right_inverse``. Returns the model.
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("project_: the model has no declared layers")
    with torch.no_grad():
        for _, m, spec in layers:
            P = spec.projector
            wn, bn = spec.weight_name, spec.bias_name
            _assign(m, wn, P.project(getattr(m, wn)))
            if _has(m, bn):
                _assign(m, bn, P.project_bias(getattr(m, bn)))
    return model


#: The starting points of :func:`initialise_`.
INIT_MODES = ("equivariant", "projected", "keep")


def equivariant_init_(model: nn.Module, rescale: bool = True) -> nn.Module:
    """Start from the equivariant part of the current initialisation: :func:`project_`, then (with
    ``rescale``) multiply every declared weight back to its former Frobenius norm, since the
    projection alone shrinks the weights (by ``sqrt(dim P / dim W)`` on average) and the signal
    with them through a deep network. Regularised models then begin where the strict model
    begins, and the penalty controls how much non-equivariance the data pulls in. This is what
    ``make_method("projection" | "strict" | "rpp", ...)`` does by default (``init="equivariant"``).

    Examples
    --------
    >>> import torch
    >>> from equiproj import equivariant_init_, report
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> layer = RepLinear(cyclic(4).regular(), cyclic(4).regular())
    >>> n = float(layer.weight.detach().norm())
    >>> _ = equivariant_init_(layer)
    >>> r = report(layer)[0]
    >>> round(r.relative_defect, 6), abs(float(layer.weight.detach().norm()) - n) < 1e-5
    (0.0, True)
    """
    layers = declared_layers(model)
    with torch.no_grad():
        norms = [(m, spec.weight_name, getattr(m, spec.weight_name).norm()) for _, m, spec in layers]
        project_(model)
        if rescale:
            for m, wn, n in norms:
                w = getattr(m, wn)
                pn = w.norm()
                if pn > 0:
                    _assign(m, wn, w * (n / pn))
    return model


def initialise_(model: nn.Module, init: str = "equivariant") -> nn.Module:
    """The starting point of a regularised model: ``"equivariant"`` (:func:`equivariant_init_`, the
    projection rescaled to the former norms), ``"projected"`` (:func:`project_` only) or
    ``"keep"`` (the weights as they are). Returns the model."""
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {', '.join(map(repr, INIT_MODES))}, got {init!r}")
    if init == "equivariant":
        return equivariant_init_(model, rescale=True)
    if init == "projected":
        return project_(model)
    return model


class _Equivariant(nn.Module):
    """Parametrisation ``W -> P(W)`` (hard constraint); assigning ``layer.weight = W`` stores ``P(W)``.

    In eval mode without autograd (``model.eval()`` and ``torch.no_grad()`` or
    ``torch.inference_mode()``) the projected tensor is cached until the stored weight changes
    (its version counter), so inference projects once, not per forward.
    """

    def __init__(self, projector: Projector, bias: bool = False):
        super().__init__()
        self.projector = projector
        self.bias = bias
        self._eval_cache = None
        #: the :class:`_ConstrainedGroup` of the tensors constrained together (``None``: alone)
        self.group: Optional["_ConstrainedGroup"] = None
        self.slot = 0

    def _project(self, X):
        return self.projector.project_bias(X) if self.bias else self.projector.project(X)

    def forward(self, X):
        if self.training or torch.is_grad_enabled() or torch.is_inference(X):
            self._eval_cache = None
            if self.group is not None and parametrize._cache_enabled:
                W = self.group.weight(self)
                if W is not None:
                    return W
            return self._project(X)
        key = (X.data_ptr(), X._version, X.dtype, X.device, tuple(X.shape))
        cache = self._eval_cache
        if cache is None or cache[0] != key:
            cache = self._eval_cache = (key, self._project(X))
        return cache[1]

    def __getstate__(self):  # the cache is not part of the state (deepcopy, pickling)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_eval_cache"] = None
        return state

    def right_inverse(self, X):
        return self.forward(X.detach())


def constrain_(model: nn.Module) -> nn.Module:
    """Hard equivariance: parametrise every declared layer's weight as ``P(W)``.

    Uses ``torch.nn.utils.parametrize``: training updates the free weight ``W`` but the layer
    only ever uses ``P(W)``, so the model is strictly equivariant (the strict baseline).
    The stored weight is projected first, so the model's function is ``project_``'s; assigning
    ``layer.weight = W`` stores ``P(W)``. :func:`unconstrain_` turns the model back into plain
    layers (do that before saving it for use without equiproj).

    Cost: one projection per tensor and forward pass; inside ``torch.nn.utils.parametrize.cached()``
    (as :func:`equiproj.train.fit` runs every step) all tensors of one call are projected in one
    autograd node, layer by layer outside it.
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("constrain_: the model has no declared layers")
    project_(model)
    members = []
    for _, m, spec in layers:
        wn, bn = spec.weight_name, spec.bias_name
        if not parametrize.is_parametrized(m, wn):
            eq = _Equivariant(spec.projector)
            parametrize.register_parametrization(m, wn, eq)
            members.append((m, wn, eq))
        if isinstance(getattr(m, bn, None), torch.Tensor) and not parametrize.is_parametrized(m, bn):
            eq = _Equivariant(spec.projector, bias=True)
            parametrize.register_parametrization(m, bn, eq)
            members.append((m, bn, eq))
    if len(members) > 1:  # evaluated together inside parametrize.cached()
        _ConstrainedGroup(members)
    return model


def unconstrain_(model: nn.Module) -> nn.Module:
    """Remove every parametrisation of the declared layers (the hard constraint, the split
    parametrisation, residual pathways), keeping the current effective weights as plain
    parameters. The layers stay declared. Build a new optimiser afterwards."""
    for _, m, spec in declared_layers(model):
        for name in (spec.weight_name, spec.bias_name):
            if parametrize.is_parametrized(m, name):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return model
