"""Every number of a comparison equals what was logged (or an independent computation from it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from compare_store import loss, variance

from megatron_cod.compare import mlflow_source
from megatron_cod.compare.alignment import PointChoice, align
from megatron_cod.compare.grouping import group_runs
from megatron_cod.compare.rundir_source import load_run_dirs
from megatron_cod.compare.table import build_table


def _records(store, selection=None, choice=PointChoice()):
    client = mlflow_source.open_client(store.uri)
    runs = mlflow_source.select_runs(client, store.uri, selection or mlflow_source.Selection(["exp"]))
    return mlflow_source.load_records(client, store.uri, runs, choice)


def _table(records, choice=PointChoice()):
    alignment = align(records, choice)
    varying, groups = group_runs(records)
    return varying, groups, alignment, build_table(groups, alignment)


def test_numbers_equal_what_was_logged(store):
    runs = [store.add("a1", {"model.num_layers": 4, "train.seed": 1}, growth=0.1),
            store.add("a2", {"model.num_layers": 4, "train.seed": 2}, growth=0.1),
            store.add("b1", {"model.num_layers": 8, "train.seed": 1}, growth=0.3, moe=True)]
    records = _records(store)
    varying, groups, alignment, table = _table(records)
    assert varying == ["model.num_layers"]
    assert [g.label for g in groups] == ["layers=4", "layers=8"]
    assert [len(g.runs) for g in groups] == [2, 1]
    for run in runs:
        rec = next(r for r in records if r.run_id == run.run_id)
        row = table.rows[rec.run_id]
        step, layers, seed = 20, run.cfg.model.num_layers, run.cfg.train.seed
        assert alignment.points[rec.run_id].step == step
        assert row["tokens"] == step * 8 * 64
        assert row["train_loss"] == pytest.approx(loss(step, seed, "train"), rel=1e-12)
        assert row["valid_loss"] == pytest.approx(loss(step, seed, "valid"), rel=1e-12)
        assert row["last_var"] == pytest.approx(variance(layers, step, run.growth, seed), rel=1e-12)
        assert row["last_var_post_norm"] == pytest.approx(1.2, rel=1e-12)
        # ln var = growth * layer + const, so the fitted slope is the growth rate itself
        assert row["growth"] == pytest.approx(run.growth, rel=1e-9)
    moe_row = table.rows[runs[2].run_id]
    assert moe_row["moe_imbalance"] == pytest.approx(np.mean([1 + l / 10 + 0.02 for l in range(1, 9)]))
    assert table.rows[runs[0].run_id]["moe_imbalance"] is None
    # group statistics are numpy's mean and std(ddof=1)/sqrt(n)
    est = table.groups[0][1]
    values = [variance(4, 20, 0.1, s) for s in (1, 2)]
    assert est["last_var"].mean == pytest.approx(np.mean(values))
    assert est["last_var"].se == pytest.approx(np.std(values, ddof=1) / math.sqrt(2))
    assert est["last_var"].n == 2
    assert table.groups[1][1]["last_var"].n == 1 and math.isnan(table.groups[1][1]["last_var"].se)


def test_missing_metric_failed_run_and_depths(store):
    ok = store.add("deep", {"model.num_layers": 8}, steps=20)
    short = store.add("crashed", {"model.num_layers": 4}, steps=10, status="FAILED")
    bare = store.add("nonorm", {"model.num_layers": 6}, steps=20, final_norm=False)
    records = _records(store)
    assert {r.status for r in records} == {"FINISHED", "FAILED"}
    _, groups, alignment, table = _table(records)
    # the FAILED run neither sets the equal-token point nor counts in its group
    assert alignment.target_tokens == 20 * 512
    assert alignment.points[short.run_id].reached is False
    assert alignment.points[short.run_id].step == 10
    assert table.rows[short.run_id]["last_var"] == pytest.approx(variance(4, 10, 0.1, 1234))
    crashed_group = next(est for g, est in table.groups if g.runs[0].run_id == short.run_id)
    assert crashed_group["last_var"] is None
    assert table.rows[bare.run_id]["last_var_post_norm"] is None
    assert table.rows[bare.run_id]["last_var"] == pytest.approx(variance(6, 20, 0.1, 1234))
    assert table.rows[ok.run_id]["last_var"] == pytest.approx(variance(8, 20, 0.1, 1234))


def test_run_dirs_give_the_same_table(store):
    for name, layers, seed in (("x1", 4, 1), ("x2", 4, 2), ("y1", 6, 1)):
        store.add(name, {"model.num_layers": layers, "train.seed": seed}, growth=0.05 * layers)
    from_mlflow = _records(store)
    from_dirs = load_run_dirs([str(store.root / "runs" / n) for n in ("x1", "x2", "y1")])
    v1, g1, _, t1 = _table(from_mlflow)
    v2, g2, _, t2 = _table(from_dirs)
    assert v1 == v2 and [g.label for g in g1] == [g.label for g in g2]
    rows1 = [t1.rows[r.run_id] for r in from_mlflow]
    rows2 = [t2.rows[r.run_id] for r in from_dirs]
    assert rows1 == rows2
    assert [r.status for r in from_dirs] == ["FINISHED"] * 3
    assert [str(e) for _, est in t1.groups for e in est.values()] == [str(e) for _, est in t2.groups for e in est.values()]
