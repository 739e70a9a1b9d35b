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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .actions import HomAction
from .groups import Representation
from .norms import Norm, SpectralNorm, get_norm
from .projection import Projector

__all__ = [
    "LayerSpec", "declare", "declare_model", "declared_layers", "ProjectionRegulariser", "LayerReport", "project_",
    "equivariant_init_",
    "constrain_", "unconstrain_", "report", "format_report", "SPEC_ATTR",
]

#: Name of the attribute that marks a declared layer.
SPEC_ATTR = "equiproj_spec"


@dataclass
class LayerSpec:
    """A declared layer: its projector and whether its bias is penalised."""

    projector: Projector
    include_bias: bool = True

    @property
    def group(self):
        return self.projector.group


def _as_representations(*reps, group=None):
    from .interop.e3nn import as_representations  # Representations pass through; e3nn strings

    return as_representations(*reps, group=group)


def _action_for(module: nn.Module, in_rep: Representation, out_rep: Representation, name: str, **kw):
    if not isinstance(in_rep, Representation) or not isinstance(out_rep, Representation):
        raise TypeError(f"layer '{name}': in_rep and out_rep must be equiproj.groups.Representation objects")
    """Build the weight action for a supported module type, checking dimensions."""
    if isinstance(module, nn.Linear):
        if kw:
            raise TypeError(f"unexpected options for nn.Linear layer '{name}': {sorted(kw)}")
        if in_rep.dim != module.in_features:
            raise ValueError(
                f"in_rep dimension {in_rep.dim} does not match in_features {module.in_features} of layer '{name}'"
            )
        if out_rep.dim != module.out_features:
            raise ValueError(
                f"out_rep dimension {out_rep.dim} does not match out_features {module.out_features} of layer '{name}'"
            )
        return HomAction(in_rep, out_rep)
    from .actions import kernel_action_for  # convolutions (see equiproj.actions)

    return kernel_action_for(module, in_rep, out_rep, name, **kw)


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
    setattr(module, SPEC_ATTR, LayerSpec(Projector(action, route=route), include_bias=include_bias))
    return module


_SUPPORTED = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _channels(m: nn.Module) -> Tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


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
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, _SUPPORTED) and name not in skip]
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


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight


def _bias(module: nn.Module, spec: LayerSpec) -> Optional[torch.Tensor]:
    b = getattr(module, "bias", None)
    return b if (spec.include_bias and isinstance(b, torch.Tensor)) else None


def _augment(M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[M, b]`` (the affine map) when the bias lives on the rows of ``M``; otherwise (transposed
    convolutions, whose bias lives on the columns' side) the block-diagonal ``[[M, 0], [0, b]]``."""
    if b.shape[0] == M.shape[-2]:
        return torch.cat([M, b[:, None]], dim=1)
    top = torch.cat([M, M.new_zeros(M.shape[0], 1)], dim=1)
    bottom = torch.cat([M.new_zeros(b.shape[0], M.shape[1]), b[:, None]], dim=1)
    return torch.cat([top, bottom], dim=0)


def layer_parts(module: nn.Module, spec: LayerSpec, kernel: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Equivariant and non-equivariant parts of the weight matrix with its bias (see
    :func:`_augment`), as matrices; with ``kernel=True`` the weight in its own shape, no bias."""
    P = spec.projector
    if kernel:
        PW = P.project(_weight(module))
        return PW, _weight(module) - PW
    W = _weight(module)
    M = P.as_matrix(W)
    PM = P._project_matrix(M)
    b = _bias(module, spec)
    if b is None:
        return PM, M - PM
    Pb = P.project_bias(b)
    return _augment(PM, Pb), _augment(M - PM, b - Pb)


@dataclass
class LayerReport:
    """Per-layer equivariance figures (norms of the augmented matrix ``[W, b]``)."""

    name: str
    group: str
    norm: str
    weight_norm: float
    equivariant_norm: float
    defect_norm: float
    relative_defect: float
    equivariant_dim: int
    total_dim: int

    def as_dict(self) -> dict:
        return asdict(self)


def _report_norm(norm) -> Norm:
    n = get_norm(norm).fresh() if isinstance(norm, Norm) else get_norm(norm)
    if isinstance(n, SpectralNorm) and not n.exact:
        return SpectralNorm(exact=True)
    return n


def report(model: nn.Module, norm="fro") -> List[LayerReport]:
    """Per-layer report of every declared layer of ``model`` (see :class:`LayerReport`)."""
    n = _report_norm(norm)
    rows = []
    with torch.no_grad():
        for name, m, spec in declared_layers(model):
            Peq, Pperp = layer_parts(m, spec, kernel=n.kernel_norm)
            full = Peq + Pperp
            wn, en, dn = float(n(full)), float(n(Peq)), float(n(Pperp))
            rows.append(LayerReport(
                name=name or "<model>", group=spec.group.name, norm=n.name, weight_norm=wn,
                equivariant_norm=en, defect_norm=dn, relative_defect=dn / wn if wn > 0 else 0.0,
                equivariant_dim=spec.projector.dim, total_dim=spec.projector.total_dim,
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


class ProjectionRegulariser:
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
        Override every layer's ``include_bias``.

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
    >>> reg = ProjectionRegulariser(model, lambda_perp=0.1)
    >>> loss = reg()                       # differentiable scalar
    >>> loss.backward()
    >>> reg.project_()                     # weights := P(weights)
    >>> float(reg().detach()) < 1e-6
    True
    """

    def __init__(self, model: nn.Module, lambda_perp: float, lambda_G: float = 0.0, norm="fro",
                 include_bias: Optional[bool] = None):
        for nm, v in (("lambda_perp", lambda_perp), ("lambda_G", lambda_G)):
            if not (float(v) >= 0):
                raise ValueError(f"{nm} must be a non-negative number, got {v!r}")
        self.model = model
        self.lambda_perp, self.lambda_G = float(lambda_perp), float(lambda_G)
        self.norm_spec = norm
        self.layers = declared_layers(model)
        if not self.layers:
            raise ValueError(
                "the model has no declared layers: build it from equiproj.nn layers or call "
                "equiproj.declare(layer, in_rep, out_rep) first"
            )
        if include_bias is not None:
            for _, _, spec in self.layers:
                spec.include_bias = include_bias
        base = get_norm(norm)
        self._perp_norms = {name: base.fresh() for name, _, _ in self.layers}
        self._eq_norms = {name: base.fresh() for name, _, _ in self.layers}

    @property
    def norm_name(self) -> str:
        return get_norm(self.norm_spec).name

    def terms(self) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
        """Per layer ``(name, ||non-equivariant part||, ||equivariant part||)`` (differentiable)."""
        for name, m, spec in self.layers:
            Peq, Pperp = layer_parts(m, spec, kernel=self._perp_norms[name].kernel_norm)
            perp = self._perp_norms[name](Pperp)
            eq = self._eq_norms[name](Peq) if self.lambda_G > 0 else torch.zeros((), dtype=perp.dtype,
                                                                                  device=perp.device)
            yield name, perp, eq

    #: The projection penalty needs no data (the shared method interface, see equiproj.baselines).
    needs_batch = False

    def penalty(self, batch=None) -> torch.Tensor:
        """The differentiable penalty (a scalar). ``batch`` is ignored: the penalty depends on the
        weights only (the argument keeps one interface with data-dependent regularisers)."""
        total = None
        for _, perp, eq in self.terms():
            t = self.lambda_perp * perp + self.lambda_G * eq
            total = t if total is None else total + t
        return total

    __call__ = penalty

    def report(self, norm=None) -> List[LayerReport]:
        """Per-layer figures in ``norm`` (default: the penalty's norm; spectral is exact here)."""
        return report(self.model, self.norm_spec if norm is None else norm)

    def project_(self) -> None:
        """Replace every declared layer's weights (and biases) by their equivariant parts."""
        project_(self.model)

    def __repr__(self) -> str:
        return (f"ProjectionRegulariser({len(self.layers)} layers, lambda_perp={self.lambda_perp}, "
                f"lambda_G={self.lambda_G}, norm={self.norm_name!r})")


def _param_target(module: nn.Module, name: str) -> Optional[torch.Tensor]:
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name, None)


def project_(model: nn.Module) -> nn.Module:
    """Replace the weights and biases of every declared layer by their equivariant parts.

    Biases are projected onto the invariant vectors of ``rho_out`` whatever ``include_bias``
    says, so that the result is exactly equivariant. Returns the model.
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("project_: the model has no declared layers")
    with torch.no_grad():
        for _, m, spec in layers:
            P = spec.projector
            w = _param_target(m, "weight")
            w.copy_(P.project(w))
            b = _param_target(m, "bias")
            if isinstance(b, torch.Tensor):
                b.copy_(P.project_bias(b))
    return model


def equivariant_init_(model: nn.Module, rescale: bool = True) -> nn.Module:
    """Start from the equivariant part of the current initialisation: :func:`project_`, then (with
    ``rescale``) multiply every declared weight back to its former Frobenius norm, since the
    projection alone shrinks the weights (by ``sqrt(dim P / dim W)`` on average) and the signal
    with them through a deep network. Regularised models then begin where the strict model
    begins, and the penalty controls how much non-equivariance the data pulls in.

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
        norms = [(m, _param_target(m, "weight").norm()) for _, m, _ in layers]
        project_(model)
        if rescale:
            for m, n in norms:
                w = _param_target(m, "weight")
                pn = w.norm()
                if pn > 0:
                    w.mul_(n / pn)
    return model


class _Equivariant(nn.Module):
    """Parametrisation ``W -> P(W)`` (hard constraint)."""

    def __init__(self, projector: Projector, bias: bool = False):
        super().__init__()
        self.projector = projector
        self.bias = bias

    def forward(self, X):
        return self.projector.project_bias(X) if self.bias else self.projector.project(X)


def constrain_(model: nn.Module) -> nn.Module:
    """Hard equivariance: parametrise every declared layer's weight as ``P(W)``.

    Uses ``torch.nn.utils.parametrize``: training updates the free weight ``W`` but the layer
    only ever uses ``P(W)``, so the model is strictly equivariant (the strict baseline).
    The stored weight is projected first, so the model's function is ``project_``'s.
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("constrain_: the model has no declared layers")
    project_(model)
    for _, m, spec in layers:
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", _Equivariant(spec.projector))
        if isinstance(getattr(m, "bias", None), torch.Tensor) and not parametrize.is_parametrized(m, "bias"):
            parametrize.register_parametrization(m, "bias", _Equivariant(spec.projector, bias=True))
    return model


def unconstrain_(model: nn.Module) -> nn.Module:
    """Remove the hard constraint, keeping the (equivariant) current weights."""
    for _, m, _ in declared_layers(model):
        for name in ("weight", "bias"):
            if parametrize.is_parametrized(m, name):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return model
