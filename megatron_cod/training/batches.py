"""Deterministic micro-batch streams over a megatron dataset, resumable by consumed samples.

Global batch g holds samples [g*GBS, (g+1)*GBS) (modulo the dataset length); data-parallel rank r
takes the r-th contiguous slice and cuts it into micro-batches. The stream depends only on the
number of consumed samples, so resuming a run, or changing TP/PP/EP, sees the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def micro_batch_indices(
    consumed_samples: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    dataset_len: int,
) -> list[list[int]]:
    """Sample indices of each micro-batch this rank runs for the global batch starting there."""
    per_rank = global_batch_size // dp_size
    start = consumed_samples + dp_rank * per_rank
    return [
        [(start + m * micro_batch_size + i) % dataset_len for i in range(micro_batch_size)]
        for m in range(per_rank // micro_batch_size)
    ]


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    keys = [k for k in ("tokens", "labels", "loss_mask", "position_ids") if k in samples[0]]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}


class GlobalBatchStream:
    """Yields the micro-batches of successive global batches for one data-parallel rank."""

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
    ) -> None:
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    def next_global_batch(self) -> Iterator[dict[str, torch.Tensor]]:
        """Iterator over this rank's micro-batches of the next global batch."""
        indices = micro_batch_indices(
            self.consumed_samples,
            self.global_batch_size,
            self.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            len(self.dataset),
        )
        self.consumed_samples += self.global_batch_size
        return (collate([self.dataset[i] for i in mb]) for mb in indices)
