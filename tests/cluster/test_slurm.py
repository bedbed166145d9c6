"""The sbatch template: rendered for 2 nodes x 8 GPUs and run by bash against stand-ins for srun and
scontrol (this machine has no Slurm); the torchrun command srun receives is parsed by torchrun's own
argument parser and the training arguments by megatron_cod's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from megatron_cod.config.cli import parse_config
from megatron_cod.launch.slurm import EXAMPLE_PATH, SlurmJob, example_job, render_sbatch
from megatron_cod.sweep.cli import main as sweep_main

ROOT = Path(__file__).resolve().parents[2]
NODES = ["gpu-a17", "gpu-a18"]


def _fake_slurm(tmp: Path) -> Path:
    """srun records its argv as JSON; scontrol answers `show hostnames` with NODES."""
    bin_dir = tmp / "fake_bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "open(os.environ['SRUN_ARGV_FILE'], 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] || exit 1\n' + "".join(f"echo {n}\n" for n in NODES)
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _run_sbatch(
    tmp: Path, script: Path, extra: list[str], env: dict[str, str] | None = None, gpus: str = "8"
) -> list[str]:
    argv_file = tmp / "srun_argv.json"
    slurm_env = {
        "PATH": f"{_fake_slurm(tmp)}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-a[17-18]",
        "SLURM_JOB_NUM_NODES": str(len(NODES)),
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(tmp),
        "SLURM_GPUS_ON_NODE": gpus,
        "SRUN_ARGV_FILE": str(argv_file),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CONTAINER_", "MASTER_"))}
    base.pop("PYTHON", None)
    proc = subprocess.run(
        ["bash", str(script), *extra],
        env={**base, **slurm_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(argv_file.read_text())


def _torchrun(srun_argv: list[str]):
    """(srun options, python, torchrun's parsed arguments)."""
    at = srun_argv.index("torch.distributed.run")
    assert srun_argv[at - 1] == "-m"
    return srun_argv[: at - 2], srun_argv[at - 2], get_args_parser().parse_args(srun_argv[at + 1 :])


def test_example_is_the_rendered_template():
    assert (ROOT / EXAMPLE_PATH).read_text() == render_sbatch(example_job()), (
        "examples/slurm/pretrain_moe_deep.sbatch is stale: python -m megatron_cod.launch.slurm"
    )


def test_two_nodes_eight_gpus_torchrun_arguments(tmp_path):
    job = SlurmJob(
        job_name="t",
        nodes=2,
        gpus_per_node=8,
        training_args=("--preset", "paper_moe_1b7b", "--save", "ck/run_${SLURM_JOB_ID}", "--lr", "1e-4"),
    )
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(job))
    text = script.read_text()
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    assert "#SBATCH --ntasks-per-node=1\n" in text  # one torchrun per node

    srun_opts, python, tr = _torchrun(_run_sbatch(tmp_path, script, ["--train-iters", "7"]))
    assert srun_opts == ["--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert python == "python"  # no .venv in the submit directory
    assert (tr.nnodes, tr.nproc_per_node) == ("2", "8")
    assert (tr.rdzv_backend, tr.rdzv_endpoint, tr.rdzv_id) == ("c10d", f"{NODES[0]}:29500", "4242")
    assert tr.module and tr.training_script == "megatron_cod.training"
    assert tr.training_script_args == [
        "--preset",
        "paper_moe_1b7b",
        "--save",
        "ck/run_4242",
        "--lr",
        "1e-4",
        "--train-iters",
        "7",
    ]


def test_container_port_and_gpu_count_from_the_environment(tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(example_job()))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)

    _, python, _ = _torchrun(_run_sbatch(tmp_path, script, []))
    assert python == ".venv/bin/python"  # on the hosts, the checkout's venv

    env = {"CONTAINER_IMAGE": "/images/megatron_cod+ngc.sqsh", "MASTER_PORT": "31000"}
    srun_opts, python, tr = _torchrun(_run_sbatch(tmp_path, script, [], env=env, gpus="4"))
    assert python == "python"  # inside the image
    assert srun_opts[2:] == [
        "--container-image",
        "/images/megatron_cod+ngc.sqsh",
        "--container-mounts",
        f"{tmp_path}:{tmp_path}",
        "--container-workdir",
        str(tmp_path),
    ]
    assert tr.rdzv_endpoint == f"{NODES[0]}:31000" and tr.nproc_per_node == "4"


def test_example_training_arguments_make_a_valid_config(tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(example_job()))
    _, _, tr = _torchrun(_run_sbatch(tmp_path, script, ["--train-iters", "2000"]))
    cfg = parse_config(tr.training_script_args)
    assert cfg.model.num_experts == 64 and cfg.model.transformer_impl == "transformer_engine"
    assert cfg.parallel.expert_model_parallel_size == 8 and cfg.train.train_iters == 2000
    assert cfg.checkpoint.save == "checkpoints/moe_deep_slurm_4242"
    # 16 GPUs: data-parallel 16, each expert-parallel group of 8 holds 8 of the 64 experts
    cfg.parallel.validate_world_size(16)


@pytest.mark.parametrize("nproc", [2])
def test_sweep_slurm_scripts_use_the_template(tmp_path, nproc, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch: scripts are written, not submitted
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = sweep_main(
        [
            "cpu_smoke",
            "--launcher",
            "slurm",
            "--nproc-per-node",
            str(nproc),
            "--output-dir",
            "sw",
            "--tracking-uri",
            uri,
        ]
    )
    assert code == 0
    scripts = sorted((tmp_path / "sw").rglob("job.sbatch"))
    assert scripts
    for script in scripts:
        job_dir = script.parent
        srun_opts, python, tr = _torchrun(
            _run_sbatch(tmp_path, script, [], env={"SLURM_JOB_NUM_NODES": "1"}, gpus=str(nproc))
        )
        assert python == sys.executable
        assert (tr.nnodes, tr.nproc_per_node, tr.rdzv_backend) == ("1", str(nproc), "c10d")
        assert tr.training_script_args == ["--config", str(job_dir / "config.yaml")]
        assert f"export MLFLOW_TRACKING_URI={uri}\n" in script.read_text()
        # the same template as the example: everything after the header lines matches
        body = script.read_text().split("set -euo pipefail\n", 1)[1]
        example = render_sbatch(example_job()).split("set -euo pipefail\n", 1)[1]
        assert (
            body.split("TRAINING_ARGS=(")[1].split(")\n", 1)[1]
            == example.split("TRAINING_ARGS=(")[1].split(")\n", 1)[1]
        )
