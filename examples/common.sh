# Shared part of the example launchers (sourced, not run). The sourcing script sets RUN_PREFIX and
# SPEC_ARGS (its model-specific flags) and then calls `launch "$@"`. Every setting below can be
# overridden by an environment variable of the same name.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

NPROC=${NPROC:-1}
TP=${TP:-1}
PP=${PP:-1}
EP=${EP:-1}
RUN_NAME=${RUN_NAME:-${RUN_PREFIX}_$(date +%Y%m%d_%H%M%S)}
SAVE_DIR=${SAVE_DIR:-$ROOT/checkpoints/$RUN_NAME}
DATA_PATH=${DATA_PATH:-}          # empty: the built-in corpus (built and cached on first use)
TOKENIZER=${TOKENIZER:-}

GPU=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$GPU" = "1" ] && "$PYTHON" -c "import transformer_engine.pytorch" >/dev/null 2>&1; then
  IMPL=${IMPL:-transformer_engine}
else
  IMPL=${IMPL:-local}
fi

MODEL_ARGS=(
  --num-layers "${NUM_LAYERS:-16}"
  --hidden-size "${HIDDEN_SIZE:-128}"
  --num-attention-heads "${NUM_HEADS:-8}"
  --seq-length "${SEQ_LENGTH:-256}"
  --transformer-impl "$IMPL"
)
TRAINING_ARGS=(
  --micro-batch-size "${MICRO_BATCH_SIZE:-4}"
  --global-batch-size "${GLOBAL_BATCH_SIZE:-8}"
  --train-iters "${TRAIN_ITERS:-200}"
  --lr "${LR:-3e-3}"
  --min-lr "${MIN_LR:-3e-4}"
  --lr-warmup-iters "${WARMUP_ITERS:-20}"
  --weight-decay "${WEIGHT_DECAY:-0.1}"
  --seed "${SEED:-1234}"
)
if [ "$GPU" = "1" ]; then TRAINING_ARGS+=(--bf16); fi
PARALLEL_ARGS=(
  --tensor-model-parallel-size "$TP"
  --pipeline-model-parallel-size "$PP"
  --expert-model-parallel-size "$EP"
)
if [ "$TP" -gt 1 ]; then PARALLEL_ARGS+=(--sequence-parallel); fi
DATA_ARGS=()
if [ -n "$DATA_PATH" ]; then
  # shellcheck disable=SC2206  # a blend is several words: "0.7 pathA 0.3 pathB"
  DATA_ARGS+=(--data-path $DATA_PATH --tokenizer "$TOKENIZER" --split "${SPLIT:-949,50,1}")
fi
EVAL_AND_CHECKPOINT_ARGS=(
  --eval-interval "${EVAL_INTERVAL:-100}"
  --eval-iters "${EVAL_ITERS:-10}"
  --save "$SAVE_DIR"
)
# periodic saves on request (a checkpoint is always written at the end)
if [ -n "${SAVE_INTERVAL:-}" ]; then EVAL_AND_CHECKPOINT_ARGS+=(--save-interval "$SAVE_INTERVAL"); fi
# Megatron convention: pointing --load at the --save directory resumes an interrupted run.
if [ -f "$SAVE_DIR/latest_checkpointed_iteration.txt" ]; then EVAL_AND_CHECKPOINT_ARGS+=(--load "$SAVE_DIR"); fi
LOGGING_ARGS=(
  --mlflow-experiment "${MLFLOW_EXPERIMENT:-megatron_cod}"
  --mlflow-run-name "$RUN_NAME"
  --telemetry-interval "${TELEMETRY_INTERVAL:-10}"
  --output-dir "${OUTPUT_DIR:-$ROOT/runs}"
)
if [ -n "${WANDB_PROJECT:-}" ]; then LOGGING_ARGS+=(--wandb-project "$WANDB_PROJECT"); fi

launch() {
  local args=("${MODEL_ARGS[@]}" "${SPEC_ARGS[@]}" "${TRAINING_ARGS[@]}" "${PARALLEL_ARGS[@]}"
              "${DATA_ARGS[@]}" "${EVAL_AND_CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")
  if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc-per-node "$NPROC" ${NNODES:+--nnodes "$NNODES"} \
      ${MASTER_ADDR:+--master-addr "$MASTER_ADDR"} ${MASTER_PORT:+--master-port "$MASTER_PORT"} \
      -m megatron_cod.training "${args[@]}"
  fi
  exec "$PYTHON" -m megatron_cod.training "${args[@]}"
}
