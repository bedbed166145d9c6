"""Language-model loss and output-distribution comparisons in fp32.

The unperturbed model's output distribution is turned once per batch into a ``Reference``
(probabilities, negative entropy, top-1 token); every perturbed variant is then compared with it
by ``variant_stats``: one log-softmax of the variant's logits gives its loss, and the KL is one
row-wise dot product with the reference probabilities. Nothing about the reference is recomputed
per variant; the log-softmax over the vocabulary is the expensive part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[..., v] b[..., v] as one batched matrix product (no [.., V] temporary)."""
    vocab = a.shape[-1]
    return torch.bmm(a.reshape(-1, 1, vocab), b.reshape(-1, vocab, 1)).reshape(a.shape[:-1])


@dataclass(frozen=True)
class Reference:
    """The unperturbed output distribution of a batch, in the forms every comparison reuses."""

    probs: torch.Tensor  # [b, s, V]
    neg_entropy: torch.Tensor  # [b, s]: sum_v p log p
    top1: torch.Tensor  # [b, s]: the most likely token

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor) -> Reference:
        probs = log_probs.exp()
        return cls(probs, _rowwise_dot(probs, log_probs), log_probs.argmax(dim=-1))

    def rows(self, lo: int, hi: int) -> Reference:
        return Reference(self.probs[lo:hi], self.neg_entropy[lo:hi], self.top1[lo:hi])


def variant_stats(
    logits: torch.Tensor, input_ids: torch.Tensor, reference: Reference | None = None
) -> torch.Tensor:
    """Per sequence [b, 1 or 3]: summed next-token loss, and with a reference the summed
    KL(p_reference || p) in nats and the number of tokens whose top-1 prediction agrees."""
    variant = log_probs(logits)
    loss = row_loss_sums(variant, input_ids)
    if reference is None:
        return loss.unsqueeze(1)
    return torch.cat([loss.unsqueeze(1), compare_to(reference, variant)], dim=1)


def compare_to(reference: Reference, log_probs: torch.Tensor) -> torch.Tensor:
    """Per sequence [b, 2]: summed KL(p_reference || p) in nats and the number of tokens whose
    top-1 prediction agrees, for a variant's log-probabilities [b, s, V]."""
    kl = reference.neg_entropy - _rowwise_dot(reference.probs, log_probs)
    agree = log_probs.argmax(dim=-1) == reference.top1
    return torch.stack([kl.sum(dim=1), agree.float().sum(dim=1)], dim=1)
