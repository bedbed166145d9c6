"""Step-time overhead of a megatron_cod training step, measured side by side in one process.

  A  megatron_cod: train_step() = megatron DDP + get_megatron_optimizer + scheduler + schedules
  B  plain megatron-core: the same GPTModel spec, forward + backward + torch AdamW
  C  a hand-written PyTorch GPT of the same dims (RMSNorm, SwiGLU, RoPE, causal attention),
     run with torch-function handling disabled, i.e. without the CPU layer's device mapping

Steps are interleaved A, B, C, A, B, C... so machine noise hits all three alike; medians compared.
Telemetry is off here (benchmarks/telemetry_overhead.py measures it).
Usage: python benchmarks/step_overhead.py [--layers 16] [--hidden 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from megatron_cod import platform
from megatron_cod.config import ExperimentConfig, ModelConfig, OptimizerConfig, TelemetryConfig, TrainConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.training.batches import GlobalBatchStream
from megatron_cod.training.model_setup import build_training_model
from megatron_cod.training.optimizer import build_optimizer, build_scheduler
from megatron_cod.training.step import train_step


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Block(nn.Module):
    def __init__(self, d, heads, groups, ffn, eps):
        super().__init__()
        self.heads, self.groups, self.hd = heads, groups, d // heads
        self.n1, self.n2 = RMSNorm(d, eps), RMSNorm(d, eps)
        self.qkv = nn.Linear(d, d + 2 * groups * self.hd, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc1 = nn.Linear(d, 2 * ffn, bias=False)
        self.fc2 = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin, mask):
        s, b, d = x.shape
        q, k, v = self.qkv(self.n1(x)).split([d, self.groups * self.hd, self.groups * self.hd], -1)
        q = rope(q.view(s, b, self.heads, self.hd), cos, sin)
        k = rope(k.view(s, b, self.groups, self.hd), cos, sin)
        v = v.view(s, b, self.groups, self.hd)
        rep = self.heads // self.groups
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v
        x = x + self.proj(attn.permute(2, 0, 1, 3).reshape(s, b, d))
        gate, up = self.fc1(self.n2(x)).chunk(2, -1)
        return x + self.fc2(F.silu(gate) * up)


class TorchGPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, groups, ffn, seq, eps=1e-5):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, groups, ffn, eps) for _ in range(layers))
        self.norm = RMSNorm(d, eps)
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(seq).float(), inv)
        ang = torch.cat((ang, ang), -1)[:, None, None, :]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        self.register_buffer("mask", torch.ones(seq, seq, dtype=torch.bool).triu(1))

    def forward(self, tokens, labels):
        x = self.emb(tokens).transpose(0, 1)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        logits = self.head(self.norm(x)).transpose(0, 1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class RandomTokens:
    def __init__(self, n, seq, vocab, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq + 1), generator=g)
        self.seq = seq

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        t = self.tokens[i]
        return {"tokens": t[:-1], "labels": t[1:], "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    platform.initialize(seed=1)
    model_cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                            group_query_attention=True, num_query_groups=args.groups, seq_length=args.seq)
    cfg = ExperimentConfig(model=model_cfg,
                           optim=OptimizerConfig(lr=1e-3, min_lr=1e-4, lr_warmup_iters=0),
                           train=TrainConfig(train_iters=10_000, micro_batch_size=args.batch,
                                             global_batch_size=args.batch),
                           telemetry=TelemetryConfig(enabled=False))
    data = RandomTokens(64, args.seq, args.vocab)

    cod_model = build_training_model(cfg, args.vocab)
    cod_opt = build_optimizer(cod_model, cfg.optim, bf16=False, use_distributed_optimizer=False)
    cod_model[0].config.grad_scale_func = cod_opt.scale_loss
    cod_sched = build_scheduler(cod_opt, cfg.optim, cfg.train.train_iters)
    stream = GlobalBatchStream(data, args.batch, args.batch, 0, 1)

    def step_cod():
        train_step(stream, cod_model, cod_opt, cod_sched, 1, args.seq, args.batch)

    plain = build_gpt_model(model_cfg, args.vocab)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.1)
    pos = torch.arange(args.seq).unsqueeze(0).expand(args.batch, -1)
    batches = [data.tokens[i * args.batch:(i + 1) * args.batch] for i in range(16)]

    def step_plain(i=[0]):
        t = batches[i[0] % 16]
        i[0] += 1
        plain_opt.zero_grad(set_to_none=True)
        plain(t[:, :-1], pos, None, labels=t[:, 1:]).float().mean().backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        plain_opt.step()

    ffn = model_cfg.effective_ffn_hidden_size
    torch_gpt = TorchGPT(args.vocab, args.hidden, args.layers, args.heads, args.groups, ffn, args.seq)
    torch_opt = torch.optim.AdamW(torch_gpt.parameters(), lr=1e-3, weight_decay=0.1)

    def step_torch(i=[0]):
        with torch._C.DisableTorchFunction():
            t = batches[i[0] % 16]
            i[0] += 1
            torch_opt.zero_grad(set_to_none=True)
            torch_gpt(t[:, :-1], t[:, 1:]).backward()
            torch.nn.utils.clip_grad_norm_(torch_gpt.parameters(), 1.0)
            torch_opt.step()

    runners = {"megatron_cod": step_cod, "megatron_core": step_plain, "pytorch": step_torch}
    times = {k: [] for k in runners}
    for i in range(args.warmup + args.steps):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"config: {args.layers} layers, hidden {args.hidden}, {args.heads} heads / {args.groups} groups, "
          f"seq {args.seq}, batch {args.batch}, vocab {args.vocab}; median of {args.steps} interleaved steps")
    for k, v in med.items():
        print(f"  {k:<14s} {v:8.1f} ms/step")
    vs_core = med["megatron_cod"] / med["megatron_core"]
    vs_torch = med["megatron_cod"] / med["pytorch"]
    print(f"megatron_cod / megatron-core = {vs_core:.3f} (goal <= 1.03)")
    print(f"megatron_cod / pytorch       = {vs_torch:.3f} (goal <= 1.15)")
    platform.teardown()
    print(f"RESULT step_overhead_ratio={vs_core:.3f}")


if __name__ == "__main__":
    main()
