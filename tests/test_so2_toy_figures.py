"""The so2-toy figures: one colour map with a legend and colour bar, error bars, no overlaps."""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from equiproj.experiments import so2_toy  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return str(path)

    monkeypatch.setattr(so2_toy, "save_figure", keep)
    return figs


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _wedge_rows(tmp_path):
    rows, g = [], np.random.default_rng(0)
    for i, (lg, lp) in enumerate([(0.0, 0.0), (0.0, 0.1), (0.1, 0.0), (0.1, 0.1)]):
        run_id = f"r{i}"
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        x = g.normal(size=(20, 2)).astype(np.float32)
        y = (np.arange(20) % 2).astype(np.float32)
        prob = g.uniform(size=(11, 11)).astype(np.float32)
        np.savez(tmp_path / "runs" / run_id / "artifacts.npz", grid_prob=prob, x=x, y=y)
        rows.append(dict(run_id=run_id, opt_arch="harmonic", method="projection", lambda_G=lg, lambda_perp=lp,
                         seed=0, invariance_error=0.5))
    return rows


def test_wedge_regions_and_points_share_one_colour_map(tmp_path, captured):
    so2_toy.SO2Toy()._boundaries(_wedge_rows(tmp_path), tmp_path, plt)
    fig = captured[0]
    axes = [ax for ax in fig.axes if ax.images]
    ax = axes[0]
    cmap, norm = ax.images[0].get_cmap(), ax.images[0].norm
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 2  # one scatter per class
    for c, label in zip(points, (0.0, 1.0)):
        np.testing.assert_allclose(c.get_facecolors()[0][:3], cmap(norm(label))[:3])
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["class 0", "class 1"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    assert not any(_overlap(title, a.title.get_window_extent(renderer)) for a in axes)
    plt.close(fig)


def test_rings_have_error_bars_and_labels_clear_of_ticks(tmp_path, captured):
    rows = [dict(opt_arch="harmonic", method=m, lambda_perp=0.01, level=a, seed=s,
                 test_accuracy=1 - a * (0.2 if m == "strict" else 0.01) * (1 + 0.1 * s),
                 invariance_error=10.0 ** (-6 + 6 * a) * (1 + s))
            for m in ("strict", "projection") for a in (0.0, 0.5, 1.0) for s in range(3)]
    so2_toy.SO2Toy()._amplitude_plot(rows, tmp_path, plt)
    fig = captured[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert len(ax.containers) == 2  # an errorbar per curve
        bars = ax.containers[0].lines[2][0].get_segments()
        assert any(abs(seg[1][1] - seg[0][1]) > 0 for seg in bars)  # non-trivial spread over seeds
        label = ax.yaxis.label.get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
        assert not any(_overlap(label, t) for t in ticks)
        for other in fig.axes:  # nor over the other panel
            if other is not ax:
                assert not _overlap(label, other.get_window_extent(renderer))
    assert "3 seed" in fig.legends[0].get_title().get_text()
    plt.close(fig)
