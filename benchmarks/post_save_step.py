"""Training-step time after a distributed-checkpoint save vs before it, in one process.

A small GPT (megatron DDP + megatron optimizer + scheduler, megatron's schedule: the real
train_step) runs ``--steps`` steps, then a save through megatron_cod's save_checkpoint (megatron
dist_checkpointing, torch_dist), then ``--steps`` more steps, for ``--saves`` rounds. Each round's
ratio is the median step time of the steps after its save over the median of the steps before it;
the reported ratio is the median over rounds (the spread is printed). Wall time and process CPU
time are both timed; the ratio uses wall time, since a slowdown from extra threads competing for
the cores shows there and not necessarily in this thread's CPU time.
Also printed per round: live Python threads, torch's intra-op thread count and the child processes
the saves left behind with the CPU time they used, which competes with training for the cores. Last line: ``RESULT post_save_step_ratio=<x>`` (goal <= 1.05).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8, help="timed steps before and after each save")
    p.add_argument("--saves", type=int, default=3, help="save rounds (>= 3 for a spread)")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    for name in ("layers", "hidden", "heads", "seq", "batch", "vocab", "steps", "saves"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import psutil
    import torch

    from megatron_cod import platform
    from megatron_cod.config import (
        ExperimentConfig,
        ModelConfig,
        OptimizerConfig,
        TelemetryConfig,
        TrainConfig,
    )
    from megatron_cod.training.batches import GlobalBatchStream
    from megatron_cod.training.checkpoint import save_checkpoint
    from megatron_cod.training.model_setup import build_training_model
    from megatron_cod.training.optimizer import build_optimizer, build_scheduler
    from megatron_cod.training.step import train_step

    platform.initialize(seed=1)
    try:
        model_cfg = ModelConfig(
            num_layers=args.layers,
            hidden_size=args.hidden,
            num_attention_heads=args.heads,
            seq_length=args.seq,
        )
        cfg = ExperimentConfig(
            model=model_cfg,
            optim=OptimizerConfig(lr=1e-3, min_lr=1e-4, lr_warmup_iters=0),
            train=TrainConfig(train_iters=10_000, micro_batch_size=args.batch, global_batch_size=args.batch),
            telemetry=TelemetryConfig(enabled=False),
        )
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, args.vocab, (64, args.seq + 1), generator=g)
        data = [
            {
                "tokens": t[:-1],
                "labels": t[1:],
                "loss_mask": torch.ones(args.seq),
                "position_ids": torch.arange(args.seq),
            }
            for t in tokens
        ]
        model = build_training_model(cfg, args.vocab)
        optimizer = build_optimizer(model, cfg.optim, bf16=False, use_distributed_optimizer=False)
        model[0].config.grad_scale_func = optimizer.scale_loss
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.train_iters)
        stream = GlobalBatchStream(data, args.batch, args.batch, 0, 1)

        def timed_steps(n: int) -> tuple[list[float], list[float]]:
            walls, cpus = [], []
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(n):
                w0, c0 = time.perf_counter(), time.process_time()
                train_step(stream, model, optimizer, scheduler, 1, args.seq, args.batch)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            faults.append((r1.ru_minflt - r0.ru_minflt) / n)
            switches.append((r1.ru_nivcsw - r0.ru_nivcsw) / n)
            return walls, cpus

        faults: list[float] = []
        switches: list[float] = []

        def state() -> str:
            kids = psutil.Process().children(recursive=True)
            cpu = sum(sum(k.cpu_times()[:2]) for k in kids if k.is_running())
            return (
                f"threads {threading.active_count()}, torch threads {torch.get_num_threads()}, "
                f"child processes {len(kids)} ({cpu:.2f} s CPU so far)"
            )

        timed_steps(args.warmup)
        wall_ratios, cpu_ratios, save_s = [], [], []
        print(f"before any save: {state()}")
        with tempfile.TemporaryDirectory(prefix="cod_post_save_") as root:
            for r in range(args.saves):
                before_w, before_c = timed_steps(args.steps)
                t0 = time.perf_counter()
                save_checkpoint(root, r + 1, model, optimizer, scheduler, {"train": 0}, "", {})
                save_s.append(time.perf_counter() - t0)
                after_w, after_c = timed_steps(args.steps)
                wall_ratios.append(statistics.median(after_w) / statistics.median(before_w))
                cpu_ratios.append(statistics.median(after_c) / statistics.median(before_c))
                print(
                    f"save {r + 1}: step before {statistics.median(before_w) * 1e3:7.1f} ms, "
                    f"after {statistics.median(after_w) * 1e3:7.1f} ms (wall ratio {wall_ratios[-1]:.3f}, "
                    f"CPU-time ratio {cpu_ratios[-1]:.3f}); save {save_s[-1]:.2f} s; {state()}; "
                    f"per step before/after: {faults[-2]:.0f}/{faults[-1]:.0f} page faults, "
                    f"{switches[-2]:.0f}/{switches[-1]:.0f} involuntary context switches"
                )
    finally:
        platform.teardown()

    ratio = statistics.median(wall_ratios)
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, seq {args.seq}, batch {args.batch}; "
        f"{args.saves} saves, median of {args.steps} steps on each side"
    )
    print(
        f"wall ratio after/before: median {ratio:.3f} (min {min(wall_ratios):.3f}, max {max(wall_ratios):.3f}); "
        f"CPU-time ratio median {statistics.median(cpu_ratios):.3f} "
        f"(min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})"
    )
    print(f"RESULT post_save_step_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
