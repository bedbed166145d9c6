"""Thin wrapper: python tools/compare_runs.py ... is cod-compare ..."""

import sys

from megatron_cod.compare.cli import main

sys.exit(main())
