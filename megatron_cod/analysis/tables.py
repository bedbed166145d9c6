"""Metric results as JSON-ready dicts and as flat CSV tables (header + rows)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from megatron_cod.analysis.causal import CausalResult
from megatron_cod.analysis.jacobian import JacobianResult
from megatron_cod.analysis.logit_lens import LogitLensResult
from megatron_cod.analysis.permutation import PermutationResult
from megatron_cod.analysis.probe_estimators import Estimate
from megatron_cod.analysis.residual import ResidualResult
from megatron_cod.analysis.similarity import PruneStep, SimilarityResult
from megatron_cod.analysis.usefulness import UsefulnessResult

Table = tuple[list[str], list[list[Any]]]


def jsonable(value: Any) -> Any:
    """Dataclasses, numpy arrays and scalars -> plain JSON values; NaN/inf -> None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, PruneStep):
            out["perplexity"] = jsonable(value.perplexity)
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def result_dict(result: Any) -> dict[str, Any]:
    """A metric result with its global scores under "global"."""
    out = jsonable(result)
    out["global"] = jsonable(result.global_metrics())
    if isinstance(result, PermutationResult):
        out["matrix"] = jsonable(result.matrix())
    return out


def _est(e: Estimate) -> list[float]:
    return [e.value, e.stderr]


def jacobian_tables(result: JacobianResult) -> dict[str, Table]:
    header = ["layer", "variant"]
    for name in ("jacobian_norm", "off_diagonal_norm", "diagonal_mean", "diagonal_std", "frobenius_norm"):
        header += [name, f"{name}_stderr"]
    header.append("spectral_norm")
    rows = []
    for entry in result.layers:
        s = entry.scores
        row: list[Any] = [entry.layer, entry.variant]
        for est in (s.jacobian_norm, s.off_diagonal_norm, s.diagonal_mean, s.diagonal_std, s.frobenius_norm):
            row += _est(est)
        row.append(s.spectral_norm)
        rows.append(row)
    return {"jacobian": (header, rows)}


def usefulness_tables(result: UsefulnessResult) -> dict[str, Table]:
    header = [
        "layer",
        "loss",
        "loss_ratio",
        "loss_ratio_stderr",
        "loss_increase",
        "useful",
        "fit_relative_residual",
    ]
    rows = [
        [
            r.layer,
            r.loss,
            r.loss_ratio,
            r.loss_ratio_stderr,
            r.loss_increase,
            int(r.useful),
            r.fit_relative_residual,
        ]
        for r in result.layers
    ]
    return {"usefulness": (header, rows)}


def causal_tables(result: CausalResult) -> dict[str, Table]:
    n = result.matrix.shape[0]
    matrix_rows = [[s] + result.matrix[s].tolist() for s in range(n)]
    skips = [
        [s.layer, s.kl, s.kl_stderr, s.top1_agreement, s.top1_stderr, s.loss, s.loss_ratio]
        + [s.loss_ratio_stderr, s.mean_effect]
        for s in result.skips
    ]
    tables: dict[str, Table] = {
        "causal_matrix": (["skipped_layer"] + [f"layer_{l}" for l in range(n)], matrix_rows),
        "causal_output_change": (
            ["skipped_layer", "kl", "kl_stderr", "top1_agreement", "top1_agreement_stderr", "loss"]
            + ["loss_ratio", "loss_ratio_stderr", "mean_effect"],
            skips,
        ),
    }
    if result.matrix_stderr is not None:
        stderr_rows = [[s] + result.matrix_stderr[s].tolist() for s in range(n)]
        tables["causal_matrix_stderr"] = (["skipped_layer"] + [f"layer_{l}" for l in range(n)], stderr_rows)
    return tables


def permutation_tables(result: PermutationResult) -> dict[str, Table]:
    return {
        "permutation": (
            ["l1", "l2", "loss", "score", "score_stderr"],
            [[p.l1, p.l2, p.loss, p.score, p.stderr] for p in result.pairs],
        )
    }


def similarity_tables(result: SimilarityResult) -> dict[str, Table]:
    n = len(result.block_influence)
    bi_se: list[float | None] = list(result.block_influence_stderr) or [None] * n
    bi_last_se: list[float | None] = list(result.block_influence_last_stderr) or [None] * n
    ang_se = result.angular_all_stderr if result.angular_all_stderr is not None else np.full((n, n), np.nan)
    ang_last_se = (
        result.angular_last_stderr if result.angular_last_stderr is not None else np.full((n, n), np.nan)
    )
    tables: dict[str, Table] = {
        "block_influence": (
            ["layer", "block_influence", "block_influence_stderr", "block_influence_last_token"]
            + ["block_influence_last_token_stderr"],
            [
                [l, result.block_influence[l], bi_se[l], result.block_influence_last[l], bi_last_se[l]]
                for l in range(n)
            ],
        ),
        "angular_distance": (
            ["start_layer", "block_size", "angular_distance", "angular_distance_stderr"]
            + ["angular_distance_last_token", "angular_distance_last_token_stderr"],
            [
                [
                    l,
                    k + 1,
                    result.angular_all[l, k],
                    ang_se[l, k],
                    result.angular_last[l, k],
                    ang_last_se[l, k],
                ]
                for l in range(n)
                for k in range(n - l)
            ],
        ),
    }
    if result.pruning_bi:
        rows = []
        for order, steps in (
            ("block_influence", result.pruning_bi),
            ("angular_block", result.pruning_angular),
        ):
            rows += [
                [order, s.num_removed, " ".join(map(str, s.removed)), s.loss, s.loss_stderr, s.perplexity]
                + [s.loss_ratio, s.loss_ratio_stderr]
                for s in steps
            ]
        header = ["order", "num_removed", "removed_layers", "loss", "loss_stderr", "perplexity"]
        tables["pruning_curves"] = (header + ["loss_ratio", "loss_ratio_stderr"], rows)
    return tables


def logit_lens_tables(result: LogitLensResult) -> dict[str, Table]:
    rows = [
        [s.state, s.kl_to_final, s.kl_stderr, s.top1_agreement, s.top1_stderr, s.loss, s.loss_stderr]
        for s in result.states
    ]
    header = ["state", "kl_to_final", "kl_stderr", "top1_agreement", "top1_agreement_stderr", "loss"]
    return {"logit_lens": (header + ["loss_stderr"], rows)}


def residual_tables(result: ResidualResult) -> dict[str, Table]:
    n = len(result.update_norm)
    rows = []
    for l in range(n + 1):
        update = [result.update_norm[l - 1], result.relative_update[l - 1]] if l > 0 else [None, None]
        rows.append([l, result.variance[l], result.norm[l], result.rms[l], *update])
    header = [
        "state",
        "variance",
        "norm",
        "rms",
        "update_norm_of_previous_layer",
        "relative_update_of_previous_layer",
    ]
    return {"residual_profile": (header, rows)}


TABLES: dict[str, Callable[[Any], dict[str, Table]]] = {
    "jacobian": jacobian_tables,
    "usefulness": usefulness_tables,
    "causal": causal_tables,
    "permutation": permutation_tables,
    "similarity": similarity_tables,
    "logit-lens": logit_lens_tables,
    "variance": residual_tables,
}
