"""Image preprocessing throughput: vitmsn's ViTImageProcessor against transformers' (PIL backend).

Batches of 32 photographs (scikit-image's astronaut, coffee, chelsea, rocket, ... cropped to varied sizes,
as RGB PIL images), resized to 224 x 224, rescaled and normalised into a (32, 3, 224, 224)
float32 tensor. Cases: vitmsn's PIL path (numerically identical to transformers' PIL backend), vitmsn's
batched torch path (``backend="torch"``), transformers' PIL backend (``ViTImageProcessorPil``, what
``AutoImageProcessor.from_pretrained(..., backend="pil")`` gives) and, for reference, transformers' default
torchvision backend. Interleaved repeats, median; torch threads = cores.

GPU variant (CUDA only): vitmsn's torch path with ``device="cuda"``.

    python bench/preprocess.py [--quick] [--batch 32]
"""

from __future__ import annotations

import sys
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

NAME = "preprocess"
TARGET_SPEEDUP = 3.0  # x transformers' PIL path
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "cat",
    "camera",
    "colorwheel",
    "coins",
)


def photographs(n: int, seed: int = 0, max_side: int | None = None) -> list:
    """``n`` RGB PIL images: the photographs in turn, each a random crop of 40-100% of its height and width."""
    import numpy as np
    import PIL.Image
    import skimage.data

    rng = np.random.default_rng(seed)
    base = [getattr(skimage.data, name)() for name in PHOTOS]
    images = []
    for i in range(n):
        a = base[i % len(base)]
        h, w = a.shape[:2]
        ch, cw = (int(s * rng.uniform(0.4, 1.0)) for s in (h, w))
        if max_side:
            ch, cw = min(ch, max_side), min(cw, max_side)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        # grayscale photographs as RGB: transformers' processor does not convert them by default
        images.append(PIL.Image.fromarray(np.ascontiguousarray(a[y : y + ch, x : x + cw])).convert("RGB"))
    return images


def processors() -> dict:
    import transformers

    from vitmsn.processing import ViTImageProcessor

    procs = {
        "vitmsn-pil": ViTImageProcessor(backend="pil"),
        "vitmsn-torch": ViTImageProcessor(backend="torch"),
        "transformers-pil": transformers.ViTImageProcessorPil(),
        "transformers-torchvision": transformers.ViTImageProcessor(),
    }
    return procs


def main(argv: list[str] | None = None) -> dict:
    import torch

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 32)")
    args = p.parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    batch = args.batch or (4 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 21)
    images = photographs(batch, max_side=128 if args.quick else None)
    procs = processors()
    ref = procs["transformers-pil"](images, return_tensors="pt")["pixel_values"]
    diffs = {}
    for name, proc in procs.items():
        out = proc(images, return_tensors="pt")["pixel_values"]
        assert out.shape == (batch, 3, 224, 224), (name, out.shape)
        diffs[name] = (out - ref).abs().max().item()
    cases = {name: partial(proc, images, return_tensors="pt") for name, proc in procs.items()}
    times = time_interleaved(cases, repeats=repeats, warmup=1 if args.quick else 2)
    rows = []
    print(f"\n{batch} photographs -> (B, 3, 224, 224) float32 ({repeats} repeats, median, {threads} threads)")
    for name, ts in times.items():
        s = summarize(ts)
        rows.append(
            {
                "case": name,
                "batch": batch,
                **s,
                "images_per_s": batch / s["median_s"],
                "max_abs_diff_vs_transformers_pil": diffs[name],
            }
        )
        print(
            f"  {name:26s} {batch / s['median_s']:8.1f} img/s  {s['median_s'] * 1e3:8.1f} ms  "
            f"max|diff| vs transformers-pil {diffs[name]:.2e}"
        )
    ips = {r["case"]: r["images_per_s"] for r in rows}
    ratios = {
        "vitmsn-pil / transformers-pil": ips["vitmsn-pil"] / ips["transformers-pil"],
        "vitmsn-torch / transformers-pil": ips["vitmsn-torch"] / ips["transformers-pil"],
        "vitmsn-torch / transformers-torchvision": ips["vitmsn-torch"] / ips["transformers-torchvision"],
    }
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}x")

    use_gpu, why = cuda_available(args)
    if use_gpu:
        from vitmsn.processing import ViTImageProcessor

        proc = ViTImageProcessor(backend="torch")
        run = partial(proc, images, return_tensors="pt", device="cuda")
        gt = summarize(
            time_interleaved(
                {"vitmsn-torch-cuda": run}, repeats=repeats, warmup=2, sync=torch.cuda.synchronize
            )["vitmsn-torch-cuda"]
        )
        gpu = {"case": "vitmsn-torch-cuda", **gt, "images_per_s": batch / gt["median_s"]}
        print(f"  GPU vitmsn-torch-cuda {gpu['images_per_s']:.1f} img/s")
    else:
        gpu = {"skipped": why}
        print(f"GPU variant {why}")
    # the issue's target: vitmsn's processor (its faster backend) >= 3x transformers' PIL path
    targets = [
        target(f"{name} / transformers-pil images/s", ratios[f"{name} / transformers-pil"], TARGET_SPEEDUP, unit="x")
        for name in ("vitmsn-torch", "vitmsn-pil")
    ]
    for t in targets:
        print(f"target {t['name']}: {t['value']:.2f} vs {t['threshold']} -> {'met' if t['met'] else 'MISSED'}")
    sizes = [im.size for im in images]
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "batch": batch,
            "repeats": repeats,
            "threads": threads,
            "photos": list(PHOTOS),
            "input": "PIL images",
            "image_sizes_wh": sizes,
            "output": [batch, 3, 224, 224],
        },
        results={"rows": rows, "ratios": ratios, "gpu": gpu},
        targets=targets,
    )
    return {"rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
