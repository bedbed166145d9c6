"""megatron_cod: is my model actually using its depth? Tooling on Megatron-Core."""

__version__ = "0.1.0"
