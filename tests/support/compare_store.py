"""Fill a temporary MLflow sqlite store, through the product's own Tracker, with runs whose metrics
follow known formulas, so every number a comparison prints can be checked against its source."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from megatron_cod.config import ExperimentConfig
from megatron_cod.tracking import Tracker, tags


def variance(layer: int, step: int, growth: float, seed: int) -> float:
    """Residual variance at `layer`: exp(growth * layer) scaled by training progress and the seed."""
    return (1.0 + step / 10.0) * math.exp(growth * layer) * (1.0 + 0.01 * (seed % 7))


def loss(step: int, seed: int, split: str) -> float:
    return 8.0 / (1.0 + step / 20.0) + 0.001 * seed + (0.1 if split == "valid" else 0.0)


@dataclass
class FakeRun:
    name: str
    run_id: str
    run_dir: Path
    cfg: ExperimentConfig
    growth: float
    steps: int


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"

    def add(
        self,
        name: str,
        overrides: dict,
        *,
        growth: float = 0.1,
        steps: int = 20,
        telemetry_every: int = 5,
        valid_every: int = 10,
        status: str = "FINISHED",
        experiment: str = "exp",
        final_norm: bool = True,
        moe: bool = False,
    ) -> FakeRun:
        cfg = ExperimentConfig().with_overrides(
            {
                "model.num_layers": 4,
                "model.hidden_size": 64,
                "model.num_attention_heads": 4,
                "model.seq_length": 64,
                "train.global_batch_size": 8,
                "train.micro_batch_size": 4,
                "train.train_iters": steps,
                "telemetry.interval": telemetry_every,
                "train.eval_interval": valid_every,
                "optim.lr_warmup_iters": 1,
                "logging.output_dir": str(self.root / "runs"),
                "logging.mlflow_run_name": name,
                "logging.mlflow_tracking_uri": self.uri,
                "logging.mlflow_experiment": experiment,
                **overrides,
            }
        )
        run_dir = self.root / "runs" / name
        tracker = Tracker.start(cfg.logging, run_dir, cfg.to_flat_dict(), tags=tags.training_run_tags(cfg, 1))
        cfg.to_yaml(run_dir / "config.yaml")
        layers, seed = cfg.model.num_layers, cfg.train.seed
        for step in range(1, steps + 1):
            metrics = {"train/lm_loss": loss(step, seed, "train")}
            if step % telemetry_every == 0:
                for layer in range(1, layers + 1):
                    metrics[f"depth/var/layer_{layer:02d}"] = variance(layer, step, growth, seed)
                    if moe:
                        metrics[f"moe/imbalance/layer_{layer:02d}"] = 1.0 + layer / 10 + step / 1000
                if final_norm:
                    metrics[f"depth/var_final_norm/layer_{layers:02d}"] = 1.0 + step / 100
            if step % valid_every == 0:
                metrics["valid/lm_loss"] = loss(step, seed, "valid")
            tracker.log_metrics(metrics, step)
        tracker.finish(status)
        return FakeRun(name, tracker.run_id, run_dir, cfg, growth, steps)
