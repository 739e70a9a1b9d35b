r"""Model checks: find modules that do not commute with the declared action (private module).

Projecting every declared layer (:func:`equiproj.project_`) makes the *layers* equivariant; the
network is equivariant only if everything between them commutes with the action too. A stock
model usually has modules that do not:

* per-channel normalisation (``nn.BatchNorm2d``, ``nn.GroupNorm``, ``nn.LayerNorm``,
  ``nn.InstanceNorm2d``) on channels that the group permutes or mixes;
* pointwise nonlinearities (``nn.ReLU``, ...) on fields that are not permutation fields, such
  as SO(3) vectors: no pointwise function commutes with a rotation of a vector, and the only
  equivariant maps through them are constants;
* max pooling on such fields;
* strides, paddings and pooling windows whose sampling positions are not symmetric about the
  grid's centre. A convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and
  dilation ``d`` on an axis of ``n`` points samples windows centred at
  ``c_j = j s - p + d (k - 1) / 2``; the flips and quarter turns of the grid map this set onto
  itself exactly when the last window ends at the padded border,

  .. math::

      (n + 2p - d (k - 1) - 1) \equiv 0 \pmod s,

  for example odd ``n`` for ``k = 3, s = 2, p = 1`` and even ``n`` for ``k = s = 2, p = 0``.
  Stride 1 always satisfies it. Transposed convolutions need ``output_padding = 0``.
  Rotations also need the same kernel, stride, padding and dilation on every axis.

:func:`check_model` walks the modules in their registration order, tracks the representation
that the last declared layer put on its outputs, and reports such modules. The walk sees modules
only (a ``torch.nn.functional.relu`` inside ``forward`` is not seen) and assumes that a module
acts on the output of the declared layer registered before it, which holds for sequential models
and for the blocks of ResNets and U-Nets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .groups import Representation

__all__ = ["check_model", "ModelIssue", "EquivarianceWarning", "GridSizeWarning", "ModelCheckError", "replace_norms_"]


class EquivarianceWarning(UserWarning):
    """A module of a declared model that does not commute with the group action."""


class GridSizeWarning(EquivarianceWarning):
    """Strided or pooling layers that are equivariant only for some input sizes, which were not
    checked (no ``example_input``)."""


class ModelCheckError(ValueError):
    """Raised by :func:`check_model` with ``strict=True``."""


@dataclass(frozen=True)
class ModelIssue:
    """One module that breaks equivariance: its name, type, what is wrong and how to fix it.

    ``kind`` is ``'norm'``, ``'nonlinearity'``, ``'pooling'``, ``'grid'`` (stride, padding or
    input size that break the grid's symmetry), ``'flatten'``, or ``'size'``: a strided layer
    whose condition on the input size could not be checked because no example input was given.
    """

    name: str
    module: str
    kind: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"layer '{self.name}' ({self.module}): {self.problem}. Fix: {self.fix}."


# ---------------------------------------------------------------------- field kinds

def _field_kinds(rep: Representation) -> Tuple[bool, bool]:
    """``(all trivial, all trivial or permutation)`` for the fields of ``rep``."""
    from .nn._norm import NORM, TRIVIAL, field_statistics

    kinds = field_statistics(rep).kinds
    return all(k == TRIVIAL for k in kinds), all(k != NORM for k in kinds)


def _non_permutation_fields(rep: Representation) -> str:
    names = []
    for f, _ in rep.field_blocks():
        if f.permutation is None and not f.is_trivial() and f.name not in names:
            names.append(f.name)
    return ", ".join(names)


def _declared_io(m: nn.Module):
    """``(rep on the module's inputs, rep on its outputs, acts on a grid)`` of a declared layer."""
    from .regularise import SPEC_ATTR, LayerSpec

    spec = getattr(m, SPEC_ATTR, None)
    if not isinstance(spec, LayerSpec):
        return None
    action = getattr(spec.projector, "action", None)
    rin, rout = getattr(action, "in_rep", None), getattr(action, "out_rep", None)
    if not isinstance(rin, Representation) or not isinstance(rout, Representation):
        return None
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        rin, rout = rout, rin  # projected as the adjoint convolution from out_rep to in_rep
    return rin, rout, hasattr(action, "kernel_size")


def _equiproj_rep(m: nn.Module) -> Optional[Representation]:
    """The representation an equiproj module puts on its outputs (norms, nonlinearities)."""
    for attr in ("out_rep", "rep"):
        r = getattr(m, attr, None)
        if isinstance(r, Representation) and type(m).__module__.startswith("equiproj."):
            return r
    return None


# ---------------------------------------------------------------------- the grid condition

def _axes(v, n: int) -> Tuple:
    if isinstance(v, (tuple, list)):
        return tuple(v)
    return (v,) * n


def grid_residue(kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """The residue ``r`` with: the layer is exact on an axis of ``n`` points iff ``n % stride == r``.

    Examples
    --------
    >>> grid_residue(3, 2, 1), grid_residue(2, 2, 0), grid_residue(3, 1, 1)
    (1, 0, 0)
    """
    return (dilation * (kernel - 1) + 1 - 2 * padding) % stride


def _size_rule(s: int, r: int) -> str:
    if s == 2:
        return "odd" if r == 1 else "even"
    return f"n % {s} == {r}"


def _swaps_axes(group) -> bool:
    """Whether some element of the group maps one grid axis to another (rotations do, flips not)."""
    if not group.is_finite:
        return True
    M = group.standard()(group.elements(), dtype=torch.float64)
    off = M - torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1))
    return bool(off.abs().max() > 1e-9)


def _window_issues(name: str, m: nn.Module, group, sizes: Optional[List[Tuple[int, ...]]],
                   n_axes: int, kernel, stride, padding, dilation, what: str) -> List[ModelIssue]:
    """Stride / padding / size issues of a convolution or pooling with ``n_axes`` spatial axes."""
    out = []
    typ = type(m).__name__
    if isinstance(padding, str):
        k, d = _axes(kernel, n_axes), _axes(dilation, n_axes)
        if padding == "same" and any((di * (ki - 1)) % 2 for ki, di in zip(k, d)):
            out.append(ModelIssue(name, typ, "grid", "padding='same' with an even kernel pads one side more than the "
                                  "other, which moves the sampling grid off the centre",
                                  "use an odd kernel size or explicit symmetric padding"))
        padding = 0 if padding == "valid" else None
        if padding is None:
            return out
    k, s, p, d = (_axes(v, n_axes) for v in (kernel, stride, padding, dilation))
    if _swaps_axes(group) and len({(a, b, c, e) for a, b, c, e in zip(k, s, p, d)}) > 1:
        out.append(ModelIssue(name, typ, "grid", f"kernel {k}, stride {s}, padding {p} and dilation {d} differ between "
                              f"axes, but {group.name} maps axes onto each other",
                              "use the same value on every axis"))
        return out
    if all(si == 1 for si in s):
        return out
    rules = [(si, grid_residue(ki, si, pi, di)) for ki, si, pi, di in zip(k, s, p, d)]
    if sizes is None:
        si, r = rules[0]
        out.append(ModelIssue(
            name, typ, "size",
            f"the {what} with stride {s[0]} (kernel {k[0]}, padding {p[0]}, dilation {d[0]}) is exact for {group.name} "
            f"only on inputs of {_size_rule(si, r)} size n along every axis ((n + 2p - d(k-1) - 1) divisible by the "
            f"stride)",
            "pass example_input=x to check_model or declare_model to check the sizes your model sees"))
        return out
    bad = sorted({tuple(sz) for sz in sizes
                  if any(n % si != r for n, (si, r) in zip(sz, rules))})
    if bad:
        si, r = rules[0]
        out.append(ModelIssue(
            name, typ, "grid",
            f"its input of spatial size {bad[0]} breaks the grid symmetry: with stride {s[0]}, kernel {k[0]}, padding "
            f"{p[0]} and dilation {d[0]} the {what} is exact only for sizes that are {_size_rule(si, r)}",
            "change the input size (or the padding) so that every strided layer sees sizes of that form"))
    return out


# ---------------------------------------------------------------------- module classes

_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
              nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
              nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.GLU, nn.PReLU, nn.RReLU)
_ODD = (nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.LPPool1d, nn.LPPool2d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _n_axes(m: nn.Module) -> int:
    for cls, n in ((nn.MaxPool1d, 1), (nn.AvgPool1d, 1), (nn.LPPool1d, 1), (nn.Conv1d, 1), (nn.ConvTranspose1d, 1),
                   (nn.MaxPool3d, 3), (nn.AvgPool3d, 3), (nn.Conv3d, 3), (nn.ConvTranspose3d, 3)):
        if isinstance(m, cls):
            return n
    return 2


def _norm_channels(m: nn.Module) -> Optional[int]:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[0])
    return getattr(m, "num_features", None)


def _norm_issue(name: str, m: nn.Module, rep: Optional[Representation]) -> Optional[ModelIssue]:
    typ = type(m).__name__
    fix = ("replace it with equiproj.nn.FieldBatchNorm(rep) / FieldLayerNorm(rep), or pass replace_norms=True "
           "to equiproj.declare_model")
    if rep is None:
        return ModelIssue(name, typ, "norm", "it normalises each channel on its own, and its channels do not match "
                          "the width of the declared layer before it, so their representation is unknown; per-channel "
                          "normalisation commutes only with trivial channels", fix)
    trivial, perm = _field_kinds(rep)
    if trivial:
        return None
    G = rep.group.name
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        problem = (f"it keeps a mean, a variance, a scale and a shift per channel, which do not commute with "
                   f"{rep.name} of {G} (in eval mode the running statistics, in both modes the affine parameters)")
    elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
        if perm and not m.affine and not m.track_running_stats:
            return None  # per-sample, per-channel statistics move with the permuted channels
        problem = (f"per-channel statistics{' and affine parameters' if m.affine else ''} do not commute with "
                   f"{rep.name} of {G}")
    elif isinstance(m, nn.GroupNorm):
        aligned = rep.dim % m.num_groups == 0 and all(
            int(idx[0]) // (rep.dim // m.num_groups) == int(idx[-1]) // (rep.dim // m.num_groups)
            for _, idx in rep.field_blocks())
        if perm and not m.affine and aligned:
            return None
        affine = "per-channel affine parameters and " if m.affine else ""
        problem = (f"its {affine}group statistics do not commute with "
                   f"{rep.name} of {G}" + ("" if aligned else " (its channel groups cut through fields)"))
    else:  # LayerNorm
        if perm and not m.elementwise_affine:
            return None
        problem = (f"its {'per-channel affine parameters' if m.elementwise_affine else 'mean over all channels'} "
                   f"do not commute with {rep.name} of {G}")
    return ModelIssue(name, typ, "norm", problem, fix)


def _pointwise_issue(name: str, m: nn.Module, rep: Representation) -> Optional[ModelIssue]:
    typ = type(m).__name__
    trivial, perm = _field_kinds(rep)
    if trivial:
        return None
    if isinstance(m, nn.PReLU) and m.num_parameters > 1:
        return ModelIssue(name, typ, "nonlinearity", f"its {m.num_parameters} per-channel slopes do not commute with "
                          f"{rep.name} of {rep.group.name}", "use nn.PReLU() with one shared slope")
    if isinstance(m, nn.GLU):
        return ModelIssue(name, typ, "nonlinearity", "it splits the channels in halves, which cuts through fields",
                          "use equiproj.nn.GatedNonlinearity")
    if perm:
        return None
    odd = isinstance(m, _ODD) or (isinstance(m, nn.Hardtanh) and m.min_val == -m.max_val)
    if odd and all(f.dim == 1 for f, _ in rep.field_blocks()):
        return None  # odd functions commute with sign changes
    return ModelIssue(
        name, typ, "nonlinearity",
        f"it acts on every coordinate of {rep.name} of {rep.group.name} separately, but the fields "
        f"{_non_permutation_fields(rep)} are not permutation fields: no pointwise function commutes with their "
        f"action, so after projection the layers around it can only pass constants through these fields",
        "use equiproj.nn.NormNonlinearity or GatedNonlinearity on these fields, or regular (permutation) hidden fields")


# ---------------------------------------------------------------------- the walk

def _record_sizes(model: nn.Module, example_input) -> Dict[str, List[Tuple[int, ...]]]:
    """Spatial input sizes of every module in one forward pass (eval mode, no gradients)."""
    sizes: Dict[str, List[Tuple[int, ...]]] = {}
    handles = []

    def hook(name):
        def fn(mod, args):
            if args and isinstance(args[0], torch.Tensor):
                sizes.setdefault(name, []).append(tuple(args[0].shape))
        return fn

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(hook(name)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            elif isinstance(example_input, dict):
                model(**example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return sizes


def _spatial(shapes: Optional[List[Tuple[int, ...]]], n_axes: int) -> Optional[List[Tuple[int, ...]]]:
    if shapes is None:
        return None
    return [s[-n_axes:] for s in shapes if len(s) >= n_axes + 1]


def _find_issues(model: nn.Module, sizes: Optional[Dict[str, List[Tuple[int, ...]]]]) -> List[ModelIssue]:
    declared = [(name, m, io) for name, m in model.named_modules() if (io := _declared_io(m)) is not None]
    if not declared:
        return []
    known = [r for _, _, (rin, rout, _) in declared for r in (rout, rin)]
    current: Representation = declared[0][2][0]
    grid_group = None
    issues: List[ModelIssue] = []

    def shapes_of(name, n_axes):
        return None if sizes is None else _spatial(sizes.get(name, []), n_axes)

    for name, m in model.named_modules():
        io = _declared_io(m)
        if io is not None:
            rin, rout, on_grid = io
            if on_grid and not (rin.group.is_finite and rin.group.order == 1):
                grid_group = rin.group
                n = _n_axes(m)
                if isinstance(m, _TCONV):
                    if any(v != 0 for v in _axes(m.output_padding, n)):
                        issues.append(ModelIssue(name, type(m).__name__, "grid",
                                                 f"output_padding {m.output_padding} adds rows on one side only",
                                                 "use output_padding=0"))
                    issues += _window_issues(name, m, rin.group, [], n, m.kernel_size, 1, m.padding, m.dilation,
                                             "transposed convolution")
                elif isinstance(m, _CONV):
                    issues += _window_issues(name, m, rin.group, shapes_of(name, n), n, m.kernel_size, m.stride,
                                             m.padding, m.dilation, "convolution")
            current = rout
            continue
        own = _equiproj_rep(m)
        if own is not None:
            current = own
            continue
        display = name or "<model>"
        if isinstance(m, _TORCH_NORMS):
            c = _norm_channels(m)
            rep = current if current.dim == c else next((r for r in known if r.dim == c), None)
            issue = _norm_issue(display, m, rep)
        elif isinstance(m, _POINTWISE):
            issue = _pointwise_issue(display, m, current)
        elif isinstance(m, _MAXPOOL + _ADAPTIVE_MAX + (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)):
            issue = None
            if not _field_kinds(current)[1]:
                issue = ModelIssue(display, type(m).__name__, "pooling",
                                   f"it takes the maximum of every channel of {current.name} of {current.group.name} "
                                   f"separately; the fields {_non_permutation_fields(current)} are not permutation "
                                   f"fields, whose maxima would move with the action",
                                   "use average pooling (linear, so it commutes), or pool the norms of the fields")
            elif isinstance(m, (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)) and grid_group is not None:
                issue = ModelIssue(display, type(m).__name__, "pooling", "its random pooling regions are not symmetric",
                                   "use MaxPool or AvgPool with a stride that fits the input size")
            if issue is None and isinstance(m, _MAXPOOL) and grid_group is not None:
                n = _n_axes(m)
                dil = getattr(m, "dilation", 1)
                stride = m.stride if m.stride is not None else m.kernel_size
                issues += _window_issues(display, m, grid_group, shapes_of(name, n), n, m.kernel_size, stride,
                                         getattr(m, "padding", 0), dil, "pooling")
        elif isinstance(m, _AVGPOOL) and grid_group is not None:
            n = _n_axes(m)
            stride = m.stride if m.stride is not None else m.kernel_size
            issues += _window_issues(display, m, grid_group, shapes_of(name, n), n, m.kernel_size, stride,
                                     m.padding, 1, "pooling")
            issue = None
        elif isinstance(m, (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
                            nn.modules.padding._ReplicationPadNd, nn.modules.padding.CircularPad2d,
                            nn.modules.padding.CircularPad1d, nn.modules.padding.CircularPad3d)) \
                and grid_group is not None:
            pads = tuple(m.padding)
            pairs = [(pads[i], pads[i + 1]) for i in range(0, len(pads), 2)]
            issue = None
            if any(a != b for a, b in pairs) or (_swaps_axes(grid_group) and len(set(pairs)) > 1):
                issue = ModelIssue(display, type(m).__name__, "grid", f"padding {pads} is not the same on both sides "
                                   "of every axis", "pad every side by the same amount")
        elif isinstance(m, nn.Flatten) and grid_group is not None and sizes is not None:
            issue = None
            for s in sizes.get(name, []):
                if len(s) > 2 and any(v > 1 for v in s[2:]):
                    issue = ModelIssue(display, type(m).__name__, "flatten",
                                       f"it flattens feature maps of spatial size {s[2:]}: the group moves positions "
                                       "as well as channels, which the next layer's declared fields do not describe",
                                       "pool to one position first (nn.AdaptiveAvgPool2d(1)), or declare the next "
                                       "layer with in_rep = rep (x) grid_representation(G, size)")
                    break
        else:
            issue = None
        if issue is not None:
            issues.append(issue)
    return issues


def check_model(model: nn.Module, strict: bool = False, example_input=None, warn: bool = True) -> List[ModelIssue]:
    """Find the modules of a declared model that do not commute with the group action.

    Reports per-channel normalisation on regular or irreducible fields, pointwise
    nonlinearities and max pooling on fields that are not permutation fields, and strides,
    paddings and input sizes that break the grid's symmetry: a layer with kernel ``k``, stride
    ``s``, padding ``p`` and dilation ``d`` is exact on an axis of ``n`` points iff
    ``(n + 2p - d(k-1) - 1) % s == 0`` (see :mod:`equiproj._checks`). Each module gets one
    :class:`EquivarianceWarning` with the fix. Without ``example_input`` the input sizes are
    unknown: the strided layers are then listed, with the sizes they need, in one
    :class:`GridSizeWarning` (issues of kind ``'size'``).

    Parameters
    ----------
    model : nn.Module
        A model with declared layers (:func:`equiproj.declare`, :func:`equiproj.declare_model`,
        :class:`equiproj.nn.RepLinear`, ...).
    strict : bool
        Raise :class:`ModelCheckError` listing every issue instead of warning (unchecked sizes
        included: pass ``example_input`` to verify them).
    example_input : Tensor, tuple or dict, optional
        An input to run once (eval mode, no gradients) to learn the spatial size seen by every
        convolution and pooling layer.
    warn : bool
        Issue one :class:`EquivarianceWarning` per module (otherwise only return the issues).

    Returns
    -------
    list of ModelIssue

    Examples
    --------
    >>> import warnings
    >>> from torch import nn
    >>> from equiproj import check_model, declare_model
    >>> from equiproj.groups import cyclic
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                       nn.Conv2d(8, 1, 3, padding=1))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = declare_model(model, cyclic(4))
    >>> print(caught[0].message)                                       # doctest: +ELLIPSIS
    layer '1' (BatchNorm2d): it keeps a mean, a variance, a scale and a shift per channel, ... Fix: ...
    >>> [i.kind for i in check_model(model, warn=False)]
    ['norm']
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                       nn.Conv2d(8, 1, 3, padding=1))
    >>> _ = declare_model(model, cyclic(4), replace_norms=True)         # no warning
    >>> type(model[1]).__name__, check_model(model)
    ('FieldBatchNorm', [])
    """
    return _check(model, strict, example_input, warn, stacklevel=3)


def _check(model, strict, example_input, warn, stacklevel):
    sizes = _record_sizes(model, example_input) if example_input is not None else None
    issues = _find_issues(model, sizes)
    if strict and issues:
        raise ModelCheckError(
            f"{len(issues)} module(s) of the model do not commute with the declared action:\n"
            + "\n".join(f"- {i}" for i in issues)
        )
    if warn:
        by_module: Dict[str, List[ModelIssue]] = {}
        for i in issues:
            if i.kind != "size":
                by_module.setdefault(i.name, []).append(i)
        for found in by_module.values():
            warnings.warn(" ".join(str(i) for i in found), EquivarianceWarning, stacklevel=stacklevel)
        unchecked = [i for i in issues if i.kind == "size"]
        if unchecked:
            warnings.warn(
                f"{len(unchecked)} strided or pooling layer(s) are exact only for some input sizes, which were not "
                "checked: " + "; ".join(f"'{i.name}' ({i.module}): {i.problem}" for i in unchecked)
                + ". Fix: pass example_input=x to check_model or declare_model.",
                GridSizeWarning, stacklevel=stacklevel)
    return issues


# ---------------------------------------------------------------------- replacing norms

def replace_norms_(model: nn.Module, hidden: Optional[Representation] = None,
                   reps: Optional[Dict[str, Representation]] = None) -> List[Tuple[str, nn.Module]]:
    """Replace torch's normalisation layers of a declared model by equivariant ones, in place.

    ``nn.BatchNorm{1,2,3}d`` (and ``SyncBatchNorm``) become :class:`equiproj.nn.FieldBatchNorm`,
    ``nn.GroupNorm`` and ``nn.LayerNorm`` become :class:`equiproj.nn.FieldLayerNorm` (see their
    ``from_torch``), with statistics and affine parameters pooled over each field. The
    representation of a norm's channels is ``reps[name]`` if given, else the output
    representation of the declared layer registered before it when the widths match, else
    ``(C // hidden.dim) * hidden``.

    Returns the list of ``(name, new module)``.
    """
    from .nn import FieldBatchNorm, FieldLayerNorm

    reps = dict(reps or {})
    declared = [(name, io) for name, m in model.named_modules() if (io := _declared_io(m)) is not None]
    if not declared:
        raise ValueError("replace_norms_: the model has no declared layers; declare them first")
    current: Representation = declared[0][1][0]
    targets = []
    for name, m in model.named_modules():
        io = _declared_io(m)
        if io is not None:
            current = io[1]
            continue
        if not isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            continue
        c = _norm_channels(m)
        if name in reps:
            rep = reps[name]
        elif current.dim == c:
            rep = current
        elif hidden is not None and c % hidden.dim == 0:
            rep = (c // hidden.dim) * hidden
        else:
            raise ValueError(
                f"replace_norms: cannot tell the representation of the {c} channels of '{name}' "
                f"({type(m).__name__}): the declared layer before it has {current.dim} output channels; "
                f"pass replace_norms={{'{name}': rep}}"
            )
        targets.append((name, m, rep))
    unknown = set(reps) - {n for n, _, _ in targets}
    if unknown:
        raise ValueError(f"replace_norms: no BatchNorm, GroupNorm or LayerNorm named {sorted(unknown)} in the model")
    out = []
    for name, m, rep in targets:
        new = (FieldBatchNorm if isinstance(m, nn.modules.batchnorm._BatchNorm) else FieldLayerNorm).from_torch(m, rep)
        new.train(m.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        out.append((name, new))
    return out



def finish_declare_model(model: nn.Module, hidden: Optional[Representation],
                         replace_norms: Union[bool, Dict[str, Representation]], strict: bool,
                         example_input=None) -> None:
    """What :func:`equiproj.declare_model` does after declaring: replace the norms (with
    ``replace_norms``, ``True`` or a mapping ``{name: rep}``), then :func:`check_model`."""
    if replace_norms:
        replace_norms_(model, hidden=hidden, reps=None if replace_norms is True else replace_norms)
    _check(model, strict, example_input, True, stacklevel=4)
