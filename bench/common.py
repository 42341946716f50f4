"""What every benchmark shares: arguments, machine description, interleaved timing, JSON results.

Every script writes ``<results-dir>/<name>.json`` with the same top-level keys (see :func:`write_result`);
``bench/report.py`` turns those files into ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = 1
#: the top-level keys of every result file
RESULT_KEYS = ("schema", "name", "quick", "command", "machine", "config", "results", "targets", "notes")


class _Parser(argparse.ArgumentParser):
    """Remembers the arguments it parsed (``args.argv``), for the command line written with the results."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        ns.argv = list(sys.argv[1:] if args is None else args)
        return ns


def parser(description: str) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and 1-2 repeats: a smoke test, not a measurement"
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <name>.json is written")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the number of usable cores)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: script's own)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU variants even when CUDA is available")
    return p


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup_torch(threads: int | None) -> int:
    """Set torch's intra-op threads (default: one per usable core) and return the number set."""
    n = threads or usable_cores()
    set_threads(n)
    return n


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)``, called only when torch does not already use ``n`` threads: after a call,
    even one with torch's own count, SDPA's CPU kernel ran small attention maps markedly slower in this torch
    (bench/notes.md, "The thread-count call"), which a benchmark must not inflict on the libraries it
    compares when a user's process would not."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, threads, library versions, date and load average, taken now."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    for name in ("transformers", "timm", "lightly", "numpy", "pillow", "torchvision", "vitmsn"):
        info[name] = _version(name)
    return info


def command_line(name: str, argv: list[str]) -> str:
    """How to run it again, from the repository's root: ``python bench/<name>.py <arguments>``."""
    return shlex.join(["python", f"bench/{name}.py", *argv])


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------------------------- timing


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize(times: list[float]) -> dict[str, Any]:
    """Seconds per call: median, min, max and the raw list (in the order run)."""
    return {"median_s": median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def time_interleaved(
    cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, list[float]]:
    """Round-robin timing: warm every case up, then per repeat run each case once, in turn.

    Interleaving spreads slow phases of a shared machine over all cases instead of one.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in cases.values():
            fn()
            sync()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


# ---------------------------------------------------------------------------------------------- targets


def target(
    name: str, value: float, threshold: float, *, higher_is_better: bool = True, unit: str = ""
) -> dict[str, Any]:
    """A target with its measured value; ``margin`` is value/threshold - 1 (negative: missed by that much)."""
    met = value >= threshold if higher_is_better else value <= threshold
    margin = (value / threshold - 1.0) if higher_is_better else (threshold / value - 1.0 if value else 0.0)
    return {
        "name": name,
        "value": value,
        "threshold": threshold,
        "higher_is_better": higher_is_better,
        "unit": unit,
        "met": bool(met),
        "margin": margin,
    }


# ---------------------------------------------------------------------------------------------- results


def write_result(
    name: str,
    args: argparse.Namespace,
    *,
    config: dict[str, Any],
    results: Any,
    targets: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    machine: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results-dir>/<name>.json`` and return its path."""
    machine = machine or machine_info()
    machine["loadavg_end"] = loadavg()
    data = {
        "schema": SCHEMA,
        "name": name,
        "quick": bool(args.quick),
        "command": command_line(name, getattr(args, "argv", sys.argv[1:])),
        "machine": machine,
        "config": config,
        "results": results,
        "targets": targets or [],
        "notes": notes or [],
    }
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def cuda_available(args: argparse.Namespace) -> tuple[bool, str | None]:
    """Whether to run the GPU variants, and if not, why."""
    import torch

    if args.no_gpu:
        return False, "skipped: --no-gpu"
    if not torch.cuda.is_available():
        return False, "skipped: no CUDA device"
    return True, None
