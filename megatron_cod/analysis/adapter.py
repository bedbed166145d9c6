"""The layer-stack view of a decoder-only LM that every depth metric runs on.

An adapter exposes five primitives on ``[batch, seq, hidden]`` fp32 hidden states: ``prepare``
(per-batch state a layer needs: positions, rotary tables, attention masks), ``embed``,
``layer_forward``, ``final_norm`` and ``unembed``. Everything the metrics need on top of that
(skip a layer, replace it by a function, swap two layers, start from a cached layer input, observe
every layer with a hook) is generic and lives here, so a new model family is one small subclass.

A megatron GPTModel fits the same interface: its layers take ``[s, b, h]`` plus ``rotary_pos_emb``
and an attention mask, so its adapter builds those in ``prepare`` and transposes inside
``layer_forward``; the metrics never see the megatron layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch

LayerFn = Callable[[torch.Tensor], torch.Tensor]
# What runs at a position: a layer module index, None (skip: output = input) or a function.
LayerOp = int | None | LayerFn
# Called after every position with (position, input, output).
LayerHook = Callable[[int, torch.Tensor, torch.Tensor], None]


class LayerStack(ABC):
    """A decoder-only LM seen as embed -> layers -> final norm -> unembedding."""

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of decoder layers L."""

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Residual-stream width d."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the unembedding output (token ids must be below it)."""

    @abstractmethod
    def prepare(self, input_ids: torch.Tensor) -> Any:
        """Per-batch state every layer call needs, built once per batch (opaque to callers)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [b, s] -> h_0 [b, s, d] in fp32."""

    @abstractmethod
    def layer_forward(self, index: int, h: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Run decoder layer module ``index`` on h [b, s, d] with the batch state ``ctx``."""

    @abstractmethod
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The final normalisation applied before the unembedding."""

    @abstractmethod
    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised hidden states -> logits [b, s, V] in fp32."""

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live; token ids, states and accumulators go there too."""
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """Facts about the model for the report (family, sizes, source)."""
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "vocab_size": self.vocab_size}

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding: the logits the model would output from residual state h."""
        return self.unembed(self.final_norm(h))

    def run(
        self,
        h: torch.Tensor,
        ctx: Any,
        start: int = 0,
        stop: int | None = None,
        overrides: Mapping[int, LayerOp] | None = None,
        hook: LayerHook | None = None,
    ) -> torch.Tensor:
        """Run positions ``start..stop-1`` from h (the input of position ``start``).

        ``overrides`` maps a position to what runs there instead of its own layer: another layer
        module index (swap), None (skip) or a function of h (replacement). Starting at the first
        changed position with a cached input is how perturbed forwards avoid re-running the prefix.
        """
        stop = self.num_layers if stop is None else stop
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(f"invalid layer range [{start}, {stop}) for {self.num_layers} layers")
        overrides = overrides or {}
        for position in range(start, stop):
            op = overrides.get(position, position)
            if op is None:
                out = h
            elif isinstance(op, int):
                out = self.layer_forward(op, h, ctx)
            else:
                out = op(h)
            if hook is not None:
                hook(position, h, out)
            h = out
        return h

    def capture_states(self, input_ids: torch.Tensor, ctx: Any) -> list[torch.Tensor]:
        """One unperturbed forward; returns [h_0, ..., h_L] (h_l = input of layer l)."""
        states = [self.embed(input_ids)]
        self.run(states[0], ctx, hook=lambda _pos, _h_in, h_out: states.append(h_out))
        return states


def skip_layers(*layers: int) -> dict[int, LayerOp]:
    """Overrides that skip the given positions (their output is their input)."""
    return {layer: None for layer in layers}


def replace_layer(layer: int, fn: LayerFn) -> dict[int, LayerOp]:
    """Overrides that run ``fn`` at position ``layer`` instead of the layer."""
    return {layer: fn}


def swap_layers(l1: int, l2: int) -> dict[int, LayerOp]:
    """Overrides that run layer module l2 at position l1 and l1 at l2.

    The modules move, not their parameters. A module keeps whatever depends on its own index: an
    HF layer its ``layer_idx``, a megatron layer its 1-based ``layer_number`` (which sets layer-norm
    scaling 1/sqrt(l) and query-key layer scaling). So a moved layer keeps its own LNS factor; the
    paper's code instead copied parameters, so moved weights took the destination's factor.
    """
    if l1 == l2:
        raise ValueError("swap needs two different layers")
    return {l1: l2, l2: l1}
