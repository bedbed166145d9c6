"""TP2, PP2, EP2 and DP2 (distributed optimizer) reproduce the single-rank losses (gloo, torchrun).

All runs start from one initial checkpoint written by a single rank (weights only are loaded), so
they differ only in how the work is split. Tolerance: 2e-4 absolute on losses of ~8 (reduction
order differs across layouts; the pipeline and expert-parallel runs are bitwise equal in practice).
"""

import pytest

from training_launch import SCHEDULE, TINY_DENSE, TINY_MOE, losses, train

STEPS = 4
TOL = 2e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, builtin_dataset):
    tmp = tmp_path_factory.mktemp("parallel")
    for kind, arch in (("moe", TINY_MOE), ("dense", TINY_DENSE)):
        train(tmp, f"init_{kind}", arch + SCHEDULE + ["--train-iters", "0", "--save", str(tmp / f"init_{kind}")])
        train(tmp, f"ref_{kind}", arch + SCHEDULE + _from_init(tmp, kind))
    return tmp


def _from_init(tmp, kind):
    return ["--train-iters", str(STEPS), "--load", str(tmp / f"init_{kind}"), "--no-load-optim"]


@pytest.mark.parametrize("name,kind,nproc,extra", [
    ("tp2", "dense", 2, ["--tensor-model-parallel-size", "2"]),
    ("pp2", "moe", 2, ["--pipeline-model-parallel-size", "2"]),
    ("ep2", "moe", 2, ["--expert-model-parallel-size", "2"]),
    ("dp2_distributed_optimizer", "moe", 2, ["--use-distributed-optimizer"]),
    ("tp2xpp2", "dense", 4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
])
def test_same_losses_as_single_rank(runs, name, kind, nproc, extra):
    arch = TINY_MOE if kind == "moe" else TINY_DENSE
    train(runs, name, arch + SCHEDULE + _from_init(runs, kind) + extra, nproc=nproc)
    ref, got = losses(runs, f"ref_{kind}"), losses(runs, name)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=TOL), (step, got, ref)
    assert ref[STEPS] < ref[1]  # the runs actually trained
