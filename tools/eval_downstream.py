"""Thin wrapper: python tools/eval_downstream.py ... is cod-eval ..."""

import sys

from megatron_cod.evaluation.cli import main

sys.exit(main())
