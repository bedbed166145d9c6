"""Parallelism section: tensor, pipeline and expert parallel sizes."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import POSITIVE, option, validate_fields


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int = option(1, help="tensor-parallel ranks", bound=POSITIVE)
    pipeline_model_parallel_size: int = option(1, help="pipeline stages", bound=POSITIVE)
    expert_model_parallel_size: int = option(1, help="expert-parallel ranks", bound=POSITIVE)
    expert_tensor_parallel_size: int | None = option(
        None,
        help="tensor-parallel ranks inside each expert (None: tensor-model-parallel-size)",
        bound=POSITIVE,
    )
    sequence_parallel: bool = option(False, help="shard norms and dropout along the sequence (needs TP > 1)")
    use_distributed_optimizer: bool = option(False, help="shard optimizer state across data-parallel ranks")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError("--sequence-parallel needs tensor-model-parallel-size > 1")

    @property
    def effective_expert_tensor_parallel_size(self) -> int:
        if self.expert_tensor_parallel_size is not None:
            return self.expert_tensor_parallel_size
        return self.tensor_model_parallel_size

    def validate_world_size(self, world_size: int) -> int:
        """Check that `world_size` ranks can be laid out; return the data-parallel size."""
        tp, pp, ep = (
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.expert_model_parallel_size,
        )
        etp = self.effective_expert_tensor_parallel_size
        if world_size < 1:
            raise ConfigError(f"world size must be positive, got {world_size}")
        if world_size % (tp * pp):
            raise ConfigError(
                f"world size ({world_size}) is not divisible by tensor-model-parallel-size ({tp}) "
                f"x pipeline-model-parallel-size ({pp})"
            )
        per_stage = world_size // pp
        if per_stage % (etp * ep):
            experts = f"expert-model-parallel-size ({ep})"
            if etp != 1:
                experts = f"expert-tensor-parallel-size ({etp}) x {experts}"
            raise ConfigError(
                f"world size / pipeline-model-parallel-size ({per_stage}) is not divisible by {experts}"
            )
        return world_size // (tp * pp)
