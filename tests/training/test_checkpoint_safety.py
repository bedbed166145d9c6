"""Crash-safe and untrusted-file-safe checkpoints: a kill, a failed write, a corrupt tracker, metadata or
shard never makes --load pick a partial checkpoint, and loading never runs pickled code."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_cod import platform
from megatron_cod.config import ParallelConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.training.checkpoint import (
    META_FILE,
    TRACKER_FILE,
    CheckpointError,
    iteration_dir,
    latest_iteration,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_checkpoint,
    save_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_kill_worker import LAYOUT, TINY, parameter_sum  # noqa: E402

WORKER = Path(__file__).parent / "checkpoint_kill_worker.py"
FAULT_WORKER = Path(__file__).parent / "checkpoint_fault_worker.py"


class Payload:
    """Unpickling this creates a directory: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=5)
    yield
    platform.teardown()


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    """A --save root with complete iterations 1 and 2 (different weights) and each one's parameter sum."""
    root = tmp_path_factory.mktemp("ckpt") / "save"
    model = build_gpt_model(TINY, 64, ParallelConfig())
    sums = {}
    for it in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(it))
        save_checkpoint(root, it, [model], None, None, {"train": it}, "{}\n", LAYOUT)
        sums[it] = parameter_sum(model)
    return root, sums


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp_path / "save"))


def _load(path: Path) -> tuple[int, float]:
    model = build_gpt_model(TINY, 64, ParallelConfig())
    iteration, _ = load_checkpoint(path, [model], None, None, LAYOUT, load_optim=False, load_rng=False)
    return iteration, parameter_sum(model)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_complete_checkpoints_load_with_their_weights(saved):
    root, sums = saved
    assert latest_iteration(root) == 2
    assert _load(root) == (2, sums[2])
    assert _load(iteration_dir(root, 1)) == (1, sums[1])


@pytest.mark.parametrize("tracker", ["", "2x", "\x00\x00\x00", "7\n"])
def test_a_corrupt_truncated_or_dangling_tracker_falls_back_with_a_warning(saved, tmp_path, capsys, tracker):
    root = _copy(saved[0], tmp_path)
    (root / TRACKER_FILE).write_text(tracker)
    assert latest_iteration(root) == 2
    warning = _one_line(capsys.readouterr().err)
    assert warning.startswith("warning: ") and str(root / TRACKER_FILE) in warning
    assert "iteration 2" in warning
    assert _load(root)[0] == 2


def test_a_corrupt_tracker_without_any_complete_checkpoint_is_an_error_naming_it(tmp_path):
    (tmp_path / TRACKER_FILE).write_text("garbage")
    with pytest.raises(CheckpointError, match=f"{tmp_path / TRACKER_FILE}: expected an iteration number"):
        latest_iteration(tmp_path)


def test_partial_directories_are_never_chosen_and_are_cleaned_by_the_next_save(saved, tmp_path, capsys):
    root = _copy(saved[0], tmp_path)
    (root / "iter_0000003.tmp").mkdir()  # killed while writing shards
    (root / "iter_0000003.tmp" / "__0_0.distcp").write_bytes(b"partial")
    partial = iteration_dir(root, 4)  # a directory without the metadata that marks a save complete
    partial.mkdir()
    (root / TRACKER_FILE).write_text("4\n")
    assert latest_iteration(root) == 2
    assert "iteration 4, whose checkpoint is incomplete" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        resolve_checkpoint(partial)
    model = build_gpt_model(TINY, 64, ParallelConfig())
    save_checkpoint(root, 5, [model], None, None, {"train": 5}, "{}\n", LAYOUT)
    assert "removing" in capsys.readouterr().err and not (root / "iter_0000003.tmp").exists()
    assert latest_iteration(root) == 5


def test_corrupt_metadata_is_an_error_naming_the_file(saved, tmp_path):
    root = _copy(saved[0], tmp_path)
    meta = iteration_dir(root, 2) / META_FILE
    meta.write_text(meta.read_text()[:20])  # truncated
    assert latest_iteration(root) == 1  # the tracker's iteration is no longer complete
    with pytest.raises(CheckpointError, match=f"{meta}: corrupt checkpoint metadata"):
        read_checkpoint_meta(iteration_dir(root, 2))


def test_a_truncated_shard_is_an_error_naming_the_checkpoint(saved, tmp_path):
    root = _copy(saved[0], tmp_path)
    ckpt = iteration_dir(root, 2)
    for shard in ckpt.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        _load(root)
    assert str(info.value).startswith(f"{ckpt}: cannot load the checkpoint") and "\n" not in str(info.value)


def test_a_failed_write_is_one_error_and_the_previous_checkpoint_stays_latest(saved, tmp_path):
    root = _copy(saved[0], tmp_path)
    model = build_gpt_model(TINY, 64, ParallelConfig())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # a full disk after 4 KiB per file
    try:
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(root, 3, [model], None, None, {"train": 3}, "{}\n", LAYOUT)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    message = str(info.value)
    assert message.startswith(f"--save {root}: writing iteration 3 failed") and "\n" not in message
    assert "the latest complete checkpoint is still iteration 2" in message
    assert latest_iteration(root) == 2 and not list(root.glob("iter_0000003*"))
    assert _load(root) == (2, saved[1][2])


def _session_survivors(session: int) -> list[str]:
    """'pid command' of each live process in a session (zombies are dead: only not yet reaped)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            state, _, _, sid = text[text.rindex(")") + 2 :].split()[:4]
            if int(sid) == session and state != "Z":
                found.append(f"{stat.parent.name} {text[text.index('(') : text.rindex(')') + 1]}")
    return found


def _run_killed(worker: Path, args: list[str], tmp_path: Path) -> tuple[str, list[str]]:
    """Run a worker that gets SIGKILLed in a save; (its stdout, processes of its session still alive
    5 s later). Files, not pipes: a helper process that outlived the worker would hold a pipe open.
    Its own session lets the test find and end every process it started."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(worker), *args],
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            code = proc.wait(timeout=300)
            deadline = time.monotonic() + 5
            while (survivors := _session_survivors(proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == -signal.SIGKILL, err.read_text()[-3000:]
    return out.read_text(), survivors


def test_killed_half_way_through_a_save_the_previous_checkpoint_is_loaded(world, tmp_path):
    root = tmp_path / "save"
    out, survivors = _run_killed(WORKER, [str(root)], tmp_path)
    sum_at_1 = float(out.strip())
    assert (root / "iter_0000002.tmp").is_dir()  # the shards of iteration 2 were written
    assert latest_iteration(root) == 1
    assert _load(root) == (1, sum_at_1)
    assert not survivors  # the forked shard writers end with the training


def test_killed_while_resaving_an_iteration_its_old_copy_stays_the_latest(world, tmp_path, capsys):
    root = tmp_path / "save"
    out, _ = _run_killed(FAULT_WORKER, ["resave", str(root)], tmp_path)
    sum_at_2 = float(out.strip())
    # killed between moving the old copy aside and renaming the new one in
    assert not iteration_dir(root, 2).exists() and (root / "iter_0000002.old").is_dir()
    assert latest_iteration(root) == 2
    assert _load(root) == (2, sum_at_2)
    model = build_gpt_model(TINY, 64, ParallelConfig())
    save_checkpoint(root, 3, [model], None, None, {"train": 3}, "{}\n", LAYOUT)  # the next save
    assert "restoring" in capsys.readouterr().err
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000001", "iter_0000002", "iter_0000003"]
    assert _load(iteration_dir(root, 2)) == (2, sum_at_2)


def test_a_training_killed_mid_write_leaves_no_writer_process(world, tmp_path):
    root = tmp_path / "save"
    out, survivors = _run_killed(FAULT_WORKER, ["mid-write", str(root)], tmp_path)
    assert out.split(), "no shard writer ran"  # the writers print their pids
    assert not survivors  # the writers (a minute left to write) die with the training
    assert latest_iteration(root) == 1


def _children() -> list[int]:
    """The live processes whose parent is this one."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            stat = (proc / "stat").read_text()
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(parent) == os.getpid() and state != "Z":
                found.append(int(proc.name))
    return found


def test_saves_keep_no_helper_process_between_them(world, tmp_path):
    """A preemption signals every process of the job: a helper kept between saves (megatron's own
    writer Manager, spawned at the first save) would die before the save the signal asks for."""
    before = _children()
    model = build_gpt_model(TINY, 64, ParallelConfig())
    save_checkpoint(tmp_path, 1, [model], None, None, {"train": 1}, "{}\n", LAYOUT)
    assert _children() == before
    save_checkpoint(tmp_path, 2, [model], None, None, {"train": 2}, "{}\n", LAYOUT)
    assert _children() == before
    assert latest_iteration(tmp_path) == 2
    assert _load(tmp_path)[0] == 2


def test_a_malicious_shard_index_is_refused_before_it_runs(saved, tmp_path):
    root = _copy(saved[0], tmp_path)
    marker = tmp_path / "pwned"
    (iteration_dir(root, 2) / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata: not a torch checkpoint index .*refused"):
        _load(root)
    assert not marker.exists()


def test_a_malicious_common_state_is_refused_even_when_the_environment_allows_pickles(
    saved, tmp_path, monkeypatch
):
    root = _copy(saved[0], tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"iteration": Payload(marker)}, iteration_dir(root, 2) / "common.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="cannot load the checkpoint"):
        _load(root)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after the load
