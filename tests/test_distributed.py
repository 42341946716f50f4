"""vitmsn.distributed: the global-batch BatchNorm in 2 gloo processes against BatchNorm1d on the whole batch,
and the TensorFloat-32 switch."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import leave_worker
from vitmsn import distributed as dist


def _batch(mean: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 6, dtype=torch.float64) + mean
    return x, torch.randn(16, 6, generator=g, dtype=torch.float64)  # (N, C) input, upstream gradient


def _bn_worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for mean, running, atol in ((0.3, 0.0, 1e-5), (1e3, 1e3 - 0.5, 1e-3)):
            x64, grad = _batch(mean)
            ref = nn.BatchNorm1d(6, dtype=torch.float64)  # the whole batch in one process, in float64
            ref.running_mean.fill_(running)
            with torch.no_grad():
                ref.weight.copy_(torch.linspace(0.5, 1.5, 6))
                ref.bias.copy_(torch.linspace(-1, 1, 6))
            ours = dist.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(6)))[0]
            assert type(ours) is dist.GlobalBatchNorm1d
            ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})

            x_ref = x64.clone().requires_grad_()
            ref(x_ref).backward(grad)
            rows = slice(rank * 8, rank * 8 + 8)  # this process's half of the batch
            x = x64[rows].float().requires_grad_()
            y = ours(x)
            y.backward(grad[rows].float())

            def close(a, b, what, atol=atol):
                torch.testing.assert_close(a.double(), b.detach(), atol=atol, rtol=1e-5, msg=lambda m: f"{what}: {m}")

            close(y, _forward_rows(ref, x64, rows), f"output (mean {mean})")
            close(x.grad, x_ref.grad[rows], f"input gradient (mean {mean})")
            for name in ("weight", "bias"):  # DDP sums each process's share
                g = getattr(ours, name).grad.clone()
                torch_dist.all_reduce(g)
                close(g, getattr(ref, name).grad, f"{name} gradient (mean {mean})")
            close(ours.running_mean, ref.running_mean, f"running mean (mean {mean})")
            close(ours.running_var, ref.running_var, f"running var (mean {mean})")
    finally:
        torch_dist.destroy_process_group()
    leave_worker()


def _forward_rows(ref: nn.BatchNorm1d, x64: torch.Tensor, rows: slice) -> torch.Tensor:
    """The reference's output rows for the whole batch, without touching its running statistics again."""
    with torch.no_grad():
        mean, var = x64.mean(0), x64.var(0, unbiased=False)
        return ((x64 - mean) / torch.sqrt(var + ref.eps) * ref.weight + ref.bias)[rows]


def test_global_batchnorm_equals_whole_batch():
    """Output, gradients and running statistics as BatchNorm1d on the whole batch; with a mean of 1e3 too,
    where the sums around the running mean keep the variance's digits (around zero, fp32 would lose them)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_bn_worker, args=(2, os.path.join(tmp, "pg")), nprocs=2, join=True)


def test_convert_is_a_no_op_in_one_process():
    head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert type(dist.convert_sync_batchnorm(head)[1]) is nn.BatchNorm1d


def test_tf32_switch_restores_and_skips_the_cpu():
    matmul = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    on, off = ("tf32", "ieee") if attr == "fp32_precision" else (True, False)
    before = getattr(matmul, attr)
    try:
        setattr(matmul, attr, off)
        with dist.tf32_matmuls(torch.device("cpu"), True):
            assert getattr(matmul, attr) == off
        with dist.tf32_matmuls(torch.device("cuda"), True):  # sets the flag only: runs without a GPU
            assert getattr(matmul, attr) == on
        assert getattr(matmul, attr) == off
        with dist.tf32_matmuls(torch.device("cuda"), False):
            assert getattr(matmul, attr) == off
    finally:
        setattr(matmul, attr, before)


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a machine that shows one GPU: a clear error before NCCL starts (both
    processes would otherwise take GPU 0, and NCCL fails with 'Duplicate GPU detected'). A launcher that shows
    each process its own single GPU (LOCAL_WORLD_SIZE unset or 1) still takes GPU 0."""
    import pytest

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"LOCAL_RANK 1, but this machine shows 1 GPU\(s\).*--nproc_per_node 1"):
        dist.init_from_env("cuda")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    chosen = []

    def set_device(device):  # the GPU it takes; then stop before a process group is started
        chosen.append(device)
        raise RuntimeError("stop")

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(RuntimeError, match="stop"):
        dist.init_from_env("cuda")
    assert chosen == [torch.device("cuda", 0)]
