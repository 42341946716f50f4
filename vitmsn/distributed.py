"""One machine or many: process-group set-up under ``torchrun``, and the few collectives training needs.

``torchrun --nproc_per_node N -m vitmsn pretrain ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
everything runs in one process and every collective is the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vitmsn.models.layers import is_compiling


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str | None = None) -> torch.device:
    """Join the process group if launched by torchrun (NCCL on GPU, gloo on CPU); return this rank's device.

    Under torchrun each process takes the GPU of its LOCAL_RANK. In one process, ``"cuda:1"`` means that GPU;
    ``"cuda"`` (or no device, with a GPU present) means the current one.
    """
    use_cuda = torch.cuda.is_available() if device is None else _parse_device(device).type == "cuda"
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not use_cuda:
            if not is_initialized():
                dist.init_process_group(backend="gloo", timeout=timedelta(minutes=30))
            return torch.device("cpu")
        local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if (count > 1 or local_procs > 1) and local_rank >= count:
            # (a launcher that shows each process only its own GPU starts one process per node's view of it)
            raise ValueError(f"LOCAL_RANK {local_rank}, but this machine shows {count} GPU(s): start at most one "
                             f"process per GPU (torchrun --nproc_per_node {count})")
        # a launcher that shows each process only its own GPU (one per task) leaves LOCAL_RANK beyond the count
        dev = torch.device("cuda", local_rank if count > 1 else 0)
        torch.cuda.set_device(dev)
        if not is_initialized():
            try:  # bound to its GPU from the start (torch >= 2.3): NCCL set up at once, barriers know the GPU
                dist.init_process_group(backend="nccl", timeout=timedelta(minutes=30), device_id=dev)
            except TypeError:  # older torch
                dist.init_process_group(backend="nccl", timeout=timedelta(minutes=30))
        return dev
    return resolve_device(device)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when there is a GPU and the CPU when not. A GPU comes back with its index and
    becomes the current one, so that everything else (pinned-memory copies, new tensors) goes to it too."""
    dev = _parse_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "mps":  # Apple GPUs: untested here, but nothing in vitmsn is CUDA-only outside DDP
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r}: no Apple GPU (mps) is available here; use cpu")
        return dev
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: vitmsn runs on cpu, cuda or cuda:N (and mps on a Mac)")
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: there are only {torch.cuda.device_count()} GPUs")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """``torch.autocast`` to bfloat16 on ``device`` (inactive unless ``enabled``); asking for it on a GPU without
    bfloat16 is one clear error here, not a failure inside the first forward."""
    if enabled and device.type == "cuda" and not native_bf16():
        raise ValueError("bf16 needs a GPU with bfloat16 (NVIDIA Ampere or newer): turn bf16 off")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device, enabled: bool) -> Iterator[None]:
    """TensorFloat-32 fp32 matmuls on a CUDA ``device`` while inside (restored on exit).

    On NVIDIA Ampere or newer GPUs they run several times fp32's speed at about 1e-3 relative precision,
    which training tolerates (bf16 autocast is coarser); no effect on the CPU or on older GPUs. The setting
    is process-wide, so it is on only for the duration of the training function that asks for it. Set
    through ``torch.backends.cuda.matmul.fp32_precision`` where torch has it (mixing it with the older
    ``allow_tf32`` flag is an error in newer torch), else through ``allow_tf32``. Disabled: torch's own
    setting stays (full fp32 unless the process chose otherwise)."""
    if device.type != "cuda" or not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    saved = getattr(matmul, attr)
    setattr(matmul, attr, "tf32" if attr == "fp32_precision" else True)
    try:
        yield
    finally:
        setattr(matmul, attr, saved)


def native_bf16() -> bool:
    """Whether the current GPU computes in bfloat16 natively (torch's default check also counts emulation)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3
        return torch.cuda.get_device_capability() >= (8, 0)


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on ``device`` without making the host wait for the GPU: to a GPU the copy goes through
    pinned memory and is queued behind the GPU's work, where a copy from pageable memory waits for all of it
    first (PyTorch keeps the pinned block until the copy is done)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (no autograd)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """In-place element-wise maximum over processes (no autograd)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def max_over_processes(n: int, device: torch.device | str) -> int:
    """The largest of each process's ``n`` (every process must call it; ``n`` itself in one process)."""
    if not (is_initialized() and world_size() > 1):
        return int(n)
    # a fill, not a host-to-GPU copy (no sync)
    return int(all_reduce_max_(torch.full((), int(n), dtype=torch.int64, device=device)))


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t)
        t /= world_size()
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is the sum of the gradients over processes (each process's output
    feeds its own loss; the input's gradient is the total). Written here rather than taken from
    ``torch.distributed.nn``, whose import left gloo processes aborting at exit now and then."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics are those of the global batch, on any device.

    One differentiable all-reduce of per-feature sums per call, so that N processes compute what one process
    computes on the whole batch (gloo on the CPU, NCCL on GPUs). Unlike ``nn.SyncBatchNorm`` it never makes
    the host wait for the GPU (SyncBatchNorm filters the ranks' counts with a boolean mask, which does), as
    every rank brings a batch of the same size. The sums are taken in float32 at least (bf16 autocast gives
    bf16 inputs) and around the running mean, the same on every rank, so that the variance does not lose its
    digits to a large mean.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized() and world_size() > 1):
            return super().forward(x)
        # x: (n, C) local rows; stats: (2C + 1,) = [sum (x - k), sum (x - k)^2, n], summed over processes
        dt = torch.promote_types(x.dtype, torch.float32)  # bf16 under autocast: float32
        # (compiled, no shift: the compiled backward may keep the running mean itself, which the update below
        # then changes in place, and autograd refuses a changed saved tensor)
        shifted = self.track_running_stats and not is_compiling()
        shift = self.running_mean.to(dt) if shifted else x.new_zeros(x.shape[1], dtype=dt)
        xs = x.to(dt) - shift  # (n, C)
        stats = torch.cat([xs.sum(0), (xs * xs).sum(0), xs.new_full((1,), x.shape[0])])
        stats = _AllReduceSum.apply(stats)
        C = x.shape[1]
        n = stats[-1]
        centred = stats[:C] / n  # mean - shift
        mean = shift + centred
        var = (stats[C: 2 * C] / n - centred * centred).clamp_min(0)  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        y = (x.to(dt) - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight + self.bias if self.affine else y).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm1d`` of ``module`` as a :class:`GlobalBatchNorm1d` (in place); no change in one process."""
    if world_size() == 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module
