"""DepthTelemetry: per-layer statistics of a megatron GPTModel during training, cheap enough to leave on.

Hook points in a megatron-core TransformerLayer (0.16: ``_forward_attention`` / ``_forward_mlp``):
- the layer itself: input hidden states (forward pre-hook, ``hidden_states`` kwarg) and output
  ``output[0]``, both ``[s, b, h]``: residual variance, RMS, update norm, relative update, cosine;
- ``self_attention``: returns ``(output, bias)`` that ``self_attn_bda`` adds to the residual; the
  attention branch is ``output + bias`` (after any output hook a layer variant registered first);
- ``mlp``: the MLP or MoELayer ``(output, bias)`` before ``mlp_bda``, so for MoE it is the routed
  (+ shared) expert output, never the block output;
- ``decoder.final_layernorm``: the last layer's residual after the final norm, reported apart as
  ``var_final_norm`` next to the raw ``var`` of the last layer;
- the MoE router: ``gating`` is wrapped to see the logits (full-softmax entropy) and the forward
  output ``(probs, routing_map)`` gives tokens per expert; aux and z losses are what megatron's own
  per-layer tracker (``moe_utils.save_to_aux_losses_tracker``) sums over the collection step
  (``begin_step`` starts it at zero, ``end_step`` reads it), so their definition, and when megatron
  computes them, stay megatron's; the router hook counts the calls megatron tracks;
- ``self_attention.core_attention`` pre-hook, on attention steps only: q ``[sq, b, np, hn]`` and
  k ``[sk, b, ng, hn]`` of the first micro-batch on data-parallel rank 0 (the global batch's first
  micro-batch, whatever the parallel layout); the sample is its sequence 0, the last
  ``attention_max_tokens`` queries against all their keys, recomputed in fp32 outside the model;
  tensor-parallel ranks each sample their own heads.

Norm placements (``--norm-placement``, models/placement.py) keep these hook points, so per layer:
- ``var`` / ``rms`` are of the stream the layer hands on: the residual stream for Pre-LN and
  Peri-LN, the stream *after* the norm for Post-LN layers (all of ``post``, the first
  floor(alpha L) of ``mix``);
- ``attn_*`` / ``mlp_*`` are the branch as it enters the residual add: after Peri-LN's output norm
  (a hook the layer registers before ours), the raw F(h) for Post-LN (added before its norm);
- ``update_norm`` / ``rel_update`` / ``cosine`` compare the layer's input and output streams:
  the sum of the two branches for Pre-LN and Peri-LN, but for Post-LN the change between two
  normalised streams, not a branch size;
- ``var_final_norm``: Post-LN has no final norm (an identity in its slot), so it equals ``var``;
  a Peri-LN embedding norm is part of layer 1's input.
tests/telemetry/test_norm_placement_semantics.py checks each against a plain-PyTorch reference.

Hooks compute per-token terms under ``torch.no_grad`` (torch-function modes off) and hand their token sums, still on the
device, to the accumulator; nothing reads a value back until ``end_step``. Hooks exist only
during collection steps.

Activation recompute re-runs layer forwards inside the backward pass; hooks that fire while the
autograd engine is executing a node are that re-run and are ignored (the first, no-grad forward
was already counted). The aux/z-loss calls are counted whenever megatron tracks them, which is
exactly once per micro-batch (megatron skips them in the no-grad first pass).

Norms: ``attn_norm`` / ``mlp_norm`` are the mean over tokens of the per-token L2 norm of the
branch output (independent of micro-batch size, unlike a whole-tensor Frobenius norm), in the same
unit as ``update_norm``. ``grad_norm`` / ``param_norm`` per layer are L2 norms over all parameters
of the layer, with gradients as the optimizer sees them before clipping (megatron DDP
``main_grad``; with fp16 loss scaling they include the loss scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.moe.moe_utils import (
    clear_aux_losses_tracker,
    get_moe_layer_wise_logging_tracker,
)
from megatron.core.utils import get_attr_wrapped_model

from megatron_cod.telemetry import metrics as M
from megatron_cod.telemetry.accumulator import (
    ATTN_BRANCH_STATS,
    ATTN_ENTROPY_ROWS,
    ATTN_ENTROPY_SUM,
    ATTN_TOPK_ROWS,
    ATTN_TOPK_SUM,
    AUX_LOSSES,
    FINAL_NORM_STAT,
    LAYER_STATS,
    MLP_BRANCH_STATS,
    ROUTER_ENTROPY_STAT,
    W_COUNT,
    W_SUMSQ,
    BufferShape,
    PendingSums,
    TelemetryBuffers,
    TokenTerms,
)
from megatron_cod.telemetry.params import (
    WEIGHT_FAMILIES,
    GradRange,
    ParallelRanks,
    ddp_grad_ranges,
    layer_params,
    merged_grad_views,
)
from megatron_cod.telemetry.report import format_values

ACTIVATIONS, ATTENTION, WEIGHTS = "activations", "attention", "weights"

# megatron's aux-loss type (config.moe_router_load_balancing_type) behind each tracker name, and
# the router process group whose ranks each hold a partial value that megatron sums (None: every
# rank holds a full value of its own tokens, which megatron averages).
_AUX_TYPE = {
    "load_balancing_loss": "aux_loss",
    "seq_load_balancing_loss": "seq_aux_loss",
    "global_load_balancing_loss": "global_aux_loss",
}
_AUX_SUM_GROUP = {
    "load_balancing_loss": "tp_cp_group",
    "seq_load_balancing_loss": "tp_cp_group",
    "global_load_balancing_loss": "tp_dp_cp_group",
    "z_loss": None,
}

# Largest fp32 attention-probability block materialised at once for the attention sample.
_ATTENTION_CHUNK_BYTES = 256 * 2**20


def _in_backward() -> bool:
    """True while the autograd engine runs a node: a forward seen now is a recompute re-run."""
    return torch._C._current_autograd_node() is not None


class _plain_torch:
    """no_grad with torch-function handling off. The CPU layer's CUDA-to-CPU mode
    (platform.cpu_compat) costs a Python call per op, and telemetry runs hundreds of small ops per
    collection step, none with a CUDA device argument to map; on a GPU host nothing changes.
    Entered about 150 times per collection step, so it calls the C switches directly (a third of
    the cost of ``torch.no_grad()`` in a generator context manager). The mode also sees tensor
    attribute reads (``shape``, ``numel()``) and the grad switch itself: torch-function handling goes
    off first and comes back last, and hooks read their tensors only inside."""

    __slots__ = ("_grad", "_no_function")

    def __enter__(self) -> None:
        self._no_function = torch._C.DisableTorchFunction()
        self._no_function.__enter__()
        self._grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch._C._set_grad_enabled(self._grad)
        self._no_function.__exit__(*exc)


def _branch_output(output: Any) -> torch.Tensor:
    out, bias = (output[0], output[1]) if isinstance(output, (tuple, list)) else (output, None)
    return out if bias is None else out + bias


_NO_OUTPUT: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)


def _every(interval: int, iteration: int) -> bool:
    return interval > 0 and iteration % interval == 0


class DepthTelemetry:
    """Collect per-layer depth statistics at collection steps of a training loop.

    Call order per iteration, on every rank: ``begin_step`` before the forward/backward,
    ``after_backward`` once gradients are final (after megatron's finalize_model_grads, i.e. after
    the forward-backward function returned) and before ``optimizer.step()``, ``end_step`` after the
    step. ``end_step`` returns the same dict on every rank. Aux/z losses are read from megatron's
    aux-loss tracker, which ``begin_step`` zeroes on collection steps: nothing may clear it between
    ``begin_step`` and ``end_step``, and code that reads it itself (Megatron-LM's
    ``track_moe_metrics``) sees at most one collection step's sums.

    cfg needs: enabled, interval, attention_interval, weight_interval (0 turns a family off),
    weight_eps, attention_topk, attention_max_tokens.

    Limits: attention sampling needs causal self-attention without context parallelism, sliding
    windows or packed sequences (it is skipped otherwise); grad norms support one
    distributed-optimizer instance; CUDA graphs and MTP layers are not instrumented.
    """

    def __init__(self, model_chunks: list[torch.nn.Module], cfg: Any) -> None:
        self.cfg = cfg
        self._chunks = list(model_chunks)
        models = [get_attr_wrapped_model(c, "decoder", return_model_obj=True) for c in self._chunks]
        config = models[0].config
        self.num_layers: int = config.num_layers
        self.num_heads: int = config.num_attention_heads
        self.num_experts: int = config.num_moe_experts or 0
        self._config = config
        self._layers = [layer for m in models for layer in m.decoder.layers]
        self._final_norms = [
            m.decoder.final_layernorm
            for m in models
            if getattr(m.decoder, "final_layernorm", None) is not None
        ]
        self._ranks = ParallelRanks.current()
        self._device = next(models[0].parameters()).device
        self._buf = TelemetryBuffers(
            BufferShape(self.num_layers, self.num_heads, self.num_experts, len(WEIGHT_FAMILIES)), self._device
        )
        self._params = layer_params(self._layers, self._ranks)
        self._build_norm_plan()
        self._build_weight_plan()

        self._pending = PendingSums()
        self._armed: set[str] = set()
        self._norms_taken = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._wrapped_routers: list[torch.nn.Module] = []
        self._inputs: dict[torch.nn.Module, torch.Tensor] = {}
        # the last layer output seen and its per-token norm (the next layer's input norm)
        self._last_output: tuple[torch.Tensor | None, torch.Tensor | None] = _NO_OUTPUT
        self._logits: dict[torch.nn.Module, torch.Tensor] = {}
        # per router: (aux-loss column, count weight) of each loss megatron computes for it (set by
        # _plan_hooks: the coefficients are the model config's)
        self._aux_on: dict[torch.nn.Module, list[tuple[int, float]]] = {}
        self._sampled: set[torch.nn.Module] = set()
        self._layer_set = set(self._layers)
        self._plan_hooks()
        # one micro-batch of layer, branch and router hooks per batch of per-token terms
        adds = sum(
            1
            for module, kind, _ in self._activation_plan
            if kind == "post" and module not in self._final_norms
        )
        self._token_terms = TokenTerms(self._pending, flush_every=adds)

    # --- training-loop API -------------------------------------------------------------------

    def begin_step(self, iteration: int) -> None:
        """Arm the families due at this iteration and attach their hooks."""
        self._detach()
        self._armed = set()
        self._norms_taken = False
        if not self.cfg.enabled:
            return
        if _every(self.cfg.interval, iteration):
            self._armed.add(ACTIVATIONS)
        if _every(self.cfg.attention_interval, iteration) and self._attention_supported():
            self._armed.add(ATTENTION)
        if _every(self.cfg.weight_interval, iteration):
            self._armed.add(WEIGHTS)
        if self._armed:
            self._pending.clear()
            self._token_terms.clear()
            with _plain_torch():
                self._buf.zero_()
                if ACTIVATIONS in self._armed and self._router_plan:
                    # the step's aux losses are the tracker's sums at end_step; megatron-core never
                    # clears it (Megatron-LM's training loop does, after logging it)
                    clear_aux_losses_tracker()
            self._attach()

    def after_backward(self, iteration: int) -> None:
        """Per-layer gradient and parameter norms (squared sums on the device) when armed."""
        if ACTIVATIONS not in self._armed:
            return
        with _plain_torch():
            grads = [t for _, t in self._static_grads]
            grads += [
                lp.param.grad if lp.param.grad is not None else self._zero for lp in self._dynamic_grads
            ]
            norms = list(torch._foreach_norm(grads, 2, dtype=torch.float32)) if grads else []
            for row, params in self._row_params.items():
                taken = self._param_norms.get(row)
                norms += taken if taken is not None else torch._foreach_norm(params, 2, dtype=torch.float32)
            if norms:
                squares = torch.stack(norms).double().square()
                self._buf.norm_sq.view(-1).index_add_(0, self._norm_index, squares)
        self._norms_taken = True

    def end_step(self, iteration: int) -> dict[str, float]:
        """Reduce across all ranks, copy to the host once, and return the named values ({} if idle)."""
        armed = self._armed
        self._detach()
        self._armed = set()
        if not armed:
            return {}
        with _plain_torch():
            self._token_terms.flush()
            if ACTIVATIONS in armed:
                self._add_aux_losses()
            self._pending.flush_into(self._buf)
            if WEIGHTS in armed:
                self._collect_weights()
            self._buf.all_reduce_rest()
        return format_values(
            self._buf.to_host(),
            activations=ACTIVATIONS in armed,
            norms=self._norms_taken,
            attention=ATTENTION in armed,
            weights=WEIGHTS in armed,
        )

    def remove(self) -> None:
        """Detach every hook and wrapper; the model is as it was before."""
        self._detach()
        self._armed = set()

    # --- hooks ---------------------------------------------------------------------------------

    def _plan_hooks(self) -> None:
        """Build every hook once; each collection step only registers and removes them."""
        pre, post = "pre", "post"
        self._activation_plan: list[tuple[torch.nn.Module, str, Callable]] = []
        self._router_plan: list[tuple[Any, Callable]] = []  # Any: gating is replaced on the instance
        self._router_rows: list[int] = []
        for layer in self._layers:
            row = layer.layer_number - 1
            self._activation_plan += [
                (layer, pre, self._layer_input_hook),
                (layer, post, self._layer_output_hook(row)),
                (layer.self_attention, post, self._branch_hook(row, ATTN_BRANCH_STATS)),
            ]
            if not isinstance(layer.mlp, IdentityOp):
                self._activation_plan.append((layer.mlp, post, self._branch_hook(row, MLP_BRANCH_STATS)))
            router = getattr(layer.mlp, "router", None)
            if router is not None:
                counted = {
                    name: 1.0 if group is None or getattr(router, group).rank() == 0 else 0.0
                    for name, group in _AUX_SUM_GROUP.items()
                }
                self._activation_plan.append((router, post, self._router_hook(row)))
                self._router_plan.append((router, self._logit_capture(router)))
                self._router_rows.append(row)
                self._aux_on[router] = [(i, counted[name]) for i, name in self._aux_losses_on(router)]
        self._activation_plan += [(norm, post, self._final_norm_hook()) for norm in self._final_norms]
        self._router_index = self._index(self._router_rows)
        # per aux-loss column, the flat positions of its sums for the MoE rows, as _router_index orders them
        self._aux_positions = self._buf.positions("aux_sum")[self._router_rows].t().tolist()
        self._attention_plan = [
            (layer.self_attention.core_attention, self._attention_hook(layer.layer_number - 1))
            for layer in self._layers
        ]

    def _attach(self) -> None:
        register = self._handles.append
        if ACTIVATIONS in self._armed:
            for module, kind, hook in self._activation_plan:
                if kind == "pre":
                    register(module.register_forward_pre_hook(hook, with_kwargs=module in self._layer_set))
                else:
                    register(module.register_forward_hook(hook))
            for router, capture in self._router_plan:
                router.gating = capture
                self._wrapped_routers.append(router)
        if ATTENTION in self._armed and self._ranks.dp_cp == 0:
            for core, hook in self._attention_plan:
                register(core.register_forward_pre_hook(hook, with_kwargs=True))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for router in self._wrapped_routers:
            del router.gating
        self._wrapped_routers = []
        self._inputs.clear()
        self._last_output = _NO_OUTPUT
        self._logits.clear()
        self._sampled.clear()
        self._param_norms.clear()

    def _layer_input_hook(self, layer: Any, args: tuple, kwargs: dict) -> None:  # a TransformerLayer
        if _in_backward():
            return
        self._inputs[layer] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        row = layer.layer_number - 1
        if self._params_in_forward and row not in self._param_norms and row in self._row_params:
            # the layer's forward reads these weights next: read now, they reach its matmuls from
            # cache, where a pass after the backward reads them from memory a second time (it cost
            # 1-2% of the step in the telemetry benchmark, this costs about nothing)
            with _plain_torch():
                self._param_norms[row] = torch._foreach_norm(self._row_params[row], 2, dtype=torch.float32)

    def _layer_output_hook(self, row: int) -> Callable:
        sums, counts = self._activation_positions(row, LAYER_STATS)

        def hook(layer: torch.nn.Module, args: tuple, output: Any) -> None:
            if _in_backward():
                return
            h_in = self._inputs.pop(layer)
            h_out = output[0] if isinstance(output, tuple) else output
            last_out, last_norm = self._last_output
            with _plain_torch():
                # a layer's input is most often the previous layer's output, whose norm is known
                in_norm = last_norm if h_in is last_out else None
                reductions = M.layer_output_reductions(h_in, h_out, in_norm)
                self._last_output = (h_out, reductions[1])
                self._token_terms.add(M.layer_terms_from_reductions, h_out.shape[-1], reductions, sums)
                self._pending.count(counts, reductions[1].numel())

        return hook

    def _branch_hook(self, row: int, columns: slice) -> Callable:
        sums, counts = self._activation_positions(row, columns)

        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if _in_backward():
                return
            with _plain_torch():
                branch = _branch_output(output)
                reductions = M.branch_output_reductions(branch)
                self._token_terms.add(M.branch_terms_from_reductions, branch.shape[-1], reductions, sums)
                self._pending.count(counts, reductions[0].numel())

        return hook

    def _final_norm_hook(self) -> Callable:
        sums, counts = self._activation_positions(
            self.num_layers - 1, slice(FINAL_NORM_STAT, FINAL_NORM_STAT + 1)
        )

        def hook(norm: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            if _in_backward():
                return
            with _plain_torch():
                var = M.per_token_variance(output)
                self._pending.add(sums, var.sum(dtype=torch.float64).reshape(1))
                self._pending.count(counts, var.numel())

        return hook

    def _activation_positions(self, row: int, columns: slice) -> tuple[list[int], list[int]]:
        return (
            self._buf.positions("act_sum")[row, columns].tolist(),
            self._buf.positions("act_count")[row, columns].tolist(),
        )

    # --- MoE router ----------------------------------------------------------------------------

    def _logit_capture(self, router: Any) -> Callable:
        """A stand-in for router.gating (set as an instance attribute while armed) that keeps the
        logits for the router's forward hook."""
        gating = router.gating  # the bound class method, which the instance attribute shadows

        def capture_logits(input: torch.Tensor) -> torch.Tensor:
            logits = gating(input)
            if not _in_backward():
                self._logits[router] = logits
            return logits

        return capture_logits

    @staticmethod
    def _aux_losses_on(router: Any) -> list[tuple[int, str]]:
        """The tracker names megatron adds to when this router runs in training (see router.py)."""
        on = []
        for i, name in enumerate(AUX_LOSSES):
            if name == "z_loss":
                # 0 is off as in our config (translated to None); a megatron config given 0 directly
                # still tracks z_loss / 0 = NaN, which must not reach the telemetry.
                tracked = bool(router.config.moe_z_loss_coeff)
            else:
                tracked = (
                    hasattr(router, "get_aux_loss_coeff") and router.get_aux_loss_coeff(_AUX_TYPE[name]) > 0
                )
            if tracked:
                on.append((i, name))
        return on

    def _router_hook(self, row: int) -> Callable:
        aux_counts = self._buf.positions("aux_count")[row].tolist()
        tokens = self._buf.positions("expert_tokens")[row].tolist()
        entropy_sum, entropy_count = self._activation_positions(
            row, slice(ROUTER_ENTROPY_STAT, ROUTER_ENTROPY_STAT + 1)
        )

        def hook(router: torch.nn.Module, args: tuple, output: Any) -> None:
            if router.training and torch.is_grad_enabled():  # megatron tracked this call's aux losses
                for i, weight in self._aux_on[router]:
                    self._pending.count([aux_counts[i]], weight)
            if _in_backward():
                return
            _, routing_map = output
            logits = self._logits.pop(router, None)
            with _plain_torch():
                # summed now: megatron may pad the map in place later (quantization padding)
                self._pending.add(tokens, routing_map.sum(dim=0, dtype=torch.float64))
                if logits is not None:
                    experts = logits.shape[-1]
                    # experts-major: the terms reduce over experts on an outer dim (see the metric)
                    by_expert = logits.reshape(-1, experts).t()
                    self._token_terms.add(M.router_entropy_terms, experts, (by_expert,), entropy_sum)
                    self._pending.count(entropy_count, by_expert.shape[1])

        return hook

    def _add_aux_losses(self) -> None:
        """The step's aux/z-loss sums per MoE layer from megatron's tracker (zeroed by begin_step)."""
        if not self._router_plan:
            return
        tracker = get_moe_layer_wise_logging_tracker()
        for name, positions in zip(AUX_LOSSES, self._aux_positions):
            if name in tracker:
                self._pending.add(positions, tracker[name]["values"].index_select(0, self._router_index))

    # --- attention sample ----------------------------------------------------------------------

    def _attention_supported(self) -> bool:
        c = self._config
        return getattr(c, "context_parallel_size", 1) == 1 and getattr(c, "window_size", None) is None

    def _attention_hook(self, row: int) -> Callable:
        def hook(core: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if _in_backward() or core in self._sampled:
                return
            self._sampled.add(core)
            mask_type = kwargs.get("attn_mask_type") or getattr(core, "attn_mask_type", None)
            if mask_type != AttnMaskType.causal or kwargs.get("packed_seq_params") is not None:
                return
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            with _plain_torch():
                self._sample_attention(row, query, key)

        return hook

    def _sample_attention(self, row: int, query: torch.Tensor, key: torch.Tensor) -> None:
        sq, sk, heads = query.shape[0], key.shape[0], query.shape[2]
        nq = min(sq, self.cfg.attention_max_tokens)
        q = query[sq - nq :, 0]
        k = key[:, 0].repeat_interleave(heads // key.shape[2], dim=1)
        scale = self._config.softmax_scale or query.shape[-1] ** -0.5
        topk = self.cfg.attention_topk
        entropy_rows = M.attention_valid_rows(nq, sk, 1)
        topk_rows = M.attention_valid_rows(nq, sk, topk)
        offset = self._ranks.tp * heads
        chunk = max(1, _ATTENTION_CHUNK_BYTES // (4 * nq * sk))
        where = self._buf.positions("attention")[row]
        for h0 in range(0, heads, chunk):
            h1 = min(heads, h0 + chunk)
            probs = M.causal_attention_probs(q[:, h0:h1], k[:, h0:h1], scale)
            span = slice(offset + h0, offset + h1)
            if entropy_rows:
                self._pending.add(
                    where[span, ATTN_ENTROPY_SUM].tolist(),
                    M.attention_normalized_entropy(probs).double() * entropy_rows,
                )
                self._pending.count(where[span, ATTN_ENTROPY_ROWS].tolist(), entropy_rows)
            if topk_rows:
                self._pending.add(
                    where[span, ATTN_TOPK_SUM].tolist(),
                    M.attention_topk_mass(probs, topk).double() * topk_rows,
                )
                self._pending.count(where[span, ATTN_TOPK_ROWS].tolist(), topk_rows)

    # --- gradient, parameter and weight sums ---------------------------------------------------

    def _build_norm_plan(self) -> None:
        by_param = {lp.param: lp for lp in self._params}
        ranges: list[GradRange] = []
        covered: set[torch.nn.Parameter] = set()
        for chunk in self._chunks:
            if getattr(chunk, "ddp_config", None) is None:
                continue
            chunk_params = {p for p in chunk.parameters()}
            wanted = {p: lp for p, lp in by_param.items() if p in chunk_params}
            covered.update(wanted)
            ranges += ddp_grad_ranges(chunk, wanted, self._ranks)
        self._static_grads = merged_grad_views(ranges)
        self._dynamic_grads = [
            lp for lp in self._params if lp.param not in covered and lp.counted and lp.param.requires_grad
        ]
        # counted parameters per layer row, in layer order
        self._row_params: dict[int, list[torch.Tensor]] = {}
        for lp in self._params:
            if lp.counted:
                self._row_params.setdefault(lp.row, []).append(lp.param)
        # Parameter norms are taken in each layer's first forward of a collection step (the values
        # after_backward would see: no optimizer step lies between), unless megatron gathers the
        # parameters during the forward (distributed optimizer with overlapped parameter gather).
        self._params_in_forward = not any(
            getattr(getattr(c, "ddp_config", None), "overlap_param_gather", False) for c in self._chunks
        )
        self._param_norms: dict[int, tuple[torch.Tensor, ...]] = {}
        grad_rows = [row for row, _ in self._static_grads] + [lp.row for lp in self._dynamic_grads]
        param_rows = [row for row, params in self._row_params.items() for _ in params]
        # norm_sq is [L, 2] (grad, param): grads first, then parameters, as after_backward lists them
        self._norm_index = self._index([2 * r for r in grad_rows] + [2 * r + 1 for r in param_rows])
        self._zero = torch.zeros(1, device=self._device)

    def _build_weight_plan(self) -> None:
        self._weights = [lp for lp in self._params if lp.counted and lp.family is not None]
        families = len(WEIGHT_FAMILIES)
        cells = [lp.row * families + WEIGHT_FAMILIES.index(lp.family) for lp in self._weights]
        self._weight_cell = self._index(cells)
        self._weight_numel = torch.tensor(
            [float(lp.param.numel()) for lp in self._weights], dtype=torch.float64, device=self._device
        )

    def _index(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self._device)

    def _collect_weights(self) -> None:
        """Element counts and squared sums, one all-reduce so RMS(W) is global, then one more pass
        for the sums of |w| and the small-entry counts (reduced with the rest of the buffer)."""
        sums = self._buf.weight_sums.view(-1, 2)
        if self._weights:
            ws = [lp.param.detach() for lp in self._weights]
            l2 = torch.stack(torch._foreach_norm(ws, 2, dtype=torch.float32)).double()
            sums[:, W_COUNT].index_add_(0, self._weight_cell, self._weight_numel)
            sums[:, W_SUMSQ].index_add_(0, self._weight_cell, l2.square())
        self._buf.all_reduce_weight_sums()
        if not self._weights:
            return
        rms = (sums[:, W_SUMSQ] / sums[:, W_COUNT].clamp_min(1)).sqrt()
        threshold = (self.cfg.weight_eps * rms)[self._weight_cell].float()
        l1, small = M.abs_sums_and_small_counts(ws, threshold)
        self._buf.weight_l1.view(-1).index_add_(0, self._weight_cell, l1)
        self._buf.weight_small.view(-1).index_add_(0, self._weight_cell, small)
