"""equiproj: approximate equivariance by projection-based regularisation.

Every linear or convolutional layer splits orthogonally into an equivariant part ``P(W)`` (the
group average, or Reynolds projection) and a non-equivariant rest ``W - P(W)``. Training adds
``lambda_perp * ||W - P(W)|| + lambda_G * ||P(W)||`` (Berndt and Stuehmer, arXiv 2601.05028),
computed exactly by :class:`LinearProjector` and friends.

Examples
--------
>>> import torch
>>> import equiproj
>>> from equiproj.groups import cyclic
>>> G = cyclic(4)
>>> model = torch.nn.Sequential(equiproj.nn.RepLinear(G.regular(), 3 * G.regular()), torch.nn.ReLU(),
...                             equiproj.nn.RepLinear(3 * G.regular(), G.trivial()))
>>> reg = equiproj.ProjectionRegulariser(model, lambda_perp=1e-2)
>>> penalty = reg()            # add to the task loss
>>> rows = reg.report()        # per-layer defects, as data
"""

__version__ = "0.2.0"

from . import actions, groups, metrics, nn, norms, projection
from .projection import LinearProjector, Projector
from .actions import transform_feature_map
from ._checks import EquivarianceWarning, GridSizeWarning, ModelCheckError, ModelIssue, check_model, replace_norms_
from .regularise import (DEFAULT_SCHEME, SCHEMES, LayerReport, LayerSpec, ProjectionRegulariser, SplitParametrization,
                         constrain_, declare, declare_model, declared_layers, equivariant_init_, format_report,
                         initialise_, project_, report, split_, unconstrain_)

__all__ = [
    "groups", "actions", "projection", "norms", "nn", "metrics",
    "LinearProjector", "Projector", "ProjectionRegulariser", "LayerReport", "LayerSpec",
    "declare", "declare_model", "declared_layers", "project_", "equivariant_init_", "initialise_", "constrain_",
    "unconstrain_", "split_", "SplitParametrization", "SCHEMES", "DEFAULT_SCHEME", "report",
    "format_report", "transform_feature_map",
    "check_model", "replace_norms_", "ModelIssue", "EquivarianceWarning", "GridSizeWarning",
    "ModelCheckError",
    "__version__",
]
