"""Parity of an export: the megatron model and the exported directory, both in fp32, on the same tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    num_tokens: int

    def as_metrics(self) -> dict[str, float]:
        return {
            "verify/max_abs_logit_diff": self.max_abs_diff,
            "verify/top1_agreement": self.top1_agreement,
            "verify/num_tokens": float(self.num_tokens),
        }


def megatron_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return model(ids, positions, None).float()


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> Parity:
    diff = (reference - other).abs().max().item()
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    return Parity(diff, agree, reference.shape[0] * reference.shape[1])


def sample_tokens(vocab_size: int, seq_length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq_length), generator=torch.Generator().manual_seed(seed))


def verify_export(model: torch.nn.Module, hf_dir: str | Path, ids: torch.Tensor) -> Parity:
    """Max |logit difference| and top-1 agreement of ``model`` and ``AutoModelForCausalLM(hf_dir)``."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits.float()
    return compare_logits(megatron_logits(model.float().eval(), ids), theirs)
