"""`cod-sweep SWEEP`: train every member of a sweep (a YAML file or a shipped name) over its seeds,
skip what already finished, resume what was interrupted, optionally analyse, then compare.

    cod-sweep cpu_smoke
    cod-sweep cpu_depth --seeds 3 --analyze
    cod-sweep my_sweep.yaml --set train.train_iters=50 --dry-run
    cod-sweep paper_depth --launcher slurm --nproc-per-node 8
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import yaml

from megatron_cod.cli_errors import cli_main
from megatron_cod.compare.errors import CompareError
from megatron_cod.sweep.spec import MemberRun, Sweep, load_sweep, shipped_sweeps
from megatron_cod.tracking import tags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CompareError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cod-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "sweep", metavar="SWEEP", help=f"a sweep YAML file or a shipped sweep ({', '.join(shipped_sweeps())})"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every member, e.g. --set train.train_iters=50 (repeatable)",
    )
    p.add_argument(
        "--seeds", type=int, metavar="N", help="run each member with N seeds (train.seed, +1, ...)"
    )
    p.add_argument(
        "--output-dir", metavar="DIR", help="where member runs and checkpoints go (default sweeps/<name>)"
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db, as training)",
    )
    p.add_argument(
        "--nproc-per-node", type=int, default=1, metavar="N", help="launch each member with torchrun"
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: run members one after another here; slurm: write sbatch scripts and submit",
    )
    p.add_argument("--analyze", action="store_true", help="run cod-analyze on each member's final checkpoint")
    p.add_argument("--no-compare", action="store_true", help="skip the final cod-compare")
    p.add_argument(
        "--dry-run", action="store_true", help="list members, seeds and their state; train nothing"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--set must be KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def _diff(run: MemberRun) -> str:
    return " ".join(f"{k}={v}" for k, v in run.member.overrides.items()) or "(base)"


class SweepRunner:
    def __init__(
        self, sweep: Sweep, runs: list[MemberRun], root: Path, uri: str, args: argparse.Namespace
    ) -> None:
        self.sweep, self.runs, self.root, self.uri, self.args = sweep, runs, root, uri, args
        self.members = len(sweep.members)
        self.seeds = max(r.seed_index for r in runs)

    def prefix(self, run: MemberRun) -> str:
        return (
            f"[{self.sweep.name} member {run.index}/{self.members} {run.member.id}"
            f" seed {run.seed_index}/{self.seeds}]"
        )

    def plan(self) -> list[tuple[MemberRun, Path, Any]]:
        from megatron_cod.sweep.state import finished_runs, run_directory, state_of

        finished = finished_runs(self.uri, self.sweep.name)
        return [
            (run, run_directory(self.root, run), state_of(run, run_directory(self.root, run), finished))
            for run in self.runs
        ]

    def dry_run(self) -> None:
        from megatron_cod.sweep.state import run_hash

        print(
            f"sweep {self.sweep.name}: {self.members} members x {self.seeds} seeds -> {self.root}, store {self.uri}"
        )
        if self.sweep.description:
            print(f"  {self.sweep.description}")
        for run, _directory, state in self.plan():
            print(
                f"  {run.member.id:<24} seed {run.seed:<6} hash {run_hash(run.config)[:8]}  {state.describe():<28} "
                f"{_diff(run)}"
            )

    def run_local(self) -> list[str]:
        from megatron_cod.sweep.launch import child_env, run_config, run_streamed, training_command
        from megatron_cod.sweep.state import finished_runs

        failures, trained = [], 0
        for run, directory, state in self.plan():
            prefix = self.prefix(run)
            if state.finished_run_id:
                print(f"{prefix} {state.describe()}: skipped", flush=True)
            else:
                directory.mkdir(parents=True, exist_ok=True)
                config_path = directory / "config.yaml"
                run_config(run, self.sweep.name, directory, self.uri).to_yaml(config_path)
                resume = state.resume_iteration is not None
                print(
                    f"{prefix} {'resuming from iteration ' + str(state.resume_iteration) if resume else 'training'}"
                    f" ({_diff(run)}, seed {run.seed}) in {directory}",
                    flush=True,
                )
                start = time.perf_counter()
                code = run_streamed(
                    training_command(config_path, self.args.nproc_per_node, resume),
                    child_env(self.uri),
                    prefix,
                    directory / "train.log",
                )
                if code != 0:
                    failures.append(
                        f"{run.member.id} seed {run.seed} (exit {code}; log {directory / 'train.log'})"
                    )
                    print(f"{prefix} FAILED with exit {code}; see {directory / 'train.log'}", flush=True)
                    continue
                trained += 1
                print(f"{prefix} finished in {time.perf_counter() - start:.0f} s", flush=True)
            if self.args.analyze:
                done = finished_runs(self.uri, self.sweep.name)
                failures += self.analyze(run, directory, done)
        print(f"[{self.sweep.name}] trained {trained} of {len(self.runs)} runs", flush=True)
        return failures

    def analyze(self, run: MemberRun, directory: Path, finished: dict) -> list[str]:
        from megatron_cod.sweep.launch import child_env, run_streamed
        from megatron_cod.sweep.state import analyzed, run_hash

        training = finished.get((run.member.id, str(run.seed), run_hash(run.config)))
        if training is None or training.info.run_id in analyzed(self.uri, [training]):
            return []
        # beside the run's journal, where cod-compare --run-dirs looks for it
        out = Path(training.data.tags.get(tags.RUN_DIR, directory)) / "analysis"
        cmd = [
            sys.executable,
            "-m",
            "megatron_cod.analysis.cli",
            *self.sweep.analyze_args,
            "--checkpoint",
            str(directory / "checkpoints"),
            "--output-dir",
            str(out),
            "--overwrite",
            "--quiet",
            "--mlflow-run-id",
            training.info.run_id,
        ]
        print(f"{self.prefix(run)} analysing the final checkpoint", flush=True)
        code = run_streamed(cmd, child_env(self.uri), self.prefix(run), directory / "analysis.log")
        return [] if code == 0 else [f"{run.member.id} seed {run.seed} analysis (exit {code})"]

    def run_slurm(self) -> None:
        from megatron_cod.sweep.launch import run_config, write_slurm

        scripts = []
        for run, directory, state in self.plan():
            if state.finished_run_id:
                print(f"{self.prefix(run)} {state.describe()}: skipped", flush=True)
                continue
            directory.mkdir(parents=True, exist_ok=True)
            config_path = directory / "config.yaml"
            run_config(run, self.sweep.name, directory, self.uri).to_yaml(config_path)
            scripts.append(
                write_slurm(
                    run,
                    self.sweep.name,
                    config_path,
                    self.args.nproc_per_node,
                    state.resume_iteration is not None,
                    self.uri,
                )
            )
        submit = self.root / "submit.sh"
        submit.write_text(
            "#!/bin/bash\nset -euo pipefail\n" + "".join(f"sbatch {shlex.quote(str(s))}\n" for s in scripts)
        )
        print(f"[{self.sweep.name}] wrote {len(scripts)} sbatch scripts and {submit}")
        if not scripts:
            return
        if shutil.which("sbatch"):
            subprocess.run(["bash", str(submit)], check=True)
        else:
            print(f"[{self.sweep.name}] sbatch is not on PATH here; on the cluster run: bash {submit}")
        print(
            f"[{self.sweep.name}] when the jobs finish: cod-compare --sweep {self.sweep.name} "
            f"--tracking-uri {self.uri} --claims"
        )


def run(args: argparse.Namespace) -> int:
    from megatron_cod.tracking import resolve_tracking_uri

    if args.nproc_per_node < 1:
        raise CompareError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    sweep = load_sweep(args.sweep)
    runs = sweep.expand(_overrides(args.set), args.seeds)  # every member validated before anything runs
    uri = args.tracking_uri or resolve_tracking_uri(runs[0].config.logging)
    root = Path(args.output_dir or Path("sweeps") / sweep.name).resolve()
    runner = SweepRunner(sweep, runs, root, uri, args)
    if args.dry_run:
        runner.dry_run()
        return 0
    if args.launcher == "slurm":
        root.mkdir(parents=True, exist_ok=True)
        runner.run_slurm()
        return 0
    failures = runner.run_local()
    if not args.no_compare:
        from megatron_cod.compare.cli import main as compare

        code = compare(
            [
                "--sweep",
                sweep.name,
                "--tracking-uri",
                uri,
                "--output-dir",
                str(root / "comparison"),
                "--overwrite",
                "--claims",
                "--title",
                f"Sweep {sweep.name}",
            ]
        )
        if code != 0:
            failures.append("cod-compare")
    if failures:
        print(f"error: sweep {sweep.name}: {len(failures)} failed: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


@cli_main("")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
