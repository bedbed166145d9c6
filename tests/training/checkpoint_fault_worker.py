"""Saves that die at awkward moments (run as a script by test_checkpoint_safety.py).

``resave ROOT``: saves iteration 1, then iteration 2 (prints its parameter sum), perturbs the weights and
saves iteration 2 again, SIGKILLed right after the old copy of iteration 2 is moved aside and before the
new one is renamed in.
``mid-write ROOT``: saves iteration 1, then during the save of iteration 2 one of megatron's forked shard
writers SIGKILLs this process and goes on writing for a minute (a slow disk); prints the writer's pid.
"""

import os
import signal
import sys
import time

import torch
from checkpoint_kill_worker import LAYOUT, TINY, parameter_sum

from megatron_cod import platform
from megatron_cod.config import ParallelConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.training.checkpoint import save_checkpoint


def _perturb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def _kill_after_setting_aside() -> None:
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".old"):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def _writer_kills_its_parent() -> None:
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    real_write = FileSystemWriterAsync.write_preloaded_data
    saver = os.getpid()

    def write(*args, **kwargs):
        print(os.getpid(), flush=True)
        os.kill(saver, signal.SIGKILL)
        time.sleep(60)
        return real_write(*args, **kwargs)

    FileSystemWriterAsync.write_preloaded_data = staticmethod(write)


def main(mode: str, root: str) -> None:
    platform.initialize(seed=3)
    model = build_gpt_model(TINY, 64, ParallelConfig())
    save_checkpoint(root, 1, [model], None, None, {"train": 1}, "{}\n", LAYOUT)
    _perturb(model)
    if mode == "resave":
        save_checkpoint(root, 2, [model], None, None, {"train": 2}, "{}\n", LAYOUT)
        print(repr(parameter_sum(model)), flush=True)
        _perturb(model)
        _kill_after_setting_aside()
    else:
        _writer_kills_its_parent()
    save_checkpoint(root, 2, [model], None, None, {"train": 2}, "{}\n", LAYOUT)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
