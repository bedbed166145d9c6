"""Labels and seed groups: runs are named by the parameters that differ between them, and runs that
differ only in their seed form one group whose numbers are reported as mean ± standard error."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.compare.records import RunRecord
from megatron_cod.config.fingerprint import is_bookkeeping
from megatron_cod.tracking import tags

SEED_KEY = "train.seed"
# Short names for the parameters the paper varies; any other key is shown without its section.
SHORT_NAMES = {
    "model.num_layers": "layers",
    "optim.weight_decay": "wd",
    "model.seq_length": "T",
    "model.num_query_groups": "kv_groups",
    "model.group_query_attention": "gqa",
    "model.num_experts": "experts",
    "model.moe_router_topk": "topk",
    "model.moe_ffn_hidden_size": "expert_ffn",
    "model.hidden_size": "d",
    "model.layernorm_scaling": "lns",
    "model.norm_placement": "norm",
    "train.train_iters": "iters",
}


def short_name(key: str) -> str:
    return SHORT_NAMES.get(key, key.partition(".")[2] or key)


def varying_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys whose value differs between runs (bookkeeping keys and the seed left out)."""
    keys = sorted({key for run in runs for key in run.params})
    out = []
    for key in keys:
        if is_bookkeeping(key) or key == SEED_KEY:
            continue
        if len({run.param(key) for run in runs}) > 1:
            out.append(key)
    return out


@dataclass
class Group:
    label: str
    values: dict[str, str | None]  # the varying keys' values shared by the group
    runs: list[RunRecord]

    @property
    def seeds(self) -> list[str]:
        return [run.seed or "?" for run in self.runs]


def group_runs(runs: list[RunRecord]) -> tuple[list[str], list[Group]]:
    """(varying keys, groups in first-seen order); a group's runs differ at most in their seed."""
    keys = varying_keys(runs)
    groups: dict[tuple, Group] = {}
    for run in runs:
        values = {key: run.param(key) for key in keys}
        ident = tuple(values.values())
        if ident not in groups:
            label = " ".join(f"{short_name(k)}={v}" for k, v in values.items()) or "all runs"
            groups[ident] = Group(label, values, [])
        groups[ident].runs.append(run)
    return keys, list(groups.values())


def drop_superseded(runs: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """Keep one run per sweep (member, seed, config hash): the newest FINISHED one, else the newest.

    A sweep member that was interrupted and resumed leaves its first, unfinished run behind; that run
    is returned as (superseded, kept) so the report lists it instead of counting it twice.
    """
    kept: dict[tuple, RunRecord] = {}
    superseded: list[tuple[RunRecord, RunRecord]] = []
    order: list[RunRecord] = []
    for run in sorted(runs, key=lambda r: r.start_time):
        sweep = run.tags.get(tags.SWEEP)
        if sweep is None:
            order.append(run)
            continue
        ident = (sweep, run.tags.get(tags.SWEEP_MEMBER), run.seed, run.tags.get(tags.CONFIG_HASH))
        previous = kept.get(ident)
        if previous is None:
            kept[ident] = run
            order.append(run)
        elif previous.status == "FINISHED" and run.status != "FINISHED":
            superseded.append((run, previous))
        else:
            superseded.append((previous, run))
            kept[ident] = run
            order[order.index(previous)] = run
    return order, superseded
