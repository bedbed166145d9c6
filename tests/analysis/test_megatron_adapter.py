"""The megatron adapter: a checkpoint's GPTModel seen as a layer stack.

- its head(layers(embed)) equals megatron's own GPTModel forward (MoE + LayerNorm Scaling);
- a dense megatron model and its Hugging Face Llama twin (megatron_cod.export.to_llama) give the
  same scores through the two adapters;
- a training checkpoint saved with pipeline parallelism loads single-rank for analysis.
"""

import pytest
import torch
from training_launch import SCHEDULE, TINY_MOE, train

from megatron_cod import platform
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.megatron_adapter import MegatronLayerStack, load_megatron_stack
from megatron_cod.analysis.suite import SuiteConfig, run_suite
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.export import to_llama
from megatron_cod.models import build_gpt_model


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=11)
    yield
    platform.teardown()


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_stack_reproduces_the_model_forward(world):
    cfg = ModelConfig(
        num_layers=3,
        hidden_size=32,
        num_attention_heads=4,
        group_query_attention=True,
        num_query_groups=2,
        num_experts=4,
        moe_ffn_hidden_size=32,
        seq_length=16,
        layernorm_scaling=True,
    )
    model = _perturbed(build_gpt_model(cfg, 128, ParallelConfig()))
    stack = MegatronLayerStack(model)
    ids = torch.randint(0, 128, (2, 16))
    states = stack.capture_states(ids, stack.prepare(ids))
    with torch.no_grad():
        ref = model(ids, torch.arange(16).unsqueeze(0).expand(2, -1), None)
    assert len(states) == 4
    torch.testing.assert_close(stack.head(states[-1]), ref, rtol=1e-5, atol=1e-5)


def test_megatron_and_hf_twin_give_the_same_scores(world):
    cfg = ModelConfig(
        num_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        group_query_attention=True,
        num_query_groups=2,
        ffn_hidden_size=64,
        seq_length=16,
        rotary_base=10000,
    )
    model = _perturbed(build_gpt_model(cfg, 128, ParallelConfig()))
    twin = HFLayerStack(to_llama(model, cfg.rotary_base))
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    suite = SuiteConfig(
        metrics=("usefulness", "causal", "permutation", "logit-lens", "variance", "similarity")
    )
    meg = run_suite(EvalSet(MegatronLayerStack(model), ids, batch_size=2), suite).global_metrics()
    hf = run_suite(EvalSet(twin, ids, batch_size=2), suite).global_metrics()
    assert meg.keys() == hf.keys() and len(meg) > 5
    for key in meg:
        assert hf[key] == pytest.approx(meg[key], rel=1e-4, abs=1e-5), key


def test_pipeline_parallel_checkpoint_loads_single_rank(tmp_path, builtin_dataset):
    ckpt = tmp_path / "ckpt"
    train(
        tmp_path,
        "pp2",
        TINY_MOE
        + SCHEDULE
        + ["--train-iters", "2", "--save", str(ckpt), "--pipeline-model-parallel-size", "2"],
        nproc=2,
    )
    stack, data_defaults, _ = load_megatron_stack(ckpt)
    assert stack.num_layers == 4 and stack.describe()["iteration"] == 2
    assert data_defaults["data_prefix"] == builtin_dataset.data_prefix
    assert data_defaults["split"] == builtin_dataset.split
    ids = torch.randint(0, 4096, (1, 8))
    logits = stack.head(stack.capture_states(ids, stack.prepare(ids))[-1])
    assert logits.shape == (1, 8, 4096) and torch.isfinite(logits).all()
    # the weights are the trained ones, not a fresh initialisation from the same seed
    import yaml

    from megatron_cod.config import ExperimentConfig
    from megatron_cod.training.checkpoint import resolve_checkpoint

    cfg = ExperimentConfig.from_dict(yaml.safe_load((resolve_checkpoint(ckpt) / "config.yaml").read_text()))
    platform.seed_everything(cfg.train.seed)
    fresh = build_gpt_model(cfg.model, 4096, ParallelConfig())
    trained = dict(stack.model.named_parameters())
    changed = [n for n, p in fresh.named_parameters() if not torch.equal(p, trained[n])]
    assert len(changed) == len(trained)


def test_cli_all_on_a_training_checkpoint_nests_under_the_training_run(
    tmp_path, builtin_dataset, monkeypatch
):
    import json

    from mlflow.tracking import MlflowClient

    from megatron_cod.analysis.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    args = [a for a in SCHEDULE if a != "--no-mlflow"]
    train(
        tmp_path,
        "trained",
        TINY_MOE + args + ["--train-iters", "2", "--save", str(ckpt)],
        env={"MLFLOW_TRACKING_URI": uri},
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "report"
    assert (
        main(
            [
                "all",
                "--checkpoint",
                str(ckpt),
                "--output-dir",
                str(out),
                "--num-samples",
                "4",
                "--batch-size",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["adapter"] == "megatron" and results["model"]["iteration"] == 2
    assert "usefulness" in results and "causal" in results
    assert (out / "summary.md").is_file() and (out / "causal_matrix.png").is_file()
    client = MlflowClient(tracking_uri=uri)
    (training,) = client.search_runs(
        [client.get_experiment_by_name("megatron_cod").experiment_id], "attributes.run_name = 'trained'"
    )
    children = client.search_runs(
        [training.info.experiment_id], f"tags.mlflow.parentRunId = '{training.info.run_id}'"
    )
    assert len(children) == 1 and any(k.startswith("usefulness") for k in children[0].data.metrics)


def test_tied_embeddings_unembed_with_the_shared_weight(world):
    cfg = ModelConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_hidden_size=64,
        seq_length=16,
        untie_embeddings_and_output_weights=False,
    )
    model = _perturbed(build_gpt_model(cfg, 128, ParallelConfig()))
    stack = MegatronLayerStack(model)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = model(ids, torch.arange(16).unsqueeze(0).expand(2, -1), None)
    torch.testing.assert_close(
        stack.head(stack.capture_states(ids, stack.prepare(ids))[-1]), ref, rtol=1e-5, atol=1e-5
    )
