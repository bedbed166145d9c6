"""Named configs shipped with the package (YAML files in presets/, same layout as --config files)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.yaml_io import read_yaml_mapping

_PRESET_DIR = resources.files("megatron_cod.config") / "presets"


def available_presets() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _PRESET_DIR.iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """The raw nested mapping of preset `name` (validated only once merged into a full config)."""
    if name not in available_presets():
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(available_presets())}")
    with resources.as_file(_PRESET_DIR / f"{name}.yaml") as path:
        return read_yaml_mapping(path)
