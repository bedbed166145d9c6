"""cod-analyze end to end on a tiny HF model saved to disk, MLflow nesting, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from megatron_cod.analysis.cli import main
from megatron_cod.analysis.data import DataConfig, load_eval_tokens
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import load_hf_stack
from megatron_cod.analysis.permutation import PermutationConfig, permutation_scores

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "all that glitters is not gold",
    "to be or not to be that is the question",
]
FIGURES = {
    "jacobian.png",
    "usefulness.png",
    "causal_matrix.png",
    "causal_output_change.png",
    "permutation.png",
    "block_influence.png",
    "angular_distance.png",
    "pruning_curves.png",
    "logit_lens.png",
    "residual_profile.png",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    lines = [" ".join(SENTENCES[(i + j) % 4] for j in range(3)) for i in range(40)]
    (root / "corpus.txt").write_text("\n".join(lines))
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"]))
    tok.save(str(root / "tokenizer.json"))
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=tok.get_vocab_size(),
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(root / "model")
    return root


def args(workdir: Path, command: str, out: str, *extra: str) -> list[str]:
    return [
        command,
        "--hf-model", str(workdir / "model"),
        "--text-file", str(workdir / "corpus.txt"),
        "--tokenizer", str(workdir / "tokenizer.json"),
        "--split", "50,50,0",
        "--num-samples", "6",
        "--seq-length", "12",
        "--batch-size", "4",
        "--output-dir", str(workdir / out),
        "--quiet",
        *extra,
    ]  # fmt: skip


def test_all_writes_the_report_and_matches_the_api(workdir):
    assert main(args(workdir, "all", "report", "--no-mlflow", "--num-probes", "8")) == 0
    out = workdir / "report"
    assert FIGURES <= {p.name for p in out.glob("*.png")}
    results = json.loads((out / "results.json").read_text())
    for key in ("jacobian", "usefulness", "causal", "permutation", "similarity", "logit-lens", "variance"):
        assert key in results and "global" in results[key]
    assert results["data"]["split_part"] == "valid" and results["versions"]["torch"] == torch.__version__
    assert results["model"]["num_layers"] == 3

    stack = load_hf_stack(workdir / "model")
    tokens, _ = load_eval_tokens(
        DataConfig(
            text_file=str(workdir / "corpus.txt"),
            tokenizer=str(workdir / "tokenizer.json"),
            num_samples=6,
            seq_length=12,
            split="50,50,0",
        )
    )
    # each metric used the first k sequences of the draw, k reported per metric
    used = results["samples"]["permutation"]
    assert 2 <= used <= 6 and results["data"]["samples_used"] == results["samples"]
    direct = permutation_scores(EvalSet(stack, tokens, 4), PermutationConfig(max_sequences=used))
    with (out / "permutation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["score"]) for r in rows] == pytest.approx([p.score for p in direct.pairs], rel=1e-5)
    assert results["permutation"]["global"]["permutation_score_mean"] == pytest.approx(
        direct.global_metrics()["permutation_score_mean"], rel=1e-5
    )
    assert [float(r["score_stderr"]) for r in rows] == pytest.approx(
        [p.stderr for p in direct.pairs], rel=1e-5
    )
    summary = (out / "summary.md").read_text()
    assert "usefulness_score" in summary and "![jacobian.png](jacobian.png)" in summary
    assert "## Layer orders not resolved" in summary and "| permutation |" in summary
    assert not list(workdir.glob(".report.*"))


def test_existing_output_needs_overwrite(workdir, capsys):
    (workdir / "existing").mkdir()
    (workdir / "existing" / "keep.txt").write_text("mine")
    assert main(args(workdir, "variance", "existing", "--no-mlflow")) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (workdir / "existing" / "keep.txt").read_text() == "mine"
    assert main(args(workdir, "variance", "existing", "--no-mlflow", "--overwrite")) == 0
    assert not (workdir / "existing" / "keep.txt").exists()
    assert (workdir / "existing" / "residual_profile.csv").exists()


def test_mlflow_run_nested_under_a_training_run(workdir, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("training")).info.run_id
    assert (
        main(
            args(workdir, "usefulness", "nested", "--mlflow-run-id", parent, "--usefulness-threshold", "1.01")
        )
        == 0
    )
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(children) == 1
    child = children[0]
    results = json.loads((workdir / "nested" / "results.json").read_text())
    assert child.data.metrics["usefulness_score"] == pytest.approx(
        results["usefulness"]["global"]["usefulness_score"]
    )
    assert child.data.params["arguments.usefulness_threshold"] == "1.01"
    assert child.data.metrics["samples/usefulness"] == results["samples"]["usefulness"]
    targets = {k: v for k, v in child.data.params.items() if k.startswith("target_se.usefulness.")}
    assert targets and {k.split(".", 2)[2]: float(v) for k, v in targets.items()} == results["targets"]["usefulness"]
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"results.json", "usefulness.csv", "usefulness.png", "summary.md"} <= artifacts


def _training_run(workdir: Path, monkeypatch, store: str):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/{store}.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    return client, client.create_run(client.create_experiment("training")).info.run_id


def _only_child(client, parent: str):
    (child,) = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    return child


def test_an_analysis_failing_after_its_run_opened_leaves_it_failed_with_the_reason(
    workdir, monkeypatch, capsys
):
    client, parent = _training_run(workdir, monkeypatch, "failed")
    # the corpus holds fewer than 500 sequences: found when the data is read, after the run opened
    assert main(args(workdir, "variance", "failed", "--mlflow-run-id", parent, "--num-samples", "500")) == 1
    # the one error line (MLflow may log its store set-up before it)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "needs more data" in err
    child = _only_child(client, parent)
    assert child.info.status == "FAILED" and child.data.tags["megatron_cod.kind"] == "analysis"
    assert (
        child.data.tags["megatron_cod.failure"]
        == f"AnalysisError: {err.removeprefix('cod-analyze: error: ')}"
    )
    assert child.data.params["arguments.num_samples"] == "500"
    assert not (workdir / "failed").exists()


def test_an_analysis_stopped_mid_metric_leaves_its_run_killed(workdir, monkeypatch):
    import megatron_cod.analysis.residual as residual

    client, parent = _training_run(workdir, monkeypatch, "killed")

    def stopped(self, batch):
        raise KeyboardInterrupt  # Ctrl-C while the metric works through a batch

    monkeypatch.setattr(residual.ResidualAccumulator, "add", stopped)
    assert main(args(workdir, "variance", "killed", "--mlflow-run-id", parent)) == 130
    child = _only_child(client, parent)
    assert child.info.status == "KILLED" and "megatron_cod.failure" not in child.data.tags
    assert not (workdir / "killed").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pairs", "0-7"], "bad layer pair"),
        (["--num-samples", "500"], "needs more data"),
    ],
)
def test_bad_options_give_one_line_errors(workdir, capsys, extra, message):
    assert main(args(workdir, "permutation", "bad", "--no-mlflow", *extra)) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workdir / "bad").exists()


def test_missing_model_via_the_tool_is_one_line_without_traceback(workdir):
    tool = Path(__file__).resolve().parents[2] / "tools" / "analyze_depth.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(tool),
            "causal",
            "--hf-model",
            str(workdir / "nope"),
            "--output-dir",
            str(workdir / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cod-analyze: error: --hf-model {workdir / 'nope'}: not a Hugging Face model directory (no config.json)"
    ]


def test_directory_that_is_not_a_checkpoint_is_one_line_error(workdir, capsys):
    assert main(["all", "--checkpoint", str(workdir), "--output-dir", str(workdir / "ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a megatron_cod checkpoint" in err and len(err.splitlines()) == 1
    assert not (workdir / "ckpt").exists()
