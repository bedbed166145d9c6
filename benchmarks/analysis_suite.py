"""Wall time of the full depth-analysis suite (`cod-analyze all`) with its default settings.

A random-init 16-layer Llama (hidden 256, 4 heads, FFN 688, vocab 4096) saved as an HF directory,
evaluation sequences of 512 tokens drawn from a Megatron indexed dataset of random tokens (the
default draw: the paper's 100), default adaptive sampling (each score's documented target standard
error), report and MLflow logging (to a temporary sqlite store) included. Prints the per-step
breakdown, the sequences each metric used and the targets it stopped at, the work counted and the
peak RSS. Last lines:
RESULT analysis_overhead_ratio=<suite time / work floor> and RESULT analysis_suite_seconds=<s>.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_cod.analysis.cli import main as cod_analyze

VOCAB = 4096


def build_inputs(root: Path, seed: int) -> tuple[Path, str]:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
    )
    LlamaForCausalLM(config).save_pretrained(root / "model")
    prefix = str(root / "tokens")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    rng = np.random.default_rng(seed)
    for _ in range(100):  # 100 documents of 1024 tokens; the valid half holds 51,200 tokens
        builder.add_item(torch.from_numpy(rng.integers(0, VOCAB, 1024, dtype=np.int32)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return root / "model", prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("extra", nargs="*", help="extra cod-analyze options (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, prefix = build_inputs(root, args.seed)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
        argv = [
            "all",
            "--hf-model", str(model),
            "--data-prefix", prefix,
            "--split", "50,50,0",
            "--seq-length", "512",
            "--output-dir", str(root / "report"),
            "--quiet",
            *args.extra,
        ]  # fmt: skip
        start = time.perf_counter()
        code = cod_analyze(argv)
        elapsed = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"cod-analyze failed with exit code {code}")
        results = json.loads((root / "report" / "results.json").read_text())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    print("cod-analyze all " + " ".join(argv[1:]))
    for step, seconds in results["seconds"].items():
        print(f"  {step:<12} {seconds:7.1f} s")
    print(f"  {'wall (cli)':<12} {elapsed:7.1f} s")
    print("sequences used: " + ", ".join(f"{k} {v}" for k, v in results["samples"].items()))
    for name, targets in results["targets"].items():
        if targets:
            print(f"  {name} targets: " + ", ".join(f"{g} {t:g}" for g, t in targets.items()))
    work = results["work"]
    costs = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in work["seconds_per_unit"].items())
    print(f"work units (per sequence): {work['units']}; unit costs per sequence: {costs}")
    print(f"work floor {work['floor_seconds']:.1f} s, suite {results['seconds']['total']:.1f} s")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {peak_kib / 2**20:.2f} GiB")
    print(f"RESULT analysis_overhead_ratio={work['overhead_ratio']:.3f}")
    print(f"RESULT analysis_suite_seconds={elapsed:.1f}")


if __name__ == "__main__":
    main()
