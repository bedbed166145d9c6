#!/usr/bin/env python
"""Depth-utilization analysis of a checkpoint or HF model; same as the ``cod-analyze`` console script."""

import sys

from megatron_cod.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
