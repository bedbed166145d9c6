"""Training runs from an MLflow store: selection by experiment, id, sweep tag and filter string; then
only the metric keys a comparison reads, fetched concurrently, plus the analysis and eval runs nested
under each training run (found with one search per kind, not one per run)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from megatron_cod.compare.alignment import PointChoice, align
from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.records import (
    TRAIN_LOSS,
    VALID_LOSS,
    VAR_FINAL_NORM_KEY,
    VAR_KEY,
    AnalysisRecord,
    RunRecord,
    is_needed_key,
)
from megatron_cod.tracking import tags
from megatron_cod.tracking.mlflow_sink import sqlite_db_path

_FETCH_THREADS = 8
HISTORY_POINTS = 2000  # per run and key, for curves over training


@dataclass(frozen=True)
class Selection:
    experiments: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    sweep: str | None = None
    filter: str | None = None

    def describe(self) -> str:
        parts = [f"experiment {e!r}" for e in self.experiments] + [f"run {r}" for r in self.run_ids]
        if self.sweep:
            parts.append(f"sweep {self.sweep!r}")
        if self.filter:
            parts.append(f"filter {self.filter!r}")
        return ", ".join(parts) or "all experiments"


def open_client(uri: str) -> Any:
    """An MlflowClient for `uri` that fails fast: a missing sqlite file is an error (MLflow would
    create an empty store), and an unreachable server is not retried for minutes."""
    db = sqlite_db_path(uri)
    if db is not None and not db.is_file():
        raise CompareError(f"no MLflow store at {db} (--tracking-uri {uri})")
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _store_call(uri: str, what: str, fn, *args, **kwargs):
    """Run one client call, turning store and connection errors into a one-line CompareError."""
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        message = " ".join(str(exc.message).split())
        if "failed with exception" in message and ("Max retries" in message or "connect" in message.lower()):
            raise CompareError(
                f"cannot reach the MLflow tracking server at {uri} (connection failed)"
            ) from None
        if what.startswith("--filter"):
            raise CompareError(f"{what}: {message}") from None
        raise CompareError(f"MLflow store {uri}: {what}: {message}") from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise CompareError(
            f"cannot reach the MLflow tracking server at {uri}: {type(exc).__name__}"
        ) from None


def search_runs(client: Any, uri: str, experiment_ids: list[str], filter_string: str, what: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = _store_call(
            uri,
            what,
            client.search_runs,
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def all_experiment_ids(client: Any, uri: str) -> list[str]:
    return [e.experiment_id for e in _store_call(uri, "listing experiments", client.search_experiments)]


def _is_training_run(run: Any) -> bool:
    run_tags = run.data.tags
    return tags.RUN_DIR in run_tags and run_tags.get(tags.KIND, tags.KIND_TRAIN) == tags.KIND_TRAIN


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def select_runs(client: Any, uri: str, selection: Selection) -> list[Any]:
    """The training runs the selection names, in start order; CompareError when there are none."""
    if selection.experiments:
        experiment_ids = []
        for name in selection.experiments:
            experiment = _store_call(uri, "looking up experiments", client.get_experiment_by_name, name)
            if experiment is None:
                known = [e.name for e in _store_call(uri, "listing experiments", client.search_experiments)]
                raise CompareError(
                    f"unknown experiment {name!r} in {uri} (--experiment; known: "
                    f"{', '.join(known) or 'none'})"
                )
            experiment_ids.append(experiment.experiment_id)
    else:
        experiment_ids = all_experiment_ids(client, uri)
    clauses = []
    if selection.sweep:
        clauses.append(f"tags.`{tags.SWEEP}` = {_quote(selection.sweep)}")
    if selection.filter:
        clauses.append(f"({selection.filter})" if clauses else selection.filter)
    found: dict[str, Any] = {}
    if selection.experiments or selection.sweep or selection.filter or not selection.run_ids:
        if experiment_ids:
            for run in search_runs(
                client,
                uri,
                experiment_ids,
                " and ".join(clauses),
                "--filter" if selection.filter else "searching runs",
            ):
                found[run.info.run_id] = run
    for run_id in selection.run_ids:
        run = _store_call(uri, f"--runs {run_id}", client.get_run, run_id)
        found[run.info.run_id] = run
    runs = [run for run in found.values() if _is_training_run(run)]
    if not runs:
        raise CompareError(f"no training runs match {selection.describe()} in {uri}")
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def _bulk(
    client: Any, uri: str, run_ids: list[str], key: str, max_results: int, step: int | None = None
) -> dict[str, list]:
    """{run id: metric entries} of one key for many runs in one call: the whole history sampled to
    at most `max_results` points (first and last kept), or only `step`.

    This is MLflow's store API for comparing runs (AbstractStore.get_metric_history_bulk_interval, one
    SQL query per run on sqlite, the bulk endpoint on a server); MlflowClient does not expose it.
    """
    store = client._tracking_client.store
    rows = _store_call(
        uri, "reading metrics", store.get_metric_history_bulk_interval, run_ids, key, max_results, step, step
    )
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row.run_id, []).append(row)
    return out


def _fetch(
    client: Any, uri: str, requests: dict[tuple[str, int | None], list[str]], history_points: int
) -> dict[tuple[str, str], list]:
    """{(run id, key): entries} for requests {(key, step or None for the history): run ids}."""

    def fetch(item):
        (key, step), run_ids = item
        return key, _bulk(client, uri, run_ids, key, 1 if step is not None else history_points, step)

    out: dict[tuple[str, str], list] = {}
    with ThreadPoolExecutor(_FETCH_THREADS) as pool:
        for key, by_run in pool.map(fetch, requests.items()):
            for run_id, entries in by_run.items():
                out.setdefault((run_id, key), []).extend(entries)
    return out


def _series(metrics: Iterable[Any]) -> list[tuple[int, float]]:
    by_step: dict[int, float] = {}
    for m in sorted(metrics, key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)  # a resumed run may re-log a step: the later value wins
    return sorted(by_step.items())


def nested_runs(
    client: Any, uri: str, experiment_ids: list[str], kind: str, parents: set[str]
) -> dict[str, Any]:
    """{parent run id: its newest FINISHED nested run of `kind`}."""
    newest: dict[str, Any] = {}
    for run in search_runs(
        client, uri, experiment_ids, f"tags.`{tags.KIND}` = {_quote(kind)}", f"finding {kind} runs"
    ):
        parent = run.data.tags.get(tags.PARENT_RUN) or run.data.tags.get(tags.TRAINING_RUN)
        if parent in parents and run.info.status == "FINISHED":
            if parent not in newest or run.info.start_time > newest[parent].info.start_time:
                newest[parent] = run
    return newest


def _needs_history(key: str) -> bool:
    """Curves over training: losses and the last layer's variance (before and after the final norm)."""
    return key in (TRAIN_LOSS, VALID_LOSS) or bool(VAR_FINAL_NORM_KEY.match(key))


def load_records(client: Any, uri: str, runs: list[Any], choice: PointChoice) -> list[RunRecord]:
    """RunRecords holding what a comparison reads, and nothing more: the histories of the losses and
    of the last layer's variance (sampled to HISTORY_POINTS), which fix each run's comparison point,
    then every other per-layer value at that point only; plus the newest nested analysis and eval."""
    parents = {run.info.run_id for run in runs}
    experiment_ids = sorted({run.info.experiment_id for run in runs})
    analyses = nested_runs(client, uri, experiment_ids, tags.KIND_ANALYSIS, parents)
    evals = nested_runs(client, uri, experiment_ids, tags.KIND_EVAL, parents)
    needed = {run.info.run_id: [k for k in run.data.metrics if is_needed_key(k)] for run in runs}
    last_var = {rid: max((k for k in keys if VAR_KEY.match(k)), default=None) for rid, keys in needed.items()}
    first: dict[tuple[str, int | None], list[str]] = {}
    for rid, keys in needed.items():
        for key in keys:
            if _needs_history(key) or key == last_var[rid]:
                first.setdefault((key, None), []).append(rid)
    for a in analyses.values():
        for key in a.data.metrics:
            if key.startswith("layer/"):
                first.setdefault((key, None), []).append(a.info.run_id)
    fetched = _fetch(client, uri, first, HISTORY_POINTS)
    records = []
    for run in runs:
        rid = run.info.run_id
        metrics = {key: _series(fetched[(rid, key)]) for key in needed[rid] if (rid, key) in fetched}
        analysis = None
        if rid in analyses:
            a = analyses[rid]
            curves = {
                key: [v for _, v in _series(fetched.get((a.info.run_id, key), []))]
                for key in a.data.metrics
                if key.startswith("layer/")
            }
            analysis = AnalysisRecord(a.info.run_id, dict(a.data.metrics), curves)
        eval_scores = (
            {k: v for k, v in evals[rid].data.metrics.items() if k.startswith("eval/")}
            if rid in evals
            else {}
        )
        records.append(
            RunRecord(
                run_id=rid,
                name=run.info.run_name or rid[:8],
                status=run.info.status,
                params=dict(run.data.params),
                tags=dict(run.data.tags),
                metrics=metrics,
                start_time=(run.info.start_time or 0) / 1000.0,
                analysis=analysis,
                evals=eval_scores,
            )
        )
    # second pass: the other layers (and the exact train loss) at each run's comparison point
    points = align(records, choice).points
    second: dict[tuple[str, int | None], list[str]] = {}
    for record in records:
        step = points[record.run_id].step
        if step is None:
            continue
        for key in needed[record.run_id]:
            if key == TRAIN_LOSS or (not _needs_history(key) and key != last_var[record.run_id]):
                second.setdefault((key, step), []).append(record.run_id)
    at_point = _fetch(client, uri, second, 1)
    for record in records:
        for key in needed[record.run_id]:
            entries = at_point.get((record.run_id, key))
            if entries:
                merged = dict(record.metrics.get(key, []))
                merged.update(_series(entries))
                record.metrics[key] = sorted(merged.items())
    return records
