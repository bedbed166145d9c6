"""Checkpoints with megatron's dist_checkpointing: model, optimizer, scheduler, RNG, data position.

Layout (Megatron-LM's): ``<save>/iter_0000042/`` plus ``<save>/latest_checkpointed_iteration.txt``.
A checkpoint is written to ``iter_XXXXXXX.tmp`` and renamed only when every rank has finished, and
the tracker file is replaced atomically after that, so an interrupted save never looks complete.
torch_dist checkpoints reshard on load: a run saved with TP2 loads with TP1 or PP2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_cod.platform.cpu_compat import cpu_compat_active, cpu_rng_tracker
from megatron_cod.training.model_setup import unwrap_gpt

TRACKER_FILE = "latest_checkpointed_iteration.txt"
META_FILE = "cod_checkpoint.json"


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: str | Path) -> int | None:
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{tracker}: expected an iteration number, found {text!r}")
    return int(text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cpu_compat_active():
        state["tracker"] = cpu_rng_tracker().get_states()
    else:
        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if cpu_compat_active():
        cpu_rng_tracker().set_states(state["tracker"])
    else:
        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(
    model: list[torch.nn.Module],
    optimizer,
    scheduler,
    iteration: int,
    consumed_samples: dict[str, int],
    with_optimizer: bool,
    with_rng: bool,
    is_loading: bool,
) -> dict[str, Any]:
    if len(model) != 1:
        raise ValueError("virtual pipeline stages are not supported by megatron_cod checkpoints")
    model_sd = unwrap_gpt(model[0]).sharded_state_dict()
    state: dict[str, Any] = {
        "model": model_sd,
        "iteration": iteration,
        "consumed_samples": dict(consumed_samples),
    }
    if with_optimizer:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        rank, world = dist.get_rank(), dist.get_world_size()
        state["rng_state"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


def save_checkpoint(
    root: str | Path,
    iteration: int,
    model: list[torch.nn.Module],
    optimizer,
    scheduler,
    consumed_samples: dict[str, int],
    config_yaml: str,
    parallel_layout: dict[str, int],
    tokenizer=None,
    mlflow_run_id: str | None = None,
) -> Path:
    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = dist.get_rank() == 0
    if rank0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    # optimizer None: a weights-only checkpoint (cod-import), loaded with --no-load-optim
    state = _sharded_state(
        model,
        optimizer,
        scheduler,
        iteration,
        consumed_samples,
        with_optimizer=optimizer is not None,
        with_rng=True,
        is_loading=False,
    )
    dist_checkpointing.save(state, str(tmp))
    dist.barrier()
    if rank0:
        (tmp / "config.yaml").write_text(config_yaml)
        meta = {
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "parallel": parallel_layout,
            "format": "torch_dist",
            "mlflow_run_id": mlflow_run_id,
            "weights_only": optimizer is None,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / TRACKER_FILE, f"{iteration}\n")
    dist.barrier()
    return final


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / META_FILE).read_text())


def resolve_checkpoint(path: str | Path) -> Path:
    """An iteration directory from either a --save root (its latest iteration) or an iter_* dir."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    iteration = latest_iteration(path)
    if iteration is None:
        raise FileNotFoundError(f"{path}: not a megatron_cod checkpoint (no {TRACKER_FILE} or {META_FILE})")
    return iteration_dir(path, iteration)


def load_checkpoint(
    path: str | Path,
    model: list[torch.nn.Module],
    optimizer,
    scheduler,
    parallel_layout: dict[str, int],
    load_optim: bool = True,
    load_rng: bool = True,
) -> tuple[int, dict[str, int]]:
    """Load a checkpoint (a --save root's latest, or one iter_* dir); returns (iteration, consumed).

    RNG states are per rank, so they are restored only when the parallel layout is unchanged.
    """
    ckpt_dir = resolve_checkpoint(path)
    iteration = read_checkpoint_meta(ckpt_dir)["iteration"]
    meta = read_checkpoint_meta(ckpt_dir)
    if load_optim and meta.get("weights_only"):
        raise ValueError(f"{ckpt_dir} holds weights only (no optimizer state): load it with --no-load-optim")
    with_rng = load_rng and meta["parallel"] == parallel_layout
    state = _sharded_state(
        model,
        optimizer,
        scheduler,
        iteration,
        {},
        with_optimizer=load_optim,
        with_rng=with_rng,
        is_loading=True,
    )
    loaded = dist_checkpointing.load(state, str(ckpt_dir))
    unwrap_gpt(model[0]).load_state_dict(loaded["model"])
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if with_rng:
        _set_rng_state(loaded["rng_state"])
    return int(loaded["iteration"]), dict(loaded["consumed_samples"])
