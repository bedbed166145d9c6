"""Thin wrapper: python tools/sweep.py ... is cod-sweep ..."""

import sys

from megatron_cod.sweep.cli import main

sys.exit(main())
