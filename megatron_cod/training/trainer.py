"""The Trainer: megatron's model, optimizer and schedules driven by a loop that reads top to bottom.

    on_train_start
    while iteration < train_iters:
        on_step_start -> forward/backward (after_backward) -> before_update
                      -> optimizer step (unless a callback asked to skip it) -> on_step_end
        evaluate (on_evaluate)  if a callback asked for it
        save     (on_save)      if a callback asked for it
        stop                    if a callback asked for it
    on_train_end                (on_exception instead if anything raised)

Everything else (telemetry, throughput, console, tracking, plots, the schedule of evaluations and
saves, exit signals, the NaN guard) is a callback; see ``callbacks/__init__.py`` for their order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state as ps

from megatron_cod import platform
from megatron_cod.training.batches import GlobalBatchStream
from megatron_cod.training.callbacks.base import Callback, Control, StepEnd
from megatron_cod.training.checkpoint import load_checkpoint, save_checkpoint
from megatron_cod.training.data_setup import TrainingData
from megatron_cod.training.model_setup import build_training_model
from megatron_cod.training.optimizer import build_optimizer, build_scheduler
from megatron_cod.training.step import evaluate, num_microbatches, train_step


@dataclass
class TrainingOutcome:
    """What a finished run reports (losses are meaningful on the last pipeline stage)."""

    iteration: int
    run_dir: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    valid_losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_by: str | None = None
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


class Trainer:
    """One run's model, optimizer, scheduler and data position, and the loop over them."""

    def __init__(
        self,
        cfg: Any,
        ctx: platform.ParallelContext,
        data: TrainingData,
        config_yaml: str,
        model: list[Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.data = data
        self.config_yaml = config_yaml
        self.model: list[Any] = (
            model if model is not None else build_training_model(cfg, data.tokenizer.vocab_size)
        )
        self.optimizer = build_optimizer(
            self.model, cfg.optim, cfg.model.bf16, cfg.parallel.use_distributed_optimizer
        )
        first: Any = self.model[0]
        first.config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.train_iters)
        self.iteration = 0
        self.consumed = {"train": 0}
        self.mlflow_run_id: str | None = None
        self.layout = parallel_layout(cfg, ctx.world_size)
        self.dp_rank = ps.get_data_parallel_rank()
        self.n_micro = num_microbatches(
            cfg.train.global_batch_size, cfg.train.micro_batch_size, ctx.data_parallel_size
        )
        self.callbacks: list[Callback] = []
        # called half-way through a save, after the shards and before it becomes the latest (fault tests)
        self.save_midway: Callable[[], None] | None = None
        self.control = Control()
        self.outcome = TrainingOutcome(iteration=0, run_dir=None)

    # -- the pieces ---------------------------------------------------------------------------
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
        self.outcome.iteration = self.iteration

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

    def evaluate(self) -> float | None:
        """Validation loss on the same held-out batches every time (None without a validation split)."""
        t = self.cfg.train
        loss = None
        if self.data.datasets.get("valid") is not None and t.eval_iters:
            loss = evaluate(
                self.stream("valid", 0),
                self.model,
                t.eval_iters,
                self.n_micro,
                self.cfg.model.seq_length,
                t.micro_batch_size,
            )
        if loss is not None:
            self.outcome.valid_losses.append((self.iteration, loss))
        self._dispatch("on_evaluate", self.iteration, loss)
        return loss

    def save(self) -> Path:
        path = save_checkpoint(
            self.cfg.checkpoint.save,
            self.iteration,
            self.model,
            self.optimizer,
            self.scheduler,
            self.consumed,
            self.config_yaml,
            self.layout,
            tokenizer=self.data.tokenizer,
            mlflow_run_id=self.mlflow_run_id,
            midway=self.save_midway,
        )
        self.outcome.checkpoint = path
        self._dispatch("on_save", self.iteration, path)
        return path

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, callbacks: Sequence[Callback]) -> TrainingOutcome:
        """Train to cfg.train.train_iters (or until a callback stops it); every rank calls this."""
        self.callbacks = list(callbacks)
        try:
            self._dispatch("on_train_start")
            stream = self.stream("train", self.consumed["train"])
            while self.iteration < self.cfg.train.train_iters:
                self.control.reset()
                self.step(stream)
                if self.control.evaluate:
                    self.evaluate()
                if self.control.save:
                    self.save()
                if self.control.stop:
                    self.outcome.stopped_by = self.control.stop
                    break
            if self.iteration == 0 and self.cfg.checkpoint.save:
                self.save()  # a zero-step run still leaves its initial weights
            self._dispatch("on_train_end")
        except BaseException as exc:
            for callback in self.callbacks:
                callback.on_exception(self, exc)
            raise
        self.outcome.iteration = self.iteration
        return self.outcome

    def step(self, stream: GlobalBatchStream) -> StepEnd:
        """One optimizer step with its callbacks."""
        t = self.cfg.train
        iteration = self.iteration + 1
        self._dispatch("on_step_start", iteration)
        start = time.perf_counter()
        result = train_step(
            stream,
            self.model,
            self.optimizer,
            self.scheduler,
            self.n_micro,
            self.cfg.model.seq_length,
            t.micro_batch_size,
            after_backward=lambda: self._dispatch("after_backward", iteration),
            skip_update=lambda loss_total: self._before_update(iteration, loss_total),
        )
        elapsed = time.perf_counter() - start
        self.iteration = iteration
        self.consumed["train"] = stream.consumed_samples
        metrics = {"train/lr": result.lr, "train/iteration_ms": elapsed * 1e3}
        if result.loss is not None:
            metrics["train/lm_loss"] = result.loss
            self.outcome.losses.append((iteration, result.loss))
        if result.grad_norm is not None:
            metrics["train/grad_norm"] = result.grad_norm
        step = StepEnd(iteration, result, elapsed, result.tokens, t.global_batch_size, metrics)
        self._dispatch("on_step_end", step)
        return step

    def _before_update(self, iteration: int, loss_total: torch.Tensor) -> bool:
        self._dispatch("before_update", iteration, loss_total)
        return self.control.skip_update

    def _dispatch(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
