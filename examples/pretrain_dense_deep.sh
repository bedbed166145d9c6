#!/usr/bin/env bash
# Pretrain the dense baseline of pretrain_moe_deep.sh: same depth, width and attention heads (MHA).
#
#   bash examples/pretrain_dense_deep.sh
#   NPROC=8 TP=2 bash examples/pretrain_dense_deep.sh
#
# Settings are environment variables (see examples/common.sh for the shared ones).
set -euo pipefail
RUN_PREFIX=dense_deep
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SPEC_ARGS=(
  --ffn-hidden-size "${FFN_HIDDEN_SIZE:-512}"
)
launch "$@"
