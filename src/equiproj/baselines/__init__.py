"""Baselines sharing one interface with the projection regulariser, and a registry by name.

``make_method(name, model, **options)`` returns an object with ``.model``, ``.penalty(batch)``
(``needs_batch`` tells whether it wants the batch) and ``.report()``; ``available_methods()``
lists the names:

* ``"plain"``, ``"strict"``, ``"projection"``: no penalty, the hard constraint, the projection
  penalty;
* ``"sample-output"``: ``||f(g x) - g f(x)||^2`` at sampled elements (:class:`SampleOutputMethod`);
* ``"eqreg"``: the same at every declared layer's features (:class:`EqRegMethod`);
* ``"weight-sample"``: ``||g . W - W||^2`` at sampled elements (:class:`WeightSampleMethod`);
* ``"rpp"``: residual pathway priors ``W = P(A) + B`` (:class:`RPPMethod`);
* ``"per"``: projection penalties with dense per-layer matrices (:class:`PERMethod`);
* ``"relaxed"``: relaxed group / steerable convolutions: Wang et al.'s penalty or the projection
  penalty of their kernels (:class:`RelaxedMethod`).

Options that describe the experiment (:data:`SHARED_OPTIONS`: ``seed``, ``act_in``,
``act_out``, ``group``, ``input_fn``) are accepted and ignored by the baselines that do not use
them; other unknown options raise. See ``docs/baselines.md``.
"""

from ._base import (METHODS, Method, PlainMethod, ProjectionMethod, StrictMethod, available_methods, make_method,
                    method_info, register_method)
from ._eqreg import EqRegMethod
from ._per import DenseMatrixTooLarge, PERMethod, check_subgroup, dense_bias_projector, dense_projector
from ._relaxed import (GroupPool2d, RelaxedGroupConv2d, RelaxedLayerReport, RelaxedLiftingConv2d, RelaxedMethod,
                       RelaxedSteerableConv2d, relaxed_cnn, rotate_kernels)
from ._relaxed_scale import RelaxedScaleConv2d, RelaxedScaleSteerableConv2d, ScaleKernelProjector
from ._rpp import ResidualPathway, RPPMethod, rpp_, rpp_paths
from ._sample import SampleOutputMethod
from ._util import SHARED_OPTIONS, ElementSampler, grid_symmetries
from ._weight_sample import WeightSampleMethod

__all__ = ["Method", "METHODS", "make_method", "available_methods", "method_info", "register_method",
           "PlainMethod", "StrictMethod", "ProjectionMethod",
           "SampleOutputMethod", "EqRegMethod", "WeightSampleMethod", "RPPMethod", "PERMethod", "RelaxedMethod",
           "ResidualPathway", "rpp_", "rpp_paths",
           "dense_projector", "dense_bias_projector", "check_subgroup", "DenseMatrixTooLarge",
           "RelaxedLiftingConv2d", "RelaxedGroupConv2d", "RelaxedSteerableConv2d", "RelaxedScaleConv2d",
           "RelaxedScaleSteerableConv2d", "ScaleKernelProjector",
           "RelaxedLayerReport", "GroupPool2d",
           "relaxed_cnn", "rotate_kernels",
           "SHARED_OPTIONS", "ElementSampler", "grid_symmetries"]
