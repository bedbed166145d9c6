"""cod-eval runs real lm-eval; its accuracy on a tiny export equals the accuracy computed here directly
from the HF model's log-likelihoods on the same items (and its cloze perplexity likewise)."""

import json
import math

import pytest
import torch
from training_launch import SCHEDULE, train
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.data.tokenizer import load_tokenizer
from megatron_cod.evaluation.cli import main
from megatron_cod.export.architecture import export_target
from megatron_cod.export.hf_dir import write_model_dir
from megatron_cod.models import build_gpt_model, padded_vocab_size

LIMIT = 24


@pytest.fixture(scope="module")
def tiny_export(builtin_dataset, tmp_path_factory):
    platform.initialize(seed=2)
    tokenizer = load_tokenizer(builtin_dataset.tokenizer_path)
    cfg = ModelConfig(
        num_layers=2,
        hidden_size=48,
        num_attention_heads=6,
        group_query_attention=True,
        num_query_groups=2,
        ffn_hidden_size=88,
        seq_length=96,
    )
    model = build_gpt_model(cfg, tokenizer.vocab_size, ParallelConfig())
    with torch.no_grad():  # larger weights than the initialisation: scores that differ between choices
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("tiny") / "hf"
    out.mkdir()
    write_model_dir(
        out,
        model.state_dict(),
        export_target(cfg, padded_vocab_size(tokenizer.vocab_size, 1)),
        tokenizer,
        "fp32",
        96,
        {},
        2**40,
    )
    platform.teardown()
    return out


def _continuation_logprobs(model, tok, context, continuation):
    """lm-eval's encoding: the continuation's tokens are those of context+continuation after context's."""
    ctx = tok(context).input_ids
    whole = tok(context + continuation).input_ids
    cont = whole[len(ctx) :]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(ctx) - 1 :], dim=-1)
    target = torch.tensor(cont)
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_lm_eval_accuracy_equals_direct_log_likelihood_accuracy(tiny_export, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--hf-model",
                str(tiny_export),
                "--limit",
                str(LIMIT),
                "--output-dir",
                str(out),
                "--no-mlflow",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert results["n_samples"] == {"cod_cloze": LIMIT, "cod_next_sentence": LIMIT}
    assert "| cod_next_sentence | acc |" in (out / "results.md").read_text()

    model = AutoModelForCausalLM.from_pretrained(tiny_export, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_export)
    choice = [
        json.loads(line) for line in (out / "data" / "cod_next_sentence.jsonl").read_text().splitlines()
    ]
    assert len(choice) > LIMIT and all(len(item["choices"]) == 4 for item in choice)
    correct = 0
    for item in choice[:LIMIT]:
        scores = [_continuation_logprobs(model, tok, item["context"], c)[0] for c in item["choices"]]
        correct += max(range(4), key=scores.__getitem__) == item["label"]
    assert metrics["eval/cod_next_sentence/acc"] == pytest.approx(correct / LIMIT)

    cloze = [json.loads(line) for line in (out / "data" / "cod_cloze.jsonl").read_text().splitlines()][:LIMIT]
    scored = [_continuation_logprobs(model, tok, item["context"], item["target"]) for item in cloze]
    assert metrics["eval/cod_cloze/acc"] == pytest.approx(sum(g for _, g in scored) / LIMIT)
    assert metrics["eval/cod_cloze/perplexity"] == pytest.approx(
        math.exp(-sum(s for s, _ in scored) / LIMIT), rel=1e-4
    )


def test_checkpoint_is_exported_evaluated_and_nested_under_its_training_run(
    tmp_path, builtin_dataset, monkeypatch
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    model = [
        "--num-layers",
        "2",
        "--hidden-size",
        "48",
        "--num-attention-heads",
        "6",
        "--ffn-hidden-size",
        "88",
        "--seq-length",
        "64",
    ]
    train(
        tmp_path,
        "trained",
        model + [a for a in SCHEDULE if a != "--no-mlflow"] + ["--train-iters", "2", "--save", str(ckpt)],
        env={"MLFLOW_TRACKING_URI": uri},
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval"
    assert (
        main(["--checkpoint", str(ckpt), "--tasks", "cod_cloze", "--limit", "4", "--output-dir", str(out)])
        == 0
    )
    client = MlflowClient(tracking_uri=uri)
    (training,) = client.search_runs(
        [client.get_experiment_by_name("megatron_cod").experiment_id], "attributes.run_name = 'trained'"
    )
    (child,) = client.search_runs([training.info.experiment_id], "tags.`megatron_cod.kind` = 'eval'")
    assert child.data.tags["mlflow.parentRunId"] == training.info.run_id
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert child.data.metrics["eval/cod_cloze/acc"] == metrics["eval/cod_cloze/acc"]
    assert {"results.json", "results.md"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    # an existing output directory is kept unless --force
    assert main(["--checkpoint", str(ckpt), "--output-dir", str(out), "--no-mlflow"]) == 1


def test_an_eval_failing_after_its_run_opened_leaves_it_failed_with_the_reason(
    tiny_export, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("training")).info.run_id
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--hf-model",
                str(tiny_export),
                "--eval-data",
                str(empty),
                "--output-dir",
                str(out),
                "--mlflow-run-id",
                parent,
            ]
        )
        == 1
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # MLflow logs too
    assert errors == [f"cod-eval: error: --eval-data {empty}: no documents"]
    (child,) = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert child.info.status == "FAILED" and child.data.tags["megatron_cod.kind"] == "eval"
    assert child.data.tags["megatron_cod.failure"] == f"ExportError: --eval-data {empty}: no documents"
    assert child.data.params["tasks"] == "cod_cloze,cod_next_sentence"
    assert not out.exists()
