"""Fixtures of the export tests: a single-process world, a tiny BPE tokenizer, seeded random GPTModels."""

import pytest
import torch

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.data.tokenizer import train_bpe_tokenizer
from megatron_cod.models import build_gpt_model


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=5)
    yield
    platform.teardown()


@pytest.fixture(scope="module")
def tokenizer():
    text = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"] * 20
    return train_bpe_tokenizer(text, 300)


def _random_gpt(model_cfg: ModelConfig, vocab: int, seed: int) -> torch.nn.Module:
    platform.seed_everything(seed)
    model = build_gpt_model(model_cfg, vocab, ParallelConfig())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layernorm" in name:
                p.copy_(1.0 + 0.5 * noise)  # norm weights far from 1 (LayerNorm Scaling folds into them)
            elif "router" in name:
                p.copy_(noise)  # decisive routing: top-k ties would make any two implementations disagree
            else:
                p.add_(0.05 * noise)
    return model.eval()


@pytest.fixture
def random_gpt():
    """random_gpt(model_cfg, vocab, seed): a single-rank GPTModel with every weight perturbed."""
    return _random_gpt
