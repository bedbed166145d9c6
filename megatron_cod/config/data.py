"""Data section: Megatron data blend, split, tokenizer, or the built-in corpus."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import NON_NEGATIVE, option, validate_fields


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DataConfig:
    data_path: list[str] = option(
        help="Megatron blend: PREFIX, or WEIGHT PREFIX WEIGHT PREFIX ... (empty: the built-in dataset)",
        default_factory=list,
    )
    split: str = option("949,50,1", help="train,valid,test proportions")
    tokenizer: str | None = option(None, help="tokenizer path (None: the built-in dataset's tokenizer)")
    builtin: str = option(
        "shakespeare", help="built-in dataset used when --data-path is empty", flag="--builtin-dataset"
    )
    num_workers: int = option(0, help="data-loader worker processes", bound=NON_NEGATIVE)

    def __post_init__(self) -> None:
        validate_fields(self)
        self._check_blend()
        self._check_split()
        if not self.builtin.strip():
            raise ConfigError("builtin-dataset must not be empty")

    def _check_blend(self) -> None:
        paths = self.data_path
        if any(not p.strip() for p in paths):
            raise ConfigError(f"data-path has an empty entry: {paths}")
        if len(paths) < 2 or not _is_number(paths[0]):
            return
        # Same rule as megatron's get_blend_from_list: weights, when given, precede every prefix.
        if len(paths) % 2 or not all(_is_number(w) for w in paths[0::2]):
            raise ConfigError(
                f"data-path must be WEIGHT PREFIX pairs when it starts with a weight, got {paths}"
            )
        if any(float(w) < 0 for w in paths[0::2]) or sum(float(w) for w in paths[0::2]) <= 0:
            raise ConfigError(
                f"data-path weights must be non-negative with a positive sum, got {paths[0::2]}"
            )

    def _check_split(self) -> None:
        parts = self.split.replace("/", ",").split(",")
        message = f"split must be up to three non-negative numbers like 949,50,1 with a positive sum, got {self.split!r}"
        if not 1 <= len(parts) <= 3 or not all(_is_number(p) for p in parts):
            raise ConfigError(message)
        values = [float(p) for p in parts]
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ConfigError(message)
