"""Turn the CLI's model arguments into a layer stack (plus what the model source knows about its data).

megatron_cod checkpoints come through ``megatron_adapter``: their ``data_defaults`` are the training
config's data (prefix, split, tokenizer) and ``parent_run_id`` is the training run's MLflow id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.analysis.hf_adapter import load_hf_stack


@dataclass(frozen=True)
class LoadedModel:
    stack: LayerStack
    data_defaults: dict[str, Any] = field(default_factory=dict)  # DataConfig fields the source knows
    parent_run_id: str | None = None


def load_model(hf_model: str | None, checkpoint: str | None) -> LoadedModel:
    if hf_model is not None:
        return LoadedModel(load_hf_stack(hf_model))
    if checkpoint is None:
        raise AnalysisError("give --hf-model DIR or --checkpoint DIR")
    from megatron_cod.analysis.megatron_adapter import load_megatron_stack

    stack, defaults, run_id = load_megatron_stack(checkpoint)
    return LoadedModel(stack, defaults, run_id)
