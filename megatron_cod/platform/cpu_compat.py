"""Run the real megatron-core on a machine without CUDA.

megatron-core hard-codes CUDA in ~170 places: allocations on ``torch.cuda.current_device()``,
``device="cuda"`` literals, ``Tensor.cuda()``, CUDA streams/events in the MoE dispatcher and timers,
CUDA RNG states in the tracker and in activation recompute, and dtype checks against
``'torch.cuda.FloatTensor'``. Rather than patching call sites one by one, a TorchFunctionMode maps
every CUDA device argument to the CPU, and ``torch.cuda`` gets inert stand-ins for the few
functions that do not take a device. Everything here is installed only when CUDA is unavailable,
so GPU runs execute megatron-core unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from megatron_cod.platform.rng import CpuRNGStatesTracker

_lock = threading.Lock()
_mode: CudaToCpuMode | None = None
_TRACKER = CpuRNGStatesTracker()


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # an integer device is a CUDA ordinal
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_if_cuda(value: Any) -> Any:
    return torch.device("cpu") if _is_cuda_device(value) else value


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU and makes CUDA-only tensor methods CPU no-ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron asserts e.g. param.type() == 'torch.cuda.FloatTensor'
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], torch.device("cpu"), *args[2:])
        return func(*args, **kwargs)


class _InertStream:
    """Stand-in for torch.cuda.Stream/Event: CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> _InertStream:
        return _InertStream()

    def record(self, *args: Any) -> None:
        pass

    def wait(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _patch_torch_cuda() -> None:
    cuda: Any = torch.cuda  # Any: the stand-ins replace typed module attributes on purpose
    # A device object, not the index 0: autograd runs backward with torch-function modes popped,
    # so device=torch.cuda.current_device() in a custom backward must already mean the CPU.
    cuda.current_device = lambda: torch.device("cpu")
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream = _InertStream
    cuda.Event = _InertStream
    cuda.current_stream = lambda *a, **k: _InertStream()
    cuda.default_stream = lambda *a, **k: _InertStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.empty_cache = lambda: None


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._CUDA_RNG_STATE_TRACKER = _TRACKER
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom.initialize_rng_tracker = lambda *a, **k: None
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def _patch_recompute_backward() -> None:
    """Activation recompute re-runs layer forwards inside backward, where autograd has popped
    torch-function modes; run that backward under a fresh mode so the re-run forward maps CUDA
    the same way the first forward did."""
    from megatron.core.tensor_parallel import random as mrandom

    original = mrandom.CheckpointFunction.backward

    def backward(ctx, *args):
        with CudaToCpuMode():
            return original(ctx, *args)

    mrandom.CheckpointFunction.backward = staticmethod(backward)


def _patch_gloo_all_to_all() -> None:
    """gloo's all_to_all_single wants split sizes as lists; megatron's MoE passes tensors."""
    original = dist.all_to_all_single

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, **kw):
        if isinstance(output_split_sizes, torch.Tensor):
            output_split_sizes = output_split_sizes.tolist()
        if isinstance(input_split_sizes, torch.Tensor):
            input_split_sizes = input_split_sizes.tolist()
        return original(output, input, output_split_sizes, input_split_sizes, **kw)

    distributed: Any = dist  # Any: replacing a typed module function on purpose
    distributed.all_to_all_single = all_to_all_single


def patch_missing_te_symbols() -> None:
    """megatron-core 0.16 references te_general_gemm in the MoE router even when TE is absent."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def cpu_rng_tracker() -> CpuRNGStatesTracker:
    return _TRACKER


def enable_cpu_compat() -> bool:
    """Install the CPU layer if CUDA is unavailable; idempotent. Returns True when active."""
    global _mode
    if torch.cuda.is_available():
        return False
    with _lock:
        if _mode is None:
            _patch_torch_cuda()
            _patch_megatron_rng()
            _patch_recompute_backward()
            _patch_gloo_all_to_all()
            _mode = CudaToCpuMode()
            _mode.__enter__()
    return True


def cpu_compat_active() -> bool:
    return _mode is not None
