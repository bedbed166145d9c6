"""cod-export on real training checkpoints: saved single-rank and with TP2 / PP2 / EP2 (gloo, 2 ranks),
read back on one process, written as a stock HF directory and verified against megatron in fp32.

The parallel runs train a few steps, so the exported weights are trained ones (checked against the
megatron model the exporter loaded, itself checked by the analysis adapter's tests).
"""

import json

import pytest
import torch
from training_launch import SCHEDULE, train
from transformers import AutoModelForCausalLM

from megatron_cod.export.cli import export_main
from megatron_cod.export.hf_dir import PROVENANCE_FILE

# odd widths, 6 query heads in 2 groups, MoE with a shared expert on every other layer, LNS
ODD_MOE = [
    "--num-layers",
    "4",
    "--hidden-size",
    "48",
    "--num-attention-heads",
    "6",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--ffn-hidden-size",
    "88",
    "--num-experts",
    "4",
    "--moe-ffn-hidden-size",
    "40",
    "--moe-shared-expert-intermediate-size",
    "56",
    "--moe-layer-freq",
    "2",
    "--layernorm-scaling",
    "--seq-length",
    "32",
]


ODD_DENSE = [
    "--num-layers",
    "4",
    "--hidden-size",
    "48",
    "--num-attention-heads",
    "6",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--ffn-hidden-size",
    "88",
    "--layernorm-scaling",
    "--seq-length",
    "32",
]
# megatron's local (CPU) spec has no sequence parallelism, which MoE under TP needs: TP2 is dense here
LAYOUTS = {
    "tp2": (ODD_DENSE, ["--tensor-model-parallel-size", "2"], "LlamaForCausalLM"),
    "pp2": (ODD_MOE, ["--pipeline-model-parallel-size", "2"], "Qwen2MoeForCausalLM"),
    "ep2": (ODD_MOE, ["--expert-model-parallel-size", "2"], "Qwen2MoeForCausalLM"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parallel_checkpoint_exports_exactly(layout, tmp_path, builtin_dataset, capsys):
    model_args, parallel_args, architecture = LAYOUTS[layout]
    ckpt = tmp_path / "ckpt"
    train(
        tmp_path,
        "par",
        model_args + SCHEDULE + parallel_args + ["--train-iters", "2", "--save", str(ckpt)],
        nproc=2,
    )
    out = tmp_path / "hf"
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out), "--verify", "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement 100.00%" in printed
    diff = float(printed.split("max |logit diff| ")[1].split(",")[0])
    assert diff <= 1e-4
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["iteration"] == 2 and provenance["architecture"] == architecture
    assert provenance["layernorm_scaling_folded"] is True


def test_single_rank_export_cli_verifies_and_nests_under_the_training_run(
    tmp_path, builtin_dataset, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    dense = [
        "--num-layers",
        "3",
        "--hidden-size",
        "48",
        "--num-attention-heads",
        "6",
        "--group-query-attention",
        "--num-query-groups",
        "2",
        "--ffn-hidden-size",
        "88",
        "--seq-length",
        "32",
        "--save-interval",
        "1",
    ]
    args = [a for a in SCHEDULE if a != "--no-mlflow"]
    train(
        tmp_path,
        "trained",
        dense + args + ["--train-iters", "2", "--save", str(ckpt)],
        env={"MLFLOW_TRACKING_URI": uri},
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "hf"
    assert export_main(["--checkpoint", str(ckpt), "--iteration", "1", "--output", str(out), "--verify"]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["iteration"] == 1 and provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["source_checkpoint"] == str((ckpt / "iter_0000001").resolve())
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert hf.config.tie_word_embeddings is False and hf.config.num_key_value_heads == 2

    client = MlflowClient(tracking_uri=uri)
    (training,) = client.search_runs(
        [client.get_experiment_by_name("megatron_cod").experiment_id], "attributes.run_name = 'trained'"
    )
    assert provenance["training_mlflow_run_id"] == training.info.run_id
    (child,) = client.search_runs(
        [training.info.experiment_id], f"tags.mlflow.parentRunId = '{training.info.run_id}'"
    )
    assert child.data.tags["megatron_cod.kind"] == "export" and child.info.status == "FINISHED"
    assert child.data.metrics["verify/top1_agreement"] == 1.0
    assert child.data.metrics["verify/max_abs_logit_diff"] <= 1e-4
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
    assert PROVENANCE_FILE in artifacts

    # the latest iteration by default; an existing output needs --force and is then replaced whole
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out), "--no-mlflow"]) == 1
    assert "--force" in capsys.readouterr().err
    assert (
        export_main(
            ["--checkpoint", str(ckpt), "--output", str(out), "--no-mlflow", "--force", "--dtype", "bf16"]
        )
        == 0
    )
    assert json.loads((out / PROVENANCE_FILE).read_text())["iteration"] == 2
    assert AutoModelForCausalLM.from_pretrained(out).config.dtype == torch.bfloat16
