"""Reading a YAML mapping with user-facing errors, and writing YAML atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from megatron_cod.config.errors import ConfigError
from megatron_cod.data.atomic import atomic_file


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: {})."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"cannot parse {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def write_yaml_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    with atomic_file(path) as handle:
        yaml.safe_dump(data, handle, sort_keys=False, default_flow_style=False)
