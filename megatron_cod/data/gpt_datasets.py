"""Training-side reading: megatron-core's GPTDataset over preprocessed prefixes, through
BlendedMegatronDatasetBuilder, with blends (``"0.7 pathA 0.3 pathB"``) and split strings
(``"949,50,1"``) or separate train / valid / test blends.

Samples are indexed deterministically from ``seed``, so a training loop resumes by sample index.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from megatron_cod.data.errors import DataError
from megatron_cod.data.tokenizer import CodTokenizer

with warnings.catch_warnings():
    # megatron.core's package import warns about missing Transformer Engine / apex, which the
    # data pipeline never uses.
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import get_blend_from_list

Blend = tuple[list[str], list[float] | None]


def parse_blend(data_path: Sequence[str]) -> Blend:
    """Prefixes and weights from ``["0.7 pathA 0.3 pathB"]``, ``["0.7", "pathA", ...]`` or
    ``["pathA", "pathB"]`` (no weights: megatron weighs by size). Each prefix must exist."""
    tokens = [token for item in data_path for token in item.split()]
    if not tokens:
        raise DataError("no data path given")
    prefixes, weights = get_blend_from_list(tokens)
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise DataError(f"{prefix}: no Megatron dataset here (needs {prefix}.bin and .idx)")
    if weights is not None and any(w <= 0 for w in weights):
        raise DataError(f"blend weights must be positive, got {weights}")
    return list(prefixes), weights


def build_gpt_datasets(
    data_path: list[str],
    split: str | None,
    seq_length: int,
    seed: int,
    tokenizer: CodTokenizer,
    num_samples: tuple[int, int, int],
    cache_dir: str | None = None,
    per_split_paths: tuple[list[str], list[str], list[str]] | None = None,
    *,
    is_built_on_rank: Callable[[], bool] | None = None,
    eod_mask_loss: bool = False,
    create_attention_mask: bool = True,
) -> tuple:
    """Train, valid and test GPTDatasets (None for a split with no data).

    Either ``data_path`` (a blend) with a ``split`` string, or ``per_split_paths`` (one blend
    per split, ``split`` ignored). ``num_samples`` is the number of samples each split must
    yield. Call on every rank with torch.distributed initialised: megatron builds the index
    caches on rank 0 (under ``cache_dir``, default ``<prefix>/cache/``) while the others wait,
    then they load them. ``is_built_on_rank`` defaults to every rank.
    """
    if not torch.distributed.is_initialized():
        raise RuntimeError(
            "build_gpt_datasets needs torch.distributed initialised "
            "(megatron builds the dataset indices on rank 0 while the other ranks wait)"
        )
    if per_split_paths is not None:
        if data_path:
            raise DataError("give data_path (with split) or per_split_paths, not both")
        blend = None
        blend_per_split = [parse_blend(paths) if paths else None for paths in per_split_paths]
        split = None
    else:
        if split is None:
            raise DataError("a split string such as '949,50,1' is needed with data_path")
        blend = parse_blend(data_path)
        blend_per_split = None
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask,
    )
    builder = BlendedMegatronDatasetBuilder(
        GPTDataset, list(num_samples), is_built_on_rank or (lambda: True), config
    )
    train, valid, test = builder.build()
    return train, valid, test
