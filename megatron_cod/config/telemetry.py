"""Depth-telemetry section: how often residual-stream, attention and weight statistics are taken."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.fields import NON_NEGATIVE, POSITIVE, option, validate_fields


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = option(True, help="collect depth telemetry", flag="--telemetry")
    interval: int = option(
        10,
        help="residual-stream statistics every N iterations (0: off)",
        flag="--telemetry-interval",
        bound=NON_NEGATIVE,
    )
    attention_interval: int = option(
        100,
        help="attention statistics every N iterations (0: off)",
        flag="--telemetry-attention-interval",
        bound=NON_NEGATIVE,
    )
    weight_interval: int = option(
        100,
        help="weight statistics every N iterations (0: off)",
        flag="--telemetry-weight-interval",
        bound=NON_NEGATIVE,
    )
    weight_eps: float = option(
        1e-2,
        help="near-zero weight threshold as a fraction of the matrix RMS",
        flag="--telemetry-weight-eps",
        bound=POSITIVE,
    )
    attention_topk: int = option(
        8, help="top-k attention mass reported per query", flag="--telemetry-attention-topk", bound=POSITIVE
    )
    attention_max_tokens: int = option(
        512,
        help="tokens in the sampled attention micro-batch slice",
        flag="--telemetry-attention-max-tokens",
        bound=POSITIVE,
    )

    def __post_init__(self) -> None:
        validate_fields(self)
