"""``cod-analyze``: depth-utilization metrics of a model on held-out data, to a report directory.

cod-analyze {jacobian,usefulness,causal,permutation,similarity,logit-lens,variance,all}
    (--hf-model DIR | --checkpoint DIR) (--data-prefix PREFIX | --text-file FILE --tokenizer JSON)
    [--output-dir DIR] [--overwrite] [--mlflow-run-id ID] ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.causal import CausalConfig
from megatron_cod.analysis.data import SPLIT_PARTS, DataConfig, load_eval_tokens
from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.jacobian import MODES, VARIANTS, JacobianConfig
from megatron_cod.analysis.loading import load_model
from megatron_cod.analysis.logit_lens import LogitLensConfig
from megatron_cod.analysis.mlflow_log import flatten, log_report
from megatron_cod.analysis.permutation import PermutationConfig, parse_pairs
from megatron_cod.analysis.progress import NO_PROGRESS, RichProgress
from megatron_cod.analysis.report import check_output_dir, package_versions, write_report
from megatron_cod.analysis.residual import ResidualConfig
from megatron_cod.analysis.sampling import SamplingConfig
from megatron_cod.analysis.similarity import SimilarityConfig
from megatron_cod.analysis.suite import METRICS, SuiteConfig, run_suite
from megatron_cod.analysis.tables import jsonable
from megatron_cod.analysis.usefulness import UsefulnessConfig
from megatron_cod.cli_errors import OneLineParser, cli_main
from megatron_cod.tracking import ToolRun, open_tool_run, tags, tracked_run

_HELP = {
    "jacobian": "per-layer Jacobian distance from the identity (exact or randomized)",
    "usefulness": "loss when each layer is replaced by its least-squares affine map",
    "causal": "skip matrix: how skipping layer s changes later layers' updates and the output",
    "permutation": "loss change when two layers swap places",
    "similarity": "Block Influence, angular distance and pruning curves",
    "logit-lens": "KL to the final distribution and top-1 agreement per residual state",
    "variance": "residual variance and norm profile across depth",
    "all": "every metric above, sharing one baseline forward",
}


# The paper's sample sizes (paper_code_spec.md section 2): 100 x 512 tokens for usefulness and the
# layer scores, 50 x 512 for the Jacobian.
PAPER_LAYER_SAMPLES = 100
PAPER_JACOBIAN_SAMPLES = 50
FAST_LAYER_SAMPLES = 8
FAST_JACOBIAN_SAMPLES = 2


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model").add_mutually_exclusive_group(required=True)
    model.add_argument("--hf-model", metavar="DIR", help="local Hugging Face causal-LM directory")
    model.add_argument("--checkpoint", metavar="DIR", help="megatron_cod checkpoint directory")
    data = parser.add_argument_group("evaluation data")
    data.add_argument("--data-prefix", help="Megatron indexed dataset prefix (PREFIX.bin / PREFIX.idx)")
    data.add_argument("--text-file", help="text file, one document per non-empty line")
    data.add_argument("--tokenizer", help="tokenizer.json (or a directory holding one) for --text-file")
    data.add_argument("--split", help="train,valid,test document weights (default 949,50,1)")
    data.add_argument("--split-part", choices=SPLIT_PARTS, help="which part to evaluate on (default valid)")
    data.add_argument(
        "--num-samples",
        type=_positive_int,
        help="sequences drawn (default: the largest per-metric maximum, i.e. 100); the usefulness "
        "fit uses all of them",
    )
    data.add_argument(
        "--seq-length",
        type=_positive_int,
        help="tokens per sequence (default: the checkpoint's training length, else 512)",
    )
    data.add_argument("--batch-size", type=_positive_int, default=8)
    data.add_argument("--seed", type=int, default=0, help="seeds sampling and the random probes")
    sampling = parser.add_argument_group(
        "sampling (every score gets a standard error over sequences; metrics stop once resolved)"
    )
    sampling.add_argument(
        "--target-se",
        type=_positive_float,
        help="stop a metric once every score it is judged by has a standard error <= this, in the "
        "score's units (default: each score's documented target, 0.01 for most; see the README)",
    )
    sampling.add_argument(
        "--max-samples",
        type=_positive_int,
        help="most sequences any metric uses (default: the paper's sizes, --loss-samples and "
        "--jacobian-samples)",
    )
    sampling.add_argument(
        "--loss-samples",
        type=_positive_int,
        default=PAPER_LAYER_SAMPLES,
        help="most sequences for the layer scores: usefulness, causal, permutation, similarity and "
        f"pruning, logit lens, variance (default {PAPER_LAYER_SAMPLES}, the paper's)",
    )
    sampling.add_argument(
        "--jacobian-samples",
        type=_positive_int,
        default=PAPER_JACOBIAN_SAMPLES,
        help=f"most sequences for the Jacobian (default {PAPER_JACOBIAN_SAMPLES}, the paper's)",
    )
    sampling.add_argument(
        "--min-samples",
        type=_positive_int,
        default=8,
        help="fewest sequences before a metric may stop (default 8; the Jacobian's is 2)",
    )
    sampling.add_argument(
        "--fast",
        action="store_true",
        help=f"a quick capped look: at most {FAST_LAYER_SAMPLES} sequences for the layer scores and "
        f"{FAST_JACOBIAN_SAMPLES} for the Jacobian, no early stop",
    )
    data.add_argument(
        "--cache-gb", type=float, default=2.0, help="memory for cached layer inputs (default 2)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="report directory (default depth_analysis/<model name>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    out.add_argument("--mlflow-run-id", help="log as a run nested under this (training) run")
    out.add_argument("--mlflow-experiment", default="depth-analysis", help="experiment for a top-level run")
    out.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def _jacobian_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("jacobian")
    group.add_argument("--jacobian-mode", choices=MODES, default="randomized")
    group.add_argument(
        "--num-probes", type=_positive_int, default=16, help="Rademacher probes (randomized mode)"
    )
    group.add_argument(
        "--jacobian-variants",
        default=",".join(VARIANTS),
        help="comma list of cross (the paper's, cross-token summed) and position (same-position)",
    )


def _usefulness_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("usefulness")
    group.add_argument(
        "--usefulness-threshold", type=float, default=1.1, help="loss ratio above which a layer is useful"
    )
    group.add_argument(
        "--held-out-fit", action="store_true", help="fit on half the sequences, evaluate on the rest"
    )


def _permutation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("permutation").add_argument(
        "--pairs", default="all", help="'all', 'adjacent' or a list like '0-1,2-5' (default all)"
    )


def _similarity_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("similarity").add_argument(
        "--no-pruning", action="store_true", help="skip the pruning curves"
    )


_EXTRA = {
    "jacobian": [_jacobian_args],
    "usefulness": [_usefulness_args],
    "permutation": [_permutation_args],
    "similarity": [_similarity_args],
    "all": [_jacobian_args, _usefulness_args, _permutation_args, _similarity_args],
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cod-analyze", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (*METRICS, "all"):
        command = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        _common(command)
        for add in _EXTRA.get(name, []):
            add(command)
    return parser


def sample_caps(args: argparse.Namespace) -> tuple[int, int]:
    """(most sequences for the layer scores, for the Jacobian) from the sampling flags."""
    if args.fast:
        return FAST_LAYER_SAMPLES, FAST_JACOBIAN_SAMPLES
    if args.max_samples is not None:
        return args.max_samples, min(args.max_samples, args.jacobian_samples)
    return args.loss_samples, args.jacobian_samples


def _suite_config(args: argparse.Namespace, num_layers: int) -> SuiteConfig:
    metrics = METRICS if args.command == "all" else (args.command,)
    loss_cap, jacobian_cap = sample_caps(args)
    kwargs: dict[str, Any] = {
        "metrics": metrics,
        "causal": CausalConfig(max_sequences=loss_cap),
        "logit_lens": LogitLensConfig(max_sequences=loss_cap),
        "variance": ResidualConfig(max_sequences=loss_cap),
        "similarity": SimilarityConfig(max_sequences=loss_cap, prune_max_sequences=loss_cap),
    }
    try:
        kwargs["sampling"] = SamplingConfig(
            adaptive=not args.fast,
            target_se=None if args.fast else args.target_se,
            min_samples=max(2, args.min_samples),
        )
        if hasattr(args, "jacobian_mode"):
            variants = tuple(v.strip() for v in args.jacobian_variants.split(",") if v.strip())
            kwargs["jacobian"] = JacobianConfig(
                mode=args.jacobian_mode,
                variants=variants,
                num_probes=args.num_probes,
                seed=args.seed,
                max_sequences=jacobian_cap,
            )
        if hasattr(args, "usefulness_threshold"):
            kwargs["usefulness"] = UsefulnessConfig(
                threshold=args.usefulness_threshold,
                held_out_fit=args.held_out_fit,
                eval_max_sequences=loss_cap,
            )
        if hasattr(args, "pairs"):
            pairs = tuple(parse_pairs(args.pairs, num_layers))
            kwargs["permutation"] = PermutationConfig(pairs=pairs, max_sequences=loss_cap)
        if hasattr(args, "no_pruning"):
            kwargs["similarity"] = SimilarityConfig(
                pruning=not args.no_pruning, max_sequences=loss_cap, prune_max_sequences=loss_cap
            )
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    return SuiteConfig(**kwargs)


def _data_config(args: argparse.Namespace, defaults: dict[str, Any]) -> DataConfig:
    given = {
        "data_prefix": args.data_prefix,
        "text_file": args.text_file,
        "tokenizer": args.tokenizer,
        "split": args.split,
        "split_part": args.split_part,
    }
    if args.data_prefix is None and args.text_file is None:
        if not defaults:
            raise AnalysisError(
                "give evaluation data: --data-prefix PREFIX or --text-file FILE --tokenizer JSON"
            )
        known = {k: v for k, v in defaults.items() if k in given}
        given = {**known, **{k: v for k, v in given.items() if v is not None}}
    fields = {k: v for k, v in given.items() if v is not None}
    seq_length = args.seq_length or defaults.get("seq_length", 512)
    num_samples = args.num_samples or max(sample_caps(args))
    return DataConfig(**fields, num_samples=num_samples, seq_length=seq_length, seed=args.seed)


def run(args: argparse.Namespace) -> Path:
    model_path = args.hf_model or args.checkpoint
    output_dir = Path(args.output_dir or Path("depth_analysis") / Path(model_path).resolve().name)
    check_output_dir(output_dir, args.overwrite)
    torch.manual_seed(args.seed)
    hf_logging.disable_progress_bar()  # our own bars report progress; errors stay one line
    loaded = load_model(args.hf_model, args.checkpoint)
    config = _suite_config(args, loaded.stack.num_layers)
    data_config = _data_config(args, loaded.data_defaults)
    if args.no_mlflow:
        return _analyze(args, loaded.stack, config, data_config, output_dir, None)
    # the run opens before the work, so a failure or a stop mid-way is recorded on it
    mlflow_run = open_tool_run(
        tags.KIND_ANALYSIS,
        f"depth-analysis-{args.command}-{output_dir.name}",
        args.mlflow_experiment,
        args.mlflow_run_id,
        loaded.parent_run_id,
    )
    with tracked_run(mlflow_run):
        described = {"arguments": vars(args), "model": loaded.stack.describe()}
        mlflow_run.log_params(flatten("", jsonable(described), {}))
        return _analyze(args, loaded.stack, config, data_config, output_dir, mlflow_run)


def _analyze(
    args: argparse.Namespace,
    stack: LayerStack,
    config: SuiteConfig,
    data_config: DataConfig,
    output_dir: Path,
    mlflow_run: ToolRun | None,
) -> Path:
    tokens, data_info = load_eval_tokens(data_config)
    try:
        evalset = EvalSet(stack, tokens, args.batch_size, cache_bytes=int(args.cache_gb * 2**30))
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    if (
        "jacobian" in config.metrics
        and config.jacobian.mode == "exact"
        and "position" in config.jacobian.variants
    ):
        print(
            f"note: exact same-position Jacobians cost seq_length x hidden = {tokens.shape[1] * stack.hidden_size} "
            "backward passes per batch and layer; the randomized mode estimates them",
            file=sys.stderr,
        )
    progress = NO_PROGRESS if args.quiet else RichProgress()
    results = run_suite(evalset, config, progress)
    meta = {
        "command": args.command,
        "arguments": vars(args),
        "model": stack.describe(),
        "data": {**data_info, "samples_used": results.samples},
        "sampling": {
            "target_se": config.sampling.target_se,
            "min_samples": config.sampling.min_samples,
            "max_samples": dict(zip(("layer_scores", "jacobian"), sample_caps(args))),
        },
        "suite_config": config,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    files = write_report(output_dir, results, meta, args.overwrite)
    print(f"wrote {output_dir}: {', '.join(files)}")
    if mlflow_run is not None:
        data = jsonable(meta["data"])
        data.pop("chunks", None)
        log_report(mlflow_run, output_dir, results, {"data": data})
        print(f"mlflow run {mlflow_run.run_id}")
    return output_dir


@cli_main("cod-analyze: ")
def main(argv: list[str]) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
