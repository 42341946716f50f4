"""The machine's measured fp32 matmul peak: large square sgemm, torch threads = cores, best of several.

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

from bench.common import cuda_available, machine_info, parser, setup_torch, write_result  # noqa: E402

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


def measure_peak(
    sizes: tuple[int, ...] = SIZES, repeats: int = 5, threads: int | None = None, per_size: dict | None = None
) -> float:
    """Best fp32 GFLOP/s over ``sizes`` (2 n^3 flops each) on the CPU; fills ``per_size`` if given."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    for n in sizes:
        times = time_matmul(n, repeats)
        gflops = 2 * n**3 / min(times) / 1e9
        if per_size is not None:
            per_size[str(n)] = {
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
    print(f"fp32 sgemm peak on {machine['cpu']} with {threads} threads: {peak:.1f} GFLOP/s")
    for n, r in per_size.items():
        print(f"  n={n}: best {r['best_gflops']:.1f}  median {r['median_gflops']:.1f} GFLOP/s")
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
