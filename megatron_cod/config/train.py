"""Training-loop section: iterations, batch sizes, seed, evaluation and logging cadence."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import NON_NEGATIVE, POSITIVE, option, validate_fields


@dataclass(frozen=True)
class TrainConfig:
    train_iters: int = option(200, help="optimizer steps (0: build, load and save only)", bound=NON_NEGATIVE)
    micro_batch_size: int = option(
        4, help="sequences per forward pass per data-parallel rank", bound=POSITIVE
    )
    global_batch_size: int = option(8, help="sequences per optimizer step", bound=POSITIVE)
    seed: int = option(1234, help="random seed", bound=NON_NEGATIVE)
    eval_interval: int = option(
        50, help="evaluate every N iterations and at the end (--eval-iters 0: never)", bound=POSITIVE
    )
    eval_iters: int = option(
        10, help="validation batches per evaluation (0: no evaluation)", bound=NON_NEGATIVE
    )
    log_interval: int = option(1, help="log training metrics every N iterations", bound=POSITIVE)
    exit_interval: int | None = option(
        None,
        help="stop (and save, with --save) after iteration N; the schedule still spans --train-iters",
        bound=POSITIVE,
    )
    exit_signal_handler: bool = option(True, help="on SIGTERM, save a checkpoint and exit cleanly")
    on_nan: str = option(
        "stop",
        help="non-finite loss or gradients: stop (exit 1, run FAILED, no checkpoint of that step) or skip "
        "the update (up to --max-skipped-steps)",
        choices=("stop", "skip"),
    )
    max_skipped_steps: int = option(
        10, help="with --on-nan skip: stop once more updates than this were skipped", bound=NON_NEGATIVE
    )
    inject_fault: list[str] = option(
        help="FOR TESTS: KIND@STEP with KIND nan (the middle layer's output becomes NaN at STEP), "
        "kill-in-save (SIGKILL half-way through STEP's save) or sigterm (SIGTERM at STEP); one or more",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        for item in self.inject_fault:
            parse_fault(item)
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"global-batch-size ({self.global_batch_size}) must be divisible by "
                f"micro-batch-size ({self.micro_batch_size})"
            )


FAULT_KINDS = ("nan", "kill-in-save", "sigterm")


def parse_fault(item: str) -> tuple[str, int]:
    """("nan", 5) from "nan@5"; a ConfigError naming the flag otherwise."""
    kind, sep, step = item.partition("@")
    if not sep or kind not in FAULT_KINDS or not step.isdigit() or int(step) < 1:
        raise ConfigError(
            f"inject-fault must be KIND@STEP with KIND in {', '.join(FAULT_KINDS)} and STEP >= 1, got {item!r}"
        )
    return kind, int(step)
