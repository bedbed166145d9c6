"""Platform layer: distributed init, the CPU compatibility layer, seeding, teardown.

One code path: on a GPU host this is NCCL + megatron-core untouched; without CUDA it is gloo plus
the CPU layer in ``cpu_compat`` (installed only then).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_cod.platform.cpu_compat import (
    cpu_compat_active,
    cpu_rng_tracker,
    enable_cpu_compat,
    patch_missing_te_symbols,
)
from megatron_cod.platform.distributed import destroy_process_group, init_process_group
from megatron_cod.platform.rng import seed_model_parallel


@dataclass(frozen=True)
class ParallelContext:
    rank: int
    world_size: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    expert_model_parallel_size: int
    data_parallel_size: int
    device: torch.device


def device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def seed_everything(seed: int) -> None:
    """Seed python/numpy/torch and megatron's named RNG streams with per-rank offsets."""
    import random

    import numpy as np
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    if cpu_compat_active():
        seed_model_parallel(
            seed,
            cpu_rng_tracker(),
            ps.get_tensor_model_parallel_rank(),
            ps.get_expert_model_parallel_rank(),
            ps.get_expert_tensor_parallel_rank(),
        )
    else:
        torch.manual_seed(seed)
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    seed: int = 1234,
    virtual_pipeline_model_parallel_size: int | None = None,
) -> ParallelContext:
    """Process group, CPU layer (if no CUDA), megatron's parallel_state, and seeds."""
    from megatron.core import parallel_state as ps

    enable_cpu_compat()
    patch_missing_te_symbols()
    rank, world = init_process_group()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
    )
    seed_everything(seed)
    return ParallelContext(
        rank=rank,
        world_size=world,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        data_parallel_size=ps.get_data_parallel_world_size(),
        device=device(),
    )


def teardown(barrier: bool = True) -> None:
    """Destroy megatron's groups and the process group (idempotent); no barrier after an error."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    destroy_process_group(barrier)


__all__ = [
    "ParallelContext",
    "initialize",
    "teardown",
    "seed_everything",
    "device",
    "enable_cpu_compat",
    "cpu_compat_active",
]
