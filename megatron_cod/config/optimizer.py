"""Optimizer section: Adam hyper-parameters, learning-rate schedule, weight-decay grouping."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import NON_NEGATIVE, POSITIVE, option, validate_fields


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str = option(
        "adam", help="optimizer (megatron's adam decouples weight decay, i.e. AdamW)", choices=("adam", "sgd")
    )
    lr: float = option(3e-3, help="peak learning rate", bound=POSITIVE)
    min_lr: float = option(3e-4, help="learning rate at the end of decay", bound=NON_NEGATIVE)
    lr_warmup_iters: int = option(10, help="linear warmup iterations from 0", bound=NON_NEGATIVE)
    lr_decay_style: str = option(
        "cosine", help="decay after warmup", choices=("cosine", "linear", "constant")
    )
    lr_decay_iters: int | None = option(
        None, help="iterations until min-lr (None: train-iters)", bound=POSITIVE
    )
    weight_decay: float = option(0.1, help="decoupled weight decay", bound=NON_NEGATIVE)
    adam_beta1: float = option(0.9, help="Adam beta1")
    adam_beta2: float = option(0.95, help="Adam beta2")
    adam_eps: float = option(1e-8, help="Adam epsilon", bound=POSITIVE)
    clip_grad: float = option(1.0, help="global gradient-norm clip (0: off)", bound=NON_NEGATIVE)
    # The paper's code decayed every parameter by mistake (reference spec 3.8); the intent is to exclude these.
    decay_norm_and_bias: bool = option(False, help="also weight-decay norm weights and biases")
    decay_embeddings: bool = option(False, help="also weight-decay the embeddings")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.min_lr > self.lr:
            raise ConfigError(f"min-lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")

    def effective_lr_decay_iters(self, train_iters: int) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else train_iters
