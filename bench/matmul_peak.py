"""The machine's measured fp32 matmul peak: large square matmuls, torch threads = cores, best of several.

Two fp32 matmuls are timed, and the peak is the faster: ``torch.mm`` (the BLAS sgemm torch was built with,
MKL on x86, what ``F.linear`` calls) and oneDNN's matmul with a pre-packed weight (the op of vitmsn's CPU
inference path). Which is faster depends on the CPU (on an AMD EPYC, oneDNN's; MKL's sgemm is not the
fastest kernel there), so a share of the peak is a share of the fastest fp32 matmul this torch has here.

Importable: ``measure_peak()`` returns GFLOP/s, which other benchmarks use as the roofline for their models.
GPU variant (CUDA only): fp32 (TF32 off) and bf16 square matmuls.

    python bench/matmul_peak.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cuda_available, machine_info, parser, set_threads, setup_torch, write_result  # noqa: E402

NAME = "matmul_peak"
SIZES = (2048, 3072, 4096)
QUICK_SIZES = (512,)


def time_matmul(n: int, repeats: int, *, device: str = "cpu", dtype=None) -> list[float]:
    """Seconds of ``a @ b`` for n x n matrices, ``repeats`` times after two warm-ups."""
    import torch

    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: thread pool, page faults, GPU clocks
        torch.mm(a, b, out=out)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t)
    return times


def time_onednn_matmul(n: int, repeats: int) -> list[float] | None:
    """Seconds of oneDNN's matmul (``mkldnn._linear_pointwise``, weight packed once) for n x n matrices, as
    :func:`time_matmul`; None in a torch build without oneDNN."""
    import torch

    try:
        linear = torch.ops.mkldnn._linear_pointwise.default
        pack = torch.ops.mkldnn._reorder_linear_weight.default
    except (AttributeError, RuntimeError):
        return None
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    w = pack(torch.randn(n, n, generator=g), n)  # (out, in), oneDNN's blocked layout
    for _ in range(2):
        linear(a, w, None, "none", [], "")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        linear(a, w, None, "none", [], "")
        times.append(time.perf_counter() - t)
    return times


def measure_peak(
    sizes: tuple[int, ...] = SIZES, repeats: int = 5, threads: int | None = None, per_size: dict | None = None
) -> float:
    """Best fp32 GFLOP/s over ``sizes`` (2 n^3 flops each) and both matmuls (``torch.mm``, oneDNN) on the
    CPU; fills ``per_size`` (size -> matmul -> numbers) if given."""

    if threads:
        set_threads(threads)
    best = 0.0
    for n in sizes:
        for kind, times in (("torch.mm", time_matmul(n, repeats)), ("oneDNN", time_onednn_matmul(n, repeats))):
            if times is None:
                continue
            gflops = 2 * n**3 / min(times) / 1e9
            if per_size is not None:
                per_size.setdefault(str(n), {})[kind] = {
                    "best_gflops": gflops,
                    "median_gflops": 2 * n**3 / sorted(times)[len(times) // 2] / 1e9,
                    "times_s": times,
                }
            best = max(best, gflops)
    return best


def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = args.repeats or (2 if args.quick else 7)
    per_size: dict = {}
    peak = measure_peak(sizes, repeats, per_size=per_size)
    print(f"fp32 matmul peak on {machine['cpu']} with {threads} threads: {peak:.1f} GFLOP/s")
    for n, kinds in per_size.items():
        for kind, r in kinds.items():
            print(f"  n={n} {kind:9s}: best {r['best_gflops']:.1f}  median {r['median_gflops']:.1f} GFLOP/s")
    results: dict = {"cpu": {"peak_gflops": peak, "threads": threads, "sizes": per_size}}

    use_gpu, why = cuda_available(args)
    if use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        gpu: dict = {}
        n = 1024 if args.quick else 8192
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            times = time_matmul(n, repeats, device="cuda", dtype=dtype)
            gpu[label] = {"n": n, "best_gflops": 2 * n**3 / min(times) / 1e9, "times_s": times}
            print(f"GPU {label} n={n}: {gpu[label]['best_gflops']:.0f} GFLOP/s")
        results["gpu"] = gpu
    else:
        results["gpu"] = {"skipped": why}
        print(f"GPU variants {why}")
    write_result(
        NAME,
        args,
        machine=machine,
        config={"sizes": list(sizes), "repeats": repeats, "dtype": "float32", "threads": threads},
        results=results,
    )
    return results


if __name__ == "__main__":
    main()
