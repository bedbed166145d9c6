"""cod-export and cod-import.

    cod-export --checkpoint CKPT_DIR [--iteration N] --output DIR [--dtype {fp32,bf16,fp16}] [--verify] [--force]
    cod-import --hf-model DIR --output CKPT_DIR [--force]

Errors are one line on stderr ("cod-export: error: ..."), exit status 1 (2 for bad flags), nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_cod.cli_errors import OneLineParser, UsageError, cli_main
from megatron_cod.export.errors import ExportError
from megatron_cod.export.hf_dir import DEFAULT_MAX_SHARD_BYTES, DTYPES, PROVENANCE_FILE, check_output

if TYPE_CHECKING:
    from megatron_cod.export.exporter import Exported
    from megatron_cod.tracking import ToolRun


def mlflow_flags(parser: argparse.ArgumentParser) -> None:
    """The MLflow flags of cod-export and cod-eval."""
    group = parser.add_argument_group("MLflow (store: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    group.add_argument("--mlflow-run-id", help="nest under this run (default: the model's training run)")
    group.add_argument(
        "--mlflow-experiment",
        default="megatron_cod",
        help="experiment when the training run is not in this store",
    )
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="cod-export",
        description="megatron_cod checkpoint -> stock Hugging Face "
        "directory (Llama, Mixtral or Qwen2-MoE), exact in fp32",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT_DIR",
        help="a --save directory (its latest iteration) or one iter_* directory",
    )
    p.add_argument("--iteration", type=int, help="export this iteration of --checkpoint")
    p.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face directory to write")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="weight dtype of the export")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare megatron and HF logits in fp32; fail when max |diff| > 1e-4 (fp32 exports)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --output")
    p.add_argument(
        "--max-shard-size",
        type=int,
        default=DEFAULT_MAX_SHARD_BYTES,
        metavar="BYTES",
        help="safetensors shard size; a larger model gets several files and an index",
    )
    mlflow_flags(p)
    return p


def _export(args: argparse.Namespace) -> int:
    from megatron_cod.export.exporter import checkpoint_training_run
    from megatron_cod.tracking import open_tool_run, tags, tracked_run

    if args.max_shard_size <= 0:
        raise UsageError(f"--max-shard-size must be positive, got {args.max_shard_size}")
    if args.no_mlflow:
        _verify(args, _write(args), None)
        return 0
    check_output(Path(args.output), args.force)  # a refusal is not a failed export: no run for it
    # the run opens before the work, so an export that fails while writing ends FAILED with the reason
    run = open_tool_run(
        tags.KIND_EXPORT,
        f"export-{Path(args.output).name}",
        args.mlflow_experiment,
        args.mlflow_run_id,
        checkpoint_training_run(args.checkpoint, args.iteration),
    )
    print(f"mlflow run {run.run_id}")
    with tracked_run(run):
        done = _write(args)
        run.log_params({k: v for k, v in done.provenance.items() if v is not None})
        _verify(args, done, run)
    return 0


def _write(args: argparse.Namespace) -> Exported:
    from megatron_cod.export.exporter import export_checkpoint

    done = export_checkpoint(
        args.checkpoint,
        args.output,
        iteration=args.iteration,
        dtype=args.dtype,
        force=args.force,
        max_shard_bytes=args.max_shard_size,
    )
    print(
        f"exported {done.target.architecture} (iteration {done.provenance['iteration']}, {args.dtype}) "
        f"to {done.output} in {done.seconds:.1f}s"
    )
    return done


def _verify(args: argparse.Namespace, done: Exported, run: ToolRun | None) -> None:
    """With --verify, compare the export's logits with the checkpoint's; log the figures to ``run``.

    Raises ExportError when an fp32 export's logits differ by more than the tolerance.
    """
    from megatron_cod.export.verify import FP32_TOLERANCE, sample_tokens, verify_export

    metrics = {"export/seconds": done.seconds}
    parity = None
    if args.verify:
        vocab: int = done.model.vocab_size  # type: ignore[assignment]  # a GPTModel attribute
        ids = sample_tokens(vocab, min(64, done.target.config.max_position_embeddings))
        parity = verify_export(done.model, done.output, ids)
        metrics.update(parity.as_metrics())
        print(
            f"verify: max |logit diff| {parity.max_abs_diff:.3e}, top-1 agreement "
            f"{parity.top1_agreement:.2%} on {parity.num_tokens} tokens"
        )
    if run is not None:
        run.log_metrics(metrics)
        run.log_artifact(done.output / PROVENANCE_FILE)
    if parity is not None and args.dtype == "fp32" and not parity.max_abs_diff <= FP32_TOLERANCE:
        raise ExportError(f"verify failed: max |logit diff| {parity.max_abs_diff:.3e} > {FP32_TOLERANCE:g}")


def import_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="cod-import",
        description="local Hugging Face Llama / Mixtral / Qwen2-MoE "
        "directory -> megatron_cod checkpoint (cod-train --load ... --no-load-optim)",
    )
    p.add_argument("--hf-model", required=True, metavar="DIR", help="local Hugging Face model directory")
    p.add_argument(
        "--output", required=True, metavar="CKPT_DIR", help="the checkpoint (--save) directory to write"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --output")
    return p


def _import(args: argparse.Namespace) -> int:
    from megatron_cod.export.importer import import_hf

    done = import_hf(args.hf_model, args.output, force=args.force)
    print(f"imported {done.architecture} as {done.checkpoint}")
    return 0


@cli_main("cod-export: ")
def export_main(argv: list[str]) -> int:
    return _export(export_parser().parse_args(argv))


@cli_main("cod-import: ")
def import_main(argv: list[str]) -> int:
    return _import(import_parser().parse_args(argv))
