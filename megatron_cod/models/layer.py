"""A megatron TransformerLayer that applies depth variants after construction."""

from __future__ import annotations

from typing import Any

from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_cod.models.variants import LAYER_VARIANTS


class CodTransformerLayer(TransformerLayer):
    """megatron's TransformerLayer plus named variants (see variants.LAYER_VARIANTS).

    Variants come through ModuleSpec params, so the spec stays the single description of a layer.
    """

    def __init__(self, *args: Any, variants: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        unknown = [v for v in variants if v not in LAYER_VARIANTS]
        if unknown:
            raise ValueError(f"unknown layer variant(s) {unknown}; known: {sorted(LAYER_VARIANTS)}")
        self.variants = tuple(variants)
        for name in self.variants:
            LAYER_VARIANTS[name](self)
