"""The paper's claims, judged from the selected runs.

Each claim names a factor (a function of a run's config) and the direction a measure should move
as the factor grows. Two seed groups are compared when they differ in that factor and in nothing
else: the group with the lowest and the one with the highest level (for weight decay, the highest
"moderate" level, <= 1). A variance claim is judged on the absolute last-layer variance and on its
growth across depth, separately, since the two can disagree. Verdicts follow the Welch rule of
stats.Difference; "not enough runs" when no two groups isolate the factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from megatron_cod.compare.grouping import Group, short_name
from megatron_cod.compare.records import RunRecord
from megatron_cod.compare.stats import Difference, Estimate, Verdict
from megatron_cod.compare.table import Table
from megatron_cod.tracking import tags

Factor = Callable[[RunRecord], float | None]

MEASURES = {
    "last_var": "last-layer variance",
    "growth": "variance growth",
    "valid_loss": "validation loss",
    "usefulness_score": "usefulness",
}
VARIANCE = ("last_var", "growth")


def _param(key: str) -> Factor:
    def level(run: RunRecord) -> float | None:
        value = run.param(key)
        return float(value) if value is not None else None

    return level


def _kv_heads(run: RunRecord) -> float | None:
    groups = run.param("model.num_query_groups")
    if run.param("model.group_query_attention") == "True" and groups:
        return float(groups)
    heads = run.param("model.num_attention_heads")
    return float(heads) if heads else None


def _is_moe(run: RunRecord) -> float:
    return 1.0 if run.param("model.num_experts") not in (None, "0") else 0.0


def _recipe(run: RunRecord) -> float | None:
    return {"baseline": 0.0, "recipe": 1.0}.get(run.tags.get(tags.SWEEP_MEMBER, ""))


@dataclass(frozen=True)
class Claim:
    text: str
    factor: Factor
    factor_keys: tuple[str, ...]  # config keys allowed to differ with the factor
    signs: dict[str, int]  # measure -> expected sign of (high level - low level)
    max_level: float | None = None  # highest level counted (moderate weight decay)
    paper: str = ""


CLAIMS = [
    Claim(
        "Deep-layer variance grows with depth",
        _param("model.num_layers"),
        ("model.num_layers",),
        {"last_var": +1, "growth": +1},
        paper="last-layer variance L=12 < 16 < 24 < 32 at every step",
    ),
    Claim(
        "Moderate weight decay lowers deep-layer variance",
        _param("optim.weight_decay"),
        ("optim.weight_decay",),
        {"last_var": -1, "growth": -1},
        max_level=1.0,
        paper="λ=0.1 ends near 115 against 320 for λ=0",
    ),
    Claim(
        "Longer context lowers deep-layer variance",
        _param("model.seq_length"),
        ("model.seq_length", "train.global_batch_size", "train.micro_batch_size"),
        {"last_var": -1, "growth": -1},
        paper="final variance monotone in T: 3e4 at 256 to 7e2 at 4096",
    ),
    Claim(
        "GQA (fewer key-value heads) lowers deep-layer variance",
        _kv_heads,
        ("model.num_query_groups", "model.group_query_attention"),
        {"last_var": +1, "growth": +1},
        paper="G1 ≈ 220, G4 ≈ 125, G16 ≈ 102 at the end",
    ),
    Claim(
        "MoE lowers deep-layer variance",
        _is_moe,
        (
            "model.num_experts",
            "model.moe_router_topk",
            "model.moe_ffn_hidden_size",
            "model.ffn_hidden_size",
            "model.moe_aux_loss_coeff",
            "model.moe_z_loss_coeff",
        ),
        {"last_var": -1, "growth": -1},
        paper="Dense-1B ≈ 220 against MoE-7BA1B ≈ 75",
    ),
    Claim(
        "Usefulness falls with depth",
        _param("model.num_layers"),
        ("model.num_layers",),
        {"usefulness_score": -1},
        paper="usefulness 1.00 / 0.81 / 0.63 / 0.56 at L = 12 / 16 / 24 / 32",
    ),
    Claim(
        "The recipe lowers variance and improves loss",
        _recipe,
        (),
        {"last_var": -1, "growth": -1, "valid_loss": -1},
        paper="+4.6 downstream points, usefulness 0.53 → 0.75 at L=32",
    ),
]


@dataclass
class MeasureVerdict:
    measure: str
    verdict: Verdict
    difference: Difference | None


@dataclass
class ClaimResult:
    claim: Claim
    low: Group | None = None
    high: Group | None = None
    low_level: float | None = None
    high_level: float | None = None
    measures: list[MeasureVerdict] | None = None
    reason: str = "no two run groups differ in this factor alone"

    @property
    def judged(self) -> bool:
        return self.measures is not None


def _comparable(claim: Claim, varying: list[str], groups: list[Group]) -> list[tuple[float, Group]]:
    """(level, group) for groups that differ from the others only in the claim's factor."""
    levelled = []
    for group in groups:
        levels = {claim.factor(run) for run in group.runs}
        if len(levels) == 1 and None not in levels:
            levelled.append((cast(float, levels.pop()), group))
    if claim.factor is _recipe:
        return levelled
    # groups must agree on every varying key outside the factor's own keys
    others = [k for k in varying if k not in claim.factor_keys]
    buckets: dict[tuple, list[tuple[float, Group]]] = {}
    for level, group in levelled:
        buckets.setdefault(tuple(group.values[k] for k in others), []).append((level, group))
    best = max(buckets.values(), key=lambda items: len({lvl for lvl, _ in items}), default=[])
    return best


def judge(table: Table, varying: list[str]) -> list[ClaimResult]:
    groups = [group for group, _ in table.groups]
    estimates = {id(group): est for group, est in table.groups}
    results = []
    for claim in CLAIMS:
        candidates = [
            (lvl, g)
            for lvl, g in _comparable(claim, varying, groups)
            if claim.max_level is None or lvl <= claim.max_level
        ]
        levels = sorted({lvl for lvl, _ in candidates})
        result = ClaimResult(claim)
        if len(levels) >= 2:
            low = next(g for lvl, g in candidates if lvl == levels[0])
            high = next(g for lvl, g in candidates if lvl == levels[-1])
            result.low, result.high, result.low_level, result.high_level = low, high, levels[0], levels[-1]
            if all(estimates[id(g)].get(m) is None for g in (low, high) for m in claim.signs):
                result.reason = f"no run of these groups has {', '.join(MEASURES[m] for m in claim.signs)}"
                results.append(result)
                continue
            result.measures = []
            for measure, sign in claim.signs.items():
                a: Estimate | None = estimates[id(low)].get(measure)
                b: Estimate | None = estimates[id(high)].get(measure)
                if a is None or b is None:
                    result.measures.append(MeasureVerdict(measure, "not enough runs", None))
                    continue
                diff = Difference(a, b)
                result.measures.append(MeasureVerdict(measure, diff.verdict(sign), diff))
        results.append(result)
    return results


def factor_name(claim: Claim) -> str:
    return ", ".join(short_name(k) for k in claim.factor_keys[:1]) or "sweep member"
