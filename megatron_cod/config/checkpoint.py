"""Checkpoint section: where to save and load megatron distributed checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.fields import POSITIVE, option, validate_fields


@dataclass(frozen=True)
class CheckpointConfig:
    save: str | None = option(None, help="directory to save checkpoints to (None: no saving)")
    load: str | None = option(None, help="directory to resume from (None: start from scratch)")
    save_interval: int | None = option(
        None, help="save every N iterations (None: no periodic saves)", bound=POSITIVE
    )
    load_optim: bool = option(
        True, help="load optimizer and scheduler state with --load (--no-load-optim: weights only)"
    )
    load_rng: bool = option(
        True, help="load RNG states with --load (skipped anyway when the parallel layout changed)"
    )
    # megatron-core's dist_checkpointing registers only this backend.
    ckpt_format: str = option("torch_dist", help="checkpoint format", choices=("torch_dist",))

    def __post_init__(self) -> None:
        validate_fields(self)
