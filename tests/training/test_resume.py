"""Resume: 6 steps straight == 3 steps, save, load, 3 more steps (same losses, bit for bit), for
each norm placement."""

import pytest
from training_launch import NORM_PLACEMENTS, SCHEDULE, TINY_MOE, losses, train

from megatron_cod.training.checkpoint import iteration_dir, latest_iteration, read_checkpoint_meta


@pytest.mark.parametrize("placement", list(NORM_PLACEMENTS))
def test_resume_reproduces_the_uninterrupted_run(tmp_path, builtin_dataset, placement):
    args = TINY_MOE + NORM_PLACEMENTS[placement] + SCHEDULE + ["--train-iters", "6"]
    train(tmp_path, "straight", args)
    ckpt = str(tmp_path / "ckpt")
    train(tmp_path, "first_half", args + ["--save", ckpt, "--exit-interval", "3"])
    assert latest_iteration(ckpt) == 3
    meta = read_checkpoint_meta(iteration_dir(ckpt, 3))
    assert meta["consumed_samples"] == {"train": 12}
    train(tmp_path, "second_half", args + ["--load", ckpt, "--save", ckpt])
    straight, first, second = (losses(tmp_path, n) for n in ("straight", "first_half", "second_half"))
    assert sorted(first) == [1, 2, 3] and sorted(second) == [4, 5, 6]
    for step in range(1, 7):
        assert (first | second)[step] == straight[step], step
    assert latest_iteration(ckpt) == 6


def test_save_dir_with_checkpoints_is_not_overwritten(tmp_path, builtin_dataset):
    ckpt = tmp_path / "ckpt"
    args = TINY_MOE + SCHEDULE + ["--train-iters", "2", "--save", str(ckpt)]
    train(tmp_path, "once", args)
    before = sorted(p.name for p in ckpt.iterdir())
    proc = train(tmp_path, "twice", args, check=False)
    assert proc.returncode == 2
    assert f"--save {ckpt} already holds checkpoints (latest iteration 2)" in proc.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == before
