"""What a ``torch.set_num_threads`` call does to the work that follows it, in fresh processes, interleaved.

Every trial starts one process per condition (in turn, the order rotating from trial to trial) and each
process times the same workloads, interleaved among themselves; nothing else differs between processes:

- ``never``: ``torch.set_num_threads`` is never called (torch's own thread count, one per core); the views
  are made with ``MSNViews(single_thread=False)``;
- ``same``: one ``torch.set_num_threads(n)`` with the count torch already has, before anything else runs
  (what every benchmark script did until 2026-12-07), then as ``never``;
- ``toggle``: the views are made with ``MSNViews(single_thread=True)``, which sets one thread around every
  image and then the count again, in this process (``MSNViews``' default until 2026-12-07: what
  ``view_maker=workers`` with ``num_workers=0`` then did to the training process);
- ``mkl-static``: no ``set_num_threads`` call, but MKL's dynamic thread adjustment switched off
  (``MKL_Set_Dynamic(0)`` through ctypes), one of the things ``torch.set_num_threads`` does; skipped where
  torch's library does not export that function.

Workloads (the ``fashion-mnist`` preset's shapes unless named):

- ``views``: MSN's views of a batch of 28 x 28 uint8 images, image by image with ``MSNViews``;
- ``attention``: SDPA, forward + backward, on the preset's random anchors (q, k, v views of one projection);
- ``linear``: ``F.linear``, forward + backward, the preset's fc1 on its random anchors' tokens;
- ``step``: one pretraining step (``bench/pretrain_step.py``'s ``VitmsnStep``) on views made once;
- ``inference``: ``ViTMSNModel`` ViT-S/16 at 224 px, batch 8, under ``torch.inference_mode``.

Per condition and workload the table gives the median over trials of each process's median, and the median
(min - max) over trials of its ratio to the ``never`` process of the same trial. ``views + step`` is what a
step of the ``view_maker=workers`` path costs in the main process. No target.

    python bench/threads.py [--quick] [--trials 8]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine_info, median, parser, setup_torch, time_interleaved, write_result  # noqa: E402
from bench.pretrain_step import VitmsnStep, make_views, pretrain_config  # noqa: E402

NAME = "threads"
CONDITIONS = ("never", "same", "toggle", "mkl-static")
WORKLOADS = ("views", "attention", "linear", "step", "inference")
CHILD_PREFIX = "THREADS_CHILD "


def mkl_set_dynamic():
    """MKL's ``MKL_Set_Dynamic`` from torch's CPU library, or None where it is not exported."""
    import ctypes

    import torch

    try:
        return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).MKL_Set_Dynamic
    except (OSError, AttributeError):
        return None


def workloads(quick: bool, single_thread: bool) -> dict[str, Any]:
    """{workload: zero-argument callable}, built in the calling process."""
    import torch
    import torch.nn.functional as F

    import vitmsn
    from vitmsn.msn.train import build_views

    cfg = pretrain_config("fashion-mnist", quick)
    b, D = cfg.batch_size, cfg.hidden_size
    torch.manual_seed(0)
    out: dict[str, Any] = {}

    maker = build_views(cfg)
    maker.single_thread = single_thread
    images = torch.randint(0, 256, (b, 1, cfg.rand_size, cfg.rand_size), dtype=torch.uint8)  # (b, 1, 28, 28)
    out["views"] = lambda: [maker(img) for img in images]

    tokens = 1 + int((cfg.rand_size // cfg.patch_size) ** 2 * (1 - cfg.patch_drop))  # kept patches + CLS
    heads = cfg.num_attention_heads
    qkv = torch.randn(b, tokens, 3, heads, D // heads, requires_grad=True)  # (b, N, 3, h, d)
    attn_grad = torch.randn(b, heads, tokens, D // heads)  # (b, h, N, d)

    def attention():
        F.scaled_dot_product_attention(*qkv.permute(2, 0, 3, 1, 4).unbind(0)).backward(attn_grad)

    out["attention"] = attention

    x = torch.randn(b * tokens, D, requires_grad=True)  # (b*N, D)
    w = torch.randn(cfg.intermediate_size, D, requires_grad=True)  # (M, D)
    bias = torch.zeros(cfg.intermediate_size, requires_grad=True)
    lin_grad = torch.randn(b * tokens, cfg.intermediate_size)  # (b*N, M)
    out["linear"] = lambda: F.linear(x, w, bias).backward(lin_grad)

    step, views = VitmsnStep(cfg, "cpu"), make_views(cfg, "cpu")
    out["step"] = lambda: step(views)

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32)
    vit_s = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224)
    model = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(patch_size=16, **(small if quick else vit_s))).eval()
    pixels = torch.randn(2 if quick else 8, 3, model.config.image_size, model.config.image_size)

    def inference():
        with torch.inference_mode():
            model(pixels)

    out["inference"] = inference
    return out


def child(args) -> None:
    """One process of one condition: time every workload, print the medians (seconds) as one JSON line."""
    import torch

    if args.child == "same":
        torch.set_num_threads(torch.get_num_threads())
    elif args.child == "mkl-static":
        mkl_set_dynamic()(0)
    threads = torch.get_num_threads()
    fns = workloads(args.quick, single_thread=args.child == "toggle")
    repeats = args.repeats or (2 if args.quick else 9)
    times = time_interleaved(fns, repeats=repeats, warmup=1 if args.quick else 2)
    print(CHILD_PREFIX + json.dumps({"condition": args.child, "threads": threads,
                                     "median_s": {k: median(ts) for k, ts in times.items()}}), flush=True)


def run_child(args, condition: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", condition]
    if args.quick:
        cmd.append("--quick")
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:  # the child's count without a set_num_threads call
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_PREFIX):
            return json.loads(line[len(CHILD_PREFIX):])
    raise RuntimeError(f"{condition} process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="processes per condition (default 8; --quick 1)")
    p.add_argument("--child", choices=CONDITIONS, default=None, help="internal: run one condition's process")
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return {}
    threads = setup_torch(args.threads)  # the parent times nothing; its count is reported
    machine = machine_info()
    trials = args.trials or (1 if args.quick else 8)
    conditions = CONDITIONS if mkl_set_dynamic() is not None else CONDITIONS[:-1]
    runs: list[dict[str, dict[str, float]]] = []
    for t in range(trials):
        order = conditions[t % len(conditions):] + conditions[: t % len(conditions)]
        trial = {}
        for c in order:
            res = run_child(args, c)
            if res["threads"] != threads:
                raise RuntimeError(f"the {c} process ran {res['threads']} torch threads, not {threads}")
            ms = res["median_s"]
            ms["views + step"] = ms["views"] + ms["step"]
            trial[c] = ms
        runs.append(trial)
        print(f"trial {t + 1}/{trials}: " + ", ".join(
            f"{c} step {trial[c]['step'] * 1e3:.1f} ms" for c in conditions), flush=True)
    rows = []
    print(f"\n{trials} trials; median ms over trials, ratio to 'never' in the same trial: median (min - max)")
    for w in (*WORKLOADS, "views + step"):
        for c in conditions:
            ratios = [r[c][w] / r["never"][w] for r in runs]
            row = {"workload": w, "condition": c, "median_ms": median([r[c][w] for r in runs]) * 1e3,
                   "ratio_to_never": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
            rows.append(row)
            print(f"  {w:12s} {c:10s} {row['median_ms']:9.2f} ms   x{row['ratio_to_never']:.3f} "
                  f"({row['ratio_min']:.3f} - {row['ratio_max']:.3f})")
    write_result(NAME, args, machine=machine,
                 config={"threads": threads, "trials": trials, "conditions": list(conditions),
                         "workloads": list(WORKLOADS), "preset": "fashion-mnist"},
                 results={"rows": rows, "trials": runs})
    return {"rows": rows}


if __name__ == "__main__":
    main()
