"""Weight-decay groups: norms, biases and input embeddings are not decayed unless asked.

With zero gradients, one AdamW step changes a parameter only through decoupled weight decay:
w <- w * (1 - lr * wd) for decayed parameters and w unchanged otherwise (closed form).
"""

import pytest
import torch

from megatron_cod import platform
from megatron_cod.config import ExperimentConfig, ModelConfig, OptimizerConfig, TrainConfig
from megatron_cod.training.model_setup import build_training_model, unwrap_gpt
from megatron_cod.training.optimizer import build_optimizer, build_scheduler, skips_weight_decay

LR, WD = 0.1, 0.5


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=5)
    yield
    platform.teardown()


def _one_zero_grad_step(decay_norm_and_bias: bool, decay_embeddings: bool):
    cfg = ExperimentConfig(
        model=ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16),
        optim=OptimizerConfig(
            lr=LR,
            min_lr=LR,
            weight_decay=WD,
            lr_warmup_iters=0,
            lr_decay_style="constant",
            decay_norm_and_bias=decay_norm_and_bias,
            decay_embeddings=decay_embeddings,
        ),
        train=TrainConfig(train_iters=2, micro_batch_size=1, global_batch_size=1),
    )
    model = build_training_model(cfg, vocab_size=64)
    optimizer = build_optimizer(model, cfg.optim, bf16=False, use_distributed_optimizer=False)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.train_iters)
    scheduler.step(increment=1)
    gpt = unwrap_gpt(model[0])
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    model[0].zero_grad_buffer()
    optimizer.zero_grad()
    optimizer.step()
    return {n: (before[n], p.detach()) for n, p in gpt.named_parameters()}


@pytest.mark.parametrize("decay_norm_and_bias,decay_embeddings", [(False, False), (True, True)])
def test_decoupled_decay_applies_to_exactly_the_decay_group(world, decay_norm_and_bias, decay_embeddings):
    params = _one_zero_grad_step(decay_norm_and_bias, decay_embeddings)
    kinds = {"norm": 0, "embedding": 0, "matrix": 0}
    for name, (old, new) in params.items():
        if old.dim() == 1:
            decayed, kind = decay_norm_and_bias, "norm"
        elif "word_embeddings" in name:
            decayed, kind = decay_embeddings, "embedding"
        else:
            decayed, kind = True, "matrix"
        kinds[kind] += 1
        expected = old * (1 - LR * WD) if decayed else old
        torch.testing.assert_close(new, expected, rtol=1e-6, atol=1e-7, msg=name)
    assert all(kinds.values()), kinds  # every kind of parameter was present


def test_predicate():
    w, b = torch.zeros(4, 4), torch.zeros(4)
    assert skips_weight_decay("decoder.layers.0.input_layernorm.weight", b, False, False)
    assert not skips_weight_decay("decoder.layers.0.input_layernorm.weight", b, True, False)
    assert skips_weight_decay("embedding.word_embeddings.weight", w, False, False)
    assert not skips_weight_decay("embedding.word_embeddings.weight", w, False, True)
    assert not skips_weight_decay("output_layer.weight", w, False, False)
    assert not skips_weight_decay("decoder.layers.0.mlp.linear_fc1.weight", w, False, False)
