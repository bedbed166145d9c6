"""A few CPU training steps with --peak-tflops and W&B offline: throughput and MFU are in the journal
and in MLflow and agree with the FLOP formula and the step times; W&B's own reader of the offline
run file (`wandb leet inspect --json`) gives back the journal's history."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient
from training_launch import TINY_MOE, journal, train

from megatron_cod.config import ExperimentConfig, LoggingConfig
from megatron_cod.data.tokenizer import load_tokenizer
from megatron_cod.models.builder import padded_vocab_size
from megatron_cod.training.callbacks.throughput import device_peak_tflops
from megatron_cod.training.flops import training_flops_per_token

ITERS, PEAK, GBS, SEQ = 4, 0.02, 4, 64
THROUGHPUT = ("train/tokens_per_s", "train/samples_per_s", "train/tflops_per_device", "train/mfu")


def _wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rows: dict[int, dict[str, float]] = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "history":
            item = record["history"]["item"]
            rows[int(record["history"]["step"]["num"])] = {
                k: v for k, v in item.items() if not k.startswith("_")
            }
    return rows


def test_throughput_mfu_in_journal_mlflow_and_wandb(tmp_path, builtin_dataset):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = TINY_MOE + [
        "--micro-batch-size", "2", "--global-batch-size", str(GBS), "--lr-warmup-iters", "1",
        "--train-iters", str(ITERS), "--eval-interval", "2", "--eval-iters", "1", "--telemetry-interval", "2",
        "--peak-tflops", str(PEAK), "--wandb-project", "P", "--wandb-mode", "offline",
    ]  # fmt: skip
    proc = train(tmp_path, "tp", args, env={"MLFLOW_TRACKING_URI": uri, "WANDB_SILENT": "true"})
    assert "TFLOP/s/device" in proc.stdout and "MFU" in proc.stdout  # the progress line

    entries = journal(tmp_path, "tp")
    steps = {e["step"]: e["metrics"] for e in entries if "train/lm_loss" in e["metrics"]}
    assert sorted(steps) == list(range(1, ITERS + 1))
    vocab = padded_vocab_size(load_tokenizer(builtin_dataset.tokenizer_path).vocab_size, 1)
    cfg = ExperimentConfig.from_yaml(tmp_path / "runs" / "tp" / "config.yaml")
    per_token = training_flops_per_token(cfg.model, vocab)
    for m in steps.values():
        seconds = m["train/iteration_ms"] / 1e3
        tokens = GBS * SEQ
        assert abs(m["train/tokens_per_s"] - tokens / seconds) <= 1e-6 * m["train/tokens_per_s"]
        assert abs(m["train/samples_per_s"] - GBS / seconds) <= 1e-6 * m["train/samples_per_s"]
        tflops = per_token * tokens / seconds / 1e12  # one process
        assert abs(m["train/tflops_per_device"] - tflops) <= 1e-6 * tflops
        assert abs(m["train/mfu"] - m["train/tflops_per_device"] / PEAK) <= 1e-12

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("megatron_cod").experiment_id], "attributes.run_name = 'tp'"
    )
    for key in THROUGHPUT:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {step: m[key] for step, m in steps.items()}

    # W&B: one history row per step holding everything the journal logged at that step
    logged: dict[int, dict[str, float]] = defaultdict(dict)
    for e in entries:
        logged[e["step"]].update(e["metrics"])
    wandb_rows = _wandb_history(tmp_path / "runs" / "tp")
    assert wandb_rows == dict(logged)
    assert any("valid/lm_loss" in row for row in wandb_rows.values())
    assert any(k.startswith("depth/") for k in wandb_rows[2])


def test_no_mfu_on_cpu_without_peak_tflops():
    # this machine has no GPU: the table is never consulted, MFU is left out
    assert device_peak_tflops(ExperimentConfig()) is None
    cfg = ExperimentConfig(logging=LoggingConfig(peak_tflops=3.5))
    assert device_peak_tflops(cfg) == 3.5
