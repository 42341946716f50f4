"""MSN token dropping: time of an anchor forward + backward as a function of the share of patches kept.

The backbone's ``forward_features(x, keep_idx=...)`` drops the patch tokens not in ``keep_idx`` right after
the embedding, so the blocks only see 1 + K tokens. For keep ratio r (K = floor(r P) of P patches, a random
permutation per image) this times forward + backward of the backbone, interleaved over the ratios, and
reports time(r) / time(1.0), where 1.0 is the unmasked forward (no ``keep_idx``).
Target: time(r) <= (r + 0.1) * time(1.0) for every r >= 0.3.

GPU variant (CUDA only): the same under bf16 autocast.

    python bench/masking.py [--quick] [--model vit_small_patch16_224] [--batch 16]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    cuda_available,
    machine_info,
    parser,
    setup_torch,
    summarize,
    target,
    time_interleaved,
    write_result,
)
from vitmsn.distributed import native_bf16  # noqa: E402

NAME = "masking"
RATIOS = (1.0, 0.85, 0.7, 0.5, 0.3)
SLACK = 0.1  # time(r) <= (r + SLACK) * time(1.0)
MODELS = {
    "vit_small_patch16_224": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "vit_base_patch16_224": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
QUICK = dict(num_hidden_layers=1, image_size=64)


def build(model: str, quick: bool, device: str = "cpu"):
    import torch

    import vitmsn

    torch.manual_seed(0)
    cfg = vitmsn.ViTMSNConfig(**MODELS[model], **(QUICK if quick else {}))
    m = vitmsn.ViTMSNModel(cfg).to(device).train()
    return m, cfg


def make_step(model, x, keep_idx, autocast_device: str | None = None):
    """One anchor step: forward_features with the kept tokens, a scalar loss on all tokens, backward."""
    import contextlib

    import torch

    def step():
        model.zero_grad(set_to_none=True)
        ctx = (
            torch.autocast(autocast_device, dtype=torch.bfloat16)
            if autocast_device
            else contextlib.nullcontext()
        )
        with ctx:
            tokens = model.forward_features(x, keep_idx=keep_idx).tokens  # (B, 1 + K, D)
            loss = tokens.float().square().mean()
        loss.backward()

    return step


def keep_indices(batch: int, num_patches: int, ratio: float, generator, device: str = "cpu"):
    """(B, K) indices of kept patches, K = floor(ratio * P), an independent random permutation per image."""
    import torch

    k = math.floor(num_patches * ratio + 1e-9)
    return torch.rand(batch, num_patches, generator=generator).argsort(dim=1)[:, :k].to(device)


def run(args, device: str = "cpu", autocast: bool = False) -> dict:
    import torch

    model, cfg = build(args.model, args.quick, device)
    batch = args.batch or (2 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 7)
    P = cfg.num_patches
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    cases, kept = {}, {}
    for r in RATIOS:
        idx = None if r == 1.0 else keep_indices(batch, P, r, g, device)
        kept[str(r)] = P if idx is None else idx.shape[1]
        cases[str(r)] = make_step(model, x, idx, device if autocast else None)
    # the cost of the gather alone: every patch kept, in a random order
    cases["1.0-gather"] = make_step(
        model, x, keep_indices(batch, P, 1.0, g, device), device if autocast else None
    )
    kept["1.0-gather"] = P
    sync = torch.cuda.synchronize if device == "cuda" else None
    times = time_interleaved(cases, repeats=repeats, warmup=1 if args.quick else 2, sync=sync)
    base = summarize(times["1.0"])["median_s"]
    rows = []
    label = f"{device}{' bf16' if autocast else ''}"
    print(f"\n{args.model} batch {batch}, {label}: forward + backward ({repeats} repeats, median)")
    for case, ts in times.items():
        s = summarize(ts)
        r = 1.0 if case == "1.0-gather" else float(case)
        rel = s["median_s"] / base
        rows.append(
            {
                "keep_ratio": r,
                "case": case,
                "kept_patches": kept[case],
                "tokens": 1 + kept[case],
                **s,
                "relative_time": rel,
                "bound": r + SLACK,
                "images_per_s": batch / s["median_s"],
            }
        )
        print(
            f"  keep {case:10s} K={kept[case]:4d}  {s['median_s'] * 1e3:9.1f} ms  relative {rel:5.3f}  "
            f"(target <= {r + SLACK:.2f})"
        )
    return {
        "model": args.model,
        "batch": batch,
        "device": device,
        "autocast_bf16": autocast,
        "num_patches": P,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224", choices=list(MODELS))
    p.add_argument("--batch", type=int, default=None, help="images per step (default 16)")
    args = p.parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    cpu = run(args)
    targets = [
        target(
            f"keep {row['keep_ratio']}: time / time(1.0) <= {row['bound']:.2f}",
            row["relative_time"],
            row["bound"],
            higher_is_better=False,
        )
        for row in cpu["rows"]
        if row["case"] != "1.0-gather" and row["keep_ratio"] < 1.0
    ]
    for t in targets:
        print(
            f"target {t['name']}: {t['value']:.3f} -> {'met' if t['met'] else 'MISSED'} ({100 * t['margin']:+.1f}%)"
        )
    use_gpu, why = cuda_available(args)
    # bf16 autocast only where the GPU computes in bfloat16 natively (emulated bf16 would time the emulation)
    gpu = run(args, "cuda", autocast=native_bf16()) if use_gpu else {"skipped": why}
    if not use_gpu:
        print(f"GPU variant {why}")
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "model": args.model,
            "hyperparameters": MODELS[args.model],
            "quick_overrides": QUICK if args.quick else None,
            "ratios": list(RATIOS),
            "slack": SLACK,
            "threads": threads,
            "step": "forward_features(keep_idx) + mean(tokens^2) + backward",
        },
        results={"cpu": cpu, "gpu": gpu},
        targets=targets,
    )
    return cpu


if __name__ == "__main__":
    main()
