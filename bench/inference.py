"""CPU inference throughput: vitmsn against transformers (eager, sdpa) and timm, on the same weights.

fp32, torch threads = cores, ``torch.inference_mode``. ViT-S/16 and ViT-B/16 at 224 px, batch 1, 8 and 32.
``vitmsn``, ``transformers-*``: ``ViTMSNModel`` (every token of the last block). ``timm``: ``forward`` with
``num_classes=0``, the normalised CLS token (B, D). ``vitmsn-cls``: vitmsn's CLS features, the same output
as timm's, with the last block computed for the CLS token only (what vitmsn's feature extraction and
classifiers run); the targets are on the ``vitmsn`` row, this row is reported beside them.
Every library gets the same random weights (vitmsn's model is saved and loaded by transformers; timm's
parameter names are vitmsn's, so its state dict loads directly). Runs are interleaved (each repeat runs every
library once, in turn); the median of the repeats after warm-up is reported. FLOPs are counted analytically
(:func:`vit_flops`) and compared with the machine's measured fp32 matmul peak (``bench/matmul_peak.py``).

GPU variants (CUDA only): bf16 autocast, flash SDPA, torch.compile.

    python bench/inference.py [--quick] [--models vit_small_patch16_224,...] [--batches 1,8,32]
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
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
from bench.matmul_peak import QUICK_SIZES, SIZES, measure_peak  # noqa: E402

NAME = "inference"
#: timm name -> ViT hyperparameters
MODELS = {
    "vit_small_patch16_224": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "vit_base_patch16_224": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
LIBRARIES = ("vitmsn", "vitmsn-cls", "transformers-eager", "transformers-sdpa", "timm")
BATCHES = (1, 8, 32)
TARGET_BATCHES = (8, 32)
TARGET_VS_TRANSFORMERS = 1.25
TARGET_VS_TIMM = 1.10
TARGET_PEAK_SHARE = 0.85  # ViT-B/16 at batch 32
# --quick: the same code paths on tiny inputs
QUICK = dict(num_hidden_layers=1, image_size=32)
QUICK_BATCHES = (1, 2)


def vit_flops(
    hidden_size: int,
    num_hidden_layers: int,
    intermediate_size: int,
    image_size: int = 224,
    patch_size: int = 16,
    num_channels: int = 3,
    **_,
) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of one image through the encoder; element-wise ops are not counted.

    patch embedding 2 P (C p^2) D; per block: qkv 2 N D 3D, q k^T and attn v 2 N^2 D each,
    output projection 2 N D D, MLP 2 N D M twice (N = 1 + P tokens, M the MLP width).
    """
    P = (image_size // patch_size) ** 2
    patch = 2 * P * (num_channels * patch_size**2) * hidden_size
    block = block_flops(P + 1, hidden_size, intermediate_size)
    total = patch + num_hidden_layers * block
    cls_only = total - block + cls_block_flops(P + 1, hidden_size, intermediate_size)
    return {"patch_embed": patch, "per_block": block, "total": total, "total_cls_only": cls_only}


def block_flops(tokens: int, hidden_size: int, intermediate_size: int) -> int:
    """Multiply-add FLOPs of one transformer block on one sequence of ``tokens`` tokens."""
    N, D, M = tokens, hidden_size, intermediate_size
    return 2 * N * D * 3 * D + 2 * N * N * D * 2 + 2 * N * D * D + 2 * N * D * M * 2


def cls_block_flops(tokens: int, hidden_size: int, intermediate_size: int) -> int:
    """A block computed for the CLS token only: keys and values of every token, the rest for one token."""
    N, D, M = tokens, hidden_size, intermediate_size
    return 2 * N * D * 3 * D + 2 * N * D * 2 + 2 * D * D + 2 * D * M * 2


def build_models(
    name: str, overrides: dict, libraries: tuple[str, ...], device: str = "cpu"
) -> tuple[dict, dict]:
    """The same random weights in every library; returns ({library: model}, ViT hyperparameters)."""
    import timm
    import torch
    import transformers

    import vitmsn

    transformers.utils.logging.disable_progress_bar()
    hp = {**MODELS[name], "num_hidden_layers": 12, "image_size": 224, "patch_size": 16, **overrides}
    torch.manual_seed(0)
    ours = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**hp)).eval()
    with torch.no_grad():  # nothing exactly zero or one (MSN zero-initialises cls and position embeddings)
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        for lib in libraries:
            if lib == "vitmsn-cls":
                continue  # the vitmsn model, called for its CLS features (below)
            if lib == "vitmsn":
                models[lib] = vitmsn.ViTMSNModel.from_pretrained(tmp)
            elif lib.startswith("transformers-"):
                impl = lib.split("-", 1)[1]
                models[lib] = transformers.ViTMSNModel.from_pretrained(tmp, attn_implementation=impl).eval()
            elif lib == "timm":
                m = timm.create_model(
                    name,
                    pretrained=False,
                    num_classes=0,
                    img_size=hp["image_size"],
                    depth=hp["num_hidden_layers"],
                    norm_layer=partial(torch.nn.LayerNorm, eps=ours.config.layer_norm_eps),
                )
                m.load_state_dict(ours.state_dict(), strict=True)
                models[lib] = m.eval()
    models = {k: m.to(device) for k, m in models.items()}
    if "vitmsn-cls" in libraries:
        from vitmsn.models.vit import VisionTransformer

        # the backbone's own forward: the normalised CLS token (B, D), the last block computed for it alone
        models["vitmsn-cls"] = partial(VisionTransformer.forward, models["vitmsn"])
    return {lib: models[lib] for lib in libraries}, hp


def cls_features(lib: str, out) -> torch.Tensor:  # noqa: F821
    """The normalised CLS token (B, D) from each library's output."""
    return out if lib.startswith("timm") or lib == "vitmsn-cls" else out.last_hidden_state[:, 0]


def run_cpu(args, peak: float) -> tuple[list[dict], list[dict]]:
    import torch

    models_wanted = args.models.split(",") if args.models else list(MODELS)
    batches = (
        tuple(int(b) for b in args.batches.split(","))
        if args.batches
        else (QUICK_BATCHES if args.quick else BATCHES)
    )
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = 1 if args.quick else 2
    rows, ratios = [], []
    for name in models_wanted:
        models, hp = build_models(name, QUICK if args.quick else {}, LIBRARIES)
        flops = vit_flops(**hp)
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 3, hp["image_size"], hp["image_size"], generator=g)
            with torch.inference_mode():
                ref = cls_features("transformers-eager", models["transformers-eager"](x))
                diffs = {lib: (cls_features(lib, m(x)) - ref).abs().max().item() for lib, m in models.items()}
                cases = {lib: partial(m, x) for lib, m in models.items()}
                times = time_interleaved(cases, repeats=repeats, warmup=warmup)
            print(f"\n{name} batch {batch} ({repeats} repeats, median; peak {peak:.0f} GFLOP/s)")
            by_lib = {}
            for lib in models:
                s = summarize(times[lib])
                ips = batch / s["median_s"]
                work = flops["total_cls_only" if lib == "vitmsn-cls" else "total"]  # what the call computes
                achieved = work * batch / s["median_s"] / 1e9
                row = {
                    "model": name,
                    "batch": batch,
                    "library": lib,
                    **s,
                    "images_per_s": ips,
                    "gflops": achieved,
                    "peak_share": achieved / peak,
                    "max_abs_diff_vs_transformers_eager": diffs[lib],
                }
                rows.append(row)
                by_lib[lib] = row
                print(
                    f"  {lib:20s} {ips:8.2f} img/s  {s['median_s'] * 1e3:9.1f} ms  {achieved:6.1f} GFLOP/s "
                    f"({100 * achieved / peak:4.1f}% of peak)  max|diff| {diffs[lib]:.1e}"
                )
            fastest_tf = max(
                ("transformers-eager", "transformers-sdpa"), key=lambda k: by_lib[k]["images_per_s"]
            )
            r = {
                "model": name,
                "batch": batch,
                "faster_transformers": fastest_tf,
                "vs_transformers": by_lib["vitmsn"]["images_per_s"] / by_lib[fastest_tf]["images_per_s"],
                "vs_timm": by_lib["vitmsn"]["images_per_s"] / by_lib["timm"]["images_per_s"],
                # the same output as timm's forward: not a target, reported beside it
                "cls_features_vs_timm": by_lib["vitmsn-cls"]["images_per_s"] / by_lib["timm"]["images_per_s"],
                "vitmsn_peak_share": by_lib["vitmsn"]["peak_share"],
            }
            ratios.append(r)
            print(
                f"  vitmsn / {fastest_tf}: {r['vs_transformers']:.3f}x   vitmsn / timm: {r['vs_timm']:.3f}x   "
                f"vitmsn-cls / timm (CLS features both): {r['cls_features_vs_timm']:.3f}x"
            )
        del models
    return rows, ratios


def run_gpu(args) -> dict:
    """bf16 autocast, flash SDPA and torch.compile on CUDA (ViT-B/16; batch 32, or 2 with --quick)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    name = "vit_base_patch16_224"
    batch = 2 if args.quick else 32
    repeats = args.repeats or (2 if args.quick else 10)
    models, hp = build_models(
        name, QUICK if args.quick else {}, ("vitmsn", "transformers-sdpa", "timm"), "cuda"
    )
    x = torch.randn(batch, 3, hp["image_size"], hp["image_size"], device="cuda")
    compiled = torch.compile(models["vitmsn"])

    def bf16(model, flash=False):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if flash:
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return model(x)
                return model(x)

        return run

    cases = {"vitmsn-fp32": partial(models["vitmsn"], x)}
    skipped = {}
    if torch.cuda.is_bf16_supported(including_emulation=False):
        cases.update({
            "vitmsn-bf16": bf16(models["vitmsn"]),
            "vitmsn-bf16-compile": bf16(compiled),
            "transformers-sdpa-bf16": bf16(models["transformers-sdpa"]),
            "timm-bf16": bf16(models["timm"]),
        })
        if torch.cuda.get_device_capability() >= (8, 0):  # the flash kernel needs an Ampere or newer GPU
            cases["vitmsn-bf16-flash"] = bf16(models["vitmsn"], flash=True)
        else:
            skipped["vitmsn-bf16-flash"] = "flash attention needs compute capability 8.0 or higher"
    else:
        skipped["bf16 cases"] = "this GPU has no bfloat16"
    with torch.inference_mode():
        times = time_interleaved(cases, repeats=repeats, warmup=3, sync=torch.cuda.synchronize)
    rows = []
    for case, ts in times.items():
        s = summarize(ts)
        rows.append({"model": name, "batch": batch, "case": case, **s, "images_per_s": batch / s["median_s"]})
        print(f"  GPU {case:24s} {batch / s['median_s']:9.1f} img/s")
    for case, why in skipped.items():
        print(f"  GPU {case}: skipped ({why})")
    return {"device": torch.cuda.get_device_name(0), "rows": rows, "skipped": skipped}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32)")
    args = p.parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    peak_sizes = QUICK_SIZES if args.quick else SIZES
    peak = measure_peak(peak_sizes, repeats=2 if args.quick else 5)
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s with {threads} threads")
    rows, ratios = run_cpu(args, peak)
    peak_after = measure_peak(peak_sizes, repeats=2 if args.quick else 5)
    print(f"fp32 matmul peak after the runs: {peak_after:.1f} GFLOP/s")
    for r in ratios:  # the target is judged against the higher of the two peaks: a drift never helps it
        r["vitmsn_peak_share_of_higher_peak"] = r["vitmsn_peak_share"] * peak / max(peak, peak_after)

    targets = []
    for r in ratios:
        if r["batch"] in TARGET_BATCHES or args.quick:
            targets.append(
                target(
                    f"{r['model']} b{r['batch']}: vitmsn / {r['faster_transformers']}",
                    r["vs_transformers"],
                    TARGET_VS_TRANSFORMERS,
                    unit="x",
                )
            )
            targets.append(
                target(f"{r['model']} b{r['batch']}: vitmsn / timm", r["vs_timm"], TARGET_VS_TIMM, unit="x")
            )
    for r in ratios:
        if r["model"] == "vit_base_patch16_224" and (
            r["batch"] == 32 or args.quick and r["batch"] == max(x["batch"] for x in ratios)
        ):
            targets.append(
                target(
                    f"{r['model']} b{r['batch']}: vitmsn share of fp32 matmul peak (the higher of before/after)",
                    r["vitmsn_peak_share_of_higher_peak"],
                    TARGET_PEAK_SHARE,
                )
            )
    for t in targets:
        print(
            f"target {t['name']}: {t['value']:.3f} vs {t['threshold']} -> {'met' if t['met'] else 'MISSED'} "
            f"({100 * t['margin']:+.1f}%)"
        )

    use_gpu, why = cuda_available(args)
    gpu = run_gpu(args) if use_gpu else {"skipped": why}
    if not use_gpu:
        print(f"GPU variants {why}")
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "models": {k: MODELS[k] for k in (args.models.split(",") if args.models else MODELS)},
            "quick_overrides": QUICK if args.quick else None,
            "dtype": "float32",
            "threads": threads,
            "repeats": args.repeats or (2 if args.quick else 7),
            "libraries": list(LIBRARIES),
            "flops": {
                k: vit_flops(**{**MODELS[k], "num_hidden_layers": 12, **(QUICK if args.quick else {})})
                for k in MODELS
            },
        },
        results={
            "peak_gflops": max(peak, peak_after),
            "peak_gflops_before": peak,
            "peak_gflops_after": peak_after,
            "rows": rows,
            "ratios": ratios,
            "gpu": gpu,
        },
        targets=targets,
    )
    return {"rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
