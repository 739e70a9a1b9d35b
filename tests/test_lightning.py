"""The Lightning callback with a real lightning.Trainer on a CPU."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

import equiproj  # noqa: E402
from equiproj.groups import cyclic  # noqa: E402
from equiproj.integrations import lightning as eql  # noqa: E402
from equiproj.integrations.lightning import ProjectionRegulariserCallback  # noqa: E402
from equiproj.nn import PointwiseNonlinearity, RepLinear  # noqa: E402

G = cyclic(4)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(RepLinear(2 * G.regular(), 3 * G.regular()), PointwiseNonlinearity(3 * G.regular()),
                               RepLinear(3 * G.regular(), G.trivial()))


class Module(pl.LightningModule):
    def __init__(self, net, lr=0.05):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("task_loss", loss)
        return loss

    def configure_optimizers(self):
        regs = [cb.regulariser for cb in self.trainer.callbacks if isinstance(cb, ProjectionRegulariserCallback)]
        if regs and getattr(self, "use_groups", True):  # the split scheme's B at its own learning rate
            return torch.optim.SGD(regs[0].param_groups(self.parameters(), lr=self.lr))
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)
    return x, y, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)


def _trainer(tmp_path, callback, steps, **kw):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, callbacks=[callback],
                      logger=pl.loggers.CSVLogger(tmp_path, name="run"), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kw)


@pytest.mark.parametrize("scheme", ["split", "penalty", "proximal"])
def test_trainer_matches_a_plain_loop_and_logs(tmp_path, scheme):
    steps, lam = 4, 0.3
    x, y, loader = _data()
    net = _net()
    ref = copy.deepcopy(net)
    cb = ProjectionRegulariserCallback(lambda_perp=lam, lambda_G=0.01, log_every_n_steps=2, scheme=scheme)
    assert cb.adds_penalty == (scheme != "proximal")
    trainer = _trainer(tmp_path, cb, steps)
    trainer.fit(Module(net), loader)
    # the same steps by hand: SGD on task loss + penalty (or with the proximal hook)
    reg = equiproj.ProjectionRegulariser(ref, lambda_perp=lam, lambda_G=0.01, scheme=scheme)
    opt = torch.optim.SGD(reg.param_groups(ref.parameters(), lr=0.05))
    reg.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        (torch.nn.functional.mse_loss(ref(x), y) + reg()).backward()
        opt.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the penalty at every step, the defects every second step
    assert [h["step"] for h in cb.history] == [1, 3]
    assert set(cb.history[0]["defects"]) == {"net.0", "net.2"}
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    penalties = [float(r["equiproj/penalty"]) for r in rows if r.get("equiproj/penalty")]
    assert len(penalties) == steps and all(p > 0 for p in penalties)
    defects = [float(r["equiproj/defect/net.0"]) for r in rows if r.get("equiproj/defect/net.0")]
    assert len(defects) == 2
    assert defects[-1] == pytest.approx(cb.history[-1]["defects"]["net.0"])


def test_penalty_pulls_towards_equivariance_and_projects_at_end(tmp_path):
    _, _, loader = _data()
    weak, strong = (ProjectionRegulariserCallback(lambda_perp=lam, norm="fro2", log_every_n_steps=5, scheme="penalty")
                    for lam in (0.0, 5.0))
    for cb in (weak, strong):
        _trainer(tmp_path, cb, 10).fit(Module(_net()), loader)
    d = [cb.history[-1]["defects"]["net.0"] for cb in (weak, strong)]
    assert d[0] > 0.5 and d[1] < 0.01 * d[0]   # fro2 with SGD: the defect halves at every step
    module = Module(_net())
    cb = ProjectionRegulariserCallback(lambda_perp=0.1, project_at_end=True, log_every_n_steps=0)
    _trainer(tmp_path, cb, 3).fit(module, loader)
    assert cb.history == []
    assert max(r.relative_defect for r in equiproj.report(module)) < 1e-6


def test_attach_is_called_on_every_optimizer(tmp_path, monkeypatch):
    attached = []

    class WithAttach(equiproj.ProjectionRegulariser):
        def attach(self, optimizer):
            attached.append(optimizer)

    monkeypatch.setattr(eql, "ProjectionRegulariser", WithAttach)
    _, _, loader = _data()
    trainer = _trainer(tmp_path, ProjectionRegulariserCallback(lambda_perp=0.1), 1)
    trainer.fit(Module(_net()), loader)
    assert len(attached) == 1 and attached[0] is trainer.optimizers[0]


def test_unknown_scheme_is_refused(tmp_path):
    _, _, loader = _data()
    with pytest.raises(ValueError, match="unknown scheme 'prox'"):
        _trainer(tmp_path, ProjectionRegulariserCallback(lambda_perp=0.1, scheme="prox"), 1).fit(Module(_net()), loader)


def test_split_scheme_warns_when_B_shares_the_learning_rate(tmp_path):
    _, _, loader = _data()
    module = Module(_net())
    module.use_groups = False
    with pytest.warns(UserWarning, match="train at the same learning rate instead of perp_lr=0.1"):
        _trainer(tmp_path, ProjectionRegulariserCallback(lambda_perp=0.1), 1).fit(module, loader)
