#!/usr/bin/env python3
"""Megatron-LM style entry point: the same as the ``cod-preprocess`` console script."""

import sys

from megatron_cod.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
