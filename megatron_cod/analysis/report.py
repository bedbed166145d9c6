"""The output directory: results.json, one CSV per table, PNG figures and summary.md.

Everything is written into a hidden sibling directory that is renamed into place at the end, so
an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.analysis.plots import PLOTS
from megatron_cod.analysis.stats import RESOLVE_SIGMAS
from megatron_cod.analysis.suite import SuiteResults
from megatron_cod.analysis.tables import TABLES, jsonable, result_dict
from megatron_cod.data.atomic import staged_directory

_PACKAGES = ("megatron_cod", "torch", "transformers", "megatron-core", "numpy", "tokenizers", "mlflow")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Fail early, before any computation, if the report would overwrite something unasked."""
    if path.exists() and not overwrite:
        raise AnalysisError(f"output directory {path} exists; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise AnalysisError(f"output path {path} exists and is not a directory")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in jsonable(row)] for row in rows])


def _fmt(value: float) -> str:
    return "n/a" if value is None or value != value else f"{value:.6g}"


def unresolved_orders(results: SuiteResults) -> dict[str, list[tuple[int, int]]]:
    """Per-layer score name -> unresolved neighbouring layer pairs."""
    out: dict[str, list[tuple[int, int]]] = {}
    if results.usefulness is not None:
        out["usefulness loss ratio"] = results.usefulness.unresolved
    if results.causal is not None:
        out["skip KL"] = results.causal.unresolved
    if results.similarity is not None:
        out["Block Influence"] = results.similarity.unresolved
    if results.logit_lens is not None:
        out["logit-lens KL (states)"] = results.logit_lens.unresolved
    return out


def _pairs(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}~{b}" for a, b in pairs) if pairs else "none"


def _targets(targets: dict[str, float]) -> str:
    return ", ".join(f"{group} {target:g}" for group, target in targets.items()) or "none (all sequences)"


def _summary(results: SuiteResults, meta: dict[str, Any], figures: list[str], tables: list[str]) -> str:
    model = meta.get("model", {})
    data = meta.get("data", {})
    sampling = meta.get("sampling", {})
    lines = [
        "# Depth-utilization analysis",
        "",
        f"- model: {model.get('source') or model.get('architecture')} ({model.get('num_layers')} layers, "
        f"hidden {model.get('hidden_size')}, vocab {model.get('vocab_size')})",
        f"- data: {data.get('num_samples')} x {data.get('seq_length')} tokens, split part "
        f"{data.get('split_part')!r} of {data.get('split')!r}, seed {data.get('seed')}",
        f"- sampling: target standard error {sampling.get('target_se') or 'per score (defaults)'}, at "
        f"least {sampling.get('min_samples')} and at most {sampling.get('max_samples')} sequences per metric",
        f"- metrics: {', '.join(results.present())}",
        "",
        "## Sequences used",
        "",
        "Each metric drew sequences (the first k of the draw) until every score it is judged by had a",
        "standard error at or below its target (in the score's units), or it reached its maximum.",
        "",
        "| metric | sequences | target standard errors |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {count} | {_targets(results.targets.get(name, {}))} |"
        for name, count in results.samples.items()
    ]
    lines += [
        "",
        "## Layer orders not resolved",
        "",
        f"Neighbours in each per-layer ranking whose scores differ by at most {RESOLVE_SIGMAS:g} standard",
        "errors of their (paired) difference: their order may be noise. 'a~b' = a ranks just below b.",
        "",
        "| score | unresolved neighbours |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_pairs(pairs)} |" for name, pairs in unresolved_orders(results).items()]
    lines += [
        "",
        "## Scores",
        "",
        "| score | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in results.global_metrics().items()]
    lines += ["", "## Wall time (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in results.seconds.items()]
    work = results.work
    if work:
        lines += [
            "",
            f"Work: {work['units']} (sequences through a layer forward, a head, a distribution comparison, "
            f"a layer's least-squares fit update, a layer VJP); at the measured unit "
            f"costs that needs {work['floor_seconds']:.1f} s, the suite took {work['overhead_ratio']:.2f}x that.",
        ]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += (
        ["", "## Tables", ""] + [f"- [{t}]({t})" for t in tables] + ["- [results.json](results.json)", ""]
    )
    return "\n".join(lines)


def write_report(path: Path, results: SuiteResults, meta: dict[str, Any], overwrite: bool) -> list[str]:
    """Write the report to ``path`` atomically; returns the file names written."""
    check_output_dir(path, overwrite)
    figures: list[str] = []
    tables: list[str] = []
    with staged_directory(path) as staging:
        payload: dict[str, Any] = {
            **jsonable(meta),
            "seconds": results.seconds,
            "global": jsonable(results.global_metrics()),
            "layer_curves": jsonable(results.layer_curves()),
            "samples": results.samples,
            "targets": results.targets,
            "work": jsonable(results.work),
            "unresolved": jsonable(unresolved_orders(results)),
        }
        for metric, result in results.present().items():
            payload[metric] = result_dict(result)
            for name, (header, rows) in TABLES[metric](result).items():
                _write_csv(staging / f"{name}.csv", header, rows)
                tables.append(f"{name}.csv")
            figures += PLOTS[metric](result, staging)
        (staging / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False))
        (staging / "summary.md").write_text(_summary(results, meta, figures, tables))
    return ["results.json", "summary.md", *tables, *figures]
