"""Step time with depth telemetry at interval 1 vs telemetry off, side by side in one run.

A 16-layer MoE GPTModel (megatron DDP, megatron's forward-backward schedule, as in training) runs
rounds of steps; each round times one step per mode, in a rotating order so drift and neighbours'
load hit every mode alike. Modes:
- off:       telemetry disabled (the begin/after/end calls still made, as in the training loop);
- depth:     interval 1: residual variance/RMS/update/cosine, branch statistics, grad and param
             norms, MoE routing statistics and aux losses, on every layer;
- attention: only the attention-entropy sample (its own interval in training);
- weights:   only the weight-sparsity statistics (their own interval in training);
- all:       every family at interval 1.
The step is forward + backward of all micro-batches (no optimizer step, which would only add to
the denominator). Within one repetition a mode's ratio is the median over rounds of (its step / the
off step of the same round), which cancels slow drift; the run makes ``--repeats`` repetitions
(>= 3) and reports the median over them with the spread (min-max). The amortised ratio at the
example's intervals (examples/pretrain_moe_deep.sh and the cpu_moe_deep preset: activations every
10 steps, attention and weights every 100) is 1 + sum over families of (ratio - 1) / interval.
The last line is ``RESULT telemetry_overhead_ratio=<median depth ratio>``.

Clock: on a GPU, wall time with a device synchronisation around each step. On a CPU, the CPU
time of the thread that runs the step, with one torch thread by default (torch then runs every
forward, backward and hook op of the step on that thread). Build machines are shared, and wall time
there mostly measures the neighbours (identical steps varied 2x in wall time in our runs). The
process's CPU time is not the step's either: megatron's ~20 gloo process groups each keep a TCP
loop thread, and together with the progress bar they took about 3% of a core, in bursts unrelated
to the step. Wall-time and process-CPU-time ratios are printed as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import torch

MODES = ("off", "depth", "attention", "weights", "all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="timed steps per mode and repetition")
    p.add_argument("--repeats", type=int, default=3, help="repetitions (>= 3 for a spread)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs only)")
    args = p.parse_args(argv)
    for name in (
        "layers",
        "hidden",
        "heads",
        "experts",
        "topk",
        "seq",
        "micro_batch_size",
        "micro_batches",
        "rounds",
        "repeats",
        "threads",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.layers < 16:
        p.error("--layers must be >= 16 (the acceptance criterion measures 16+ layers)")
    return args


def telemetry_config(mode: str, seq: int):
    from megatron_cod.config import TelemetryConfig

    return TelemetryConfig(
        enabled=mode != "off",
        interval=1 if mode in ("depth", "all") else 0,
        attention_interval=1 if mode in ("attention", "all") else 0,
        weight_interval=1 if mode in ("weights", "all") else 0,
        attention_max_tokens=seq,
    )


def example_intervals() -> dict[str, int]:
    """Telemetry intervals of examples/pretrain_moe_deep.sh (its preset, cpu_moe_deep, agrees)."""
    from megatron_cod.config import TelemetryConfig
    from megatron_cod.config.presets import preset_dict

    tel = {**vars(TelemetryConfig()), **preset_dict("cpu_moe_deep").get("telemetry", {})}
    return {
        "depth": tel["interval"],
        "attention": tel["attention_interval"],
        "weights": tel["weight_interval"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from rich.progress import Progress

    from megatron_cod import platform
    from megatron_cod.config import ModelConfig, ParallelConfig
    from megatron_cod.telemetry import DepthTelemetry
    from megatron_cod.training.model_setup import build_training_model
    from megatron_cod.training.step import forward_step

    platform.initialize(seed=1234)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        torch.set_num_threads(args.threads)
    try:
        model_cfg = ModelConfig(
            num_layers=args.layers,
            hidden_size=args.hidden,
            num_attention_heads=args.heads,
            seq_length=args.seq,
            num_experts=args.experts,
            moe_router_topk=args.topk,
            moe_ffn_hidden_size=args.hidden,
            bf16=args.bf16,
        )
        vocab = 1024
        model = build_training_model(SimpleNamespace(model=model_cfg, parallel=ParallelConfig()), vocab)
        dev = platform.device()
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(args.micro_batches):
            tokens = torch.randint(0, vocab, (args.micro_batch_size, args.seq), generator=g)
            batches.append(
                {
                    "tokens": tokens,
                    "labels": tokens.roll(-1, dims=1),
                    "loss_mask": torch.ones(args.micro_batch_size, args.seq),
                    "position_ids": torch.arange(args.seq).expand(args.micro_batch_size, -1),
                }
            )
        collectors = {mode: DepthTelemetry(model, telemetry_config(mode, args.seq)) for mode in MODES}
        fwd_bwd = get_forward_backward_func()

        def sync() -> None:
            if on_gpu:
                torch.cuda.synchronize()

        def step(mode: str, iteration: int) -> tuple[float, float, float]:
            """(measured time, wall time, process CPU time) of one step."""
            tel = collectors[mode]
            for chunk in model:
                chunk.zero_grad_buffer()
            sync()
            start, thread_start, cpu_start = time.perf_counter(), time.thread_time(), time.process_time()
            tel.begin_step(iteration)
            fwd_bwd(
                forward_step_func=forward_step,
                data_iterator=iter(batches),
                model=model,
                num_microbatches=args.micro_batches,
                seq_length=args.seq,
                micro_batch_size=args.micro_batch_size,
                forward_only=False,
            )
            tel.after_backward(iteration)
            values = tel.end_step(iteration)
            sync()
            wall = time.perf_counter() - start
            thread, cpu = time.thread_time() - thread_start, time.process_time() - cpu_start
            if mode != "off" and not values:
                raise RuntimeError(f"mode {mode} collected nothing")
            return (wall if on_gpu else thread), wall, cpu

        total = args.warmup + args.rounds
        reps: list[dict[str, list[float]]] = []
        walls: dict[str, list[float]] = {m: [] for m in MODES}
        cpus: dict[str, list[float]] = {m: [] for m in MODES}
        with Progress(transient=True) as progress:
            task = progress.add_task("timing steps", total=args.repeats * total * len(MODES))
            for _ in range(args.repeats):
                times: dict[str, list[float]] = {m: [] for m in MODES}
                for r in range(total):
                    order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
                    for mode in order:
                        t, wall, cpu = step(mode, r)
                        if r >= args.warmup:
                            times[mode].append(t)
                            walls[mode].append(wall)
                            cpus[mode].append(cpu)
                        progress.advance(task)
                reps.append(times)
        for tel in collectors.values():
            tel.remove()
    finally:
        platform.teardown()

    paired = {
        m: [statistics.median(t / off for t, off in zip(rep[m], rep["off"])) for rep in reps] for m in MODES
    }
    all_times = {m: [t for rep in reps for t in rep[m]] for m in MODES}
    med = {m: statistics.median(ts) for m, ts in all_times.items()}
    wall_med = {m: statistics.median(ts) for m, ts in walls.items()}
    cpu_paired = {m: statistics.median(t / off for t, off in zip(cpus[m], cpus["off"])) for m in MODES}
    ratio = {m: statistics.median(paired[m]) for m in MODES}
    clock = (
        "wall time"
        if on_gpu
        else f"CPU time of the stepping thread, {torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, {args.experts} experts top-{args.topk}, "
        f"seq {args.seq}, {args.micro_batches} x {args.micro_batch_size} sequences per step, "
        f"device {dev}; clock: {clock}; {args.repeats} repetitions x {args.rounds} rounds"
    )
    for m in MODES:
        reps_text = ", ".join(f"{x:.4f}" for x in paired[m])
        print(
            f"{m:>9}: median step {med[m] * 1e3:8.1f} ms | paired ratio median {ratio[m]:.4f} "
            f"(spread {min(paired[m]):.4f}-{max(paired[m]):.4f}; repetitions {reps_text}) | "
            f"wall median {wall_med[m] * 1e3:8.1f} ms, ratio {wall_med[m] / wall_med['off']:.4f} | "
            f"process CPU paired ratio over all rounds {cpu_paired[m]:.4f}"
        )
    intervals = example_intervals()
    amortised = 1 + sum((ratio[m] - 1) / n for m, n in intervals.items() if n > 0)
    every = "/".join(str(n) for n in intervals.values())
    print(f"attention-entropy sample step ratio (its own interval in training): {ratio['attention']:.4f}")
    print(f"weight-statistics step ratio (its own interval in training): {ratio['weights']:.4f}")
    print(f"all families at interval 1: {ratio['all']:.4f}")
    print(
        f"amortised ratio at the example's intervals (depth/attention/weights every {every} steps): "
        f"{amortised:.4f}"
    )
    print(f"RESULT telemetry_overhead_ratio={ratio['depth']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
