#!/usr/bin/env bash
# Set up megatron_cod in ./.venv (or $COD_VENV).
#  - CPU-only host: torch==2.13.0 (a CPU wheel; never a multi-GB CUDA build).
#  - A Python that already has torch (NGC container): the venv sees it through
#    --system-site-packages and torch is left alone.
# Usage: bash tools/install.sh [test|gpu|wandb ...]   (extras to add)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COD_VENV:-.venv}
PY=${PYTHON:-python3}
extras=("$@")

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[install] reusing the torch already installed for $PY"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[install] GPU host without torch: installing the default (CUDA) torch"
    "$VPY" -m pip install -q torch
  else
    echo "[install] CPU-only host: installing torch==2.13.0 (CPU wheel)"
    "$VPY" -m pip install -q torch==2.13.0
  fi
fi

spec="."
if [ ${#extras[@]} -gt 0 ]; then
  spec=".[$(IFS=,; echo "${extras[*]}")]"
fi
"$VPY" -m pip install -q -e "$spec"
"$VPY" -c "import torch, megatron.core, megatron_cod; print('[install] torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| cuda', torch.cuda.is_available())"
