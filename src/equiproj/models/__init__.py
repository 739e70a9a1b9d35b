"""Plain PyTorch models (no equiproj layers) used by the experiments, tests and benchmarks.

They are ordinary ``nn.Module`` s built from ``nn.Conv*``, ``nn.ConvTranspose*``, ``nn.Linear``,
ReLU and max pooling; :func:`equiproj.declare_model` attaches representations to them.
"""

from ._plain import CNN3d, UNet2d

__all__ = ["UNet2d", "CNN3d"]
