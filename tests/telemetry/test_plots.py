"""Depth plots: the numbers they draw, and PNG files written atomically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_cod.telemetry import plots


def _history() -> list[tuple[int, dict[str, float]]]:
    history = []
    for step in (30, 10, 20):  # out of order on purpose
        values = {f"depth/var/layer_{n:02d}": step * 10.0 ** n for n in (1, 2, 3)}
        values["depth/var_final_norm/layer_03"] = 1.0 + step / 100
        values["depth/attn_var/layer_01"] = 0.5
        values["moe/imbalance/layer_01"] = 1.2
        history.append((step, values))
    history.append((40, {"attn/entropy/layer_01": 0.9}))  # an attention-only step: not residual
    return history


def test_layer_series_and_plot_values():
    values = _history()[0][1]
    assert plots.layer_series(values, "var") == {1: 300.0, 2: 3000.0, 3: 30000.0}
    assert plots.layer_series(values, "var_final_norm") == {3: 1.3}
    kept = plots.plot_values(values)
    assert "moe/imbalance/layer_01" not in kept and kept["depth/attn_var/layer_01"] == 0.5


def test_variance_grid_is_log10_by_step_and_layer():
    steps, layers, grid = plots.variance_grid(_history())
    assert steps == [10, 20, 30] and layers == [1, 2, 3]
    want = np.array([[math.log10(s * 10.0 ** n) for n in layers] for s in steps])
    np.testing.assert_allclose(grid, want)


def test_plots_write_pngs_atomically(tmp_path):
    paths = plots.write_depth_plots(_history(), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["last_layer_variance.png", "variance_heatmap.png",
                                            "variance_vs_layer.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    # A second call replaces the same files.
    again = plots.write_depth_plots(_history()[:1], tmp_path / "plots")
    assert again == paths and len(list((tmp_path / "plots").iterdir())) == 3


def test_no_residual_statistics_no_plots(tmp_path):
    assert plots.write_depth_plots([(5, {"attn/entropy/layer_01": 0.9})], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_savefig(self, f, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(plots.plt.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        plots.plot_variance_vs_layer(_history(), tmp_path)
    assert list(tmp_path.iterdir()) == []
