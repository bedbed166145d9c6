"""cod-compare end to end on a filled store, and its one-line refusals (exit 2, nothing written)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import warm_launch
from mlflow import MlflowClient

from megatron_cod.compare.cli import main
from megatron_cod.tracking import tags


def _cli(args: list[str], cwd: Path, warm: bool = True) -> subprocess.CompletedProcess:
    """cod-compare as a process: forked from the warm server, or a fresh interpreter (its import-time
    output is on stderr too)."""
    if warm:
        return warm_launch.run("megatron_cod.compare.cli", args, cwd=cwd, timeout=120)
    return subprocess.run([sys.executable, "-m", "megatron_cod.compare.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_report_plots_and_comparison_run(store, tmp_path):
    runs = [store.add(f"l{layers}s{seed}", {"model.num_layers": layers, "train.seed": seed}, growth=0.02 * layers)
            for layers in (4, 8) for seed in (1, 2)]
    before = {r.run_id: MlflowClient(store.uri).get_run(r.run_id).data.tags for r in runs}
    out = tmp_path / "cmp"
    assert main(["--experiment", "exp", "--tracking-uri", store.uri, "--output-dir", str(out), "--claims"]) == 0
    report = (out / "report.md").read_text()
    assert "| layers=4 | 2 | 1, 2 |" in report
    assert "equal tokens: 10,240 tokens" in report
    assert "Deep-layer variance grows with depth" in report and "**holds**" in report
    for png in ("variance_vs_layer.png", "last_layer_variance_vs_step.png", "valid_loss_vs_step.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(store.uri)
    comparisons = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                     filter_string=f"tags.`{tags.KIND}` = 'comparison'")
    assert len(comparisons) == 1
    cmp = comparisons[0]
    assert cmp.info.status == "FINISHED"
    assert set(cmp.data.tags[tags.COMPARED_RUNS].split(",")) == {r.run_id for r in runs}
    artifacts = {a.path for a in client.list_artifacts(cmp.info.run_id)}
    assert {"report.md", "variance_vs_layer.png", "compared_runs.json"} <= artifacts
    # compared runs untouched without --tag-compared, and comparison runs are never compared themselves
    assert {r.run_id: client.get_run(r.run_id).data.tags for r in runs} == before
    out2 = tmp_path / "cmp2"
    assert main(["--experiment", "exp", "--tracking-uri", store.uri, "--output-dir", str(out2),
                 "--tag-compared", "--at-step", "10"]) == 0
    assert "step 10" in (out2 / "report.md").read_text()
    assert all(client.get_run(r.run_id).data.tags.get(tags.COMPARISON_RUN) for r in runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unknown-experiment", "bad-filter", "no-match", "unreachable", "no-store",
                                  "beyond-tokens", "nothing-named"])
def test_bad_input_is_one_line(store, tmp_path, case):
    store.add("r", {})
    out = tmp_path / "out"
    base = ["--tracking-uri", store.uri, "--output-dir", str(out)]
    args, expect = {
        "unknown-experiment": (["--experiment", "nope", *base], "unknown experiment 'nope'"),
        "bad-filter": (["--experiment", "exp", "--filter", "params.x === 'y'", *base], "--filter"),
        "no-match": (["--experiment", "exp", "--filter", "params.`model.num_layers` = '99'", *base],
                     "no training runs match"),
        "unreachable": (["--experiment", "exp", "--tracking-uri", f"http://127.0.0.1:{_free_port()}",
                         "--output-dir", str(out)], "cannot reach the MLflow tracking server"),
        "no-store": (["--experiment", "exp", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}",
                      "--output-dir", str(out)], "no MLflow store at"),
        "beyond-tokens": (["--experiment", "exp", "--at-tokens", "999999999", *base], "--at-tokens 999999999"),
        "nothing-named": (base, "name the runs"),
    }[case]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert not out.exists()
    assert not (tmp_path / "missing.db").exists()
    client = MlflowClient(store.uri)
    assert not client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                  filter_string=f"tags.`{tags.KIND}` = 'comparison'")


def test_existing_output_is_kept(store, tmp_path):
    store.add("r", {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = _cli(["--experiment", "exp", "--tracking-uri", store.uri, "--output-dir", str(out)], tmp_path, warm=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_compare_through_a_real_mlflow_server(store, tmp_path):
    """The REST path: the same numbers from `mlflow server` in front of the store as from the file."""
    runs = [store.add(f"s{seed}", {"train.seed": seed, "model.num_layers": 4 + 2 * (seed % 2)}) for seed in (1, 2, 3)]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        import time
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        out_http, out_file = tmp_path / "via_http", tmp_path / "via_file"
        assert main(["--experiment", "exp", "--tracking-uri", uri, "--output-dir", str(out_http), "--no-mlflow"]) == 0
        assert main(["--experiment", "exp", "--tracking-uri", store.uri, "--output-dir", str(out_file),
                     "--no-mlflow"]) == 0
        tables = [p.read_text().split("## Runs")[1].split("## Figures")[0] for p in
                  (out_http / "report.md", out_file / "report.md")]
        assert tables[0] == tables[1]
        assert all(f"`{r.name}`" in tables[0] for r in runs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's workers and job consumer too
        server.wait(timeout=30)
