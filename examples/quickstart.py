"""Quickstart: regularise a C8-equivariant MLP towards equivariance and read the per-layer report.

A teacher network is C8-equivariant except for a small non-equivariant part; students with a
growing ``lambda_perp`` trade fit for equivariance. Runs in a few seconds on a CPU:

    python examples/quickstart.py
"""

from __future__ import annotations

import torch
from torch import nn

import equiproj
from equiproj.groups import cyclic
from equiproj.metrics import equivariance_error
from equiproj.nn import PointwiseNonlinearity, RepLinear


def mlp(G, seed):
    torch.manual_seed(seed)
    r_in, r_h, r_out = 2 * G.regular(), 6 * G.regular(), G.regular()
    return nn.Sequential(RepLinear(r_in, r_h), PointwiseNonlinearity(r_h), RepLinear(r_h, r_h),
                         PointwiseNonlinearity(r_h), RepLinear(r_h, r_out))


def main(steps: int = 500, breaking: float = 0.02) -> None:
    G = cyclic(8)
    teacher = mlp(G, seed=0)
    with torch.no_grad():  # an almost equivariant teacher: a small non-equivariant part
        for _, layer, spec in equiproj.declared_layers(teacher):
            W, b = layer.weight, layer.bias
            PW, Pb = spec.projector.project(W), spec.projector.project_bias(b)
            W.copy_(3.0 * (PW + breaking * (W - PW)))
            b.copy_(Pb + breaking * (b - Pb))
    gen = torch.Generator().manual_seed(1)
    x_train, x_test = torch.randn(512, 16, generator=gen), torch.randn(512, 16, generator=gen)
    with torch.no_grad():
        scale = teacher(x_train).std()
        y_train, y_test = teacher(x_train) / scale, teacher(x_test) / scale

    print(f"group {G.name}; teacher symmetry breaking {breaking}; {steps} Adam steps per student\n")
    print("| lambda_perp | test MSE | equivariance error (max over C8) | summed layer defect |")
    print("|---:|---:|---:|---:|")
    for lam in [0.0, 1e-3, 1e-2, 1e-1, 1.0]:
        model = mlp(G, seed=2)
        reg = equiproj.ProjectionRegulariser(model, lambda_perp=lam)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x_train), y_train) + reg()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mse = nn.functional.mse_loss(model(x_test), y_test).item()
        err = equivariance_error(model, x_test, 2 * G.regular(), G.regular())
        rows = reg.report()
        print(f"| {lam:g} | {mse:.4f} | {err.max:.4f} | {sum(r.defect_norm for r in rows):.4f} |")
    print("\nper-layer report of the last student (lambda_perp = 1):\n")
    print(equiproj.format_report(rows))


if __name__ == "__main__":
    main()
