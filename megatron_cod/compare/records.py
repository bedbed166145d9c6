"""What a comparison knows of one training run, whichever store it came from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Series = list[tuple[int, float]]  # (step, value), sorted by step

# The telemetry and training keys a comparison reads; nothing else is fetched from the store.
VAR_KEY = re.compile(r"^depth/var/layer_(\d+)$")
VAR_FINAL_NORM_KEY = re.compile(r"^depth/var_final_norm/layer_(\d+)$")
IMBALANCE_KEY = re.compile(r"^moe/imbalance/layer_(\d+)$")
TRAIN_LOSS = "train/lm_loss"
VALID_LOSS = "valid/lm_loss"


def is_needed_key(key: str) -> bool:
    return key in (TRAIN_LOSS, VALID_LOSS) or any(
        p.match(key) for p in (VAR_KEY, VAR_FINAL_NORM_KEY, IMBALANCE_KEY)
    )


@dataclass
class AnalysisRecord:
    """The newest depth analysis nested under a run: its global scores and per-layer curves."""

    run_id: str
    scores: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # e.g. layer/usefulness_loss_ratio


@dataclass
class RunRecord:
    run_id: str  # MLflow run id, or the run directory for --run-dirs
    name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, UNKNOWN
    params: dict[str, str]  # the flat config, "model.num_layers" -> "16"
    tags: dict[str, str]
    metrics: dict[str, Series]
    start_time: float = 0.0
    analysis: AnalysisRecord | None = None
    evals: dict[str, float] = field(default_factory=dict)  # eval/<task>/<metric> of nested eval runs

    def param(self, key: str) -> str | None:
        value = self.params.get(key)
        return None if value in (None, "None") else value

    def int_param(self, key: str) -> int | None:
        value = self.param(key)
        return int(float(value)) if value is not None else None

    @property
    def num_layers(self) -> int | None:
        return self.int_param("model.num_layers")

    @property
    def seed(self) -> str | None:
        return self.param("train.seed")

    @property
    def tokens_per_step(self) -> int | None:
        gbs, seq = self.int_param("train.global_batch_size"), self.int_param("model.seq_length")
        return gbs * seq if gbs and seq else None

    def layer_series(self, pattern: re.Pattern[str]) -> dict[int, Series]:
        """{layer_number: series} for the per-layer keys matching `pattern`."""
        out = {}
        for key, series in self.metrics.items():
            match = pattern.match(key)
            if match:
                out[int(match.group(1))] = series
        return dict(sorted(out.items()))

    @property
    def telemetry_steps(self) -> list[int]:
        """Steps at which the last layer's residual variance was logged."""
        layers = self.layer_series(VAR_KEY)
        return [step for step, _ in layers[max(layers)]] if layers else []

    @property
    def last_step(self) -> int | None:
        steps = [series[-1][0] for series in self.metrics.values() if series]
        return max(steps) if steps else None
