"""Launching training on clusters: the sbatch template (``megatron_cod.launch.slurm``)."""
