"""Export megatron_cod models to Hugging Face formats."""

from megatron_cod.export.llama import to_llama

__all__ = ["to_llama"]
