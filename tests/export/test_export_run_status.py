"""cod-export's MLflow run covers the export itself: it is open before any weight is read, so an export
that fails while loading or writing ends FAILED with the reason, nested under the training run; a
refusal before any work (an existing output without --force) leaves no run. ``--iteration k`` finds
the complete copy of k that a killed re-save set aside."""

import shutil

import pytest
from mlflow.tracking import MlflowClient
from training_launch import SCHEDULE, train

from megatron_cod.export.cli import export_main
from megatron_cod.export.hf_dir import PROVENANCE_FILE

TINY = [
    "--num-layers",
    "2",
    "--hidden-size",
    "32",
    "--num-attention-heads",
    "4",
    "--ffn-hidden-size",
    "64",
    "--seq-length",
    "32",
    "--save-interval",
    "1",
    "--train-iters",
    "2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, builtin_dataset):
    root = tmp_path_factory.mktemp("export_run")
    uri = f"sqlite:///{root}/mlflow.db"
    args = [a for a in SCHEDULE if a != "--no-mlflow"]
    train(root, "trained", TINY + args + ["--save", str(root / "ckpt")], env={"MLFLOW_TRACKING_URI": uri})
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("megatron_cod").experiment_id], "attributes.run_name = 'trained'"
    )
    return root, uri, run


def _children(client, run):
    return client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")


def test_an_export_failing_mid_way_ends_its_run_failed_with_the_reason(
    trained, tmp_path, monkeypatch, capsys
):
    root, uri, training = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    (ckpt / "iter_0000002" / "tokenizer" / "tokenizer.json").write_text("{not json")  # the latest
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    before = {r.info.run_id for r in _children(client, training)}

    assert export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0] and "Traceback" not in err[0]
    (failed,) = [r for r in _children(client, training) if r.info.run_id not in before]
    assert failed.info.status == "FAILED" and failed.data.tags["megatron_cod.kind"] == "export"
    assert "tokenizer" in failed.data.tags["megatron_cod.failure"]
    assert not (tmp_path / "hf").exists()

    # an output that is in the way is refused before the run opens
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep")
    assert export_main(["--checkpoint", str(root / "ckpt"), "--output", str(tmp_path / "taken")]) == 1
    assert "--force" in capsys.readouterr().err
    assert len(_children(client, training)) == len(before) + 1
    assert (tmp_path / "taken" / "file").read_text() == "keep"


def test_iteration_finds_the_copy_a_killed_resave_set_aside(trained, tmp_path):
    root, _, _ = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    (ckpt / "iter_0000001").rename(ckpt / "iter_0000001.old")
    out = tmp_path / "hf"
    assert (
        export_main(["--checkpoint", str(ckpt), "--iteration", "1", "--output", str(out), "--no-mlflow"]) == 0
    )
    assert (out / PROVENANCE_FILE).is_file()
    assert (
        export_main(
            ["--checkpoint", str(ckpt), "--iteration", "3", "--output", str(tmp_path / "x"), "--no-mlflow"]
        )
        == 1
    )
