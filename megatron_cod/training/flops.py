"""Model FLOPs per token of our GPT models, computed from the config, and peak FLOP/s of common GPUs.

Convention (PaLM, Chowdhery et al. 2022, appendix B; the usual MFU definition):
- only matrix multiplications count, 2 FLOPs per multiply-add; norms, softmax, activations, RoPE and
  the embedding lookup are left out (they are O(d) per token against O(d^2));
- training = 3 x forward (the backward computes gradients for inputs and for weights, 2 x forward);
  activation recompute is *not* counted: MFU measures the model's FLOPs, not the hardware's;
- attention's score (Q K^T) and context (P V) products count the full T x T square, causal mask or
  not, so a dense model's training total is PaLM's 6 N + 12 L d T per token;
- MoE layers count what a token actually passes through: the router, its top-k experts and the
  shared expert (the "active" parameters), not all experts.

Per token and layer (d hidden, a query heads, g query groups, d_h = d / a head dim, T sequence,
f FFN width, V padded vocabulary):
  QKV projections   2 d (a + 2 g) d_h       (GQA: K and V have g heads)
  scores + context  2 x 2 T a d_h
  output projection 2 a d_h d
  dense FFN         2 x 3 d f with SwiGLU (gate, up, down), 2 x 2 d f with GELU
  MoE               2 d E (router) + k x FFN(f_expert) + FFN(f_shared)
and once per token the LM head, 2 d V.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TRAINING_FORWARD_MULTIPLE = 3  # forward + backward (2 x forward)


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs per token of the whole model, by part."""

    attention_projections: float
    attention_scores: float
    dense_mlp: float
    moe_router: float
    moe_experts: float
    moe_shared_expert: float
    lm_head: float

    @property
    def total(self) -> float:
        return (
            self.attention_projections
            + self.attention_scores
            + self.dense_mlp
            + self.moe_router
            + self.moe_experts
            + self.moe_shared_expert
            + self.lm_head
        )


def ffn_flops(hidden: int, width: int, swiglu: bool) -> float:
    """One token through one FFN: SwiGLU has three d x f matrices (gate, up, down), GELU two."""
    return 2.0 * (3 if swiglu else 2) * hidden * width


def moe_layer_count(model: Any) -> int:
    """Layers that are MoE: megatron's integer moe_layer_freq N makes layer i (0-based) MoE when i % N == 0."""
    if not model.is_moe:
        return 0
    return sum(1 for i in range(model.num_layers) if i % model.moe_layer_freq == 0)


def forward_flops_per_token(model: Any, vocab_size: int) -> ForwardFlops:
    """Forward FLOPs per token for ``model`` (a ModelConfig) with a ``vocab_size`` LM head (padded, as built)."""
    d, layers, seq = model.hidden_size, model.num_layers, model.seq_length
    heads, groups, head_dim = model.num_attention_heads, model.effective_num_query_groups, model.head_dim
    projections = 2.0 * d * (heads + 2 * groups) * head_dim + 2.0 * heads * head_dim * d
    scores = 2.0 * 2.0 * seq * heads * head_dim
    n_moe = moe_layer_count(model)
    n_dense = layers - n_moe
    router = experts = shared = 0.0
    if n_moe:
        router = n_moe * 2.0 * d * model.num_experts
        experts = (
            n_moe * model.moe_router_topk * ffn_flops(d, model.effective_moe_ffn_hidden_size, model.swiglu)
        )
        if model.moe_shared_expert_intermediate_size is not None:
            shared = n_moe * ffn_flops(d, model.moe_shared_expert_intermediate_size, model.swiglu)
    return ForwardFlops(
        attention_projections=layers * projections,
        attention_scores=layers * scores,
        dense_mlp=n_dense * ffn_flops(d, model.effective_ffn_hidden_size, model.swiglu),
        moe_router=router,
        moe_experts=experts,
        moe_shared_expert=shared,
        lm_head=2.0 * d * vocab_size,
    )


def training_flops_per_token(model: Any, vocab_size: int) -> float:
    """Model FLOPs of one trained token (forward + backward), the numerator of MFU."""
    return TRAINING_FORWARD_MULTIPLE * forward_flops_per_token(model, vocab_size).total


# Dense (no structured sparsity) peak TFLOP/s of one GPU from NVIDIA's data sheets, by the dtype of the
# matmuls: "bf16" tensor cores; "tf32" tensor cores for fp32 tensors when TF32 is allowed; "fp32" the
# plain CUDA cores (PyTorch's default for fp32 matmuls).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0},
    "H200 SXM": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 SXM": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"fp32": 15.7},
}

# torch.cuda.get_device_name() -> table row; first match wins, so the specific names come first
# ("NVIDIA H100 80GB HBM3" is the SXM part, GH200's GPU is an H100 SXM-class die).
_DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bB200\b", "B200"),
    (r"\bH200 NVL\b", "H200 NVL"),
    (r"\bH200\b", "H200 SXM"),
    (r"\bH100 NVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bGH200\b|\bH100\b", "H100 SXM"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bV100\b", "V100"),
)


def gpu_model(device_name: str) -> str | None:
    """The table row for a torch.cuda device name ("NVIDIA H100 80GB HBM3" -> "H100 SXM"), None if unknown."""
    for pattern, row in _DEVICE_PATTERNS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return row
    return None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of one ``device_name`` GPU for ``dtype`` ("bf16", "tf32", "fp32"), None if not in the table."""
    row = gpu_model(device_name)
    return PEAK_TFLOPS[row].get(dtype) if row is not None else None


def matmul_dtype(bf16: bool, tf32_allowed: bool) -> str:
    """The PEAK_TFLOPS column a run's matmuls use."""
    if bf16:
        return "bf16"
    return "tf32" if tf32_allowed else "fp32"
