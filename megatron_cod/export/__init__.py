"""Export megatron_cod checkpoints to stock Hugging Face classes, and import them back."""

from megatron_cod.export.errors import ExportError
from megatron_cod.export.exporter import export_checkpoint, hf_model_twin
from megatron_cod.export.llama import to_llama

__all__ = ["ExportError", "export_checkpoint", "hf_model_twin", "to_llama"]
