"""Depth telemetry: per-layer statistics during training (collector) on shared metric functions."""

from megatron_cod.telemetry.collector import DepthTelemetry

__all__ = ["DepthTelemetry"]
