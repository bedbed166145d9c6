"""A CPU RNG-state tracker with the interface of megatron's CudaRNGStatesTracker.

Megatron forks named RNG streams (data-parallel, tensor-parallel, expert-parallel) around dropout
and weight init. Without CUDA there is only the CPU generator, so each named stream is a saved CPU
generator state that is swapped in for the duration of a fork.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MODEL_PARALLEL_RNG = "model-parallel-rng"
EXPERT_PARALLEL_RNG = "expert-parallel-rng"
DATA_PARALLEL_RNG = "data-parallel-rng"


class CpuRNGStatesTracker:
    """Named CPU RNG states: add / fork / get_states / set_states / reset, as megatron expects."""

    def __init__(self) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        if name not in self.states_:
            raise ValueError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def seed_model_parallel(
    seed: int, tracker: CpuRNGStatesTracker, tp_rank: int, ep_rank: int, etp_rank: int
) -> None:
    """Seed the default generator and the named streams with megatron's per-rank offsets.

    Mirrors model_parallel_cuda_manual_seed so a CPU run draws the same streams a GPU run would
    draw from its CUDA generator.
    """
    tracker.reset()
    torch.manual_seed(seed)
    tracker.add(DATA_PARALLEL_RNG, seed)
    tracker.add(MODEL_PARALLEL_RNG, seed + 2718 + tp_rank)
    tracker.add(EXPERT_PARALLEL_RNG, seed + 1024 + 100 * ep_rank + etp_rank)
