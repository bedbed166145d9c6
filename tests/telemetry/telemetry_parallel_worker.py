"""Worker for test_parallel.py: one telemetry step of a tiny GPT under a given parallel layout.

``reference WORK``: a single process (world of one) builds the dense and the MoE model, saves
their weights as megatron dist checkpoints under WORK and writes its telemetry to
WORK/reference_<model>.json.
``parallel WORK``: run under torchrun with 2 processes; loads those weights into each layout of
LAYOUTS in turn (megatron reshards dist checkpoints on load) and writes
WORK/<layout>_rank<r>.json from every rank.

Both see the same global batch: data-parallel rank r takes the r-th contiguous slice, cut into
micro-batches of one sequence, as the training loop's batch stream does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

VOCAB, SEQ, GLOBAL_BATCH, LAYERS = 256, 16, 4, 4  # 256: no vocab padding at TP1 or TP2

MODELS = {
    "dense": dict(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, seq_length=SEQ),
    "moe": dict(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, seq_length=SEQ, num_experts=4,
                moe_router_topk=2, moe_ffn_hidden_size=32),
}
# name: (model, TP, PP, EP, distributed optimizer)
LAYOUTS = {
    "tp2": ("dense", 2, 1, 1, False),
    "pp2": ("moe", 1, 2, 1, False),
    "ep2": ("moe", 1, 1, 2, False),
    "dp2_distopt": ("dense", 1, 1, 1, True),
}


def telemetry_config():
    from megatron_cod.config import TelemetryConfig

    return TelemetryConfig(enabled=True, interval=1, attention_interval=1, weight_interval=1,
                           attention_topk=2, attention_max_tokens=SEQ // 2, weight_eps=0.05)


def global_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(11))


def run(model_name: str, tp: int, pp: int, ep: int, distopt: bool, ckpt: Path, save: bool) -> dict:
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_cod import platform
    from megatron_cod.config import ModelConfig, ParallelConfig
    from megatron_cod.telemetry import DepthTelemetry
    from megatron_cod.training.model_setup import build_training_model, unwrap_gpt
    from megatron_cod.training.step import forward_step

    platform.initialize(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                        expert_model_parallel_size=ep, seed=5)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              expert_model_parallel_size=ep, use_distributed_optimizer=distopt)
    model = build_training_model(SimpleNamespace(model=ModelConfig(**MODELS[model_name]), parallel=parallel), VOCAB)
    gpt = unwrap_gpt(model[0])
    if save:
        ckpt.mkdir()
        dist_checkpointing.save(gpt.sharded_state_dict(), str(ckpt))
    else:
        gpt.load_state_dict(dist_checkpointing.load(gpt.sharded_state_dict(), str(ckpt)))

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp
    tokens = global_batch()[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    batches = [{"tokens": t[None], "labels": t.roll(-1)[None], "loss_mask": torch.ones(1, SEQ),
                "position_ids": torch.arange(SEQ)[None]} for t in tokens]
    tel = DepthTelemetry(model, telemetry_config())
    tel.begin_step(1)
    for chunk in model:
        chunk.zero_grad_buffer()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=model,
                                num_microbatches=len(batches), seq_length=SEQ, micro_batch_size=1,
                                forward_only=False)
    tel.after_backward(1)
    values = tel.end_step(1)
    tel.remove()
    return values


def main(mode: str, work: str) -> None:
    import torch.distributed as dist

    from megatron_cod import platform

    work_dir = Path(work)
    try:
        if mode == "reference":
            for name in MODELS:
                values = run(name, 1, 1, 1, False, work_dir / f"ckpt_{name}", save=True)
                (work_dir / f"reference_{name}.json").write_text(json.dumps(values))
        else:
            for layout, (name, tp, pp, ep, distopt) in LAYOUTS.items():
                values = run(name, tp, pp, ep, distopt, work_dir / f"ckpt_{name}", save=False)
                (work_dir / f"{layout}_rank{dist.get_rank()}.json").write_text(json.dumps(values))
    finally:
        platform.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
