"""A sweep file, its members and seeds, and every member's full config, validated before training.

description: Depth sweep at CPU scale
base: cpu_dense_deep            # a preset name, or base_config: path/relative/to/this/file.yaml
expected_minutes: 30            # what this sweep takes on the machine its scale names
set: {train.train_iters: 150}   # overrides for every member
grid: {model.num_layers: [4, 8, 16]}        # or
members: [{id: baseline, set: {...}}, ...]  # an explicit list
seeds: 3                        # or [1234, 4321, 99]; each member runs once per seed
analyze_args: [variance, --num-samples, "16"]  # cod-analyze arguments for --analyze
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.grouping import short_name
from megatron_cod.config import ConfigError, ExperimentConfig, available_presets, preset_dict
from megatron_cod.config.experiment import coerce_config_dict, merge_sections

SWEEP_KEYS = (
    "description",
    "base",
    "base_config",
    "expected_minutes",
    "scale",
    "set",
    "grid",
    "members",
    "seeds",
    "analyze_args",
)
DEFAULT_ANALYZE_ARGS = ["all", "--num-samples", "16", "--loss-samples", "8", "--jacobian-samples", "2"]


def shipped_sweeps() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("megatron_cod.sweep").joinpath("sweeps").iterdir()
        if p.name.endswith(".yaml")
    )


def _nested(overrides: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, dot, key = str(dotted).partition(".")
        if not dot or not key:
            raise CompareError(f"{where}: key {dotted!r} must be section.key, e.g. model.num_layers")
        nested.setdefault(section, {})[key] = value
    return nested


@dataclass(frozen=True)
class Member:
    id: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class MemberRun:
    """One training run of a sweep: a member at one seed, with its validated config."""

    member: Member
    index: int  # 1-based position of the member
    seed: int
    seed_index: int  # 1-based
    config: ExperimentConfig


@dataclass
class Sweep:
    name: str
    source: str
    base: str | None
    base_config: Path | None
    members: list[Member]
    common: dict[str, Any] = field(default_factory=dict)
    seeds: int | list[int] | None = None
    description: str = ""
    expected_minutes: float | None = None
    analyze_args: list[str] = field(default_factory=lambda: list(DEFAULT_ANALYZE_ARGS))

    def base_layers(self) -> list[dict[str, dict[str, Any]]]:
        layers = []
        if self.base:
            layers.append(coerce_config_dict(preset_dict(self.base), source=f"preset {self.base}"))
        if self.base_config:
            data = yaml.safe_load(self.base_config.read_text()) or {}
            layers.append(coerce_config_dict(data, source=str(self.base_config)))
        return layers

    def member_config(self, member: Member, extra: Mapping[str, Any]) -> ExperimentConfig:
        where = f"sweep {self.name}, member {member.id}"
        try:
            layers = self.base_layers()
            for overrides, what in ((self.common, "set"), (member.overrides, "member"), (extra, "--set")):
                layers.append(coerce_config_dict(_nested(overrides, where), source=f"its {what} overrides"))
            return ExperimentConfig.from_dict(functools.reduce(merge_sections, layers, {}), source=where)
        except ConfigError as exc:
            raise CompareError(f"{where}: {' '.join(str(exc).split())}") from None

    def seed_list(self, config: ExperimentConfig, override: int | None) -> list[int]:
        seeds = override if override is not None else self.seeds
        if seeds is None:
            return [config.train.seed]
        if isinstance(seeds, int):
            if seeds < 1:
                raise CompareError(f"--seeds must be at least 1, got {seeds}")
            return [config.train.seed + i for i in range(seeds)]
        if len(set(seeds)) != len(seeds):
            raise CompareError(f"{self.source}: seeds {seeds} list a seed twice")
        return list(seeds)

    def expand(self, extra: Mapping[str, Any], seeds: int | None = None) -> list[MemberRun]:
        """Every (member, seed) with its full config; any invalid member fails here, before training."""
        runs = []
        for index, member in enumerate(self.members, 1):
            config = self.member_config(member, extra)
            seed_list = self.seed_list(config, seeds)
            for seed_index, seed in enumerate(seed_list, 1):
                runs.append(
                    MemberRun(member, index, seed, seed_index, config.with_overrides({"train.seed": seed}))
                )
        return runs


def _member_id(values: Mapping[str, Any]) -> str:
    text = "_".join(f"{short_name(k)}{v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)


def _grid(grid: Any, source: str) -> list[Member]:
    if not isinstance(grid, Mapping) or not grid:
        raise CompareError(f"{source}: grid must be a mapping of config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CompareError(f"{source}: grid key {key!r} needs a non-empty list of values")
    keys = list(grid)
    return [
        Member(_member_id(dict(zip(keys, combo))), dict(zip(keys, combo)))
        for combo in itertools.product(*grid.values())
    ]


def _members(items: Any, source: str) -> list[Member]:
    if not isinstance(items, list) or not items:
        raise CompareError(f"{source}: members must be a non-empty list")
    members = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, Mapping) or "id" not in item:
            raise CompareError(f"{source}: member {i} needs an id")
        unknown = set(item) - {"id", "set"}
        if unknown:
            raise CompareError(
                f"{source}: member {item['id']}: unknown key(s) {sorted(unknown)} (use id and set)"
            )
        members.append(Member(str(item["id"]), dict(item.get("set") or {})))
    return members


def _seeds(value: Any, source: str) -> int | list[int] | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise CompareError(f"{source}: seeds must be a count or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise CompareError(f"{source}: seeds must be at least 1, got {value}")
        return value
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise CompareError(f"{source}: seeds must be a non-empty list of non-negative integers")
    if len(set(value)) != len(value):
        raise CompareError(f"{source}: seeds {value} list a seed twice")
    return list(value)


def load_sweep(name_or_path: str) -> Sweep:
    """A sweep from a YAML file path, or a shipped sweep by name."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = shipped_sweeps()
        if name_or_path not in shipped:
            close = difflib.get_close_matches(name_or_path, shipped, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (shipped: {', '.join(shipped)})"
            raise CompareError(f"no sweep file or shipped sweep named {name_or_path!r}{hint}")
        path = Path(str(resources.files("megatron_cod.sweep").joinpath("sweeps", f"{name_or_path}.yaml")))
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CompareError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, Mapping):
        raise CompareError(f"{source}: a sweep file is a mapping")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SWEEP_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CompareError(f"{source}: unknown sweep key {unknown[0]!r}{hint}")
    if ("grid" in data) == ("members" in data):
        raise CompareError(f"{source}: give exactly one of grid and members")
    base = data.get("base")
    if base is not None and base not in available_presets():
        raise CompareError(f"{source}: base {base!r} is not a preset ({', '.join(available_presets())})")
    base_config = (path.parent / data["base_config"]).resolve() if data.get("base_config") else None
    if base_config is not None and not base_config.is_file():
        raise CompareError(f"{source}: base_config {base_config} does not exist")
    members = _grid(data["grid"], source) if "grid" in data else _members(data["members"], source)
    ids = [m.id for m in members]
    if len(set(ids)) != len(ids):
        raise CompareError(f"{source}: member ids repeat: {ids}")
    analyze = data.get("analyze_args", DEFAULT_ANALYZE_ARGS)
    return Sweep(
        name=path.stem,
        source=source,
        base=base,
        base_config=base_config,
        members=members,
        common=dict(data.get("set") or {}),
        seeds=_seeds(data.get("seeds"), source),
        description=str(data.get("description", "")),
        expected_minutes=data.get("expected_minutes"),
        analyze_args=[str(a) for a in analyze],
    )
