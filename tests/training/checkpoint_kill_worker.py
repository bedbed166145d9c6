"""Saves iteration 1, perturbs the weights, then SIGKILLs itself half-way through saving iteration 2
(after the shards, before the checkpoint becomes the latest). Prints the parameter sum saved at 1."""

import os
import signal
import sys

import torch

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.training.checkpoint import save_checkpoint

LAYOUT = {"world_size": 1, "tp": 1, "pp": 1, "ep": 1, "distributed_optimizer": 0}
TINY = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16)


def parameter_sum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(root: str) -> None:
    platform.initialize(seed=3)
    model = build_gpt_model(TINY, 64, ParallelConfig())
    save_checkpoint(root, 1, [model], None, None, {"train": 1}, "{}\n", LAYOUT)
    print(repr(parameter_sum(model)), flush=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(
        root,
        2,
        [model],
        None,
        None,
        {"train": 2},
        "{}\n",
        LAYOUT,
        midway=lambda: os.kill(os.getpid(), signal.SIGKILL),
    )


if __name__ == "__main__":
    main(sys.argv[1])
