"""Export memory and time: a ~300M-parameter checkpoint to a Hugging Face directory (fp32).

The checkpoint is built by the training entry point with ``--train-iters 0 --save`` (initialised,
not trained; dense Llama shape, 24 layers, width 1024). The export runs in a fresh process
(``cod-export``) that reports its own peak resident set size; the ratio to the fp32 model bytes
says how close export stays to one copy of the model (the process also holds torch, megatron and
transformers themselves). Goal: <= 2.0.

    RESULT export_peak_rss_ratio=<peak RSS / fp32 model bytes>

Usage: python benchmarks/export.py [--num-layers 24] [--hidden-size 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the export process: cod-export, then its own peak RSS (ru_maxrss is KiB on Linux)
_CHILD = """
import resource, sys
from megatron_cod.export.cli import export_main
code = export_main(sys.argv[1:])
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=24)
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="build/export under this directory and keep it")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with tempfile.TemporaryDirectory(prefix="cod-bench-export-") as tmp:
        root = args.keep or Path(tmp)
        ckpt, out = root / "ckpt", root / "hf"
        build = [sys.executable, "-m", "megatron_cod.training", "--num-layers", str(args.num_layers),
                 "--hidden-size", str(args.hidden_size), "--num-attention-heads", "16", "--seq-length", "256",
                 "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "0",
                 "--lr-warmup-iters", "0", "--eval-iters", "0", "--no-telemetry", "--no-mlflow",
                 "--save", str(ckpt), "--output-dir", str(root / "runs")]
        start = time.perf_counter()
        subprocess.run(build, check=True, env=env, cwd=root, stdout=subprocess.DEVNULL)
        print(f"checkpoint built in {time.perf_counter() - start:.1f}s")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, "--checkpoint", str(ckpt), "--output", str(out),
                               "--no-mlflow", "--force"], env=env, cwd=root, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"export failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
        peak = int(proc.stdout.split("PEAK_RSS_KIB")[1].split()[0]) * 1024
        files = sorted(p.name for p in out.glob("*.safetensors"))
        index = out / "model.safetensors.index.json"
        model_bytes = (json.loads(index.read_text())["metadata"]["total_size"] if index.is_file()
                       else (out / "model.safetensors").stat().st_size)
        params = model_bytes / 4
        print(f"model: {params / 1e6:.0f}M parameters, {model_bytes / 2**30:.2f} GiB in fp32, {len(files)} file(s)")
        print(f"export: {seconds:.1f}s (process start to exit), peak RSS {peak / 2**30:.2f} GiB")
        print(f"RESULT export_peak_rss_ratio={peak / model_bytes:.3f}")


if __name__ == "__main__":
    main()
