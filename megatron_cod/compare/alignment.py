"""Where runs are compared: at equal tokens by default, since depth statistics change with training length.

Each run is read at one of its telemetry steps (the steps where per-layer variance was logged):
the nearest to the target token count. The default target is the largest token count that every
finished run reached (all runs when none has finished), so short or crashed runs do not drag the
comparison back; a run that did not reach the target is read at its last telemetry step and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.records import RunRecord


@dataclass(frozen=True)
class PointChoice:
    """How the user chose the point: equal tokens (default), --at-tokens, --at-step or --final."""

    at_tokens: int | None = None
    at_step: int | None = None
    final: bool = False

    def __post_init__(self) -> None:
        if sum([self.at_tokens is not None, self.at_step is not None, self.final]) > 1:
            raise CompareError("--at-tokens, --at-step and --final exclude each other")
        for name, value in (("--at-tokens", self.at_tokens), ("--at-step", self.at_step)):
            if value is not None and value <= 0:
                raise CompareError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class RunPoint:
    step: int | None  # the telemetry step read (None: the run logged no telemetry)
    tokens: int | None
    reached: bool  # False when the run stopped before the target


@dataclass(frozen=True)
class Alignment:
    description: str  # one sentence for the report
    points: dict[str, RunPoint]  # by run id
    target_tokens: int | None


def _tokens(run: RunRecord, step: int) -> int | None:
    return step * run.tokens_per_step if run.tokens_per_step else None


def _nearest(steps: list[int], target: float, key) -> int:
    return min(steps, key=lambda s: (abs(key(s) - target), s))


def align(runs: list[RunRecord], choice: PointChoice) -> Alignment:
    if choice.final:
        points = {}
        for run in runs:
            steps = run.telemetry_steps
            step = steps[-1] if steps else None
            points[run.run_id] = RunPoint(step, _tokens(run, step) if step else None, True)
        lengths = {p.tokens for p in points.values() if p.tokens is not None}
        note = " (the runs differ in length)" if len(lengths) > 1 else ""
        return Alignment(f"each run at its last telemetry step{note}", points, None)
    if choice.at_step is not None:
        points = {}
        for run in runs:
            steps = run.telemetry_steps
            if not steps:
                points[run.run_id] = RunPoint(None, None, False)
                continue
            step = _nearest(steps, choice.at_step, key=lambda s: s)
            points[run.run_id] = RunPoint(step, _tokens(run, step), steps[-1] >= choice.at_step)
        return Alignment(f"step {choice.at_step} (the nearest telemetry step of each run)", points, None)
    # tokens_per_step is truthy here, so this is _tokens without its None branch
    reach: dict[str, int] = {
        run.run_id: run.telemetry_steps[-1] * run.tokens_per_step
        for run in runs
        if run.telemetry_steps and run.tokens_per_step
    }
    if not reach:
        return Alignment(
            "no run logged per-layer telemetry with a known batch size",
            {run.run_id: RunPoint(None, None, False) for run in runs},
            None,
        )
    if choice.at_tokens is not None:
        if choice.at_tokens > max(reach.values()):
            raise CompareError(
                f"--at-tokens {choice.at_tokens} is beyond what any selected run reached "
                f"(at most {max(reach.values())} tokens)"
            )
        target = choice.at_tokens
        how = f"{target:,} tokens (--at-tokens)"
    else:
        finished = [reach[r.run_id] for r in runs if r.run_id in reach and r.status == "FINISHED"]
        target = min(finished or reach.values())
        how = f"{target:,} tokens, the most that every {'finished ' if finished else ''}run reached"
    points = {}
    for run in runs:
        if run.run_id not in reach:
            points[run.run_id] = RunPoint(None, None, False)
            continue
        per_step = run.tokens_per_step
        assert per_step is not None  # every run in reach has a batch size
        step = _nearest(run.telemetry_steps, target, key=lambda s: s * per_step)
        points[run.run_id] = RunPoint(step, step * per_step, reach[run.run_id] >= target)
    return Alignment(f"equal tokens: {how} (each run at its nearest telemetry step)", points, target)
