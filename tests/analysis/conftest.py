"""Shared fixtures: a layer stack of hand-written layers with known closed forms, and tiny HF models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, OlmoeConfig, Qwen2Config

from megatron_cod.analysis.adapter import LayerStack

VOCAB = 40


class ToyStack(LayerStack):
    """Layers are plain functions of h (token-wise or not); embed/unembed are fixed random matrices."""

    def __init__(
        self, layers: Sequence[Callable[[torch.Tensor], torch.Tensor]], hidden: int, seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.layers = list(layers)
        self.embedding = torch.randn(VOCAB, hidden, generator=gen)
        self.unembedding = torch.randn(hidden, VOCAB, generator=gen) / hidden**0.5
        self._hidden = hidden

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def vocab_size(self) -> int:
        return VOCAB

    def prepare(self, input_ids: torch.Tensor) -> None:
        return None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[input_ids]

    def layer_forward(self, index: int, h: torch.Tensor, ctx: None) -> torch.Tensor:
        return self.layers[index](h)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.unembedding


def affine_layer(weight: torch.Tensor, bias: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: h @ weight + bias


@pytest.fixture
def toy_stack() -> type[ToyStack]:
    return ToyStack


@pytest.fixture
def random_affine_layers() -> Callable[[int, int, float, int], list]:
    """Factory: n token-wise affine layers x -> x (I + scale R) + c with their (M, c)."""

    def make(n: int, d: int, scale: float = 0.2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            m = torch.eye(d) + scale * torch.randn(d, d, generator=gen) / d**0.5
            out.append((m, 0.1 * torch.randn(d, generator=gen)))
        return out

    return make


def _config(family: str):
    common = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mixtral":
        return MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
    if family == "olmoe":
        return OlmoeConfig(**common, num_experts=4, num_experts_per_tok=2)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "mixtral", "olmoe")


@pytest.fixture
def tiny_hf_model() -> Callable[..., torch.nn.Module]:
    """Factory: a random-init tiny causal LM of a family, fp32, eval mode (no downloads)."""

    def make(family: str = "llama", seed: int = 0, init_std: float = 0.2) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = _config(family)
        # A larger init than the default 0.02 so layers are far from the identity and differences show.
        config.initializer_range = init_std
        return AutoModelForCausalLM.from_config(config).float().eval()

    return make


@pytest.fixture
def token_ids() -> Callable[[int, int, int], torch.Tensor]:
    def make(n: int = 4, s: int = 8, seed: int = 0) -> torch.Tensor:
        return torch.randint(0, VOCAB, (n, s), generator=torch.Generator().manual_seed(seed))

    return make


class IdentityLayer(torch.nn.Module):
    """Stands in for a skipped decoder layer in a reference HF forward."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return hidden_states


class FunctionLayer(torch.nn.Module):
    """Stands in for a decoder layer replaced by a function of the hidden states."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(hidden_states)


class HFReference:
    """Naive computations through the model's own forward (no adapter code involved)."""

    identity = IdentityLayer
    function = FunctionLayer

    @staticmethod
    def states(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
        """[h_0, ..., h_L]: the input of layer 0 and every layer's output, via forward hooks."""
        layers = model.model.layers
        states: list[torch.Tensor] = []
        handles = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0].detach()))]
        handles += [
            layer.register_forward_hook(lambda m, a, out: states.append(out.detach())) for layer in layers
        ]
        with torch.no_grad():
            model(input_ids=ids)
        for handle in handles:
            handle.remove()
        return states

    @staticmethod
    def loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(input_ids=ids, labels=ids).loss)

    @staticmethod
    def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits

    @staticmethod
    def with_layers(model: torch.nn.Module, modules: list[torch.nn.Module]) -> Callable[[], None]:
        """Install ``modules`` as the decoder layer list; returns a function that restores the original."""
        original, count = model.model.layers, model.config.num_hidden_layers
        model.model.layers = torch.nn.ModuleList(modules)
        model.config.num_hidden_layers = len(modules)

        def restore() -> None:
            model.model.layers = original
            model.config.num_hidden_layers = count

        return restore


@pytest.fixture
def hf_reference() -> type[HFReference]:
    return HFReference
