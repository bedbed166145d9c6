"""`cod-train` / `python -m megatron_cod.training`: pretrain from YAML + Megatron-style flags.

Errors follow megatron_cod.cli_errors: one line on stderr ("error: ..."), exit 2 for a bad flag, value
or combination, 1 for a run-time failure (unreadable data, a corrupt checkpoint, a failed save).
"""

from __future__ import annotations

import os
import sys

from megatron_cod.cli_errors import UsageError, cli_main
from megatron_cod.config.cli import build_parser, config_from_args
from megatron_cod.tracking.lifecycle import RunTerminated


def _is_logging_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1


@cli_main("")
def main(argv: list[str]) -> int:
    cfg = config_from_args(build_parser(prog="cod-train").parse_args(argv))
    from megatron_cod.training.loop import pretrain

    try:
        outcome = pretrain(cfg)
    except (FileExistsError, FileNotFoundError) as exc:
        # a --save that holds checkpoints, a --load or --data-path that is not there: the flags are wrong
        raise UsageError(str(exc)) from exc
    except RunTerminated:
        print("[megatron_cod] stopped by SIGTERM", file=sys.stderr)
        return 143
    if _is_logging_rank():
        print(f"\n[megatron_cod] finished at iteration {outcome.iteration}; run directory {outcome.run_dir}")
        if outcome.checkpoint:
            print(f"[megatron_cod] checkpoint: {outcome.checkpoint}")
        if outcome.run_id:
            print(f"[megatron_cod] MLflow run {outcome.run_id} in {outcome.tracking_uri}")
            print(f"[megatron_cod] open it with: {outcome.ui_hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
