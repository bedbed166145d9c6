"""Training on megatron-core: DDP, megatron optimizer, pipeline schedules, dist checkpoints."""
