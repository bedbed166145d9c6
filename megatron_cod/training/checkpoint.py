"""Checkpoints with megatron's dist_checkpointing: model, optimizer, scheduler, RNG, data position.

Layout (Megatron-LM's): ``<save>/iter_0000042/`` plus ``<save>/latest_checkpointed_iteration.txt``.

Crash safety: a checkpoint is written to ``iter_XXXXXXX.tmp``; its metadata file (``cod_checkpoint.json``)
is written last, the directory is renamed only when every rank has finished, and the tracker file is
replaced atomically after that. A process killed at any point therefore leaves the previous complete
checkpoint as the latest. Re-saving an iteration that already has a checkpoint moves the old copy to
``iter_XXXXXXX.old`` just before the new one is renamed in; a kill between the two renames leaves the old
copy as that iteration's checkpoint, and the next save renames it back. A directory without the metadata
file (or a ``.tmp`` leftover) is never chosen; a missing or corrupt tracker falls back, with a warning, to
the newest complete iteration.

Untrusted files: loading never runs pickled code. torch.load is forced to ``weights_only`` for the whole
load (megatron's common state, sharded objects and torch's byte items), and torch's pickled ``.metadata``
index is first read by an unpickler that only builds torch's checkpoint-metadata classes.

torch_dist checkpoints reshard on load: a run saved with TP2 loads with TP1 or PP2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException

from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.platform.cpu_compat import cpu_compat_active, cpu_rng_tracker
from megatron_cod.training.model_setup import unwrap_gpt
from megatron_cod.training.writer_processes import writers_die_with_this_process

TRACKER_FILE = "latest_checkpointed_iteration.txt"
META_FILE = "cod_checkpoint.json"
DCP_INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards: a pickle
_ITER_DIR = re.compile(r"iter_(\d{7})")
_PARTIAL_DIR = re.compile(r"(iter_(\d{7}))\.(tmp|old)")
# what a failed read or write raises; torch's CheckpointException is a BaseException
_FAILURES = (Exception, CheckpointException)


class CheckpointError(Exception):
    """A checkpoint that cannot be read or written; the message names the file or directory."""


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def _warn(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"warning: {message}", file=sys.stderr)


def _is_complete(directory: Path, iteration: int) -> bool:
    """Whether a save reached its end: the metadata file, written last, names this iteration."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("iteration") == iteration


def _set_aside(final: Path) -> Path:
    """Where a re-save of the same iteration keeps the old copy while the new one is renamed in."""
    return final.with_name(final.name + ".old")


def complete_dir(root: str | Path, iteration: int) -> Path | None:
    """The complete checkpoint of ``iteration`` under a --save root: its iteration directory, or the
    old copy a re-save of that iteration set aside when it was killed before renaming the new one in."""
    final = iteration_dir(root, iteration)
    for candidate in (final, _set_aside(final)):
        if candidate.is_dir() and _is_complete(candidate, iteration):
            return candidate
    return None


def complete_iterations(root: str | Path) -> list[int]:
    """Iterations under a --save root whose save finished, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = set()
    for child in root.iterdir():
        match = _ITER_DIR.fullmatch(child.name.removesuffix(".old"))
        if not match or not child.is_dir():
            continue
        iteration = int(match.group(1))
        if complete_dir(root, iteration) is not None:
            found.add(iteration)
        elif child.suffix != ".old":
            _warn(f"{child}: incomplete checkpoint (no valid {META_FILE}); ignored")
    return sorted(found)


def _fallback(root: Path, problem: str) -> int:
    complete = complete_iterations(root)
    if not complete:
        raise CheckpointError(f"{problem}, and {root} holds no complete iteration directory")
    _warn(f"{problem}; using the newest complete checkpoint, iteration {complete[-1]}")
    return complete[-1]


def latest_iteration(root: str | Path) -> int | None:
    """The iteration --load resumes from: the tracker's when that checkpoint is complete, else the newest
    complete one (with a warning); None when the root holds no checkpoint at all."""
    root = Path(root)
    tracker = root / TRACKER_FILE
    if not tracker.exists():
        if not complete_iterations(root):
            return None
        return _fallback(root, f"{tracker} is missing")
    try:
        text = tracker.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return _fallback(root, f"{tracker}: cannot read the tracker file ({exc})")
    if not text.isdigit():
        return _fallback(root, f"{tracker}: expected an iteration number, found {text[:40]!r}")
    iteration = int(text)
    if complete_dir(root, iteration) is None:
        return _fallback(root, f"{tracker} names iteration {iteration}, whose checkpoint is incomplete")
    return iteration


def _remove_partial_saves(root: Path) -> None:
    """Leftovers of saves killed half-way (rank 0, before a new save): never loadable, only disk. An old
    copy set aside by a killed re-save is its iteration's checkpoint: it goes back in place instead."""
    for child in root.iterdir():
        match = _PARTIAL_DIR.fullmatch(child.name)
        if not match or not child.is_dir():
            continue
        final = root / match.group(1)
        if match.group(3) == "old" and complete_dir(root, int(match.group(2))) == child:
            _warn(f"restoring {final} from {child}, set aside by an interrupted save")
            shutil.rmtree(final, ignore_errors=True)  # a partial directory of that name, if any
            os.replace(child, final)
            continue
        _warn(f"removing {child}, left by an interrupted save")
        shutil.rmtree(child, ignore_errors=True)


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
    gpt: Any = unwrap_gpt(model[0])  # a GPTModel: megatron's sharded_state_dict is untyped
    model_sd = gpt.sharded_state_dict()
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


def _failure_reason(exc: BaseException) -> str:
    """The root cause of a failed save or load in one line: torch wraps each rank's failure (with its
    traceback) in a CheckpointException, whose own text is that traceback."""
    pending: list[BaseException] = [exc]
    seen: list[BaseException] = []
    cause: BaseException | None = None
    while pending:
        current = pending.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.strerror:
            where = f"{current.filename}: " if current.filename else ""
            return f"{where}{current.strerror}"
        failures = getattr(current, "failures", None)  # {rank: exception or (exception, stack)}
        if isinstance(failures, dict):
            for failure in failures.values():
                failure = failure[0] if isinstance(failure, tuple) else failure
                if isinstance(failure, BaseException):
                    pending.append(failure)
        elif cause is None:
            cause = current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    cause = cause or exc
    text = " ".join(str(cause).split())
    if not text:  # EOFError and friends: a file that ends too early
        text = f"{type(cause).__name__}: truncated or corrupt file"
    return text if len(text) <= 300 else text[:297] + "..."


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
    midway: Callable[[], None] | None = None,
) -> Path:
    """Write iteration ``iteration`` under ``root`` and make it the latest.

    ``midway`` runs on every rank after the shards are written and before the checkpoint becomes the
    latest (fault injection kills the process there). A failed write raises CheckpointError and leaves
    the previous checkpoint the latest.
    """
    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = dist.get_rank() == 0
    try:
        if rank0:
            root.mkdir(parents=True, exist_ok=True)
            _remove_partial_saves(root)
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
        with writers_die_with_this_process():
            dist_checkpointing.save(state, str(tmp))
        dist.barrier()
        if rank0:
            (tmp / "config.yaml").write_text(config_yaml)
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer")
            meta = {
                "iteration": iteration,
                "consumed_samples": consumed_samples,
                "parallel": parallel_layout,
                "format": "torch_dist",
                "mlflow_run_id": mlflow_run_id,
                "weights_only": optimizer is None,
            }
            write_text_atomic(tmp / META_FILE, json.dumps(meta, indent=2))  # last: marks it complete
    except _FAILURES as exc:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_iterations(root)
        kept = (
            f"the latest complete checkpoint is still iteration {previous[-1]}"
            if previous
            else "nothing saved"
        )
        raise CheckpointError(
            f"--save {root}: writing iteration {iteration} failed ({_failure_reason(exc)}); {kept}"
        ) from exc
    if midway is not None:
        midway()
    if rank0:
        _publish(root, tmp, final, iteration)
    dist.barrier()
    return final


def _publish(root: Path, tmp: Path, final: Path, iteration: int) -> None:
    """Rename the finished save into place, then point the tracker at it. A checkpoint of the same
    iteration already there is moved aside first and removed last, so a kill leaves a complete one."""
    old = _set_aside(final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    write_text_atomic(root / TRACKER_FILE, f"{iteration}\n")
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint metadata ({_failure_reason(exc)})"
        ) from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not JSON: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("iteration"), int):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (no integer 'iteration')")
    return meta


def resolve_checkpoint(path: str | Path) -> Path:
    """An iteration directory from either a --save root (its latest iteration) or an iter_* dir."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if _PARTIAL_DIR.fullmatch(path.name) or _ITER_DIR.fullmatch(path.name):
        raise CheckpointError(f"{path}: incomplete checkpoint (no {META_FILE}: its save did not finish)")
    iteration = latest_iteration(path)
    if iteration is None:
        raise FileNotFoundError(f"{path}: not a megatron_cod checkpoint (no {TRACKER_FILE} or {META_FILE})")
    return complete_dir(path, iteration) or iteration_dir(path, iteration)


class _DcpIndexUnpickler(pickle.Unpickler):
    """Builds only what torch's checkpoint index holds: its dataclasses and enums, torch.Size, dtypes,
    layouts. Anything else (os.system, a __reduce__ payload) is refused before it can run."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") and "." not in name:
            found = getattr(sys.modules.get(module), name, None)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if (module, name) in {("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def check_dcp_index(ckpt_dir: Path) -> None:
    """Refuse a shard index that would run code when torch unpickles it (torch reads it with pickle)."""
    import torch.distributed.checkpoint.filesystem  # noqa: F401  (the classes the index refers to)
    import torch.distributed.checkpoint.planner  # noqa: F401

    index = ckpt_dir / DCP_INDEX_FILE
    try:
        data = index.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{index}: cannot read the shard index ({_failure_reason(exc)})") from None
    try:
        _DcpIndexUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise CheckpointError(
            f"{index}: not a torch checkpoint index ({_failure_reason(exc)}); not loaded"
        ) from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside (megatron's and torch's own, even weights_only=False) to refuse
    pickled code: only tensors, primitive containers and registered safe classes load."""
    saved = {
        k: os.environ.pop(k, None)
        for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


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
    Unreadable, corrupt or unsafe files raise CheckpointError naming them.
    """
    ckpt_dir = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt_dir)
    iteration = meta["iteration"]
    if load_optim and meta.get("weights_only"):
        raise ValueError(f"{ckpt_dir} holds weights only (no optimizer state): load it with --no-load-optim")
    with_rng = load_rng and meta.get("parallel") == parallel_layout
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
    check_dcp_index(ckpt_dir)
    try:
        with weights_only_loads(), warnings.catch_warnings():
            # megatron calls torch's deprecated load_state_dict: noise on every CLI's stderr
            warnings.filterwarnings(
                "ignore", message=".*load_state_dict. is deprecated", category=FutureWarning
            )
            loaded = dist_checkpointing.load(state, str(ckpt_dir))
        unwrap_gpt(model[0]).load_state_dict(loaded["model"])
    except _FAILURES as exc:
        raise CheckpointError(f"{ckpt_dir}: cannot load the checkpoint ({_failure_reason(exc)})") from exc
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if with_rng:
        _set_rng_state(loaded["rng_state"])
    return int(loaded["iteration"]), dict(loaded["consumed_samples"])
