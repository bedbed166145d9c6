"""The Trainer's loop in process (spawned gloo ranks, world size 1 and 2): hook order, callback order,
the no-op tracker off the logging rank, and metrics added by a callback reaching the journal."""

import pytest
from trainer_inprocess import run

from megatron_cod.tracking.journal import read_metrics

pytestmark = pytest.mark.slow
ITERS, EVAL, SAVE = 4, 2, 3
DEFAULT_ORDER = [
    "TelemetryCallback",
    "ThroughputCallback",
    "ScheduleCallback",
    "ExitSignalCallback",
    "NanGuardCallback",
    "Recorder",
    "ConsoleCallback",
    "DepthPlotsCallback",
    "TrackingCallback",
]


def _expected_events():
    events = [("on_train_start",)]
    for it in range(1, ITERS + 1):
        events += [("on_step_start", it), ("after_backward", it), ("before_update", it), ("on_step_end", it)]
        if it % EVAL == 0 or it == ITERS:
            events.append(("on_evaluate", it))
        if it % SAVE == 0 or it == ITERS:
            events.append(("on_save", it))
    return [*events, ("on_train_end",)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_hooks_run_in_order_on_every_rank(tmp_path, builtin_dataset, world_size):
    args = [
        "--train-iters",
        str(ITERS),
        "--eval-interval",
        str(EVAL),
        "--eval-iters",
        "1",
        "--save",
        str(tmp_path / "ckpt"),
        "--save-interval",
        str(SAVE),
        "--journal",
    ]
    results = run(tmp_path, world_size, args)
    logging_rank = world_size - 1
    for rank, (events, callbacks, tracker, run_dir) in results.items():
        assert events == _expected_events(), rank
        assert callbacks == DEFAULT_ORDER
        assert tracker == ("Tracker" if rank == logging_rank else "NullTracker")
        assert (run_dir is not None) == (rank == logging_rank)
    run_dir = results[logging_rank][3]
    lines = [line for line in read_metrics(run_dir) if "custom/iteration_squared" in line["metrics"]]
    assert [(line["step"], line["metrics"]["custom/iteration_squared"]) for line in lines] == [
        (it, float(it * it)) for it in range(1, ITERS + 1)
    ]
    assert len(list((tmp_path / "runs").iterdir())) == 1  # only the logging rank made a run directory
