#!/usr/bin/env bash
# GPU smoke run: proves the GPU path of megatron_cod in one go (<= 8 minutes on one H100-class node).
#
#   bash tools/gpu_smoke.sh                      # in the NGC image, or a host with the gpu extra
#   docker run --gpus all --ipc=host --rm megatron_cod:ngc bash tools/gpu_smoke.sh
#
# Steps (each fails the script on error, with its log's tail):
#   1. dense GQA model on the Transformer Engine spec in bf16: an uninterrupted run, and the same run
#      stopped by --exit-interval and resumed from its checkpoint (loss parity after the resume)
#   2. MoE + GQA on the TE spec in bf16
#   3. with >= 2 GPUs: TP2 (sequence parallel, dense) and EP2 (MoE) under torchrun with NCCL
#   4. the depth telemetry overhead benchmark (benchmarks/telemetry_overhead.py) in bf16
#   5. a Jacobian analysis of the dense checkpoint on the GPU (cod-analyze jacobian)
#   6. Hugging Face exports of both checkpoints with --verify (fp32 logit parity)
# and prints `RESULT name=value` lines: tokens/s and MFU (median over the timed steps), the resume
# loss difference, the telemetry ratio, export parity. Exit 0: all passed; 1: a step failed; 2: no
# CUDA GPU here (refused at once). Needs the built-in corpus (built on first use with pip; on an
# offline machine copy the cache, ~/.cache/megatron_cod or $COD_CACHE_DIR, from a machine that has it).
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: no CUDA GPU on this machine (nvidia-smi finds none); run it on a GPU node or in the NGC image" >&2
  exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_smoke: nvidia-smi sees a GPU but torch.cuda does not (a CPU build of torch?); refusing" >&2
  exit 2
fi
if ! "$PYTHON" -c "import transformer_engine.pytorch" >/dev/null 2>&1; then
  echo "gpu_smoke: Transformer Engine is not importable: install the gpu extra (bash tools/install.sh gpu) or use the NGC image" >&2
  exit 1
fi

WORK=${SMOKE_DIR:-$(mktemp -d /tmp/cod_gpu_smoke.XXXXXX)}
mkdir -p "$WORK"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning"
START=$SECONDS
echo "gpu_smoke: $NGPU GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); work dir $WORK"

# step NAME TIMEOUT_S CMD...: run CMD with its output in $WORK/NAME.log; on failure show the tail, exit 1
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if ! timeout "$limit" "$@" >"$WORK/$name.log" 2>&1; then
    echo "gpu_smoke: FAILED at $name (log $WORK/$name.log):" >&2
    tail -n 30 "$WORK/$name.log" >&2
    exit 1
  fi
  echo "gpu_smoke: $name ok ($((SECONDS - t0)) s)"
}

# medians of a run's throughput over the steps after the first WARMUP (compilation, allocator warm-up)
throughput() {
  "$PYTHON" - "$WORK/runs/$1/metrics.jsonl" "$1" <<'EOF'
import json, statistics, sys
path, name = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(path)]
steps = [r["metrics"] for r in rows if "train/tokens_per_s" in r["metrics"]][5:]
if not steps:
    sys.exit(f"gpu_smoke: {name}: no throughput metrics in {path}")
print(f"RESULT {name}_tokens_per_s={statistics.median(s['train/tokens_per_s'] for s in steps):.0f}")
print(f"RESULT {name}_tflops_per_device={statistics.median(s['train/tflops_per_device'] for s in steps):.1f}")
mfu = [s["train/mfu"] for s in steps if "train/mfu" in s]
print(f"RESULT {name}_mfu={statistics.median(mfu):.4f}" if mfu else f"RESULT {name}_mfu=n/a (GPU not in the peak table: --peak-tflops)")
EOF
}

COMMON=(--transformer-impl transformer_engine --bf16 --seq-length 1024 --micro-batch-size 4
        --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 5 --eval-interval 1000 --eval-iters 0
        --telemetry-interval 10 --output-dir "$WORK/runs")
DENSE=(--num-layers 8 --hidden-size 1024 --num-attention-heads 16 --group-query-attention
       --num-query-groups 4 --ffn-hidden-size 2816)
MOE=(--num-layers 8 --hidden-size 768 --num-attention-heads 12 --group-query-attention
     --num-query-groups 4 --num-experts 8 --moe-router-topk 2 --moe-ffn-hidden-size 1024)
train() { "$PYTHON" -m megatron_cod.training "$@"; }
torchrun2() { "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 -m megatron_cod.training "$@"; }

# 1. dense GQA, TE, bf16; save and resume
step dense 150 train "${DENSE[@]}" "${COMMON[@]}" --global-batch-size 8 --train-iters 30 \
  --mlflow-run-name dense --save "$WORK/ckpt_dense"
step dense_stop 120 train "${DENSE[@]}" "${COMMON[@]}" --global-batch-size 8 --train-iters 30 \
  --exit-interval 20 --mlflow-run-name dense_stop --save "$WORK/ckpt_resume"
step dense_resume 120 train "${DENSE[@]}" "${COMMON[@]}" --global-batch-size 8 --train-iters 30 \
  --mlflow-run-name dense_resume --save "$WORK/ckpt_resume" --load "$WORK/ckpt_resume"
throughput dense
"$PYTHON" - "$WORK/runs" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def losses(name):
    rows = (json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["metrics"]["train/lm_loss"] for r in rows if "train/lm_loss" in r["metrics"]}
full, resumed = losses("dense"), losses("dense_resume")
if sorted(resumed) != list(range(21, 31)):
    sys.exit(f"gpu_smoke: the resumed run logged steps {sorted(resumed)}, expected 21..30")
diff = max(abs(full[s] - resumed[s]) for s in resumed)
print(f"RESULT resume_max_abs_loss_diff={diff:.3e}")
if diff > 0.05:  # bf16 kernels are not bitwise deterministic; a wrong resume is off by far more
    sys.exit(f"gpu_smoke: resumed losses differ from the uninterrupted run by {diff:.3g} (> 0.05)")
EOF

# 2. MoE + GQA, TE, bf16
step moe 150 train "${MOE[@]}" "${COMMON[@]}" --global-batch-size 8 --train-iters 30 \
  --mlflow-run-name moe --save "$WORK/ckpt_moe"
throughput moe

# 3. TP2 and EP2 (NCCL)
if [ "$NGPU" -ge 2 ]; then
  step tp2 150 torchrun2 "${DENSE[@]}" "${COMMON[@]}" --global-batch-size 8 --train-iters 20 \
    --tensor-model-parallel-size 2 --sequence-parallel --mlflow-run-name tp2
  throughput tp2
  step ep2 150 torchrun2 "${MOE[@]}" "${COMMON[@]}" --global-batch-size 16 --train-iters 20 \
    --expert-model-parallel-size 2 --mlflow-run-name ep2
  throughput ep2
else
  echo "gpu_smoke: one GPU: TP2 / EP2 skipped"
fi

# 4. telemetry overhead (its own RESULT line)
step telemetry 120 "$PYTHON" benchmarks/telemetry_overhead.py --bf16 --rounds 8
grep '^RESULT ' "$WORK/telemetry.log"

# 5. Jacobian analysis on the GPU
step jacobian 90 "$PYTHON" -m megatron_cod.analysis.cli jacobian --checkpoint "$WORK/ckpt_dense" \
  --num-samples 8 --seq-length 256 --jacobian-mode randomized --num-probes 4 --no-mlflow \
  --output-dir "$WORK/jacobian" --quiet
"$PYTHON" -c "import torch; assert torch.cuda.is_available()"  # the analysis ran where CUDA is

# 6. exports with --verify (fp32 logit parity against the megatron model)
for name in dense moe; do
  step "export_$name" 90 "$PYTHON" -m megatron_cod.export.cli --checkpoint "$WORK/ckpt_$name" \
    --output "$WORK/hf_$name" --verify --no-mlflow
  diff=$(sed -n 's/^verify: max |logit diff| \([^,]*\),.*/\1/p' "$WORK/export_$name.log")
  echo "RESULT export_${name}_max_abs_logit_diff=${diff:-n/a}"
done

echo "RESULT gpu_smoke_seconds=$((SECONDS - START))"
echo "gpu_smoke: all steps passed"
