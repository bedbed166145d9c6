"""Layer-stack adapter for Hugging Face causal LMs whose decoder layers are ``model.model.layers``.

Covers the Llama, Qwen2, Mixtral and OLMoE families (transformers 5.x). Each decoder layer is
called the way the model's own forward calls it: ``position_embeddings=(cos, sin)`` from
``model.model.rotary_emb``, ``position_ids``, and the causal (or sliding-window) mask built by
``transformers.masking_utils`` for the layer's attention type. In transformers 5 a decoder layer
returns the hidden states tensor (MoE router logits are recorded by hooks, not returned).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.errors import AnalysisError

_FULL = "full_attention"
_SLIDING = "sliding_attention"


@dataclass(frozen=True)
class HFBatchContext:
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    masks: dict[str, Any]


class HFLayerStack(LayerStack):
    """Wraps a ``*ForCausalLM`` with ``model.model.layers``; puts it in fp32 eval mode, frozen."""

    def __init__(self, model: PreTrainedModel, source: str | None = None) -> None:
        decoder: Any = getattr(model, "model", None)
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or not hasattr(decoder, "rotary_emb"):
            raise AnalysisError(
                f"{type(model).__name__} has no decoder-layer list model.model.layers with rotary "
                "embeddings; supported families: Llama, Qwen2, Mixtral, OLMoE"
            )
        model.float().eval()
        model.requires_grad_(False)
        self.model = model
        self._decoder = decoder
        self._layers = layers
        self._config = model.config
        self._source = source

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self._config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().out_features)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            adapter="huggingface",
            model_type=self._config.model_type,
            architecture=type(self.model).__name__,
            attn_implementation=self._config._attn_implementation,
            source=self._source,
        )
        return info

    def _layer_type(self, index: int) -> str:
        # The mask follows the module (its index), so a swapped layer keeps its own attention type.
        layer_types = getattr(self._config, "layer_types", None)
        if layer_types is not None:
            return layer_types[index]
        return _SLIDING if getattr(self._config, "sliding_window", None) is not None else _FULL

    def prepare(self, input_ids: torch.Tensor) -> HFBatchContext:
        batch, seq = input_ids.shape
        shape_ref = torch.empty(batch, seq, self.hidden_size, dtype=torch.float32, device=input_ids.device)
        position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        mask_kwargs = dict(
            config=self._config,
            inputs_embeds=shape_ref,
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )
        kinds = {self._layer_type(i) for i in range(self.num_layers)}
        masks: dict[str, Any] = {}
        if _FULL in kinds:
            masks[_FULL] = create_causal_mask(**mask_kwargs)
        if _SLIDING in kinds:
            masks[_SLIDING] = create_sliding_window_causal_mask(**mask_kwargs)
        position_embeddings = self._decoder.rotary_emb(shape_ref, position_ids)
        return HFBatchContext(position_ids, position_embeddings, masks)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids).float()

    def layer_forward(self, index: int, h: torch.Tensor, ctx: HFBatchContext) -> torch.Tensor:
        return self._layers[index](
            h,
            attention_mask=ctx.masks[self._layer_type(index)],
            position_ids=ctx.position_ids,
            position_embeddings=ctx.position_embeddings,
            use_cache=False,
        )

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self._decoder.norm(h)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(h).float()


def load_hf_stack(path: str | Path) -> HFLayerStack:
    """Load a local HF model directory (no hub access) as an fp32 layer stack."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise AnalysisError(f"--hf-model {path}: not a Hugging Face model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnalysisError(f"--hf-model {path}: cannot load model: {first_line}") from exc
    return HFLayerStack(model, source=str(path))
