"""CPU RNG-state tracker: same interface and stream semantics as megatron's CUDA tracker."""

import pytest
import torch

from megatron_cod.platform.rng import (
    DATA_PARALLEL_RNG,
    EXPERT_PARALLEL_RNG,
    MODEL_PARALLEL_RNG,
    CpuRNGStatesTracker,
    seed_model_parallel,
)


def test_fork_draws_the_named_stream_and_restores_the_outer_one():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 123)
    torch.manual_seed(5)
    expected_outer = torch.rand(4)
    torch.manual_seed(5)
    with tracker.fork("a"):
        first = torch.rand(3)
    outer = torch.rand(4)
    with tracker.fork("a"):
        second = torch.rand(3)
    reference = torch.Generator().manual_seed(123)
    assert torch.equal(first, torch.rand(3, generator=reference))
    assert torch.equal(second, torch.rand(3, generator=reference))  # the stream continues
    assert torch.equal(outer, expected_outer)  # the default stream is untouched by forks


def test_duplicate_names_and_seeds_and_unknown_forks_raise():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="seed 1 already exists"):
        tracker.add("b", 1)
    with pytest.raises(ValueError, match="already exists"):
        tracker.add("a", 2)
    with pytest.raises(ValueError, match="is not added"):
        with tracker.fork("zzz"):
            pass


def test_states_round_trip():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 9)
    saved = tracker.get_states()
    with tracker.fork("a"):
        x = torch.rand(2)
    tracker.set_states(saved)
    with tracker.fork("a"):
        y = torch.rand(2)
    assert torch.equal(x, y)


def test_seed_offsets_follow_megatron():
    tracker = CpuRNGStatesTracker()
    seed_model_parallel(100, tracker, tp_rank=1, ep_rank=2, etp_rank=0)
    expected = {DATA_PARALLEL_RNG: 100, MODEL_PARALLEL_RNG: 100 + 2718 + 1,
                EXPERT_PARALLEL_RNG: 100 + 1024 + 200}
    for name, seed in expected.items():
        with tracker.fork(name):
            got = torch.rand(2)
        assert torch.equal(got, torch.rand(2, generator=torch.Generator().manual_seed(seed)))
