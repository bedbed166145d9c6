"""The one sbatch template: a multi-node torchrun job whose rendezvous comes from Slurm's environment.

One ``srun`` task per node starts ``torchrun``; torchrun starts one worker per GPU and the workers
meet through the c10d rendezvous on the allocation's first node (``scontrol show hostnames``), with
the job id as rendezvous id, so no node rank has to be computed. ``CONTAINER_IMAGE`` (pyxis/enroot)
runs every task inside an image. ``examples/slurm/pretrain_moe_deep.sbatch`` is this template
rendered for the example (``python -m megatron_cod.launch.slurm``), and ``cod-sweep --launcher
slurm`` renders it for each sweep run.

Settings known when rendering (nodes, GPUs per node, the training arguments) go into the script;
settings of the cluster (image, mounts, port, python) are environment variables read at run time,
so ``sbatch --export=ALL,CONTAINER_IMAGE=...`` changes them without editing the file. Arguments
given to ``sbatch script.sbatch ...`` after the script are appended to the training arguments.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The example's training: the paper's MoE 1B-7B (64 experts, top-8) on TE in bf16, experts spread
# over 8 GPUs, the distributed optimizer, tracked in MLflow; flags after the script override these.
EXAMPLE_TRAINING_ARGS = (
    "--preset",
    "paper_moe_1b7b",
    "--transformer-impl",
    "transformer_engine",
    "--bf16",
    "--expert-model-parallel-size",
    "8",
    "--use-distributed-optimizer",
    "--save",
    "checkpoints/moe_deep_slurm_${SLURM_JOB_ID}",
    "--mlflow-run-name",
    "moe_deep_slurm_${SLURM_JOB_ID}",
)
EXAMPLE_PATH = Path("examples/slurm/pretrain_moe_deep.sbatch")


@dataclass(frozen=True)
class SlurmJob:
    """What one sbatch script runs: ``torchrun ... -m megatron_cod.training <training_args>``.

    ``training_args`` are quoted for the shell, except that ``${NAME}`` references in them expand at
    run time (``$SLURM_JOB_ID`` in a run name).
    """

    job_name: str
    nodes: int
    gpus_per_node: int
    training_args: tuple[str, ...]
    output: str = "slurm-%j.out"
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    # the python that runs torchrun on the host (no container); in a container it is `python`
    host_python: str = ".venv/bin/python"
    workdir: str | None = None  # None: the directory sbatch was called from
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    master_port: int = 29500

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"SlurmJob.{name} must be at least 1, got {getattr(self, name)}")
        if not self.job_name.strip():
            raise ValueError("SlurmJob.job_name must not be empty")


def _shell_word(arg: str) -> str:
    """Quote ``arg`` for bash, leaving ``${NAME}`` references to expand at run time."""
    if "${" not in arg:
        return shlex.quote(arg)
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def _flag_lines(args: tuple[str, ...]) -> list[str]:
    """One line per flag with its value (``--seq-length 4096``), each word quoted."""
    lines: list[list[str]] = []
    for arg in args:
        if lines and not arg.startswith("--") and len(lines[-1]) == 1 and lines[-1][0].startswith("--"):
            lines[-1].append(arg)
        else:
            lines.append([arg])
    return [" ".join(_shell_word(a) for a in line) for line in lines]


def render_sbatch(job: SlurmJob) -> str:
    """The sbatch script for ``job`` (bash; every line is the same for every job except the settings)."""
    header = [
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={job.gpus_per_node}",
        f"#SBATCH --output={job.output}",
    ]
    header += [
        f"#SBATCH --{key}={value}"
        for key, value in (("time", job.time), ("partition", job.partition), ("account", job.account))
        if value is not None
    ]
    description = [f"# {line}".rstrip() for line in job.description.splitlines()]
    exports = [f"export {key}={shlex.quote(value)}" for key, value in sorted(job.env.items())]
    train_args = "\n".join(f"  {line}" for line in _flag_lines(job.training_args))
    workdir = shlex.quote(job.workdir) if job.workdir else '"$SLURM_SUBMIT_DIR"'
    return f"""#!/bin/bash
{chr(10).join(description + ["#"] if description else [])}
# Rendered by megatron_cod.launch.slurm (one template for examples/slurm and cod-sweep --launcher slurm).
# Run-time settings (sbatch --export=ALL,NAME=value): CONTAINER_IMAGE (pyxis/enroot image, e.g. a
# squashfs of dockerfiles/Dockerfile.ngc; empty: run on the hosts), CONTAINER_MOUNTS (default: the
# working directory at the same path), PYTHON, MASTER_PORT. Flags after the script name are appended
# to the training arguments (the last one wins).
{chr(10).join(header)}
set -euo pipefail

cd {workdir}
GPUS_PER_NODE=${{SLURM_GPUS_ON_NODE:-{job.gpus_per_node}}}
CONTAINER_IMAGE=${{CONTAINER_IMAGE:-}}
CONTAINER_MOUNTS=${{CONTAINER_MOUNTS:-$PWD:$PWD}}
if [ -z "${{PYTHON:-}}" ]; then
  if [ -z "$CONTAINER_IMAGE" ] && [ -x {shlex.quote(job.host_python)} ]; then PYTHON={shlex.quote(job.host_python)}; else PYTHON=python; fi
fi
# torchrun's c10d rendezvous: the first node of the allocation, one id per job
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
MASTER_PORT=${{MASTER_PORT:-{job.master_port}}}
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-8}}
{"".join(line + chr(10) for line in exports)}
TRAINING_ARGS=(
{train_args}
)
LAUNCH=(
  "$PYTHON" -m torch.distributed.run
  --nnodes "$SLURM_JOB_NUM_NODES"
  --nproc-per-node "$GPUS_PER_NODE"
  --rdzv-backend c10d
  --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
  --rdzv-id "$SLURM_JOB_ID"
  -m megatron_cod.training
)
SRUN_ARGS=(--ntasks-per-node=1 --kill-on-bad-exit=1)
if [ -n "$CONTAINER_IMAGE" ]; then
  SRUN_ARGS+=(--container-image "$CONTAINER_IMAGE" --container-mounts "$CONTAINER_MOUNTS" --container-workdir "$PWD")
fi
echo "[sbatch] $SLURM_JOB_NUM_NODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $MASTER_ADDR:$MASTER_PORT, image ${{CONTAINER_IMAGE:-none}}"
srun "${{SRUN_ARGS[@]}}" "${{LAUNCH[@]}}" "${{TRAINING_ARGS[@]}}" "$@"
"""


def example_job() -> SlurmJob:
    return SlurmJob(
        job_name="moe_deep",
        nodes=2,
        gpus_per_node=8,
        training_args=EXAMPLE_TRAINING_ARGS,
        output="slurm-%x-%j.out",
        time="04:00:00",
        description=(
            "Pretrain the paper's MoE 1B-7B on 2 nodes x 8 GPUs (the GPU-cluster sibling of\n"
            "examples/pretrain_moe_deep.sh). Submit from the repository root:\n"
            "  sbatch examples/slurm/pretrain_moe_deep.sbatch\n"
            "  sbatch --nodes=4 examples/slurm/pretrain_moe_deep.sbatch --train-iters 1000\n"
            "  sbatch --export=ALL,CONTAINER_IMAGE=$PWD/megatron_cod+ngc.sqsh examples/slurm/pretrain_moe_deep.sbatch"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Write the example sbatch script (``python -m megatron_cod.launch.slurm [PATH]``)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else EXAMPLE_PATH
    path.write_text(render_sbatch(example_job()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
