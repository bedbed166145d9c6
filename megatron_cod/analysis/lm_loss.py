"""Language-model loss and output-distribution comparisons in fp32, from log-probabilities.

Callers take ``log_probs`` once per set of logits and reuse it for the loss, the KL and the
top-1 comparison: the log-softmax over the vocabulary is the expensive part.
"""

from __future__ import annotations

import torch

from megatron_cod.analysis.adapter import LayerStack


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary, in fp32."""
    return torch.log_softmax(logits.float(), dim=-1)


def row_loss_sums(log_probs: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of next-token cross-entropy: positions 0..s-2 predict tokens 1..s-1.

    The loss HF computes with ``labels=input_ids`` (shift by one, no masking), kept as sums so
    batches combine token-weighted.
    """
    picked = log_probs[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return -picked.sum(dim=1)


def loss_count(input_ids: torch.Tensor) -> int:
    """Number of predicted tokens in a batch [b, s]."""
    return input_ids.shape[0] * (input_ids.shape[1] - 1)


def token_kl(reference_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_reference || p) for each token, in nats."""
    return (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(dim=-1)


def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """1.0 where two distributions (logits or log-probs) share their most likely token, else 0.0."""
    return (reference.argmax(dim=-1) == other.argmax(dim=-1)).float()


def loss_sum_from(stack: LayerStack, h: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Summed next-token loss of the logits the model outputs from final residual state h."""
    return float(row_loss_sums(log_probs(stack.head(h)), input_ids).sum())
