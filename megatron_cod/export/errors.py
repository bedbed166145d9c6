"""Errors of export, import and evaluation commands: one line that names the flag, file or feature."""


class ExportError(Exception):
    """Bad input, or a model that no stock Hugging Face class expresses exactly."""
