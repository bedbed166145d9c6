"""After a training run, the MLflow store (sqlite) holds the run, its params, metric histories of
the expected lengths, the telemetry and its plots; the JSONL journal agrees with MLflow."""

import json

from mlflow.tracking import MlflowClient
from training_launch import TINY_MOE, train

ITERS, TELEMETRY_EVERY, EVAL_EVERY = 6, 2, 3


def test_run_is_in_the_store_with_params_metrics_and_plots(tmp_path, builtin_dataset):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = TINY_MOE + [
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--lr-warmup-iters",
        "1",
        "--train-iters",
        str(ITERS),
        "--eval-interval",
        str(EVAL_EVERY),
        "--eval-iters",
        "1",
        "--telemetry-interval",
        str(TELEMETRY_EVERY),
        "--telemetry-attention-interval",
        "3",
        "--telemetry-weight-interval",
        "3",
        "--mlflow-experiment",
        "cod-test",
    ]
    proc = train(tmp_path, "tracked", args, env={"MLFLOW_TRACKING_URI": uri})
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cod-test")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'tracked'")
    assert run.info.status == "FINISHED"
    assert run.info.run_id in proc.stdout and "mlflow ui" in proc.stdout
    params = run.data.params
    assert params["model.num_layers"] == "4" and params["model.num_experts"] == "4"
    assert params["train.train_iters"] == str(ITERS)

    def history(key):
        return [m.step for m in client.get_metric_history(run.info.run_id, key)]

    assert history("train/lm_loss") == list(range(1, ITERS + 1))
    assert history("valid/lm_loss") == [3, 6]
    tel_steps = list(range(TELEMETRY_EVERY, ITERS + 1, TELEMETRY_EVERY))
    for layer in ("01", "04"):
        assert history(f"depth/var/layer_{layer}") == tel_steps
        assert history(f"depth/mlp_var/layer_{layer}") == tel_steps
        assert history(f"moe/router_entropy/layer_{layer}") == tel_steps
    assert history("depth/var_final_norm/layer_04") == tel_steps
    assert history("attn/entropy/layer_02") == [3, 6]
    assert history("weights/hoyer/layer_02/linear_qkv") == [3, 6]
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/variance_vs_layer.png",
        "plots/last_layer_variance.png",
        "plots/variance_heatmap.png",
    } <= plots

    journal = [
        json.loads(line)
        for line in (tmp_path / "runs" / "tracked" / "metrics.jsonl").read_text().splitlines()
    ]
    logged = {(e["step"], k): v for e in journal for k, v in e["metrics"].items()}
    for m in client.get_metric_history(run.info.run_id, "depth/var/layer_03"):
        assert logged[(m.step, "depth/var/layer_03")] == m.value
