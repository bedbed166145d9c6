"""Write (sharded) safetensors one tensor at a time.

``safetensors.torch.save_file`` serialises a whole file in memory, which for a shard means a second
copy of it; exporting would then peak at model + shard. The format is simple and documented
(https://huggingface.co/docs/safetensors: an 8-byte little-endian header length, a JSON header of
dtype / shape / byte offsets per tensor, then the raw little-endian bytes), and the layout of every
tensor is known before any is produced, so the header is written first and each tensor streamed
after it. Files are read back by the safetensors library itself (transformers, tests).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def plan_shards(
    layout: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped into files of at most max_shard_bytes (a bigger tensor alone)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in layout:
        n = _nbytes(shape, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _header(entries: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        end = offset + _nbytes(shape, dtype)
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    directory: Path,
    layout: list[tuple[str, tuple[int, ...]]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    max_shard_bytes: int,
) -> list[str]:
    """Write ``tensors`` (arriving in ``layout`` order, cast to ``dtype``); returns the file names.

    One file is ``model.safetensors``; more are ``model-0000i-of-0000n.safetensors`` plus the index
    transformers reads.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors holds little-endian data; this host is big-endian")
    shards = plan_shards(layout, dtype, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    stream: Iterator[tuple[str, torch.Tensor]] = iter(tensors)
    for file_name, entries in zip(names, shards):
        with open(directory / file_name, "wb") as f:
            f.write(_header(entries, dtype))
            for name, shape in entries:
                got, tensor = next(stream)
                if got != name or tuple(tensor.shape) != shape:
                    raise RuntimeError(
                        f"tensor stream out of order: expected {name} {shape}, got {got} "
                        f"{tuple(tensor.shape)}"
                    )
                data = tensor.detach().to(dtype).contiguous().reshape(-1)
                # ndarray supports the buffer protocol; numpy's stubs do not declare it
                f.write(memoryview(data.view(torch.uint8).numpy()))  # type: ignore[arg-type]
    if next(stream, None) is not None:
        raise RuntimeError("tensor stream longer than its layout")
    if len(shards) > 1:
        weight_map = {name: file_name for file_name, entries in zip(names, shards) for name, _ in entries}
        total = sum(_nbytes(shape, dtype) for _, shape in layout)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names
