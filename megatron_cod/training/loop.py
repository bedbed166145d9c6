"""pretrain(): the training loop on megatron pieces, with evaluation, checkpoints and tracking."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megatron_cod import platform
from megatron_cod.telemetry import DepthTelemetry
from megatron_cod.telemetry.plots import plot_values, write_depth_plots
from megatron_cod.tracking import Tracker, tags, tracked_run
from megatron_cod.tracking.lifecycle import RunTerminated
from megatron_cod.training.batches import GlobalBatchStream
from megatron_cod.training.checkpoint import latest_iteration, load_checkpoint, save_checkpoint
from megatron_cod.training.console import ConsoleLog
from megatron_cod.training.data_setup import TrainingData, prepare_data
from megatron_cod.training.exit_signal import ExitSignalHandler
from megatron_cod.training.model_setup import build_training_model
from megatron_cod.training.optimizer import build_optimizer, build_scheduler
from megatron_cod.training.run_dir import make_run_dir
from megatron_cod.training.step import evaluate, num_microbatches, train_step


@dataclass
class TrainingOutcome:
    """What a finished run reports (values are meaningful on the logging rank)."""

    iteration: int
    run_dir: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    valid_losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    ui_hint: str | None = None


def parallel_layout(cfg: Any, world_size: int) -> dict[str, int]:
    p = cfg.parallel
    return {
        "world_size": world_size,
        "tp": p.tensor_model_parallel_size,
        "pp": p.pipeline_model_parallel_size,
        "ep": p.expert_model_parallel_size,
        "distributed_optimizer": int(p.use_distributed_optimizer),
    }


def _check_save_dir(cfg: Any) -> None:
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    if save and load is None and latest_iteration(save) is not None:
        raise FileExistsError(
            f"--save {save} already holds checkpoints (latest iteration {latest_iteration(save)}); "
            f"pass --load {save} to resume or choose another --save"
        )


class Trainer:
    """Holds the pieces of one run; pretrain() drives it."""

    def __init__(self, cfg: Any, ctx: platform.ParallelContext, data: TrainingData) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.data = data
        self.model = build_training_model(cfg, data.tokenizer.vocab_size)
        self.optimizer = build_optimizer(
            self.model, cfg.optim, cfg.model.bf16, cfg.parallel.use_distributed_optimizer
        )
        self.model[0].config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.train_iters)
        self.iteration = 0
        self.consumed = {"train": 0}
        self.mlflow_run_id: str | None = None
        self.layout = parallel_layout(cfg, ctx.world_size)
        self.dp_rank = ps.get_data_parallel_rank()
        self.n_micro = num_microbatches(
            cfg.train.global_batch_size, cfg.train.micro_batch_size, ctx.data_parallel_size
        )

    def load(self) -> None:
        c = self.cfg.checkpoint
        self.iteration, self.consumed = load_checkpoint(
            c.load,
            self.model,
            self.optimizer,
            self.scheduler,
            self.layout,
            load_optim=c.load_optim,
            load_rng=c.load_rng,
        )
        if not c.load_optim:
            self.scheduler.num_steps = self.iteration

    def stream(self, split: str, consumed: int) -> GlobalBatchStream:
        t = self.cfg.train
        return GlobalBatchStream(
            self.data.datasets[split],
            t.global_batch_size,
            t.micro_batch_size,
            self.dp_rank,
            self.ctx.data_parallel_size,
            consumed,
        )

    def save(self, config_yaml: str) -> Path:
        return save_checkpoint(
            self.cfg.checkpoint.save,
            self.iteration,
            self.model,
            self.optimizer,
            self.scheduler,
            self.consumed,
            config_yaml,
            self.layout,
            tokenizer=self.data.tokenizer,
            mlflow_run_id=self.mlflow_run_id,
        )

    def evaluate(self) -> float | None:
        if self.data.datasets.get("valid") is None or self.cfg.train.eval_iters == 0:
            return None
        t = self.cfg.train
        # the same validation batches every time, so the curve compares like with like
        return evaluate(
            self.stream("valid", 0),
            self.model,
            t.eval_iters,
            self.n_micro,
            self.cfg.model.seq_length,
            t.micro_batch_size,
        )


def pretrain(cfg: Any, config_yaml: str | None = None) -> TrainingOutcome:
    """Train per cfg on this process's share of the world (torchrun or a single process)."""
    p = cfg.parallel
    ctx = platform.initialize(
        p.tensor_model_parallel_size,
        p.pipeline_model_parallel_size,
        p.expert_model_parallel_size,
        seed=cfg.train.seed,
    )
    try:
        cfg.parallel.validate_world_size(ctx.world_size)
        _check_save_dir(cfg)
        config_yaml = (
            config_yaml if config_yaml is not None else yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        )
        data = prepare_data(cfg)
        trainer = Trainer(cfg, ctx, data)
        if cfg.checkpoint.load:
            trainer.load()
        logging_rank = ctx.rank == ctx.world_size - 1
        run_dir = make_run_dir(cfg) if logging_rank else None
        outcome = TrainingOutcome(iteration=trainer.iteration, run_dir=run_dir)
        telemetry = DepthTelemetry(trainer.model, cfg.telemetry)
        tracker = None
        if logging_rank:
            tracker = Tracker.start(
                cfg.logging, run_dir, cfg.to_flat_dict(), tags=tags.training_run_tags(cfg, ctx.world_size)
            )
            outcome.run_id, outcome.tracking_uri = tracker.run_id, tracker.tracking_uri
            outcome.ui_hint = tracker.ui_hint()
            (run_dir / "config.yaml").write_text(config_yaml)
            tracker.log_artifact(run_dir / "config.yaml")
        # rank 0 writes checkpoint metadata; the run id lives on the logging rank
        trainer.mlflow_run_id = _broadcast_from_rank(outcome.run_id, ctx.world_size - 1)
        exit_signal = ExitSignalHandler() if cfg.train.exit_signal_handler else None
        run_guard = (
            tracked_run(tracker, handle_sigterm=exit_signal is None) if tracker else contextlib.nullcontext()
        )
        try:
            with run_guard:
                _train(cfg, trainer, telemetry, tracker, outcome, config_yaml, logging_rank, exit_signal)
        finally:
            telemetry.remove()
            if exit_signal is not None:
                exit_signal.restore()
    except BaseException:
        platform.teardown(barrier=False)
        raise
    platform.teardown()
    return outcome


def _train(
    cfg: Any,
    trainer: Trainer,
    telemetry,
    tracker,
    outcome: TrainingOutcome,
    config_yaml: str,
    logging_rank: bool,
    exit_signal: ExitSignalHandler | None,
) -> None:
    t = cfg.train
    console = ConsoleLog(t.train_iters, trainer.iteration, enabled=logging_rank)
    stream = trainer.stream("train", trainer.consumed["train"])
    seq = cfg.model.seq_length
    history: list[tuple[int, dict[str, float]]] = []
    while trainer.iteration < t.train_iters:
        iteration = trainer.iteration + 1
        telemetry.begin_step(iteration)
        start = time.perf_counter()
        result = train_step(
            stream,
            trainer.model,
            trainer.optimizer,
            trainer.scheduler,
            trainer.n_micro,
            seq,
            t.micro_batch_size,
            after_backward=lambda: telemetry.after_backward(iteration),
        )
        depth_metrics = telemetry.end_step(iteration)
        elapsed = time.perf_counter() - start
        trainer.iteration = iteration
        trainer.consumed["train"] = stream.consumed_samples
        if logging_rank:
            tokens_per_s = result.tokens / elapsed
            outcome.losses.append((iteration, result.loss))
            metrics = {
                "train/lm_loss": result.loss,
                "train/lr": result.lr,
                "train/tokens_per_s": tokens_per_s,
                "train/iteration_ms": elapsed * 1e3,
            }
            if result.grad_norm is not None:
                metrics["train/grad_norm"] = result.grad_norm
            if depth_metrics:
                metrics.update(depth_metrics)
                history.append((iteration, plot_values(depth_metrics)))
            if iteration % t.log_interval == 0 or iteration == t.train_iters:
                console.iteration(
                    iteration,
                    stream.consumed_samples,
                    elapsed * 1e3,
                    result.lr,
                    t.global_batch_size,
                    result.loss,
                    result.grad_norm,
                    tokens_per_s,
                    result.skipped,
                )
            tracker.log_metrics(metrics, step=iteration)
        last = iteration == t.train_iters
        stop = _stop_reason(t, iteration, exit_signal)
        if t.eval_interval and (iteration % t.eval_interval == 0 or last):
            _evaluate(trainer, tracker, console, outcome, iteration, logging_rank)
        if logging_rank and history and (last or stop or iteration % t.eval_interval == 0):
            _log_depth_plots(history, tracker, outcome)
        interval_save = cfg.checkpoint.save_interval and iteration % cfg.checkpoint.save_interval == 0
        if cfg.checkpoint.save and (last or interval_save or stop):
            _checkpoint(trainer, tracker, console, outcome, config_yaml)
        if stop:
            console.line(f" exiting after iteration {iteration}: {stop}")
            outcome.iteration = iteration
            if stop == "SIGTERM":
                raise RunTerminated(signal.SIGTERM)
            break
    if trainer.iteration == 0 and cfg.checkpoint.save:
        _checkpoint(trainer, tracker, console, outcome, config_yaml)
    outcome.iteration = trainer.iteration
    if tracker is not None:
        # FINISHED alone does not say the schedule completed: --exit-interval also ends cleanly
        tracker.set_tags({tags.ITERATION: str(trainer.iteration)})


def _broadcast_from_rank(value: Any, src: int) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _stop_reason(t: Any, iteration: int, exit_signal: ExitSignalHandler | None) -> str | None:
    if t.exit_interval and iteration % t.exit_interval == 0 and iteration < t.train_iters:
        return f"--exit-interval {t.exit_interval}"
    if exit_signal is not None and exit_signal.any_rank_received():
        return "SIGTERM"
    return None


def _evaluate(
    trainer: Trainer,
    tracker,
    console: ConsoleLog,
    outcome: TrainingOutcome,
    iteration: int,
    logging_rank: bool,
) -> None:
    loss = trainer.evaluate()
    if logging_rank and loss is not None:
        ppl = math.exp(min(loss, 50.0))
        outcome.valid_losses.append((iteration, loss))
        console.evaluation(iteration, loss, ppl)
        tracker.log_metrics({"valid/lm_loss": loss, "valid/ppl": ppl}, step=iteration)


def _log_depth_plots(history: list, tracker, outcome: TrainingOutcome) -> None:
    for png in write_depth_plots(history, outcome.run_dir / "plots"):
        tracker.log_artifact(png, artifact_path="plots")


def _checkpoint(
    trainer: Trainer, tracker, console: ConsoleLog, outcome: TrainingOutcome, config_yaml: str
) -> None:
    path = trainer.save(config_yaml)
    outcome.checkpoint = path
    console.line(f" saved checkpoint at iteration {trainer.iteration} to {path}")
    if tracker is not None:
        tracker.set_tags(
            {"checkpoint.latest": str(path.resolve()), "checkpoint.iteration": str(trainer.iteration)}
        )
