"""TP2, PP2, EP2 and DP2 (distributed optimizer) reproduce the single-rank losses (gloo, torchrun),
for the default Pre-LN model and for the Peri-LN and Mix-LN placements.

All runs start from one initial checkpoint written by a single rank (weights only are loaded), so
they differ only in how the work is split. Tolerance: 2e-4 absolute on losses of ~8 (reduction
order differs across layouts; the pipeline and expert-parallel runs are bitwise equal in practice).
"""

import pytest
from training_launch import NORM_PLACEMENTS, SCHEDULE, TINY_DENSE, TINY_MOE, losses, train

STEPS = 4
TOL = 2e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, builtin_dataset):
    """(directory, baseline): baseline(kind, placement) writes that model's initial checkpoint and
    single-rank reference run once, and returns their name."""
    tmp = tmp_path_factory.mktemp("parallel")
    made: set[str] = set()

    def baseline(kind: str, placement: str) -> str:
        name = f"{kind}_{placement}"
        if name not in made:
            arch = _arch(kind, placement)
            train(
                tmp,
                f"init_{name}",
                arch + SCHEDULE + ["--train-iters", "0", "--save", str(tmp / f"init_{name}")],
            )
            train(tmp, f"ref_{name}", arch + SCHEDULE + _from_init(tmp, name))
            made.add(name)
        return name

    return tmp, baseline


def _arch(kind, placement):
    return (TINY_MOE if kind == "moe" else TINY_DENSE) + NORM_PLACEMENTS[placement]


def _from_init(tmp, name):
    return ["--train-iters", str(STEPS), "--load", str(tmp / f"init_{name}"), "--no-load-optim"]


@pytest.mark.parametrize(
    "name,kind,placement,nproc,extra",
    [
        ("tp2", "dense", "pre", 2, ["--tensor-model-parallel-size", "2"]),
        ("pp2", "moe", "pre", 2, ["--pipeline-model-parallel-size", "2"]),
        ("ep2", "moe", "pre", 2, ["--expert-model-parallel-size", "2"]),
        ("dp2_distributed_optimizer", "moe", "pre", 2, ["--use-distributed-optimizer"]),
        (
            "tp2xpp2",
            "dense",
            "pre",
            4,
            ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
        ),
        # Peri-LN (with its embedding norm) and Mix-LN; PP2 puts Mix-LN's Post-LN/Pre-LN boundary
        # (after layer 2 of 4) exactly between the stages.
        ("tp2", "dense", "peri", 2, ["--tensor-model-parallel-size", "2"]),
        ("ep2", "moe", "peri", 2, ["--expert-model-parallel-size", "2"]),
        ("tp2", "dense", "mix", 2, ["--tensor-model-parallel-size", "2"]),
        ("ep2", "moe", "mix", 2, ["--expert-model-parallel-size", "2"]),
        ("pp2", "moe", "mix", 2, ["--pipeline-model-parallel-size", "2"]),
        # No DP2 per placement: data parallelism splits the batch, not the model, so each rank runs the
        # whole model (the single-rank forward the reference already checks per placement); the
        # distributed optimizer shards its flat buffer whatever layers the parameters come from.
    ],
)
def test_same_losses_as_single_rank(runs, name, kind, placement, nproc, extra):
    tmp, baseline = runs
    base = baseline(kind, placement)
    run = f"{name}_{base}"
    train(tmp, run, _arch(kind, placement) + SCHEDULE + _from_init(tmp, base) + extra, nproc=nproc)
    ref, got = losses(tmp, f"ref_{base}"), losses(tmp, run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=TOL), (step, got, ref)
    assert ref[STEPS] < ref[1]  # the runs actually trained
