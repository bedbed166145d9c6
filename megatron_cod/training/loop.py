"""pretrain(): set up one run (process groups, data, tracker, Trainer) and drive it with its callbacks."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
import yaml

from megatron_cod import platform
from megatron_cod.tracking import NullTracker, Tracker, TrackingError, tags, tracked_run
from megatron_cod.training.callbacks import SIGTERM_STOP, default_callbacks
from megatron_cod.training.checkpoint import latest_iteration
from megatron_cod.training.console import ConsoleLog
from megatron_cod.training.data_setup import prepare_data
from megatron_cod.training.run_dir import make_run_dir
from megatron_cod.training.trainer import Trainer, TrainingOutcome, parallel_layout

__all__ = ["TrainingOutcome", "parallel_layout", "pretrain"]


def _check_save_dir(cfg: Any) -> None:
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    latest = latest_iteration(save) if save and load is None else None
    if latest is not None:
        raise FileExistsError(
            f"--save {save} already holds checkpoints (latest iteration {latest}); "
            f"pass --load {save} to resume or choose another --save"
        )


def _broadcast_from_rank(value: Any, src: int) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _share_run_id(tracker: Tracker | NullTracker, src: int) -> str | None:
    """The MLflow run id on every rank (rank 0 writes it into checkpoint metadata).

    On the logging rank this is the first need of the id: it waits (boundedly) for MLflow's open,
    which has overlapped with the model build. A configuration error the store reported is raised
    on every rank, so none is left waiting in a collective.
    """
    try:
        shared: tuple[str | None, str | None] = (tracker.run_id, None)
    except TrackingError as exc:
        shared = (None, str(exc))
    run_id, error = _broadcast_from_rank(shared, src)
    if error is not None:
        raise TrackingError(error)
    return run_id


def _open_tracker(cfg: Any, world_size: int, config_yaml: str) -> Tracker:
    run_dir = make_run_dir(cfg)
    tracker = Tracker.start(
        cfg.logging, run_dir, cfg.to_flat_dict(), tags=tags.training_run_tags(cfg, world_size)
    )
    (run_dir / "config.yaml").write_text(config_yaml)
    tracker.log_artifact(run_dir / "config.yaml")
    return tracker


def pretrain(cfg: Any, config_yaml: str | None = None, callbacks: list[Any] | None = None) -> TrainingOutcome:
    """Train per cfg on this process's share of the world (torchrun or a single process).

    The last rank logs (it holds the loss on the last pipeline stage); the others get a no-op
    tracker and a silent console. ``callbacks`` join the default ones
    before the console and tracking (see ``callbacks/__init__.py``).
    """
    p = cfg.parallel
    ctx = platform.initialize(
        p.tensor_model_parallel_size,
        p.pipeline_model_parallel_size,
        p.expert_model_parallel_size,
        seed=cfg.train.seed,
    )
    try:
        cfg.validate_world_size(ctx.world_size)
        _check_save_dir(cfg)
        config_yaml = config_yaml or yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        data = prepare_data(cfg)
        logging_rank = ctx.rank == ctx.world_size - 1
        tracker: Tracker | NullTracker = (
            _open_tracker(cfg, ctx.world_size, config_yaml) if logging_rank else NullTracker()
        )
        # SIGTERM: the exit-signal callback saves first; without it the tracker marks the run KILLED
        with tracked_run(tracker, handle_sigterm=not cfg.train.exit_signal_handler):
            trainer = Trainer(cfg, ctx, data, config_yaml)
            if cfg.checkpoint.load:
                trainer.load()
            # only now, after the model build and load, is the MLflow run id needed
            trainer.mlflow_run_id = _share_run_id(tracker, ctx.world_size - 1)
            console = ConsoleLog(cfg.train.train_iters, trainer.iteration, enabled=logging_rank)
            outcome = trainer.fit(default_callbacks(cfg, trainer.model, tracker, console, callbacks or ()))
            if outcome.stopped_by == SIGTERM_STOP:
                tracker.finish("KILLED")
        outcome.run_dir = tracker.run_dir
        outcome.run_id, outcome.tracking_uri = tracker.run_id, tracker.tracking_uri
        outcome.ui_hint = tracker.ui_hint()
    except BaseException:
        platform.teardown(barrier=False)
        raise
    platform.teardown()
    return outcome
