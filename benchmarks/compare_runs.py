"""cod-compare end to end on a realistic store: 24 runs x 32 layers x 500 logged steps (sqlite).

Each run logs, every step, the per-layer residual variance, MoE imbalance and RMS of 32 layers (the
RMS keys are not read by a comparison, so selective reading is part of what is measured), the
post-final-norm variance and the train loss; validation loss every 50 steps. Filling the store is
not timed; the comparison (selection, reading, table, claims, plots, report, comparison run) is.
Goal: compare_seconds <= 30 on the 2-core CPU machine.

    python benchmarks/compare_runs.py [--runs 24] [--layers 32] [--steps 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from megatron_cod.compare.cli import main as compare
from megatron_cod.config import ExperimentConfig
from megatron_cod.tracking import Tracker, tags


def fill(root: Path, runs: int, layers: int, steps: int) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for i in range(runs):
        depth, wd, seed = (8, 16, 24, 32)[i % 4], (0.0, 0.1, 0.3)[(i // 4) % 3], 1000 + i // 12
        num_layers = layers if i % 4 == 3 else depth
        cfg = ExperimentConfig().with_overrides({
            "model.num_layers": num_layers, "optim.weight_decay": wd, "train.seed": seed,
            "model.num_experts": 8, "train.train_iters": steps,
            "logging.output_dir": str(root / "runs"), "logging.mlflow_run_name": f"run{i:02d}",
            "logging.mlflow_tracking_uri": uri, "logging.mlflow_experiment": "bench",
            "logging.journal": False})
        tracker = Tracker.start(cfg.logging, root / "runs" / f"run{i:02d}", cfg.to_flat_dict(),
                                tags=tags.training_run_tags(cfg, 1))
        batch: list[Metric] = []
        for step in range(1, steps + 1):
            m = {"train/lm_loss": 8.0 / math.sqrt(step), f"depth/var_final_norm/layer_{num_layers:02d}": 1.0}
            for layer in range(1, num_layers + 1):
                m[f"depth/var/layer_{layer:02d}"] = (1 + step / 100) * math.exp(0.1 * layer) / (1 + wd)
                m[f"moe/imbalance/layer_{layer:02d}"] = 1.0 + layer / 100
                m[f"depth/rms/layer_{layer:02d}"] = math.sqrt(layer)
            if step % 50 == 0:
                m["valid/lm_loss"] = 8.5 / math.sqrt(step)
            # many steps per batch: filling the store is set-up, not what is measured
            batch += [Metric(key, value, 0, step) for key, value in m.items()]
        for start in range(0, len(batch), 1000):
            client.log_batch(tracker.run_id, metrics=batch[start : start + 1000])
        tracker.finish("FINISHED")
        print(f"filled run {i + 1}/{runs}", flush=True)
    return uri


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=24)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--keep", help="fill (or reuse) the store in this directory")
    args = p.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="compare-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if not (root / "mlflow.db").exists():
        start = time.perf_counter()
        fill(root, args.runs, args.layers, args.steps)
        print(f"fill: {time.perf_counter() - start:.1f} s (not timed)")
    start = time.perf_counter()
    code = compare(["--experiment", "bench", "--tracking-uri", uri, "--output-dir", str(root / "cmp"),
                    "--overwrite", "--claims"])
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(code)
    print(f"RESULT compare_seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
