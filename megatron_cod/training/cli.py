"""`cod-train` / `python -m megatron_cod.training`: pretrain from YAML + Megatron-style flags."""

from __future__ import annotations

import os
import sys

from megatron_cod.config import ConfigError, load_config
from megatron_cod.tracking.lifecycle import RunTerminated


def _is_logging_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    from megatron_cod.training.loop import pretrain

    try:
        outcome = pretrain(cfg)
    except (FileExistsError, FileNotFoundError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
