"""The experiment config: all sections, the checks that span sections, and dict/YAML conversion."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megatron_cod.config.checkpoint import CheckpointConfig
from megatron_cod.config.data import DataConfig
from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import coerce_section
from megatron_cod.config.logging_config import LoggingConfig
from megatron_cod.config.model import ModelConfig
from megatron_cod.config.optimizer import OptimizerConfig
from megatron_cod.config.parallel import ParallelConfig
from megatron_cod.config.telemetry import TelemetryConfig
from megatron_cod.config.train import TrainConfig
from megatron_cod.config.yaml_io import read_yaml_mapping, write_yaml_atomic


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    optim: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    telemetry: TelemetryConfig = dataclasses.field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), SECTIONS[f.name]):
                raise ConfigError(f"section '{f.name}' must be a {SECTIONS[f.name].__name__}")
        self._check_parallel_layout()
        self._check_schedule()

    def _check_parallel_layout(self) -> None:
        m, p = self.model, self.parallel
        tp, pp, ep = (
            p.tensor_model_parallel_size,
            p.pipeline_model_parallel_size,
            p.expert_model_parallel_size,
        )
        if m.num_attention_heads % tp:
            raise ConfigError(
                f"num-attention-heads ({m.num_attention_heads}) must be divisible by tensor-model-parallel-size ({tp})"
            )
        if m.effective_num_query_groups % tp:
            raise ConfigError(
                f"num-query-groups ({m.effective_num_query_groups}) must be divisible by "
                f"tensor-model-parallel-size ({tp})"
            )
        if m.effective_ffn_hidden_size % tp:
            raise ConfigError(
                f"ffn-hidden-size ({m.effective_ffn_hidden_size}) must be divisible by "
                f"tensor-model-parallel-size ({tp})"
            )
        if m.num_layers % pp:
            raise ConfigError(
                f"num-layers ({m.num_layers}) must be divisible by pipeline-model-parallel-size ({pp})"
            )
        if m.recompute_num_layers is not None and m.recompute_num_layers > m.num_layers // pp:
            raise ConfigError(
                f"recompute-num-layers ({m.recompute_num_layers}) exceeds the layers per pipeline stage "
                f"({m.num_layers // pp})"
            )
        if not m.is_moe and ep > 1:
            raise ConfigError(f"expert-model-parallel-size ({ep}) needs --num-experts")
        if m.num_experts is not None and m.num_experts % ep:  # is_moe
            raise ConfigError(
                f"num-experts ({m.num_experts}) is not divisible by expert-model-parallel-size ({ep})"
            )
        if m.is_moe and tp > 1 and not p.sequence_parallel:
            raise ConfigError("MoE with tensor parallelism needs --sequence-parallel")
        if p.sequence_parallel:
            if m.transformer_impl == "local":
                raise ConfigError(
                    "sequence parallel needs --transformer-impl transformer_engine: "
                    "megatron's local spec uses torch LayerNorm, which does not support it"
                )
            if m.seq_length % tp:
                raise ConfigError(
                    f"seq-length ({m.seq_length}) must be divisible by tensor-model-parallel-size ({tp}) "
                    "with --sequence-parallel"
                )

    def _check_schedule(self) -> None:
        o, t = self.optim, self.train
        if t.train_iters == 0:
            return
        if o.lr_warmup_iters >= t.train_iters:
            raise ConfigError(
                f"lr-warmup-iters ({o.lr_warmup_iters}) must be smaller than train-iters ({t.train_iters})"
            )
        decay = o.effective_lr_decay_iters(t.train_iters)
        if o.lr_warmup_iters >= decay:
            raise ConfigError(
                f"lr-warmup-iters ({o.lr_warmup_iters}) must be smaller than lr-decay-iters ({decay})"
            )

    def validate_world_size(self, world_size: int) -> int:
        """Check the layout and batch split for `world_size` ranks; return the data-parallel size."""
        dp = self.parallel.validate_world_size(world_size)
        t = self.train
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"global-batch-size ({t.global_batch_size}) must be divisible by micro-batch-size "
                f"({t.micro_batch_size}) x data-parallel size ({dp})"
            )
        return dp

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> ExperimentConfig:
        """Build from a nested mapping {section: {field: value}}; `source` names it in errors."""
        sections = coerce_config_dict(data, source=source)
        return cls(**{name: SECTIONS[name](**values) for name, values in sections.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> ExperimentConfig:
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        write_yaml_atomic(path, self.to_dict())

    def to_flat_dict(self) -> dict[str, str | int | float | bool]:
        """{"model.num_layers": 16, ...}; None becomes "None" and lists their comma-joined text."""
        flat: dict[str, str | int | float | bool] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if value is None:
                    value = "None"
                elif isinstance(value, list):
                    value = ",".join(value)
                flat[f"{section}.{key}"] = value
        return flat

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """A validated copy with dotted keys replaced, e.g. {"model.vocab_size": 50304}."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or key not in data[section]:
                raise ConfigError(f"unknown config key '{dotted}'")
            data[section][key] = value
        return ExperimentConfig(**{name: SECTIONS[name](**values) for name, values in data.items()})


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "optim": OptimizerConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "telemetry": TelemetryConfig,
}


def merge_sections(
    base: Mapping[str, Mapping[str, Any]], update: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Section-wise merge of two coerced nested mappings; `update` wins per field."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in update.items():
        merged.setdefault(name, {}).update(values)
    return merged


def coerce_config_dict(data: Mapping[str, Any], *, source: str) -> dict[str, dict[str, Any]]:
    """Check the section and key names of a possibly partial nested mapping and convert its values."""
    sections: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), list(SECTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown section '{name}' in {source}{hint}")
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"section '{name}' in {source} must be a mapping, got {type(values).__name__}")
        sections[name] = coerce_section(SECTIONS[name], values, where=f"section '{name}' of {source}")
    return sections
