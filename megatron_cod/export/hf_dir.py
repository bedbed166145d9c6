"""A Hugging Face model directory: written (into a staged directory, see data.atomic), or read back.

Written: safetensors (streamed, sharded with an index above ``max_shard_bytes``), config.json,
generation_config.json, the tokenizer (tokenizer.json + tokenizer_config.json for AutoTokenizer,
plus megatron_cod's cod_tokenizer.json naming the end-of-document and pad tokens) and the
provenance file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from megatron_cod.data.tokenizer import CodTokenizer
from megatron_cod.export.architecture import Target
from megatron_cod.export.errors import ExportError
from megatron_cod.export.mapping import to_hf
from megatron_cod.export.safetensors_stream import INDEX_FILE, SINGLE_FILE, write_safetensors

PROVENANCE_FILE = "cod_export.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def check_output(output: Path, force: bool, flag: str = "--output") -> None:
    """Refuse before any work: an existing non-empty directory needs force; a file never goes."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"{flag} {output} is a file, not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ExportError(f"{flag} {output} is not empty (pass --force to replace it)")


def save_tokenizer(directory: Path, tokenizer: CodTokenizer, model_max_length: int) -> None:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf_tokenizer,
        eos_token=tokenizer.eod_token,
        pad_token=tokenizer.pad_token,
        model_max_length=model_max_length,
    )
    fast.save_pretrained(str(directory))
    tokenizer.save(directory)  # our tokenizer.json byte for byte, and cod_tokenizer.json


def write_model_dir(
    directory: Path,
    state: Mapping[str, torch.Tensor],
    target: Target,
    tokenizer: CodTokenizer,
    dtype: str,
    model_max_length: int,
    provenance: dict,
    max_shard_bytes: int,
) -> list[str]:
    """Write everything into ``directory`` (a staging directory); returns the weight files."""
    torch_dtype = DTYPES[dtype]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    # the layout comes from shapes alone (meta tensors), so the header precedes the data
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    layout = [(name, tuple(t.shape)) for name, t in to_hf(meta, target)]
    files = write_safetensors(directory, layout, to_hf(state, target), torch_dtype, max_shard_bytes)
    config = target.config.__class__.from_dict(target.config.to_dict())
    config.architectures = [target.architecture]
    config.eos_token_id = tokenizer.eod
    config.pad_token_id = tokenizer.pad
    config.dtype = torch_dtype
    config.save_pretrained(str(directory))
    GenerationConfig(
        bos_token_id=None, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad
    ).save_pretrained(str(directory))
    save_tokenizer(directory, tokenizer, model_max_length)
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return files


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF directory (the index's, else the single file)."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in dict.fromkeys(weight_map.values())]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    raise ExportError(f"--hf-model {directory}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)")
