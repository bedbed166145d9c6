"""Thin wrapper: python tools/export_hf.py ... is cod-export ..."""

import sys

from megatron_cod.export.cli import export_main

sys.exit(export_main())
