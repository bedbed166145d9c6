"""Field declarations shared by all config sections: CLI flag names, choices, bounds, type coercion.

Each section field carries its CLI flag, help text, allowed choices and numeric bound as dataclass
metadata, so the argparse parser, the YAML loader and the construction-time checks read one source.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from megatron_cod.config.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

POSITIVE = "positive"
NON_NEGATIVE = "non-negative"


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    choices: tuple[object, ...] | None = None,
    bound: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its CLI flag (default: `--` + name with dashes), choices and bound."""
    metadata = {"help": help, "flag": flag, "choices": choices, "bound": bound}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag(cls: type, name: str) -> str:
    """The CLI flag of field `name` of section `cls`, e.g. '--num-layers'."""
    custom = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("flag")
    return custom or "--" + name.replace("_", "-")


def label(cls: type, name: str) -> str:
    """How messages name a field: its flag without dashes, e.g. 'num-layers'."""
    return flag(cls, name)[2:]


def optional_inner(hint: Any) -> Any | None:
    """T for `T | None`, else None."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def describe(hint: Any) -> str:
    inner = optional_inner(hint)
    if inner is not None:
        return f"{describe(inner)} or None"
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def coerce(value: Any, hint: Any, *, from_text: bool) -> Any:
    """Convert `value` to the field type `hint` or raise ValueError.

    from_text: the value comes from a CLI flag or YAML (where PyYAML reads `3e-3` as a string),
    so numbers and None may be spelled as strings.
    """
    inner = optional_inner(hint)
    if inner is not None:
        if value is None or (from_text and isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, inner, from_text=from_text)
    if typing.get_origin(hint) is list:
        if from_text and isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        items = [
            str(v) if from_text and isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for v in value
        ]
        if not all(isinstance(v, str) for v in items):
            raise ValueError
        return items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError
    if hint is int:
        if from_text and isinstance(value, str):
            value = float(value) if any(c in value for c in ".eE") else int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if hint is float:
        if from_text and isinstance(value, str):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise TypeError(f"unsupported config field type {hint!r}")


def coerce_field(cls: type, name: str, value: Any, *, from_text: bool) -> Any:
    hint = type_hints(cls)[name]
    try:
        return coerce(value, hint, from_text=from_text)
    except (ValueError, OverflowError):
        raise ConfigError(f"{label(cls, name)} must be {describe(hint)}, got {value!r}") from None


def validate_fields(section: DataclassInstance) -> None:
    """Type-check each field (ints accepted for floats), then its declared choices and bound."""
    cls = type(section)
    for f in dataclasses.fields(cls):
        value = coerce_field(cls, f.name, getattr(section, f.name), from_text=False)
        object.__setattr__(section, f.name, value)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{label(cls, f.name)} must be one of {allowed}, got {value!r}")
        bound = f.metadata.get("bound")
        if bound == POSITIVE and not value > 0:
            raise ConfigError(f"{label(cls, f.name)} must be positive, got {value}")
        if bound == NON_NEGATIVE and not value >= 0:
            raise ConfigError(f"{label(cls, f.name)} must be non-negative, got {value}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{label(cls, f.name)} must be finite, got {value}")


def coerce_section(cls: type, data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check the keys of a partial section read from text (YAML, flags) and convert its values.

    Nothing is constructed: a layer (preset, file, flags) may be incomplete until merged.
    """
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")
        try:
            values[key] = coerce_field(cls, key, value, from_text=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {where})") from None
    return values
