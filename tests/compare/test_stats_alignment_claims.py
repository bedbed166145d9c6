"""Pure parts of a comparison: seed statistics, verdicts, equal-token alignment and claim matching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_cod.compare.alignment import PointChoice, align
from megatron_cod.compare.claims import judge
from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.grouping import drop_superseded, group_runs
from megatron_cod.compare.records import RunRecord
from megatron_cod.compare.stats import Difference, Estimate
from megatron_cod.compare.table import build_table
from megatron_cod.tracking import tags


def record(run_id: str, params: dict, telemetry: list[int], last_var: list[float] | None = None, *,
           layers: int = 4, status: str = "FINISHED", gbs: int = 8, seq: int = 64, seed: int = 1,
           run_tags: dict | None = None, start: float = 0.0) -> RunRecord:
    last_var = last_var or [float(s) for s in telemetry]
    metrics = {f"depth/var/layer_{l:02d}": [(s, v * math.exp(0.1 * (l - layers))) for s, v in zip(telemetry, last_var)]
               for l in range(1, layers + 1)}
    base = {"model.num_layers": str(layers), "train.global_batch_size": str(gbs), "model.seq_length": str(seq),
            "train.seed": str(seed), "model.num_attention_heads": "4", "model.group_query_attention": "False",
            "model.num_query_groups": "None", "model.num_experts": "None", "optim.weight_decay": "0.1"}
    return RunRecord(run_id, run_id, status, {**base, **{k: str(v) for k, v in params.items()}},
                     run_tags or {}, metrics, start_time=start)


def test_estimate_matches_numpy_and_single_seed():
    values = [3.0, 5.5, 4.25, 9.0]
    est = Estimate.of(values)
    assert est.mean == pytest.approx(np.mean(values))
    assert est.se == pytest.approx(np.std(values, ddof=1) / 2)
    assert est.n == 4
    one = Estimate.of([2.0])
    assert one.n == 1 and math.isnan(one.se)
    assert Estimate.of([]) is None


@pytest.mark.parametrize("low,high,sign,verdict", [
    ([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], +1, "holds"),          # clearly higher, as expected
    ([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], -1, "opposite"),       # clearly higher, lower was expected
    ([1.0, 3.0, 2.0], [2.5, 1.5, 3.5], +1, "within noise"),   # overlapping spreads
    ([1.0], [5.0, 5.1], +1, "one seed, no verdict"),          # one seed never "holds"
])
def test_welch_verdicts(low, high, sign, verdict):
    diff = Difference(Estimate.of(low), Estimate.of(high))
    assert diff.verdict(sign) == verdict
    var_low, var_high = np.var(low, ddof=1) / len(low) if len(low) > 1 else np.nan, np.var(high, ddof=1) / len(high)
    if len(low) > 1:
        assert diff.se == pytest.approx(math.sqrt(var_low + var_high))
    assert diff.value == pytest.approx(np.mean(high) - np.mean(low))


def test_equal_tokens_with_different_batch_and_intervals():
    # a: 512 tokens/step, telemetry every 10 steps to 100 (51,200 tokens)
    # b: 1024 tokens/step, telemetry every 7 steps to 35 (35,840 tokens) -> the target
    a = record("a", {}, list(range(10, 101, 10)), gbs=8, seq=64)
    b = record("b", {}, list(range(7, 36, 7)), gbs=16, seq=64)
    alignment = align([a, b], PointChoice())
    assert alignment.target_tokens == 35 * 1024
    assert alignment.points["b"].step == 35
    assert alignment.points["a"].step == 70  # 70 * 512 = 35,840 exactly
    at = align([a, b], PointChoice(at_tokens=20_000))
    assert at.points["a"].step == 40 and at.points["b"].step == 21  # 20,480 and 21,504 are the nearest
    assert at.points["a"].reached and at.points["b"].reached
    final = align([a, b], PointChoice(final=True))
    assert final.points["a"].step == 100 and "differ in length" in final.description
    assert align([a, b], PointChoice(at_step=33)).points["b"].step == 35
    with pytest.raises(CompareError, match="beyond what any selected run reached"):
        align([a, b], PointChoice(at_tokens=60_000))


def test_groups_are_formed_by_seed_only_differences():
    runs = [record("a1", {"model.num_layers": 4}, [10], seed=1), record("a2", {}, [10], seed=2),
            record("b1", {"optim.weight_decay": "0.3"}, [10], seed=1),
            record("c1", {"optim.weight_decay": "0.3", "model.seq_length": "128"}, [10], seed=1)]
    varying, groups = group_runs(runs)
    assert varying == ["model.seq_length", "optim.weight_decay"]
    assert [[r.run_id for r in g.runs] for g in groups] == [["a1", "a2"], ["b1"], ["c1"]]
    assert groups[0].label == "T=64 wd=0.1"


def test_superseded_sweep_runs_are_listed_not_counted():
    t = {tags.SWEEP: "s", tags.SWEEP_MEMBER: "m", tags.CONFIG_HASH: "h"}
    killed = record("old", {}, [10], status="KILLED", run_tags=t, start=1)
    resumed = record("new", {}, [10, 20], run_tags=t, start=2)
    other = record("other", {}, [10], run_tags={**t, tags.SWEEP_MEMBER: "n"}, start=3)
    kept, superseded = drop_superseded([killed, resumed, other])
    assert [r.run_id for r in kept] == ["new", "other"]
    assert [(a.run_id, b.run_id) for a, b in superseded] == [("old", "new")]


def _judge(runs):
    alignment = align(runs, PointChoice())
    varying, groups = group_runs(runs)
    return {c.claim.text: c for c in judge(build_table(groups, alignment), varying)}


def test_depth_claim_holds_opposite_and_no_verdict():
    shallow = [record(f"s{i}", {}, [10], [v], layers=4, seed=i) for i, v in enumerate([10.0, 11.0, 9.0])]
    deep = [record(f"d{i}", {}, [10], [v], layers=8, seed=i) for i, v in enumerate([30.0, 31.0, 29.0])]
    result = _judge(shallow + deep)["Deep-layer variance grows with depth"]
    verdicts = {m.measure: m.verdict for m in result.measures}
    assert verdicts["last_var"] == "holds"
    assert result.low.label == "layers=4" and result.high.label == "layers=8"
    assert result.measures[0].difference.value == pytest.approx(20.0)
    flipped = _judge([record(f"s{i}", {}, [10], [v], layers=8, seed=i) for i, v in enumerate([10.0, 11.0, 9.0])]
                     + [record(f"d{i}", {}, [10], [v], layers=4, seed=i) for i, v in enumerate([30.0, 31.0, 29.0])])
    assert {m.measure: m.verdict for m in flipped["Deep-layer variance grows with depth"].measures}["last_var"] == \
        "opposite"
    single = _judge([record("s", {}, [10], [10.0], layers=4), record("d", {}, [10], [30.0], layers=8)])
    assert single["Deep-layer variance grows with depth"].measures[0].verdict == "one seed, no verdict"
    # nothing isolates weight decay here
    assert not single["Moderate weight decay lowers deep-layer variance"].judged


def test_claim_ignores_groups_that_differ_in_another_factor():
    runs = [record("a", {"optim.weight_decay": "0.0"}, [10], [50.0], seed=1),
            record("a2", {"optim.weight_decay": "0.0"}, [10], [52.0], seed=2),
            record("b", {"optim.weight_decay": "0.3", "model.seq_length": "128"}, [10], [10.0], seed=1),
            record("b2", {"optim.weight_decay": "0.3", "model.seq_length": "128"}, [10], [11.0], seed=2)]
    result = _judge(runs)["Moderate weight decay lowers deep-layer variance"]
    assert not result.judged  # wd and T changed together: no controlled comparison
