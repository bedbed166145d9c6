"""Every tensor the analysis creates lives on the model's device, never on torch's default device.

A CUDA host is not needed to catch a tensor left on the default device: the suite runs on a CPU
model while torch's default device is 'meta'. A token batch, accumulator or normal-equation buffer
created without ``device=`` then lands on meta and the run fails (meta tensors hold no values), where
on a CUDA host it would sit on the CPU next to a GPU model. The adapters report the device their
parameters are on, whichever it is (a meta model stands in for a GPU one).
"""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.suite import METRICS, SuiteConfig, run_suite


def _suite(stack, ids) -> dict[str, float]:
    return run_suite(EvalSet(stack, ids, batch_size=2), SuiteConfig(metrics=METRICS)).global_metrics()


def test_the_suite_creates_no_tensor_on_the_default_device(toy_stack, token_ids):
    gen = torch.Generator().manual_seed(1)
    weights = [torch.eye(8) + 0.3 * torch.randn(8, 8, generator=gen) for _ in range(3)]
    stack = toy_stack([lambda h, w=w: torch.tanh(h @ w) for w in weights], hidden=8)
    ids = token_ids(4, 8)
    reference = _suite(stack, ids)
    with torch.device("meta"):
        on_model_device = _suite(stack, ids)
    assert on_model_device.keys() == reference.keys() and len(reference) > 3
    for key, value in reference.items():
        assert on_model_device[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_the_hf_adapter_reports_its_parameters_device(tiny_hf_model):
    assert HFLayerStack(tiny_hf_model("llama").to("meta")).device == torch.device("meta")


def test_the_megatron_adapter_reports_its_parameters_device():
    from megatron_cod import platform
    from megatron_cod.analysis.megatron_adapter import MegatronLayerStack
    from megatron_cod.config import ModelConfig, ParallelConfig
    from megatron_cod.models import build_gpt_model

    platform.initialize(seed=3)
    try:
        cfg = ModelConfig(
            num_layers=1, hidden_size=16, num_attention_heads=2, ffn_hidden_size=32, seq_length=8
        )
        model = build_gpt_model(cfg, 64, ParallelConfig()).to("meta")
        assert MegatronLayerStack(model).device == torch.device("meta")
    finally:
        platform.teardown()
