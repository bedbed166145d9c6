"""The megatron-core side of writing: token dtype choice and the ``.bin/.idx`` builder.

This module and ``gpt_datasets`` hold every megatron-core import of the data package; the
names used (``IndexedDatasetBuilder``, ``DType``) are the same in megatron-core 0.16 and 0.19.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy

from megatron_cod.data.errors import DataError

with warnings.catch_warnings():
    # megatron.core's package import warns about missing Transformer Engine / apex, which the
    # data pipeline never uses.
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

DTYPES = ("auto", "uint16", "int32")


def choose_dtype(vocab_size: int, requested: str = "auto", tokenizer_name: str = "tokenizer"):
    """The numpy dtype of the token ids: megatron's choice for ``auto``, else the one asked for,
    refused when the vocabulary's largest id does not fit it."""
    if requested not in DTYPES:
        raise DataError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    dtype = DType.optimal_dtype(vocab_size) if requested == "auto" else getattr(numpy, requested)
    limit = int(numpy.iinfo(dtype).max) + 1
    if vocab_size > limit:
        raise DataError(
            f"{tokenizer_name}: vocabulary of {vocab_size} ids does not fit {dtype.__name__} "
            f"(at most {limit} ids); use --dtype auto"
        )
    return dtype


def open_builder(bin_path: Path, dtype) -> IndexedDatasetBuilder:
    """megatron-core's builder writing token ids of ``dtype`` to ``bin_path``."""
    return IndexedDatasetBuilder(str(bin_path), dtype=dtype)
