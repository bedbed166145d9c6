"""Tokenizer and train/valid/test GPT datasets for a run (built-in corpus when no --data-path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass
class TrainingData:
    tokenizer: Any
    datasets: dict[str, Any]


def _builtin(cfg: Any):
    """Rank 0 builds the cached corpus first so the other ranks only read it."""
    from megatron_cod.data.builtin import ensure_builtin_dataset

    if dist.get_rank() == 0:
        builtin = ensure_builtin_dataset(cfg.data.builtin)
    dist.barrier()
    if dist.get_rank() != 0:
        builtin = ensure_builtin_dataset(cfg.data.builtin, show_progress=False)
    return builtin


def prepare_data(cfg: Any) -> TrainingData:
    from megatron_cod.data.gpt_datasets import build_gpt_datasets
    from megatron_cod.data.tokenizer import load_tokenizer

    t = cfg.train
    if cfg.data.data_path:
        data_path, split = list(cfg.data.data_path), cfg.data.split
        if not cfg.data.tokenizer:
            raise ValueError("--data-path needs --tokenizer (the tokenizer the data was preprocessed with)")
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    else:
        builtin = _builtin(cfg)
        data_path, split = [builtin.data_prefix], builtin.split
        tokenizer = load_tokenizer(cfg.data.tokenizer or builtin.tokenizer_path)
    # every evaluation reads the same eval_iters batches of the validation split
    num_samples = (
        max(t.train_iters, 1) * t.global_batch_size,
        t.eval_iters * t.global_batch_size,
        max(t.eval_iters, 1) * t.global_batch_size,
    )
    train, valid, test = build_gpt_datasets(
        data_path, split, cfg.model.seq_length, t.seed, tokenizer, num_samples, create_attention_mask=False
    )
    return TrainingData(tokenizer=tokenizer, datasets={"train": train, "valid": valid, "test": test})
