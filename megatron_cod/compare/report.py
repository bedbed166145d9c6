"""report.md: what was compared and where, the seed-group table, every run, the claims, the figures."""

from __future__ import annotations

from megatron_cod.compare.alignment import Alignment
from megatron_cod.compare.claims import MEASURES, ClaimResult
from megatron_cod.compare.records import RunRecord
from megatron_cod.compare.table import Table, fmt

PAPER_SCALE = "the paper: 5e9 tokens, L = 12-32, d = 768-2048"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def _scale(runs: list[RunRecord], alignment: Alignment) -> str:
    depths = sorted({run.num_layers for run in runs if run.num_layers})
    widths = sorted({width for run in runs if (width := run.int_param("model.hidden_size"))})
    tokens = [p.tokens for p in alignment.points.values() if p.tokens]
    seen = (
        f"{min(tokens):,}-{max(tokens):,}"
        if tokens and min(tokens) != max(tokens)
        else (f"{tokens[0]:,}" if tokens else "unknown")
    )
    span = lambda v: f"{v[0]}-{v[-1]}" if len(v) > 1 else (str(v[0]) if v else "?")  # noqa: E731
    return f"Scale of these runs: {seen} tokens seen, L = {span(depths)}, d = {span(widths)}; {PAPER_SCALE}."


def _claims_section(results: list[ClaimResult], runs: list[RunRecord], alignment: Alignment) -> list[str]:
    lines = [
        "## Replication of the paper's claims",
        "",
        _scale(runs, alignment),
        "",
        "A direction **holds** when the difference of group means exceeds twice its standard error "
        "(Welch) in the expected direction, is **opposite** when it does so the other way, and is "
        "**within noise** otherwise; a group with a single seed gives no verdict.",
        "",
    ]
    for result in results:
        claim = result.claim
        lines.append(f"### {claim.text}")
        lines.append("")
        if not result.judged:
            lines += [f"**not enough runs**: {result.reason}.", "", f"Paper: {claim.paper}.", ""]
            continue
        # a judged result always has both groups and its measures
        assert result.low is not None and result.high is not None and result.measures is not None
        lines.append(
            f"Compared `{result.low.label}` (n={len(result.low.runs)}) with `{result.high.label}` "
            f"(n={len(result.high.runs)}). Paper: {claim.paper}."
        )
        lines.append("")
        rows = []
        for m in result.measures:
            expected = "lower" if claim.signs[m.measure] < 0 else "higher"
            diff = m.difference
            rows.append(
                [
                    MEASURES[m.measure],
                    f"{expected} in `{result.high.label}`",
                    diff.low.text() if diff else "—",
                    diff.high.text() if diff else "—",
                    diff.text() if diff else "—",
                    f"**{m.verdict}**",
                ]
            )
        lines += _md_table(["measure", "expected", "low group", "high group", "difference", "verdict"], rows)
        lines.append("")
    return lines


def render(
    title: str,
    source: str,
    runs: list[RunRecord],
    varying: list[str],
    alignment: Alignment,
    table: Table,
    superseded: list[tuple[RunRecord, RunRecord]],
    figures: list[str],
    claims: list[ClaimResult] | None,
) -> str:
    label_of = {run.run_id: group.label for group, _ in table.groups for run in group.runs}
    lines = [
        f"# {title}",
        "",
        f"- runs: {len(runs)} from {source}",
        f"- compared at: {alignment.description}",
        f"- varying parameters: {', '.join(f'`{k}`' for k in varying) or 'none'}; "
        "runs that differ only in `train.seed` form one group (mean ± standard error, n seeds)",
        "",
    ]
    cols = table.columns
    lines += ["## Groups", ""]
    group_rows = []
    for group, est in table.groups:
        reached = [r for r in group.runs if alignment.points[r.run_id].reached]
        row = [group.label, str(len(reached)), ", ".join(r.seed or "?" for r in reached) or "—"]
        row += [e.text() if (e := est.get(c.key)) else "—" for c in cols]
        group_rows.append(row)
    lines += _md_table(["group", "n", "seeds", *[c.title for c in cols]], group_rows)
    lines += ["", "n counts the runs that reached the comparison point.", "", "## Runs", ""]
    run_rows = []
    for run in runs:
        point = alignment.points[run.run_id]
        status = run.status + ("" if point.reached else ", short of the comparison point")
        values = table.rows[run.run_id]
        run_rows.append(
            [
                f"`{run.name}`",
                label_of[run.run_id],
                run.seed or "?",
                status,
                str(point.step) if point.step is not None else "no telemetry",
                *[fmt(values.get(c.key)) for c in cols],
            ]
        )
    lines += _md_table(["run", "group", "seed", "status", "step", *[c.title for c in cols]], run_rows)
    lines.append("")
    if superseded:
        lines += [
            "## Superseded runs",
            "",
            "Sweep members that were interrupted and run again; the newer run is the one compared.",
            "",
        ]
        lines += [f"- `{old.name}` ({old.status}) → `{new.name}` ({new.status})" for old, new in superseded]
        lines.append("")
    if claims is not None:
        lines += _claims_section(claims, runs, alignment)
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)
