"""Experiment configuration: validated dataclass sections, YAML files, presets and Megatron-style flags."""

from megatron_cod.config.checkpoint import CheckpointConfig
from megatron_cod.config.cli import (
    add_config_arguments,
    build_parser,
    config_error_exit,
    config_from_args,
    load_config,
    parse_config,
)
from megatron_cod.config.data import DataConfig
from megatron_cod.config.errors import ConfigError
from megatron_cod.config.experiment import ExperimentConfig
from megatron_cod.config.logging_config import LoggingConfig
from megatron_cod.config.model import ModelConfig
from megatron_cod.config.optimizer import OptimizerConfig
from megatron_cod.config.parallel import ParallelConfig
from megatron_cod.config.presets import available_presets, preset_dict
from megatron_cod.config.telemetry import TelemetryConfig
from megatron_cod.config.train import TrainConfig

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "TelemetryConfig",
    "TrainConfig",
    "add_config_arguments",
    "available_presets",
    "build_parser",
    "config_error_exit",
    "config_from_args",
    "load_config",
    "parse_config",
    "preset_dict",
]
