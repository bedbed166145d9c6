"""PNG plots of depth telemetry: variance vs layer, last-layer variance vs step, step x layer heatmap.

Every function takes the telemetry history, a list of ``(step, values)`` with values as returned
by ``DepthTelemetry.end_step`` (steps without residual statistics are skipped), and an output
directory. Files have fixed names and are replaced atomically (written to a temporary name, then
renamed), so a reader never sees a partial PNG and each evaluation refreshes the same artifacts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from megatron_cod.data.atomic import atomic_file  # noqa: E402

History = Sequence[tuple[int, dict[str, float]]]

_LAYER_KEY = re.compile(r"^depth/(var|var_final_norm|attn_var|mlp_var)/layer_(\d+)$")


def layer_series(values: dict[str, float], stat: str) -> dict[int, float]:
    """{layer_number: value} for one ``depth/<stat>/layer_NN`` family."""
    out = {}
    for k, v in values.items():
        m = _LAYER_KEY.match(k)
        if m and m.group(1) == stat:
            out[int(m.group(2))] = v
    return out


def plot_values(values: dict[str, float]) -> dict[str, float]:
    """The part of an end_step dict the plots read: keep this per step instead of everything."""
    return {k: v for k, v in values.items() if _LAYER_KEY.match(k)}


def _residual_steps(
    history: History,
) -> list[tuple[int, dict[str, float], dict[int, float], dict[int, float]]]:
    """(step, values, raw variance per layer, final-norm variance per layer), by step, for the
    steps that have residual statistics."""
    steps = []
    for step, values in sorted(history, key=lambda item: item[0]):
        raw = layer_series(values, "var")
        if raw:
            steps.append((step, values, raw, layer_series(values, "var_final_norm")))
    return steps


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_variance_vs_layer(history: History, out_dir: str | Path) -> Path | None:
    """Residual variance per layer at the latest step (raw; the last layer also after the final
    norm), with the attention and MLP branch variances. None if no step has residual statistics."""
    steps = _residual_steps(history)
    if not steps:
        return None
    step, values, raw, final = steps[-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = sorted(raw)
    ax.plot(layers, [raw[n] for n in layers], "o-", label="residual (raw)")
    for stat, style in (("attn_var", "s--"), ("mlp_var", "^--")):
        series = layer_series(values, stat)
        if series:
            xs = sorted(series)
            ax.plot(xs, [series[n] for n in xs], style, alpha=0.7, label=f"{stat.split('_')[0]} branch")
    for n, v in sorted(final.items()):
        ax.plot([n], [v], "r*", markersize=12, label=f"layer {n} after final norm")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean per-token variance")
    ax.set_title(f"Variance vs layer (step {step})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "variance_vs_layer.png")


def plot_last_layer_variance(history: History, out_dir: str | Path) -> Path | None:
    """Variance of the last layer over training, raw and after the final norm."""
    steps = _residual_steps(history)
    if not steps:
        return None
    last = max(steps[-1][2])
    fig, ax = plt.subplots(figsize=(7, 4))
    raw = [(s, r[last]) for s, _, r, _ in steps if last in r]
    ax.plot(*zip(*raw), "-", marker="." if len(raw) == 1 else None, label=f"layer {last} raw")
    final = [(s, f[last]) for s, _, _, f in steps if last in f]
    if final:
        ax.plot(*zip(*final), "--", label=f"layer {last} after final norm")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean per-token variance")
    ax.set_title("Last-layer variance vs step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "last_layer_variance.png")


def _edges(centers: list[float]) -> np.ndarray:
    """Cell edges around possibly unevenly spaced centres (unit width for a single centre)."""
    c = np.asarray(centers)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def variance_grid(history: History) -> tuple[list[int], list[int], np.ndarray]:
    """(steps, layers, log10 raw residual variance [step, layer]; NaN where missing or <= 0)."""
    steps = _residual_steps(history)
    layers = sorted({n for _, _, raw, _ in steps for n in raw})
    grid = np.full((len(steps), len(layers)), np.nan)
    for i, (_, _, raw, _) in enumerate(steps):
        for j, n in enumerate(layers):
            if raw.get(n, 0) > 0:
                grid[i, j] = np.log10(raw[n])
    return [s for s, *_ in steps], layers, grid


def plot_variance_heatmap(history: History, out_dir: str | Path) -> Path | None:
    """log10 raw residual variance, steps down, layers across (blank where a value is missing)."""
    steps, layers, grid = variance_grid(history)
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    image = ax.pcolormesh(
        _edges([float(n) for n in layers]),
        _edges([float(s) for s in steps]),
        np.ma.masked_invalid(grid),
        cmap="viridis",
        shading="flat",
    )
    ax.invert_yaxis()
    fig.colorbar(image, ax=ax, label="log10 variance")
    ax.set_xlabel("layer")
    ax.set_ylabel("step")
    ax.set_title("Residual variance, step x layer")
    return _save(fig, Path(out_dir) / "variance_heatmap.png")


def write_depth_plots(history: History, out_dir: str | Path) -> list[Path]:
    """All three plots; returns the paths written (none while no step has residual statistics)."""
    paths = [
        plot(history, out_dir)
        for plot in (plot_variance_vs_layer, plot_last_layer_variance, plot_variance_heatmap)
    ]
    return [p for p in paths if p is not None]
