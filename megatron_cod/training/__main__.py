import sys

from megatron_cod.training.cli import main

sys.exit(main())
