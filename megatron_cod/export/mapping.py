"""Tensor-by-tensor correspondence between a single-rank megatron GPTModel and a stock HF class.

One table of rules serves both directions, so export and import cannot drift apart. Layout
differences handled here:

- megatron's ``linear_qkv`` interleaves q, k and v per query group ([q heads of group g; k_g; v_g]
  for each group); HF keeps q_proj, k_proj, v_proj;
- megatron's SwiGLU ``linear_fc1`` is [gate; up]; HF keeps gate_proj and up_proj (Mixtral: w1, w3);
- LayerNorm Scaling multiplies each normalised sub-layer input by 1/sqrt(layer number); RMSNorm
  ends with its weight, so the factor is folded into that weight (rule scale);
- megatron's shared expert is added ungated. Qwen2-MoE multiplies its shared expert by
  sigmoid(x . w_gate), which cannot be made 1 for every x without a bias; but with w_gate = 0 it is
  exactly 0.5 for every x, and doubling the shared expert's down projection (a power of two, so
  exact in every float format) gives back 0.5 * 2 * y = y bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from megatron_cod.export.architecture import Target
from megatron_cod.export.errors import ExportError
from megatron_cod.models.variants import layernorm_scaling_factor

SHARED_EXPERT_DOWN_SCALE = 2.0  # compensates sigmoid(0) = 0.5, see the module docstring
QKV_PARTS = ("q", "k", "v")
FC1_PARTS = ("gate", "up")


@dataclass(frozen=True)
class Rule:
    """HF tensor ``hf`` is ``scale`` times ``part`` of megatron tensor ``megatron``.

    ``megatron`` None: a constant zero tensor of ``shape`` in HF that megatron does not have.
    """

    hf: str
    megatron: str | None
    part: str | None = None  # q / k / v of linear_qkv, gate / up of linear_fc1
    scale: float = 1.0
    shape: tuple[int, ...] | None = None


def _mlp_rules(hf: str, meg: str, names: tuple[str, str, str], down_scale: float = 1.0) -> list[Rule]:
    gate, up, down = names
    return [
        Rule(f"{hf}.{gate}.weight", f"{meg}.linear_fc1.weight", "gate"),
        Rule(f"{hf}.{up}.weight", f"{meg}.linear_fc1.weight", "up"),
        Rule(f"{hf}.{down}.weight", f"{meg}.linear_fc2.weight", scale=down_scale),
    ]


def _layer_rules(target: Target, i: int) -> list[Rule]:
    cfg = target.config
    h, m = f"model.layers.{i}", f"decoder.layers.{i}"
    norm_scale = layernorm_scaling_factor(i + 1) if target.layernorm_scaling else 1.0
    rules = [Rule(f"{h}.input_layernorm.weight", f"{m}.input_layernorm.weight", scale=norm_scale)]
    rules += [
        Rule(f"{h}.self_attn.{p}_proj.weight", f"{m}.self_attention.linear_qkv.weight", p) for p in QKV_PARTS
    ]
    rules.append(Rule(f"{h}.self_attn.o_proj.weight", f"{m}.self_attention.linear_proj.weight"))
    rules.append(
        Rule(f"{h}.post_attention_layernorm.weight", f"{m}.pre_mlp_layernorm.weight", scale=norm_scale)
    )
    proj = ("gate_proj", "up_proj", "down_proj")
    if not target.moe_layers[i]:
        return rules + _mlp_rules(f"{h}.mlp", f"{m}.mlp", proj)
    experts = range(cfg.num_local_experts if target.family == "mixtral" else cfg.num_experts)
    if target.family == "mixtral":
        rules.append(Rule(f"{h}.block_sparse_moe.gate.weight", f"{m}.mlp.router.weight"))
        for e in experts:
            rules += _mlp_rules(
                f"{h}.block_sparse_moe.experts.{e}", f"{m}.mlp.experts.local_experts.{e}", ("w1", "w3", "w2")
            )
        return rules
    rules.append(Rule(f"{h}.mlp.gate.weight", f"{m}.mlp.router.weight"))
    for e in experts:
        rules += _mlp_rules(f"{h}.mlp.experts.{e}", f"{m}.mlp.experts.local_experts.{e}", proj)
    if target.shared_expert:
        rules += _mlp_rules(
            f"{h}.mlp.shared_expert", f"{m}.mlp.shared_experts", proj, SHARED_EXPERT_DOWN_SCALE
        )
    else:  # a zero-width shared expert: Qwen2-MoE always has one, its output is an empty sum = 0
        rules += [
            Rule(f"{h}.mlp.shared_expert.{p}.weight", None, shape=s)
            for p, s in (
                ("gate_proj", (0, cfg.hidden_size)),
                ("up_proj", (0, cfg.hidden_size)),
                ("down_proj", (cfg.hidden_size, 0)),
            )
        ]
    rules.append(Rule(f"{h}.mlp.shared_expert_gate.weight", None, shape=(1, cfg.hidden_size)))
    return rules


def rules(target: Target) -> list[Rule]:
    """Every HF tensor of ``target`` in file order (embedding, layers, final norm, head)."""
    out = [Rule("model.embed_tokens.weight", "embedding.word_embeddings.weight")]
    for i in range(target.config.num_hidden_layers):
        out += _layer_rules(target, i)
    out.append(Rule("model.norm.weight", "decoder.final_layernorm.weight"))
    if not target.config.tie_word_embeddings:
        out.append(Rule("lm_head.weight", "output_layer.weight"))
    return out


def _qkv_sizes(cfg) -> tuple[int, int, int]:
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_key_value_heads
    return groups, cfg.num_attention_heads // groups * head_dim, head_dim


def _part(weight: torch.Tensor, part: str, cfg) -> torch.Tensor:
    if part in FC1_PARTS:
        return torch.chunk(weight, 2, dim=0)[FC1_PARTS.index(part)]
    groups, q_rows, head_dim = _qkv_sizes(cfg)
    grouped = weight.view(groups, q_rows + 2 * head_dim, -1)
    q, k, v = torch.split(grouped, [q_rows, head_dim, head_dim], dim=1)
    return {"q": q, "k": k, "v": v}[part].reshape(-1, weight.shape[-1])


def to_hf(state: Mapping[str, torch.Tensor], target: Target) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs, one at a time: views where the layout allows, else one small copy."""
    for rule in rules(target):
        if rule.megatron is None:
            assert rule.shape is not None  # a constant-zero rule always has its shape
            yield rule.hf, torch.zeros(rule.shape, dtype=state["decoder.final_layernorm.weight"].dtype)
            continue
        tensor = state[rule.megatron]
        if rule.part is not None:
            tensor = _part(tensor, rule.part, target.config)
        yield rule.hf, tensor * rule.scale if rule.scale != 1.0 else tensor


def from_hf(read, target: Target) -> dict[str, torch.Tensor]:
    """The megatron state dict from HF tensors (``read(name)`` returns one); the inverse of to_hf.

    Exact inverse for every rule without LayerNorm Scaling: parts are concatenated back and the only
    other scale, the shared expert's 2.0, divides back exactly.
    """
    if target.layernorm_scaling:
        raise ValueError("from_hf builds models without LayerNorm Scaling")
    grouped: dict[str, list[Rule]] = {}
    for rule in rules(target):
        if rule.megatron is None:
            if torch.count_nonzero(read(rule.hf)):
                raise ExportError(
                    f"{rule.hf} is non-zero: megatron's shared expert has no gate "
                    "(only a zero gate, sigmoid = 0.5, is expressible)"
                )
            continue
        grouped.setdefault(rule.megatron, []).append(rule)
    state: dict[str, torch.Tensor] = {}
    for name, parts in grouped.items():
        if parts[0].part is None:
            (rule,) = parts
            tensor = read(rule.hf)
            state[name] = tensor / rule.scale if rule.scale != 1.0 else tensor
        elif parts[0].part in FC1_PARTS:
            state[name] = torch.cat([read(r.hf) for r in parts], dim=0)
        else:
            groups, q_rows, head_dim = _qkv_sizes(target.config)
            q, k, v = (read(r.hf) for r in parts)
            hidden = q.shape[-1]
            state[name] = torch.cat(
                [
                    q.view(groups, q_rows, hidden),
                    k.view(groups, head_dim, hidden),
                    v.view(groups, head_dim, hidden),
                ],
                dim=1,
            ).reshape(-1, hidden)
    return state
