"""Turn the CLI's model arguments into a layer stack (plus what the model source knows about its data).

A megatron_cod checkpoint adapter plugs in here: a ``LayerStack`` subclass over the GPTModel
(``[s, b, h]`` layout, rotary_pos_emb and mask built in ``prepare``) and a loader returning a
``LoadedModel`` whose ``data_defaults`` come from the training config (data prefix, split,
tokenizer) and whose ``parent_run_id`` is the training run's MLflow id when recorded.
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
    raise AnalysisError(
        f"--checkpoint {checkpoint}: megatron_cod checkpoints are not supported yet (megatron adapter pending); "
        "use --hf-model"
    )
