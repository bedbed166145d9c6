"""Megatron-style command-line flags for the experiment config.

Precedence, lowest first: dataclass defaults < --preset < --config YAML < flags given explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.experiment import SECTIONS, ExperimentConfig, coerce_config_dict, merge_sections
from megatron_cod.config.fields import coerce_field, flag, optional_inner, type_hints
from megatron_cod.config.presets import available_presets, preset_dict
from megatron_cod.config.yaml_io import read_yaml_mapping

_METAVARS = {int: "N", float: "X", str: "STR"}
_PRECEDENCE = "Precedence: dataclass defaults < --preset < --config YAML < explicit flags."


class _OneLineErrorParser(argparse.ArgumentParser):
    """Turns argparse's usage-plus-error exit into a ConfigError the caller reports on one line."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def _text_parser(cls: type, name: str) -> typing.Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return coerce_field(cls, name, text, from_text=True)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _default_text(field: dataclasses.Field) -> str:
    missing = field.default is dataclasses.MISSING
    default = field.default_factory() if missing else field.default  # type: ignore[operator]
    return f"default: {default}"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, --preset and one flag per config field (dest 'section.field', absent unless given)."""
    parser.add_argument(
        "--config", metavar="PATH.yaml", help="YAML file with sections model:, parallel:, ..."
    )
    parser.add_argument("--preset", metavar="NAME", help=f"named config: {', '.join(available_presets())}")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section)
        hints = type_hints(cls)
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            base = optional_inner(hint) or hint
            kwargs: dict[str, Any] = {
                "dest": f"{section}.{field.name}",
                "default": argparse.SUPPRESS,
                "help": f"{field.metadata['help']} ({_default_text(field)})".replace("%", "%%"),
            }
            if base is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(base) is list:
                kwargs.update(nargs="+", metavar="PATH")
            else:
                choices = field.metadata.get("choices")
                metavar = "{" + ",".join(map(str, choices)) + "}" if choices else _METAVARS[base]
                kwargs.update(type=_text_parser(cls, field.name), metavar=metavar)
            group.add_argument(flag(cls, field.name), **kwargs)


def build_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """A parser with every config flag whose errors raise ConfigError (callers may add their own flags)."""
    parser = _OneLineErrorParser(prog=prog, description=description, epilog=_PRECEDENCE)
    add_config_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Merge preset, YAML file and the flags present in `args` into a validated config."""
    namespace = vars(args)
    layers: list[dict[str, dict[str, Any]]] = []
    if namespace.get("preset"):
        layers.append(
            coerce_config_dict(preset_dict(namespace["preset"]), source=f"preset {namespace['preset']}")
        )
    if namespace.get("config"):
        layers.append(coerce_config_dict(read_yaml_mapping(namespace["config"]), source=namespace["config"]))
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in namespace.items():
        section, _, key = dest.partition(".")
        if key and section in SECTIONS:
            flags.setdefault(section, {})[key] = value
    layers.append(flags)
    empty: dict[str, dict[str, Any]] = {}
    merged = functools.reduce(merge_sections, layers, empty)
    return ExperimentConfig.from_dict(merged, source="the merged config")


def parse_config(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Parse flags into a config; raise ConfigError for bad flags, values or combinations."""
    return config_from_args(build_parser().parse_args(argv))


def config_error_exit(exc: BaseException) -> NoReturn:
    """Report `exc` as one 'error: ...' line on stderr and exit with status 2 (argparse's usage code)."""
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    raise SystemExit(2)


def load_config(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """parse_config for command-line entry points: errors exit 2 with a one-line message."""
    try:
        return parse_config(argv)
    except ConfigError as exc:
        config_error_exit(exc)
