"""Runs of analysis / eval / export / comparison (tracking.open_tool_run) in a real sqlite MLflow store:
nested under their training run, and ended FINISHED, FAILED with the reason, or KILLED."""

import os
import signal
import time

import pytest
from mlflow import MlflowClient

from megatron_cod.cli_errors import TERMINATED, cli_main
from megatron_cod.tracking import TrackingError, open_tool_run, tags, tracked_run


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("training")).info.run_id
    return client, parent


def test_a_run_is_nested_under_its_training_run_and_logs_synchronously(store, tmp_path):
    client, parent = store
    (tmp_path / "report.md").write_text("# report")
    with tracked_run(open_tool_run(tags.KIND_EVAL, "eval-x", "ignored", checkpoint_run_id=parent)) as run:
        run.log_params({"limit": 4})
        run.log_metrics({"eval/acc": 0.5})
        run.log_artifact(tmp_path / "report.md")
    child = client.get_run(run.run_id)
    assert child.info.experiment_id == client.get_run(parent).info.experiment_id
    assert child.data.tags[tags.PARENT_RUN] == parent and child.data.tags[tags.KIND] == tags.KIND_EVAL
    assert child.info.status == "FINISHED" and tags.FAILURE not in child.data.tags
    assert child.data.params == {"limit": "4"} and child.data.metrics == {"eval/acc": 0.5}
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.md"]


def test_a_checkpoint_run_from_another_store_gives_a_top_level_run_that_names_it(store):
    client, _ = store
    run = open_tool_run(tags.KIND_EXPORT, "export-x", "exports", checkpoint_run_id="0123456789abcdef")
    run.finish()
    created = client.get_run(run.run_id)
    assert tags.PARENT_RUN not in created.data.tags
    assert created.data.tags[tags.TRAINING_RUN] == "0123456789abcdef"
    assert client.get_experiment(created.info.experiment_id).name == "exports"


def test_a_parent_named_by_the_user_must_exist(store):
    with pytest.raises(TrackingError, match="MLflow sqlite:///.*0123456789abcdef"):
        open_tool_run(tags.KIND_ANALYSIS, "a", "e", parent_run_id="0123456789abcdef")


def test_an_error_ends_the_run_failed_with_its_reason(store):
    client, parent = store
    with pytest.raises(ValueError):
        with tracked_run(open_tool_run(tags.KIND_ANALYSIS, "a", "e", parent_run_id=parent)) as run:
            raise ValueError("bad layer pair 0-7\nsecond line")
    ended = client.get_run(run.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[tags.FAILURE] == "ValueError: bad layer pair 0-7"


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_end_the_run_killed(store, stop):
    client, parent = store
    with pytest.raises(BaseException) as info:
        with tracked_run(open_tool_run(tags.KIND_ANALYSIS, "a", "e", parent_run_id=parent)) as run:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
    assert not isinstance(info.value, Exception)
    ended = client.get_run(run.run_id)
    assert ended.info.status == "KILLED" and tags.FAILURE not in ended.data.tags


def test_sigterm_in_a_tracked_command_is_one_line_and_exit_143(store, capsys):
    client, parent = store
    opened = []

    @cli_main("cod-tool: ")
    def main(argv: list[str]) -> int:
        with tracked_run(open_tool_run(tags.KIND_EVAL, "e", "e", parent_run_id=parent)) as run:
            opened.append(run.run_id)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        return 0

    assert main([]) == TERMINATED
    assert capsys.readouterr().err == "cod-tool: error: terminated by signal SIGTERM\n"
    assert client.get_run(opened[0]).info.status == "KILLED"
