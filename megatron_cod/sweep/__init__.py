"""Sweeps: a base config plus a grid or list of members, each run over seeds through the training
entry point, skipped when already finished, resumed when interrupted, then compared."""
