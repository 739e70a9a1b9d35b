"""A stock 2D U-Net and a small 3D CNN written with plain torch layers (private module)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["UNet2d", "CNN3d"]


def _block2d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=False),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=False))


class UNet2d(nn.Module):
    """U-Net: double 3x3 convolutions, 2x2 max pooling, 2x2 transposed convolutions, skip
    concatenation, a final 1x1 convolution; optionally a residual post-processor
    (``output = input[:, :out_channels] + net(input)``).

    Parameters
    ----------
    in_channels, out_channels : int
    width : int
        Channels of the first level; level ``i`` has ``width * 2**i``.
    depth : int
        Number of down-sampling steps; spatial sizes must be divisible by ``2**depth``.
    residual : bool
        Predict a residual added to the first ``out_channels`` input channels.

    Examples
    --------
    >>> import torch
    >>> net = UNet2d(1, 1, width=8, depth=2)
    >>> net(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 2,
                 residual: bool = True):
        super().__init__()
        if residual and in_channels < out_channels:
            raise ValueError(f"a residual U-Net needs in_channels >= out_channels, got {in_channels} < {out_channels}")
        self.depth, self.residual, self.out_channels = depth, residual, out_channels
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_block2d(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_hi, w_lo in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.merge.append(_block2d(2 * w_lo, w_lo))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x):
        f = 2 ** self.depth
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"UNet2d with depth {self.depth} needs spatial sizes divisible by {f}, got {tuple(x.shape[-2:])}")
        skips: List[torch.Tensor] = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            if i < self.depth:
                skips.append(h)
                h = self.pool(h)
        for up, merge in zip(self.up, self.merge):
            h = up(h)
            h = merge(torch.cat([h, skips.pop()], dim=1))
        out = self.head(h)
        return x[:, : self.out_channels] + out if self.residual else out


class CNN3d(nn.Module):
    """A small 3D classifier: ``depth`` blocks of (3x3x3 conv, ReLU, 2x2x2 max pool), global
    average pooling and a linear head.

    Examples
    --------
    >>> import torch
    >>> CNN3d(1, 3, width=8, depth=2)(torch.zeros(2, 1, 8, 8, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 16, depth: int = 2):
        super().__init__()
        layers = []
        c = in_channels
        for i in range(depth):
            w = width * 2 ** i
            layers += [nn.Conv3d(c, w, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool3d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        h = self.features(x)
        return self.head(h.mean(dim=(-3, -2, -1)))
