"""The numbers of a comparison: one row per run at its comparison point, one row per seed group.

Variance growth is the least-squares slope of ln(residual variance) against the layer number, the
"how fast does the stream grow with depth" measure; it can disagree with the last layer's variance
(a flatter profile can still end higher), so both are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from megatron_cod.compare.alignment import Alignment, RunPoint
from megatron_cod.compare.grouping import Group
from megatron_cod.compare.records import (
    IMBALANCE_KEY,
    TRAIN_LOSS,
    VALID_LOSS,
    VAR_FINAL_NORM_KEY,
    VAR_KEY,
    RunRecord,
    Series,
)
from megatron_cod.compare.stats import Estimate, number


@dataclass(frozen=True)
class Column:
    key: str
    title: str


BASE_COLUMNS = [
    Column("tokens", "tokens"),
    Column("train_loss", "train loss"),
    Column("valid_loss", "valid loss"),
    Column("last_var", "last-layer var"),
    Column("last_var_post_norm", "last-layer var (post final norm)"),
    Column("growth", "var growth (d ln var / d layer)"),
    Column("moe_imbalance", "MoE imbalance (mean over layers)"),
]
# Scores of a nested cod-analyze run: (global metric key, column title)
ANALYSIS_COLUMNS = [
    Column("jacobian_cross_last_half_mean_norm", "Jacobian ‖J−I‖/d, last half"),
    Column("usefulness_score", "usefulness"),
    Column("mean_block_influence", "Block Influence"),
    Column("prunable_fraction_bi", "prunable fraction"),
]


def value_at(series: Series, step: int) -> float | None:
    """The value logged at `step`, else at the nearest logged step (ties: the earlier)."""
    if not series:
        return None
    return min(series, key=lambda item: (abs(item[0] - step), item[0]))[1]


def growth_slope(variances: list[float]) -> float | None:
    """Least-squares slope of ln(variance) over layer numbers 1..L."""
    values = np.asarray(variances, dtype=np.float64)
    if values.size < 2 or not np.all(values > 0):
        return None
    layers = np.arange(1, values.size + 1, dtype=np.float64)
    return float(np.polyfit(layers, np.log(values), 1)[0])


def variance_profile(run: RunRecord, step: int, pattern=VAR_KEY) -> list[float] | None:
    layers = run.layer_series(pattern)
    if not layers:
        return None
    values = [value_at(series, step) for series in layers.values()]
    return None if any(v is None for v in values) else cast(list[float], values)


def run_values(run: RunRecord, point: RunPoint) -> dict[str, float | None]:
    """Every column's number for one run at its comparison point (None where the run lacks it)."""
    out: dict[str, float | None] = {c.key: None for c in BASE_COLUMNS}
    out["tokens"] = point.tokens
    step = point.step if point.step is not None else run.last_step
    if step is not None:
        out["train_loss"] = value_at(run.metrics.get(TRAIN_LOSS, []), step)
        out["valid_loss"] = value_at(run.metrics.get(VALID_LOSS, []), step)
    if point.step is not None:
        profile = variance_profile(run, point.step)
        if profile:
            out["last_var"] = profile[-1]
            out["growth"] = growth_slope(profile)
        post = run.layer_series(VAR_FINAL_NORM_KEY)
        if post:
            out["last_var_post_norm"] = value_at(post[max(post)], point.step)
        imbalance = variance_profile(run, point.step, IMBALANCE_KEY)
        if imbalance:
            out["moe_imbalance"] = float(np.mean(imbalance))
    if run.analysis is not None:
        for column in ANALYSIS_COLUMNS:
            out[column.key] = run.analysis.scores.get(column.key)
    out.update(run.evals)
    return out


def eval_columns(runs: list[RunRecord]) -> list[Column]:
    keys = sorted({key for run in runs for key in run.evals})
    return [Column(key, key.removeprefix("eval/")) for key in keys]


def columns_for(runs: list[RunRecord]) -> list[Column]:
    """Base columns, then the analysis and eval columns some run has."""
    cols = list(BASE_COLUMNS)
    if any(run.analysis is not None for run in runs):
        cols += ANALYSIS_COLUMNS
    return cols + eval_columns(runs)


@dataclass
class Table:
    columns: list[Column]
    rows: dict[str, dict[str, float | None]]  # run id -> column -> value
    groups: list[tuple[Group, dict[str, Estimate | None]]]  # estimates over the group's reached runs


def build_table(groups: list[Group], alignment: Alignment) -> Table:
    runs = [run for group in groups for run in group.runs]
    columns = columns_for(runs)
    rows = {run.run_id: run_values(run, alignment.points[run.run_id]) for run in runs}
    columns = [c for c in columns if any(row.get(c.key) is not None for row in rows.values())]
    group_rows = []
    for group in groups:
        members = [run for run in group.runs if alignment.points[run.run_id].reached]
        estimates = {
            c.key: Estimate.of([v for r in members if (v := rows[r.run_id].get(c.key)) is not None])
            for c in columns
        }
        group_rows.append((group, estimates))
    return Table(columns, rows, group_rows)


fmt = number
