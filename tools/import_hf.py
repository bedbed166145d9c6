"""Thin wrapper: python tools/import_hf.py ... is cod-import ..."""

import sys

from megatron_cod.export.cli import import_main

sys.exit(import_main())
