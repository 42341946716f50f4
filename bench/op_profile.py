"""Where the time goes: torch.profiler's share of each operator in vitmsn's CPU inference and pretraining step.

Two workloads, each run a few times under ``torch.profiler`` after warm-up; per operator, its self CPU time
as a share of the total (operators nested in others count once, in the innermost one):

- ``inference``: ``ViTMSNModel`` ViT-S/16 at 224 px, batch 8, fp32, ``torch.inference_mode`` (random weights);
- ``pretrain step``: one MSN step on the ``fashion-mnist`` preset (batch 128), synthetic views, as
  ``bench/pretrain_step.py`` times it.

Operators are grouped as matmul (``mm``, ``addmm``, ``bmm``, oneDNN's linear), attention (SDPA's kernels),
element-wise (GELU, adds, copies, ...), normalisation (LayerNorm, BatchNorm), optimizer and other.

    python bench/op_profile.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, parser, setup_torch, write_result  # noqa: E402

NAME = "op_profile"
GROUPS = (  # (group, substrings of operator names), first match wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "_linear_pointwise", "mkl_linear")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("normalisation", ("layer_norm", "batch_norm")),
    ("optimizer", ("adam", "foreach", "clip_grad", "vector_norm")),
    ("element-wise", ("gelu", "add", "mul", "copy", "fill", "sum", "cat", "div", "sub", "exp", "log",
                      "softmax", "clamp", "where", "index", "gather", "zero")),
)


def group_of(op: str) -> str:
    name = op.lower()
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def profile(fn, runs: int) -> dict[str, Any]:
    """Self CPU time per operator over ``runs`` calls of ``fn``: shares, sorted, and per group."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(({"op": e.key, "group": group_of(e.key), "calls": e.count, "share": e.self_cpu_time_total / total}
                  for e in events), key=lambda r: -r["share"])  # fmt: skip
    groups: dict[str, float] = {}
    for r in ops:
        groups[r["group"]] = groups.get(r["group"], 0.0) + r["share"]
    return {"runs": runs, "self_cpu_ms_per_run": total / 1e3 / runs, "ops": ops,
            "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]))}


def workloads(quick: bool) -> dict[str, Any]:
    import torch

    import vitmsn
    from bench.pretrain_step import VitmsnStep, make_views, pretrain_config

    torch.manual_seed(0)
    hp = dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, patch_size=16,
              num_hidden_layers=1 if quick else 12, image_size=32 if quick else 224)
    model = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**hp)).eval()
    x = torch.randn(2 if quick else 8, 3, hp["image_size"], hp["image_size"])

    def infer():
        with torch.inference_mode():
            model(x)

    cfg = pretrain_config("fashion-mnist", quick)
    step = VitmsnStep(cfg, "cpu")
    views = make_views(cfg, "cpu")
    return {"inference": (infer, f"ViTMSNModel ViT-S/16, batch {len(x)}, {hp['image_size']} px"),
            "pretrain step": (lambda: step(views), f"fashion-mnist preset, batch {cfg.batch_size}")}


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    runs = args.repeats or (1 if args.quick else 5)
    results = {}
    for name, (fn, what) in workloads(args.quick).items():
        for _ in range(1 if args.quick else 3):  # warm-up
            fn()
        res = profile(fn, runs)
        results[name] = {"what": what, **res}
        print(f"\n{name} ({what}): {res['self_cpu_ms_per_run']:.1f} ms of operator time per run")
        for group, share in res["groups"].items():
            print(f"  {group:14s} {100 * share:5.1f} %")
        for r in res["ops"][:8]:
            print(f"    {r['op'][:48]:48s} {100 * r['share']:5.1f} %  ({r['calls'] // runs} calls per run)")
    write_result(NAME, args, machine=machine, config={"threads": threads, "runs": runs}, results=results)
    return results


if __name__ == "__main__":
    main()
