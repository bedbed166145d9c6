"""Import a local Hugging Face Llama / Mixtral / Qwen2-MoE directory as a megatron_cod checkpoint.

The result has the layout of a training checkpoint (``iter_0000000/`` with config.yaml,
cod_checkpoint.json and the tokenizer, plus the tracker file) and holds weights only:
``cod-train --load DIR --no-load-optim`` continues from it and ``cod-analyze --checkpoint DIR``
reads it. Tensors go through the same rules as the export, in reverse, so exporting an import gives
the original tensors bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from megatron_cod.data.atomic import staged_directory
from megatron_cod.data.errors import DataError
from megatron_cod.export.architecture import ARCHITECTURES, import_target
from megatron_cod.export.errors import ExportError
from megatron_cod.export.hf_dir import check_output, weight_files
from megatron_cod.export.mapping import from_hf


@dataclass(frozen=True)
class Imported:
    checkpoint: Path
    architecture: str


@contextlib.contextmanager
def tensor_reader(directory: Path) -> Iterator[Callable[[str], torch.Tensor]]:
    """``read(name)`` for the safetensors of an HF directory, one tensor at a time."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        where: dict[str, Any] = {}  # tensor name -> its file's safe_open handle
        for file in weight_files(directory):
            handle = stack.enter_context(safe_open(str(file), "pt"))
            where.update({name: handle for name in handle.keys()})

        def read(name: str) -> torch.Tensor:
            if name not in where:
                raise ExportError(f"--hf-model {directory}: tensor {name} is missing")
            return where[name].get_tensor(name)

        yield read


def import_hf(hf_model: str | Path, output: str | Path, force: bool = False) -> Imported:
    from transformers import AutoConfig

    from megatron_cod import platform
    from megatron_cod.config import ConfigError, ExperimentConfig, ParallelConfig
    from megatron_cod.data.tokenizer import load_tokenizer
    from megatron_cod.models import build_gpt_model, padded_vocab_size
    from megatron_cod.training.checkpoint import save_checkpoint

    source, output = Path(hf_model), Path(output)
    if not (source / "config.json").is_file():
        raise ExportError(f"--hf-model {source}: no config.json (a local Hugging Face model directory)")
    hf_config = AutoConfig.from_pretrained(str(source))
    fields, target = import_target(hf_config)
    try:
        tokenizer = load_tokenizer(source)
        cfg = ExperimentConfig.from_dict({"model": fields})
    except (DataError, ConfigError) as exc:
        raise ExportError(f"--hf-model {source}: {exc}") from exc
    vocab = padded_vocab_size(tokenizer.vocab_size, 1)
    if vocab != hf_config.vocab_size:
        raise ExportError(
            f"--hf-model {source}: vocab_size {hf_config.vocab_size} is not the tokenizer's "
            f"{tokenizer.vocab_size} tokens padded to a multiple of 128 ({vocab}), as megatron_cod builds it"
        )
    check_output(output, force)
    with tensor_reader(source) as read:
        state = from_hf(read, target)
    if not torch.distributed.is_initialized():
        platform.initialize(seed=cfg.train.seed)
    model = build_gpt_model(
        cfg.model, tokenizer.vocab_size, ParallelConfig(), pre_process=True, post_process=True
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("_extra_state")]:
        raise RuntimeError(f"import mapping mismatch: missing {missing}, unexpected {unexpected}")
    layout = {"world_size": 1, "tp": 1, "pp": 1, "ep": 1, "distributed_optimizer": 0}
    with staged_directory(output) as tmp:
        save_checkpoint(
            tmp,
            0,
            [model],
            None,
            None,
            {"train": 0},
            yaml.safe_dump(cfg.to_dict(), sort_keys=False),
            layout,
            tokenizer=tokenizer,
        )
    return Imported(output, ARCHITECTURES[target.family])
