"""cod-eval: downstream evaluation with lm-eval on an HF directory or a megatron_cod checkpoint.

    cod-eval (--hf-model DIR | --checkpoint CKPT_DIR) [--tasks LIST] [--limit N] --output-dir DIR

A checkpoint is exported (fp32, exact) to a temporary directory first. Default tasks are the local
ones (cod_cloze, cod_next_sentence) over held-out text of the corpus the model trained on; other
names go to lm-eval unchanged. Writes results.json, results.md and the task data under the output
directory, and logs eval/<task>/<metric> to an MLflow run nested under the training run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_cod.cli_errors import OneLineParser, cli_main
from megatron_cod.data.atomic import staged_directory
from megatron_cod.export.cli import mlflow_flags
from megatron_cod.export.errors import ExportError
from megatron_cod.export.hf_dir import PROVENANCE_FILE, check_output

if TYPE_CHECKING:
    from megatron_cod.tracking import ToolRun

DEFAULT_NUM_ITEMS = 500


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="cod-eval", description="downstream evaluation with lm-eval")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--hf-model", metavar="DIR", help="local Hugging Face causal-LM directory")
    model.add_argument("--checkpoint", metavar="CKPT_DIR", help="megatron_cod checkpoint (exported first)")
    p.add_argument("--iteration", type=int, help="with --checkpoint: this iteration instead of the latest")
    p.add_argument(
        "--tasks",
        default="cod_cloze,cod_next_sentence",
        help="comma-separated: local tasks (cod_cloze, cod_next_sentence) and/or lm-eval task names",
    )
    p.add_argument("--limit", type=int, help="evaluate at most N items per task")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="results.json, results.md, task data")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    p.add_argument(
        "--eval-data",
        metavar="JSONL",
        help="held-out documents (jsonl, field text) for the local tasks "
        "(default: the test split of the built-in corpus the model trained on)",
    )
    p.add_argument("--num-items", type=int, default=DEFAULT_NUM_ITEMS, help="items built per local task")
    mlflow_flags(p)
    return p


def _training_data(cfg: Any) -> str | None:
    """The built-in corpus a training config used, None for --data-path training."""
    return None if cfg.data.data_path else cfg.data.builtin


def _texts(args: argparse.Namespace, builtin: str | None) -> list[str]:
    from megatron_cod.evaluation.items import held_out_texts, read_texts

    if args.eval_data:
        return read_texts(args.eval_data)
    if builtin is None:
        raise ExportError(
            "the model trained on --data-path, not a built-in corpus: pass --eval-data JSONL "
            "with held-out documents"
        )
    return held_out_texts(builtin)


def _source_of_hf_dir(hf_dir: Path) -> tuple[str | None, str | None]:
    """(training run id, built-in corpus) for one of our exports; (None, default corpus) otherwise."""
    from megatron_cod.analysis.megatron_adapter import read_checkpoint_config

    provenance_file = hf_dir / PROVENANCE_FILE
    if not provenance_file.is_file():
        return None, "shakespeare"
    provenance = json.loads(provenance_file.read_text())
    builtin: str | None = "shakespeare"
    source = Path(provenance.get("source_checkpoint", ""))
    if (source / "config.yaml").is_file():
        builtin = _training_data(read_checkpoint_config(source)[1])
    return provenance.get("training_mlflow_run_id"), builtin


def _evaluate(args: argparse.Namespace, hf_dir: Path, run_id: str | None, builtin: str | None) -> int:
    from megatron_cod.tracking import open_tool_run, tags, tracked_run

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise ExportError("--tasks is empty")
    output = Path(args.output_dir)
    if args.no_mlflow:
        _run_tasks(args, hf_dir, builtin, names, None)
        return 0
    # the run opens before the work, so a failure or a stop mid-way is recorded on it
    run = open_tool_run(
        tags.KIND_EVAL, f"eval-{output.name}", args.mlflow_experiment, args.mlflow_run_id, run_id
    )
    print(f"mlflow run {run.run_id}")
    with tracked_run(run):
        run.log_params(
            {"model": args.hf_model or args.checkpoint, "tasks": ",".join(names), "limit": args.limit}
        )
        _run_tasks(args, hf_dir, builtin, names, run)
    return 0


def _run_tasks(
    args: argparse.Namespace, hf_dir: Path, builtin: str | None, names: list[str], run: ToolRun | None
) -> None:
    """Evaluate ``names`` into --output-dir (replaced whole at the end); log the metrics to ``run``."""
    from transformers import AutoConfig, AutoTokenizer

    from megatron_cod.evaluation.items import build_items, write_jsonl
    from megatron_cod.evaluation.runner import (
        LOCAL_TASKS,
        local_task_config,
        markdown_table,
        metrics_of,
        run_lm_eval,
    )

    output = Path(args.output_dir)
    with staged_directory(output) as tmp:
        tasks: list[str | dict] = list(names)
        local = [n for n in names if n in LOCAL_TASKS]
        if local:
            tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
            max_tokens = AutoConfig.from_pretrained(str(hf_dir)).max_position_embeddings
            items = build_items(
                _texts(args, builtin), lambda s: len(tokenizer(s).input_ids), max_tokens, args.num_items
            )
            data = {"cod_cloze": items.cloze, "cod_next_sentence": items.next_sentence}
            for name in local:
                if not data[name]:
                    raise ExportError(f"{name}: no items fit the model's {max_tokens}-token context")
                file = write_jsonl(tmp / "data" / f"{name}.jsonl", data[name])
                tasks[names.index(name)] = local_task_config(name, file)
        results = run_lm_eval(hf_dir, tasks, args.limit, args.batch_size)
        metrics = metrics_of(results)
        counts = {t: n["effective"] for t, n in results.get("n-samples", {}).items()}
        summary = {
            "model": args.hf_model or args.checkpoint,
            "tasks": names,
            "limit": args.limit,
            "metrics": metrics,
            "n_samples": counts,
            "lm_eval_version": results.get("lm_eval_version"),
            "data": {n: f"data/{n}.jsonl" for n in local},
        }
        (tmp / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "results.md").write_text(markdown_table(metrics, counts))
    print((output / "results.md").read_text(), end="")
    if run is not None:
        run.log_metrics(metrics)
        for name in ("results.json", "results.md"):
            run.log_artifact(output / name)


def _run(args: argparse.Namespace) -> int:
    from megatron_cod.analysis.megatron_adapter import read_checkpoint_config

    check_output(Path(args.output_dir), args.force, flag="--output-dir")
    if args.hf_model is not None:
        hf_dir = Path(args.hf_model)
        if not (hf_dir / "config.json").is_file():
            raise ExportError(f"--hf-model {hf_dir}: no config.json (a local Hugging Face model directory)")
        run_id, builtin = _source_of_hf_dir(hf_dir)
        return _evaluate(args, hf_dir, run_id, builtin)
    from megatron_cod.export.exporter import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="cod-eval-") as tmp:
        exported = export_checkpoint(args.checkpoint, Path(tmp) / "hf", iteration=args.iteration)
        source = Path(exported.provenance["source_checkpoint"])
        builtin = _training_data(read_checkpoint_config(source)[1])
        return _evaluate(args, exported.output, exported.training_run_id, builtin)


@cli_main("cod-eval: ")
def main(argv: list[str]) -> int:
    return _run(build_parser().parse_args(argv))
