r"""Normalisation layers that commute with the group action (private module).

A normalisation layer computes statistics and rescales features. It commutes with the action
``x -> rho(g) x`` only if every statistic it subtracts lies in the invariant vectors of ``rho``
and every scale it applies is the same on all coordinates of a field. ``nn.BatchNorm2d`` keeps a
mean, a variance, a scale and a shift per *channel*, which break both conditions as soon as the
group mixes or permutes channels. The layers here treat every field of the representation
``rho = tau_1 + ... + tau_r`` by its kind:

* **trivial** coordinates (``tau(g) = 1``) are normalised per channel, as by torch;
* **permutation** fields (regular fields, ``symmetric(n).standard()``, ...) share one mean and one
  variance over their channels: the mean over a field's channels is the projection onto the
  invariant vector ``(1, ..., 1)``, and one scale and one shift per field commute with any
  permutation of its channels;
* **any other** field (irreps of SO(2), O(2), SO(3), O(3), 2D irreps of ``C_N``, a pseudoscalar,
  ...) is normalised by its norm, which every orthogonal ``rho(g)`` preserves: no mean is
  subtracted, the field is divided by the root mean square of ``||x_tau|| / sqrt(dim tau)`` and
  multiplied by one learnable scale; it has no shift (a constant vector in a non-trivial field
  is not invariant).

Fields are those of ``rep.field_blocks()``: ``3 * G.regular() + so3().irrep(2)`` has three
permutation fields and one norm field; a tensor product of sums is split into the products of
its summands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..groups import Representation

__all__ = ["FieldBatchNorm", "FieldLayerNorm", "field_statistics"]

TRIVIAL, PERMUTATION, NORM = "trivial", "permutation", "norm"


@dataclass(frozen=True)
class FieldStatistics:
    """How a normalisation layer groups the channels of a representation.

    ``group[c]`` is the statistics group of channel ``c``: every trivial channel is its own group,
    every permutation field and every other field is one group. ``kinds[k]`` is ``'trivial'``,
    ``'permutation'`` or ``'norm'`` and ``sizes[k]`` the number of channels of group ``k``.
    """

    group: torch.Tensor
    kinds: Tuple[str, ...]
    sizes: torch.Tensor

    @property
    def n_groups(self) -> int:
        return len(self.kinds)

    @property
    def centred(self) -> torch.Tensor:
        """Boolean mask over groups: the groups whose mean is subtracted (trivial, permutation)."""
        return torch.tensor([k != NORM for k in self.kinds], dtype=torch.bool)


def _is_trivial_field(f: Representation) -> bool:
    src = f.permutation
    if src is not None:
        return bool((src == torch.arange(f.dim)).all())
    return f.is_trivial()


def field_statistics(rep: Representation) -> FieldStatistics:
    """The statistics groups of ``rep`` (see :class:`FieldStatistics`).

    Examples
    --------
    >>> from equiproj.groups import cyclic, so3
    >>> s = field_statistics(2 * cyclic(4).trivial() + cyclic(4).regular() + cyclic(4).irrep(1))
    >>> s.kinds, s.group.tolist()
    (('trivial', 'trivial', 'permutation', 'norm'), [0, 1, 2, 2, 2, 2, 3, 3])
    >>> field_statistics(so3().irrep(0) + 2 * so3().irrep(1)).kinds
    ('trivial', 'norm', 'norm')
    """
    if not isinstance(rep, Representation):
        raise TypeError(f"expected an equiproj.groups.Representation, got {type(rep).__name__}")
    group = torch.empty(rep.dim, dtype=torch.long)
    kinds, sizes = [], []
    for f, idx in rep.field_blocks():
        if _is_trivial_field(f):
            for c in idx.tolist():
                group[c] = len(kinds)
                kinds.append(TRIVIAL)
                sizes.append(1)
        else:
            group[idx] = len(kinds)
            kinds.append(PERMUTATION if f.permutation is not None else NORM)
            sizes.append(f.dim)
    return FieldStatistics(group, tuple(kinds), torch.tensor(sizes, dtype=torch.long))


class _FieldNorm(nn.Module):
    """Shared set-up: statistics groups, affine parameters, checks."""

    def __init__(self, rep: Representation, eps: float, affine: bool, device=None, dtype=None):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.rep, self.eps, self.affine = rep, float(eps), bool(affine)
        self.stats = field_statistics(rep)
        st = self.stats
        self.num_features = rep.dim
        self.register_buffer("field_index", st.group.clone(), persistent=False)
        self.register_buffer("field_size", st.sizes.to(dtype or torch.get_default_dtype()), persistent=False)
        centred = st.centred
        self.register_buffer("centred", centred, persistent=False)
        # bias_index[k] = position of group k among the centred groups (or n_centred: a zero slot)
        n_c = int(centred.sum())
        bias_index = torch.full((st.n_groups,), n_c, dtype=torch.long)
        bias_index[centred] = torch.arange(n_c)
        self.register_buffer("bias_index", bias_index, persistent=False)
        self.n_centred = n_c
        fk = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.ones(st.n_groups, **fk))
            self.bias = nn.Parameter(torch.zeros(n_c, **fk))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ helpers
    @property
    def n_fields(self) -> int:
        """Number of statistics groups (trivial channels and fields)."""
        return self.stats.n_groups

    def _on_channels(self, v: torch.Tensor, ndim: int, dim: int, per_group: bool = True) -> torch.Tensor:
        """A per-group (or per-channel) vector on the channels, shaped to broadcast along ``dim``."""
        shape = [1] * ndim
        shape[dim] = self.num_features
        return (v.index_select(0, self.field_index) if per_group else v).reshape(shape)

    def _bias_full(self) -> torch.Tensor:
        zero = self.bias.new_zeros(1)
        return torch.cat([self.bias, zero]).index_select(0, self.bias_index)

    def _group_mean(self, per_channel: torch.Tensor) -> torch.Tensor:
        out = per_channel.new_zeros(self.n_fields).index_add_(0, self.field_index, per_channel)
        return out / self.field_size.to(out.dtype)

    def _check_channels(self, x: torch.Tensor, dim: int, what: str) -> None:
        if x.ndim < 2 or x.shape[dim] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} for {self.rep.name} of {self.rep.group.name} expects {what} with "
                f"{self.num_features} channels in dimension {dim}, got shape {tuple(x.shape)}"
            )

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        counts = {k: self.stats.kinds.count(k) for k in (TRIVIAL, PERMUTATION, NORM)}
        return (f"{self.rep.name} of {self.rep.group.name}: {counts[TRIVIAL]} trivial channels, "
                f"{counts[PERMUTATION]} permutation fields, {counts[NORM]} norm fields, eps={self.eps}, "
                f"affine={self.affine}")


class FieldBatchNorm(_FieldNorm):
    r"""Batch normalisation that commutes with the action of ``rep``'s group.

    For an input ``x`` of shape ``(N, C)`` or ``(N, C, *spatial)`` with ``C = rep.dim`` and a
    statistics group ``k`` (one trivial channel, one permutation field or one other field, see
    :func:`field_statistics`) with channels ``c in k``, in training mode

    .. math::

        \mu_k = \frac{1}{|k|} \sum_{c \in k} \mathbb{E}[x_c], \qquad
        \sigma_k^2 = \frac{1}{|k|} \sum_{c \in k} \mathbb{E}[(x_c - \mu_k)^2], \qquad
        y_c = \gamma_k \frac{x_c - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}} + \beta_k,

    the expectations over the batch and the spatial positions. For norm fields ``mu_k = 0`` and
    ``beta_k = 0``, so ``sigma_k^2 = E[||x_k||^2] / dim k``. Running averages (``momentum`` as in
    ``nn.BatchNorm2d``, unbiased variances for centred groups) replace the batch statistics in
    eval mode. Because ``mu_k`` is invariant and ``sigma_k`` and ``gamma_k`` are shared by a
    field, ``y(rho(g) x) = rho(g) y(x)`` in both modes (in training mode for a batch transformed by
    one ``g``); for groups that permute the grid, also when ``g`` moves the positions. With only
    trivial channels this is ``nn.BatchNorm{1,2,3}d``.

    Parameters
    ----------
    rep : Representation
        Representation of the channels (dimension 1 of the input).
    eps : float
        Added to the variance.
    momentum : float or None
        Weight of the new batch in the running statistics; ``None``: cumulative average.
    affine : bool
        Learnable ``gamma`` per group and ``beta`` per centred group (parameters ``weight``
        of length ``n_fields`` and ``bias``).
    track_running_stats : bool
        Keep running statistics (otherwise batch statistics are used in eval mode too).

    Buffers ``running_mean`` (one per centred group), ``running_var`` (one per group; for norm
    fields the mean of ``||x_k||^2 / dim k``) and ``num_batches_tracked`` are in the state dict.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.nn import FieldBatchNorm
    >>> from equiproj.actions import transform_feature_map
    >>> G = cyclic(4)
    >>> rep = G.trivial() + 2 * G.regular() + G.irrep(1)
    >>> bn = FieldBatchNorm(rep)
    >>> bn.n_fields, tuple(bn.running_mean.shape)
    (4, (3,))
    >>> x = torch.randn(8, rep.dim, 6, 6, generator=torch.Generator().manual_seed(0))
    >>> y1 = bn(transform_feature_map(x, 1, rep))      # a quarter turn of the whole batch
    >>> y2 = transform_feature_map(bn(x), 1, rep)
    >>> bool(torch.allclose(y1, y2, atol=1e-5))
    True
    """

    def __init__(self, rep: Representation, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(rep, eps, affine, device=device, dtype=dtype)
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        self.momentum = momentum
        self.track_running_stats = bool(track_running_stats)
        fk = {"device": device, "dtype": dtype}
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.n_centred, **fk))
            self.register_buffer("running_var", torch.ones(self.n_fields, **fk))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        super().reset_parameters()

    def _running_mean_full(self) -> torch.Tensor:
        zero = self.running_mean.new_zeros(1)
        return torch.cat([self.running_mean, zero]).index_select(0, self.bias_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x, 1, "an input of shape (N, C) or (N, C, *spatial)")
        dims = [0] + list(range(2, x.ndim))
        use_batch = self.training or not self.track_running_stats
        centred = self.centred
        if use_batch:
            per_sample = x.numel() // self.num_features
            if per_sample < 2 and self.training:
                raise ValueError(
                    f"FieldBatchNorm needs more than one value per channel in training mode, got input "
                    f"shape {tuple(x.shape)}"
                )
            mean = self._group_mean(x.mean(dims)) * centred.to(x.dtype)
            xc = x - self._on_channels(mean, x.ndim, 1)
            var = self._group_mean(xc.pow(2).mean(dims))
            if self.training and self.track_running_stats:
                self._update(mean, var, per_sample)
        else:
            mean, var = self._running_mean_full(), self.running_var
            xc = x - self._on_channels(mean, x.ndim, 1)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        y = xc * self._on_channels(scale, x.ndim, 1)
        if self.affine:
            y = y + self._on_channels(self._bias_full(), x.ndim, 1)
        return y

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor, per_sample: int) -> None:
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        n = self.field_size.to(var.dtype) * per_sample  # values per group
        unbiased = torch.where(self.centred, var * n / (n - 1).clamp(min=1), var)
        self.running_mean.mul_(1 - m).add_(mean[self.centred].to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)

    @classmethod
    def from_torch(cls, module: nn.modules.batchnorm._BatchNorm, rep: Representation) -> "FieldBatchNorm":
        """The equivariant layer closest to a torch batch norm: same ``eps``, ``momentum`` and
        options; running statistics pooled over each group (means averaged, variances combined
        with the spread of the channel means, second moments for norm fields) and ``gamma``,
        ``beta`` averaged over each group (the projection of the per-channel parameters onto the
        shared ones; ``beta`` is dropped on norm fields)."""
        if module.num_features != rep.dim:
            raise ValueError(f"{type(module).__name__}({module.num_features}) cannot normalise {rep.name} "
                             f"of dimension {rep.dim}")
        ref = module.weight if module.weight is not None else module.running_mean
        fk = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        new = cls(rep, eps=module.eps, momentum=module.momentum, affine=module.affine,
                  track_running_stats=module.track_running_stats, **fk)
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(new._group_mean(module.weight.detach()))
                new.bias.copy_(new._group_mean(module.bias.detach())[new.centred])
            if module.track_running_stats and module.running_mean is not None:
                rm, rv = module.running_mean, module.running_var
                mean = new._group_mean(rm) * new.centred.to(rm.dtype)
                spread = (rm - mean.index_select(0, new.field_index)) ** 2
                new.running_mean.copy_(mean[new.centred])
                new.running_var.copy_(new._group_mean(rv + spread))
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new


class FieldLayerNorm(_FieldNorm):
    r"""Layer normalisation that commutes with the action of ``rep``'s group.

    Statistics are computed per sample over the channels (dimension ``channel_dim``), at every
    position, or also over the positions after the channel dimension with ``over_space=True``
    (like ``nn.GroupNorm(1, C)`` on images). With ``T`` the coordinates of trivial channels and
    permutation fields (those whose mean may be subtracted) and ``C = rep.dim``:

    .. math::

        \mu = \frac{1}{|T|} \sum_{c \in T} x_c, \qquad
        \sigma^2 = \frac{1}{C} \Big( \sum_{c \in T} (x_c - \mu)^2 + \sum_{c \notin T} x_c^2 \Big), \qquad
        y_c = \gamma_{k(c)} \frac{x_c - [c \in T] \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta_{k(c)},

    with ``gamma`` per group ``k`` (a trivial channel, a permutation field or another field) and
    ``beta`` only on trivial channels and permutation fields. Both statistics are invariant
    (the action permutes ``T`` and preserves the norm of every other field), so the layer is
    equivariant sample by sample. With only trivial channels (or only permutation fields and
    ``affine=False``) this is ``nn.LayerNorm(C)`` applied along ``channel_dim``.

    Parameters
    ----------
    rep : Representation
        Representation of the channels.
    eps : float
    affine : bool
        Learnable ``gamma`` and ``beta``.
    channel_dim : int
        The channel dimension: 1 for ``(N, C, *spatial)``, -1 for ``(N, L, C)`` token sequences.
    over_space : bool
        Also average over the dimensions after ``channel_dim``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import so3
    >>> from equiproj.nn import FieldLayerNorm
    >>> G = so3()
    >>> rep = 4 * G.trivial() + 2 * G.irrep(1) + G.irrep(2)
    >>> ln = FieldLayerNorm(rep)
    >>> x = torch.randn(5, rep.dim, dtype=torch.float64)
    >>> D = rep(G.sample(1, generator=torch.Generator().manual_seed(0)))[0]
    >>> ln = ln.double()
    >>> bool(torch.allclose(ln(x @ D.T), ln(x) @ D.T))
    True
    """

    def __init__(self, rep: Representation, eps: float = 1e-5, affine: bool = True, channel_dim: int = 1,
                 over_space: bool = False, device=None, dtype=None):
        super().__init__(rep, eps, affine, device=device, dtype=dtype)
        self.channel_dim, self.over_space = int(channel_dim), bool(over_space)
        self.register_buffer("centred_channels", self.centred.index_select(0, self.field_index), persistent=False)
        self.n_centred_channels = int(self.centred_channels.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.channel_dim % x.ndim if x.ndim else 0
        self._check_channels(x, d, f"an input with channels in dimension {self.channel_dim}")
        dims: Sequence[int] = [d] + (list(range(d + 1, x.ndim)) if self.over_space else [])
        mask = None
        if self.n_centred_channels:
            mask = self._on_channels(self.centred_channels.to(x.dtype), x.ndim, d, per_group=False)
        if mask is not None:
            count = self.n_centred_channels
            for k in dims[1:]:
                count *= x.shape[k]
            mu = (x * mask).sum(dims, keepdim=True) / count
            xc = x - mu * mask
        else:
            xc = x
        var = xc.pow(2).mean(dims, keepdim=True)
        y = xc * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self._on_channels(self.weight, x.ndim, d) + self._on_channels(self._bias_full(), x.ndim, d)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channel_dim={self.channel_dim}, over_space={self.over_space}"

    @classmethod
    def from_torch(cls, module: nn.Module, rep: Representation) -> "FieldLayerNorm":
        """The equivariant layer closest to ``nn.LayerNorm`` or ``nn.GroupNorm``.

        ``nn.LayerNorm(shape)`` normalises the last ``len(shape)`` dimensions: channels at
        ``-len(shape)``, positions after them. ``nn.GroupNorm(num_groups, C)`` becomes one group
        over channels and positions (``over_space=True``; ``num_groups`` is not kept, since
        groups of channels that cut through fields are not invariant). ``gamma`` and ``beta``
        are averaged over each statistics group."""
        if isinstance(module, nn.LayerNorm):
            shape = tuple(module.normalized_shape)
            if shape[0] != rep.dim:
                raise ValueError(f"LayerNorm{shape} normalises {shape[0]} channels at dimension -{len(shape)}, "
                                 f"but {rep.name} has dimension {rep.dim}")
            weight = module.weight
            bias = module.bias
            if weight is not None and weight.ndim > 1:  # per position as well: average over positions
                weight = weight.reshape(shape[0], -1).mean(1)
                bias = bias.reshape(shape[0], -1).mean(1) if bias is not None else None
            opts = dict(channel_dim=-len(shape), over_space=len(shape) > 1,
                        affine=module.elementwise_affine)
        elif isinstance(module, nn.GroupNorm):
            if module.num_channels != rep.dim:
                raise ValueError(f"GroupNorm({module.num_groups}, {module.num_channels}) cannot normalise "
                                 f"{rep.name} of dimension {rep.dim}")
            weight, bias = module.weight, module.bias
            opts = dict(channel_dim=1, over_space=True, affine=module.affine)
        else:
            raise TypeError(f"expected nn.LayerNorm or nn.GroupNorm, got {type(module).__name__}")
        fk = {} if weight is None else {"device": weight.device, "dtype": weight.dtype}
        new = cls(rep, eps=module.eps, **opts, **fk)
        if new.affine and weight is not None:
            with torch.no_grad():
                new.weight.copy_(new._group_mean(weight.detach()))
                if bias is not None:
                    new.bias.copy_(new._group_mean(bias.detach())[new.centred])
        return new
