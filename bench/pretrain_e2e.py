"""MSN pretraining from images to update: steps per second with the views made, vitmsn against lightly.

``bench/pretrain_step.py`` times the model step alone, on views made once. A training run also makes the
views of every batch (crops, flips, colour jitter, grayscale, blur, normalisation; a target, a random
anchor and the focal anchors per image), and on a small model that costs as much as the step. Here each
timed call takes the next batch from the pipeline and runs one step on it, on the ``fashion-mnist`` preset
(Fashion-MNIST's 60,000 training images when the IDX files are found, else random uint8 images of the same
shape), everything in the main process (no DataLoader workers: on 2 cores, workers would take cores from
the step, and both sides are measured under the same rule):

- ``vitmsn``: the trainer's own pipeline (``vitmsn.msn.train.build_loader`` with the preset's default
  ``view_maker``: views made for the whole batch at once, ``vitmsn.msn.batch_views``) and ``train_step``;
- ``vitmsn-workers``: the same with ``view_maker=workers`` (torchvision, image by image, the path for image
  folders), still in the main process;
- ``lightly``: lightly's ``MSNTransform`` on the same images (as RGB PIL images) with the preset's view
  settings (2 random views: the target and the anchor; 2 focal views; crop scales, colour-jitter strength
  0.5, blur p = 0.5 with the preset's sigma range, grayscale p = 0.2, flips, mean and std), batched by a
  ``DataLoader``, and lightly's MSN parts as in ``bench/pretrain_step.py`` (``LightlyStep``).

Interleaved repeats of ``--steps`` steps each; images/s = batch / median seconds per step. The share of
each step spent waiting for its views is recorded too. No target: the issue's target is on the step
(``bench/pretrain_step.py``); this shows what a whole run gets.

    python bench/pretrain_e2e.py [--quick] [--batch 128] [--steps 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, parser, setup_torch, summarize, time_interleaved, write_result  # noqa: E402
from bench.pretrain_step import LightlyStep, VitmsnStep, lightly_available, pretrain_config  # noqa: E402

NAME = "pretrain_e2e"


def load_images(quick: bool) -> tuple[Any, str]:
    """Fashion-MNIST's training images as the trainer loads them, or random images of that shape."""
    import numpy as np

    from vitmsn.data.fashion_mnist import FashionMNIST

    try:
        data = FashionMNIST("train", download=False)
        source = "Fashion-MNIST train (60,000 images)"
    except (FileNotFoundError, OSError):
        data = FashionMNIST.__new__(FashionMNIST)  # the same class, holding random images
        rng = np.random.default_rng(0)
        data.images = rng.integers(0, 256, (2048 if quick else 60000, 28, 28), dtype=np.uint8)
        data.targets = np.zeros(len(data.images), dtype=np.int64)
        data.transform = None
        source = f"random uint8 28 x 28 images ({len(data.images)}; Fashion-MNIST's IDX files not found)"
    return data, source


def vitmsn_batches(cfg, images):
    """Endless batches of views from the trainer's loader: [target, random anchor, focal anchors...]."""
    import torch

    from vitmsn.msn.train import build_loader
    from vitmsn.training import GlobalBatchSampler

    sampler = GlobalBatchSampler(len(images), cfg.batch_size, seed=cfg.seed, rank=0, world_size=1)
    loader = build_loader(cfg, images, sampler, torch.device("cpu"))
    epoch = 0
    while True:
        loader.set_epoch(epoch, 0)
        for views, _ in loader:
            yield views
        epoch += 1


class _RGB:
    """The data set's images as RGB PIL images, each through ``transform`` (lightly's MSNTransform)."""

    def __init__(self, data, transform):
        self.data, self.transform = data, transform  # data[i]: (PIL image, label)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(self.data[i][0].convert("RGB"))


def lightly_batches(cfg, images):
    """Endless batches of lightly's MSN views of the same images, with the preset's settings."""
    import torch
    from lightly.transforms.msn_transform import MSNTransform

    from vitmsn.msn.transforms import ViewConfig

    sigma = ViewConfig(rand_size=cfg.rand_size, focal_size=cfg.focal_size).effective_blur_sigma
    transform = MSNTransform(
        random_size=cfg.rand_size, focal_size=cfg.focal_size, random_views=1 + cfg.rand_views,
        focal_views=cfg.focal_views, random_crop_scale=tuple(cfg.rand_crop_scale),
        focal_crop_scale=tuple(cfg.focal_crop_scale), cj_strength=cfg.color_jitter, gaussian_blur=cfg.blur_prob,
        sigmas=sigma, random_gray_scale=0.2, hf_prob=0.5, normalize={"mean": list(cfg.mean), "std": list(cfg.std)},
    )  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(_RGB(images, transform), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, num_workers=0, generator=generator)
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's 128)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default 3; 1 with --quick)")
    args = p.parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    t0 = time.perf_counter()
    cfg = pretrain_config("fashion-mnist", args.quick, args.batch)
    images, source = load_images(args.quick)
    repeats = args.repeats or (2 if args.quick else 5)
    steps = args.steps or (1 if args.quick else 3)
    use_lightly, why = lightly_available()

    pipelines = {
        "vitmsn": (VitmsnStep(cfg, "cpu"), vitmsn_batches(cfg, images)),
        "vitmsn-workers": (VitmsnStep(cfg, "cpu"),
                           vitmsn_batches(cfg.with_overrides({"view_maker": "workers"}), images)),
    }
    if use_lightly:
        pipelines["lightly"] = (LightlyStep(cfg, "cpu"), lightly_batches(cfg, images))
    else:
        print(f"lightly's side {why}")
    waits: dict[str, list[float]] = {name: [] for name in pipelines}

    def case(name: str):
        step, batches = pipelines[name]

        def run():
            for _ in range(steps):
                t = time.perf_counter()
                views = next(batches)
                waits[name].append(time.perf_counter() - t)
                step(views)

        return run

    times = time_interleaved({name: case(name) for name in pipelines}, repeats=repeats, warmup=1)
    print(f"\n{source}; fashion-mnist preset, batch {cfg.batch_size}, {threads} threads, no workers: "
          f"{steps} step(s) per repeat, {repeats} repeats, median")
    rows = []
    for name, ts in times.items():
        s = summarize([t / steps for t in ts])  # seconds per step, views included
        timed = sorted(waits[name][steps:])  # the first call of each case is the warm-up
        views_s = timed[len(timed) // 2]
        row = {"side": name, **s, "images_per_s": cfg.batch_size / s["median_s"], "views_median_s": views_s,
               "views_share": views_s / s["median_s"]}
        rows.append(row)
        print(f"  {name:15s} {row['images_per_s']:8.1f} img/s  {s['median_s'] * 1e3:7.1f} ms/step, of which "
              f"views {views_s * 1e3:6.1f} ms ({100 * row['views_share']:.0f} %)")
    by = {r["side"]: r for r in rows}
    ratios = {}
    if "lightly" in by:
        for name in ("vitmsn", "vitmsn-workers"):
            ratios[f"{name} / lightly"] = by[name]["images_per_s"] / by["lightly"]["images_per_s"]
            print(f"  {name} / lightly: {ratios[f'{name} / lightly']:.2f}x images/s")
    write_result(
        NAME,
        args,
        machine=machine,
        config={"preset": "fashion-mnist", "batch_size": cfg.batch_size, "threads": threads, "repeats": repeats,
                "steps_per_repeat": steps, "data": source, "view_maker": cfg.view_maker, "num_workers": 0},
        results={"rows": rows, "ratios": ratios, "lightly": {"used": use_lightly, "skipped": why},
                 "seconds": time.perf_counter() - t0},
        notes=["Each timed call takes the next batch from its pipeline (views made then) and runs one step on "
               "it. Everything runs in the main process. The weights of the two vitmsn rows and of lightly's "
               "side are initialised independently; bench/pretrain_step.py checks that the steps compute the "
               "same loss from the same weights."],
    )
    return {"rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
