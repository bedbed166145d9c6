"""The CPU layer maps CUDA-only calls to the CPU, and only when CUDA is unavailable."""

import torch
import torch.distributed as dist

from megatron_cod import platform
from megatron_cod.platform import cpu_compat


def test_not_installed_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.enable_cpu_compat() is False


def test_cuda_device_arguments_land_on_cpu():
    assert cpu_compat.enable_cpu_compat() is True
    a = torch.empty(3, device="cuda")
    b = torch.zeros(2, 2, device=torch.cuda.current_device())
    c = torch.arange(4, device=torch.device("cuda", 0))
    d = torch.ones(2).cuda()
    e = torch.ones(2).to("cuda")
    f = torch.ones(2).to(device="cuda:0", dtype=torch.float64)
    for t in (a, b, c, d, e, f):
        assert t.device.type == "cpu"
    assert f.dtype == torch.float64
    assert torch.equal(c, torch.tensor([0, 1, 2, 3]))
    assert torch.ones(1).new_empty((2,), device="cuda").device.type == "cpu"


def test_cpu_devices_and_explicit_type_calls_are_untouched():
    cpu_compat.enable_cpu_compat()
    x = torch.ones(2, dtype=torch.float32)
    assert x.type() == "torch.cuda.FloatTensor"  # what megatron's optimizer asserts
    assert x.type(torch.float64).dtype == torch.float64
    assert torch.empty(1, device="cpu").device.type == "cpu"
    assert torch.empty(1, device="meta").device.type == "meta"


def test_streams_and_events_are_inert():
    cpu_compat.enable_cpu_compat()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ev = torch.cuda.Event()
        ev.record()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert torch.cuda.current_device() == torch.device("cpu")


def test_custom_backward_allocating_on_the_current_device():
    """Autograd runs backward with torch-function modes popped; the CPU layer must still hold."""
    cpu_compat.enable_cpu_compat()

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            out = torch.empty(grad.shape, device=torch.cuda.current_device())
            return torch.mul(grad, 2, out=out)

    x = torch.ones(3, requires_grad=True)
    Double.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_megatron_rng_tracker_is_the_cpu_tracker():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    cpu_compat.enable_cpu_compat()
    assert get_cuda_rng_tracker() is cpu_compat.cpu_rng_tracker()


def test_all_to_all_with_tensor_split_sizes_on_gloo(tmp_path):
    cpu_compat.enable_cpu_compat()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        inp = torch.arange(5.0)
        out = torch.empty(5)
        dist.all_to_all_single(out, inp, output_split_sizes=torch.tensor([5]),
                               input_split_sizes=torch.tensor([5]))
        assert torch.equal(out, inp)
    finally:
        dist.destroy_process_group()


def test_initialize_single_process_world_and_teardown():
    ctx = platform.initialize(seed=7)
    try:
        assert (ctx.rank, ctx.world_size, ctx.data_parallel_size) == (0, 1, 1)
        assert ctx.device.type == "cpu"
    finally:
        platform.teardown()
    assert not dist.is_initialized()


def test_single_process_world_leaves_the_environment_alone():
    import os

    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    platform.initialize(seed=1)
    try:
        assert {k: os.environ.get(k) for k in before} == before
    finally:
        platform.teardown()
