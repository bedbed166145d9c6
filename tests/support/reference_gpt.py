"""A hand-written GPT in plain PyTorch with every norm placement, on a megatron GPTModel's weights.

Independent of megatron: the layout conventions it relies on (the grouped QKV matrix, the gate-then-up
halves of linear_fc1, non-interleaved RoPE, softmax-then-top-k routing without renormalisation) are
written out here, so a wrong placement or a wrong convention makes the comparison fail.

Per sublayer F with residual stream h (``kind`` of each layer):
    pre:  h + F(Norm(h))            (LNS: h + F(Norm(h) / sqrt(l)))
    post: Norm(h + F(h))
    peri: h + Norm_out(F(Norm_in(h)))
    mix:  post for layers 1..floor(alpha L), pre after
A final norm before the LM head except for post; a norm on the embedding output when embedding_norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RefArch:
    num_layers: int
    heads: int
    groups: int
    eps: float = 1e-5
    rope_base: float = 10000.0
    topk: int = 2
    placement: str = "pre"
    mix_alpha: float = 0.25
    layernorm_scaling: bool = False
    embedding_norm: bool = False

    def kind(self, layer_number: int) -> str:
        if self.placement == "mix":
            return "post" if layer_number <= math.floor(self.mix_alpha * self.num_layers) else "pre"
        return self.placement


@dataclass
class LayerRecord:
    """What telemetry should see: the layer's input and output, and each branch as it is added."""

    h_in: torch.Tensor
    attn_branch: torch.Tensor
    mlp_branch: torch.Tensor
    h_out: torch.Tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding of x [b, s, heads, hd], rotating the two halves of each head (not interleaved)."""
    s, hd = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(s, dtype=torch.float32), inv_freq)
    cos = torch.cat([angles.cos(), angles.cos()], -1)[None, :, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention(x: torch.Tensor, p: dict[str, torch.Tensor], pre: str, arch: RefArch) -> torch.Tensor:
    b, s, d = x.shape
    hd, per = d // arch.heads, arch.heads // arch.groups
    # linear_qkv rows: for each query group, its `per` query heads, then its key, then its value.
    qkv = (x @ p[pre + "linear_qkv.weight"].T).view(b, s, arch.groups, per + 2, hd)
    q = rope(qkv[..., :per, :].reshape(b, s, arch.heads, hd), arch.rope_base)
    k = rope(qkv[..., per, :], arch.rope_base).repeat_interleave(per, dim=2)
    v = qkv[..., per + 1, :].repeat_interleave(per, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
    context = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
    return context @ p[pre + "linear_proj.weight"].T


def swiglu(x: torch.Tensor, p: dict[str, torch.Tensor], pre: str) -> torch.Tensor:
    gate, up = (x @ p[pre + "linear_fc1.weight"].T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ p[pre + "linear_fc2.weight"].T


def mlp(x: torch.Tensor, p: dict[str, torch.Tensor], pre: str, arch: RefArch) -> torch.Tensor:
    if pre + "router.weight" not in p:
        return swiglu(x, p, pre)
    probs = (x @ p[pre + "router.weight"].T).softmax(dim=-1)
    top, idx = probs.topk(arch.topk, dim=-1)
    gates = torch.zeros_like(probs).scatter(-1, idx, top)
    out = sum(
        gates[..., e : e + 1] * swiglu(x, p, f"{pre}experts.local_experts.{e}.")
        for e in range(probs.shape[-1])
    )
    if pre + "shared_experts.linear_fc1.weight" in p:
        out = out + swiglu(x, p, pre + "shared_experts.")
    return out


def layer(
    h: torch.Tensor, p: dict[str, torch.Tensor], n: int, arch: RefArch
) -> tuple[torch.Tensor, LayerRecord]:
    """Layer n (1-based): returns the new stream and what it added."""
    pre, kind, eps = f"decoder.layers.{n - 1}.", arch.kind(n), arch.eps
    scale = 1.0 / math.sqrt(n) if arch.layernorm_scaling and kind == "pre" else 1.0
    h_in = h
    branches = []
    for norm, f, out_norm, post_norm in (
        (
            "input_layernorm",
            lambda x: attention(x, p, pre + "self_attention.", arch),
            "self_attn_output_layernorm",
            "post_self_attn_layernorm",
        ),
        (
            "pre_mlp_layernorm",
            lambda x: mlp(x, p, pre + "mlp.", arch),
            "mlp_output_layernorm",
            "post_mlp_layernorm",
        ),
    ):
        if kind == "post":
            branch = f(h)
            h = rms_norm(h + branch, p[pre + post_norm + ".weight"], eps)
        else:
            branch = f(rms_norm(h, p[pre + norm + ".weight"], eps) * scale)
            if kind == "peri":
                branch = rms_norm(branch, p[pre + out_norm + ".weight"], eps)
            h = h + branch
        branches.append(branch)
    return h, LayerRecord(h_in, branches[0], branches[1], h)


def forward(
    tokens: torch.Tensor, p: dict[str, torch.Tensor], arch: RefArch
) -> tuple[torch.Tensor, list[LayerRecord]]:
    """Logits [b, s, V] and one record per layer."""
    h = p["embedding.word_embeddings.weight"][tokens]
    if arch.embedding_norm:
        h = rms_norm(h, p["embedding.output_layernorm.weight"], arch.eps)
    records = []
    for n in range(1, arch.num_layers + 1):
        h, record = layer(h, p, n, arch)
        records.append(record)
    if arch.placement != "post":  # Post-LN's last sublayer output is already normalised
        h = rms_norm(h, p["decoder.final_layernorm.weight"], arch.eps)
    return h @ p["output_layer.weight"].T, records
