"""Comparison figures: one line per seed group (its mean), with a ±1 standard-error band where the
group has several seeds. Profiles are read at each run's comparison point; histories span training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from megatron_cod.compare.alignment import Alignment  # noqa: E402
from megatron_cod.compare.grouping import Group  # noqa: E402
from megatron_cod.compare.records import IMBALANCE_KEY, VALID_LOSS, VAR_KEY, RunRecord  # noqa: E402
from megatron_cod.compare.table import variance_profile  # noqa: E402


def _band(ax, x, rows: list[list[float]], label: str, color) -> None:
    data = np.asarray(rows, dtype=np.float64)
    mean = np.nanmean(data, axis=0)
    ax.plot(
        x,
        mean,
        marker="o" if len(x) <= 40 else None,
        markersize=3,
        color=color,
        label=f"{label} (n={len(rows)})",
    )
    if len(rows) > 1:
        se = np.nanstd(data, axis=0, ddof=1) / np.sqrt(len(rows))
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)


def _label(group: Group) -> str:
    """The group's label, plus the status of any run that did not finish."""
    unfinished = sorted({run.status for run in group.runs if run.status != "FINISHED"})
    return group.label + (f" [{', '.join(unfinished)}]" if unfinished else "")


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def profile_plot(
    groups: list[Group],
    alignment: Alignment,
    out: Path,
    pattern,
    name: str,
    ylabel: str,
    normalized: bool,
    log: bool,
) -> str | None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for group, color in zip(groups, _colors(len(groups))):
        by_depth: dict[int, list[list[float]]] = {}
        for run in group.runs:
            point = alignment.points[run.run_id]
            profile = (
                variance_profile(run, point.step, pattern)
                if point.step is not None and point.reached
                else None
            )
            if profile:
                by_depth.setdefault(len(profile), []).append(profile)
        for depth, rows in by_depth.items():
            layers = np.arange(1, depth + 1)
            _band(ax, layers / depth if normalized else layers, rows, _label(group), color)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("normalised depth l/L" if normalized else "layer")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(f"{ylabel} at the comparison point")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / name)


def _history(run: RunRecord, key: str) -> dict[int, float]:
    return dict(run.metrics.get(key, []))


def history_plot(
    groups: list[Group], alignment: Alignment, out: Path, key_of, name: str, ylabel: str, log: bool
) -> str | None:
    """A group's curve over the steps all its runs logged; x is tokens when every run knows its batch."""
    use_tokens = all(run.tokens_per_step for g in groups for run in g.runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for group, color in zip(groups, _colors(len(groups))):
        histories = [h for h in (_history(run, key_of(run)) for run in group.runs) if h]
        if not histories:
            continue
        steps = sorted(set.intersection(*(set(h) for h in histories)))
        if not steps:  # seeds logged at different steps: draw each run
            histories = histories[:1]
            steps = sorted(histories[0])
        per_step = group.runs[0].tokens_per_step if use_tokens else 1
        _band(
            ax, np.asarray(steps) * per_step, [[h[s] for s in steps] for h in histories], _label(group), color
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if alignment.target_tokens is not None and use_tokens:
        ax.axvline(
            alignment.target_tokens, color="grey", linestyle="--", linewidth=1, label="comparison point"
        )
    ax.set_xlabel("tokens" if use_tokens else "step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / name)


def _last_var_key(run: RunRecord) -> str:
    matches = [m for key in run.metrics if (m := VAR_KEY.match(key))]
    return max(matches, key=lambda m: int(m.group(1))).string if matches else ""


def analysis_plots(groups: list[Group], out: Path, normalized: bool) -> list[str]:
    names = sorted({key for g in groups for run in g.runs if run.analysis for key in run.analysis.curves})
    files = []
    for key in names:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for group, color in zip(groups, _colors(len(groups))):
            by_depth: dict[int, list[list[float]]] = {}
            for run in group.runs:
                if run.analysis and key in run.analysis.curves:
                    curve = run.analysis.curves[key]
                    by_depth.setdefault(len(curve), []).append(curve)
            for depth, rows in by_depth.items():
                layers = np.arange(1, depth + 1)
                _band(ax, layers / depth if normalized else layers, rows, _label(group), color)
        title = key.removeprefix("layer/")
        ax.set_xlabel("normalised depth l/L" if normalized else "layer")
        ax.set_ylabel(title)
        ax.set_title(f"{title} (cod-analyze)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        files.append(_save(fig, out / f"analysis_{title}.png"))
    return files


def write_plots(groups: list[Group], alignment: Alignment, out: Path, normalized: bool) -> list[str]:
    files = [
        profile_plot(
            groups, alignment, out, VAR_KEY, "variance_vs_layer.png", "residual variance", normalized, True
        ),
        history_plot(
            groups,
            alignment,
            out,
            _last_var_key,
            "last_layer_variance_vs_step.png",
            "last-layer residual variance",
            True,
        ),
        history_plot(
            groups, alignment, out, lambda run: VALID_LOSS, "valid_loss_vs_step.png", "validation loss", False
        ),
        profile_plot(
            groups,
            alignment,
            out,
            IMBALANCE_KEY,
            "moe_imbalance_vs_layer.png",
            "MoE load imbalance",
            normalized,
            False,
        ),
    ]
    return [f for f in files if f] + analysis_plots(groups, out, normalized)
