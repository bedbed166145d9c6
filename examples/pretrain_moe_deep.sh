#!/usr/bin/env bash
# Pretrain a deep MoE + GQA GPT on megatron-core with depth telemetry tracked in MLflow.
#
#   bash examples/pretrain_moe_deep.sh                       # CPU: built-in Shakespeare corpus, a few minutes
#   NPROC=8 TP=2 EP=4 bash examples/pretrain_moe_deep.sh     # one GPU node (NCCL; TE when installed)
#   bash examples/pretrain_moe_deep.sh --train-iters 50      # extra flags are appended (last wins)
#
# Settings are environment variables (see examples/common.sh for the shared ones).
set -euo pipefail
RUN_PREFIX=moe_deep
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SPEC_ARGS=(
  --group-query-attention
  --num-query-groups "${NUM_QUERY_GROUPS:-4}"
  --num-experts "${NUM_EXPERTS:-8}"
  --moe-router-topk "${TOPK:-2}"
  --moe-ffn-hidden-size "${MOE_FFN_HIDDEN_SIZE:-256}"
  --moe-aux-loss-coeff "${MOE_AUX_LOSS_COEFF:-0.01}"
  --moe-z-loss-coeff "${MOE_Z_LOSS_COEFF:-0.001}"
  --moe-token-dispatcher-type "${DISPATCHER:-alltoall}"
)
launch "$@"
