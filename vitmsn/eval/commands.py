"""Subcommands that use a trained model: ``finetune``, ``predict``, ``extract``, ``attention``.

Each parses its arguments and calls one library function (:mod:`vitmsn.eval.finetune`,
:mod:`vitmsn.eval.predict`); errors a user can fix (bad paths, images, settings) are raised as
ValueError / FileNotFoundError and printed as one line by :func:`vitmsn.cli.main`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

# ---------------------------------------------------------------------------------------------- finetune

# finetune's options that have a library default: None on the command line means "not given", so that
# --resume can take the run's saved value and a new run the library's default
_FINETUNE_OPTIONS = (
    "epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "layer_decay",
    "val_fraction", "val_data", "clip_grad", "seed", "num_workers", "max_steps", "data_root", "crop_scale",
    "checkpoint_every_steps",
)  # fmt: skip


def cmd_finetune(args: argparse.Namespace) -> None:
    """Fine-tune a model with a new classifier; print the per-epoch table."""
    from vitmsn.eval.finetune import finetune, finetune_defaults, saved_settings

    given: dict[str, Any] = {k: getattr(args, k) for k in _FINETUNE_OPTIONS if getattr(args, k) is not None}
    if args.no_augment:
        given["augment"] = False
    if args.bf16:
        given["bf16"] = True
    if args.no_tf32:
        given["tf32"] = False
    if args.no_tensorboard:
        given["tensorboard"] = False
    if args.resume:
        saved = saved_settings(args.out)
        defaults = finetune_defaults()
        # the run's settings, except where it stopped: a resumed run goes on to the end unless told otherwise
        base = {k: (tuple(v) if k == "crop_scale" else v) for k, v in saved.items() if k in defaults}
        base.pop("max_steps", None)
        model, data = args.model or saved["model"], args.data or saved["data"]
    else:
        if not (args.model and args.data):
            raise ValueError("--model and --data are needed (only --resume takes them from the run)")
        base, model, data = {}, args.model, args.data
    saved_device = base.get("device")
    import torch  # here, not at the top: the command line's --help stays free of torch

    if args.device is None and str(saved_device or "").startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{args.out} was fine-tuned on {saved_device}, and no CUDA GPU is available here: add "
                         "--device cpu to continue it on the CPU")
    kwargs = {**base, **given, "device": args.device or saved_device}
    out = finetune(model, data, args.out, resume=args.resume, progress=not args.no_progress, **kwargs)
    metrics = json.loads((out / "metrics.json").read_text())
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    rows = metrics["epochs"]
    if rows:
        has_val = "val_accuracy" in rows[0]
        print(
            f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}"
            + (f"  {'val loss':>8}  {'val acc':>7}" * has_val)
        )
        for r in rows:
            line = f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['train_accuracy']:>8.1f}%"
            if has_val:
                line += f"  {r['val_loss']:>8.4f}  {r['val_accuracy']:>6.1f}%"
            print(line)
    if metrics["finished"]:
        best = metrics["best_val_accuracy"]
        acc = f", validation accuracy {best:.1f}%" if best is not None else ""
        print(f"best model: {out / 'best'} (epoch {metrics['best_epoch']}{acc})")
    else:
        print(f"stopped at step {metrics['step']} of {metrics['total_steps']}; continue with "
              f"vitmsn finetune --out {out} --resume")  # fmt: skip


# ---------------------------------------------------------------------------------------------- predict


def format_predictions(results: list[dict[str, Any]]) -> str:
    """A readable table: each image, then its top labels with probabilities."""
    lines = []
    for r in results:
        lines.append(r["path"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        width = max(len(p["label"]) for p in r["predictions"])
        for rank, p in enumerate(r["predictions"], 1):
            lines.append(f"  {rank}. {p['label']:<{width}}  {100 * p['probability']:6.2f}%")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> None:
    from vitmsn.eval.predict import predict

    results = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                      bf16=args.bf16, skip_bad=args.skip_bad)  # fmt: skip
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))


# ---------------------------------------------------------------------------------------------- extract


def cmd_extract(args: argparse.Namespace) -> None:
    import numpy as np

    from vitmsn.eval.predict import extract

    path = extract(args.model, args.data, args.out, pool=args.pool, batch_size=args.batch_size, split=args.split,
                   device=args.device, bf16=args.bf16, num_workers=args.num_workers, progress=not args.no_progress,
                   data_root=args.data_root)  # fmt: skip
    with np.load(path) as f:
        n, d = f["features"].shape
        labelled = int((f["labels"] >= 0).sum())
    if args.json:
        print(json.dumps({"path": str(path), "images": n, "dim": d, "labelled": labelled, "pool": args.pool}))
    else:
        print(f"wrote {path}: {n} images x {d} features ({args.pool}), {labelled} labelled")


# -------------------------------------------------------------------------------------------- attention


def cmd_attention(args: argparse.Namespace) -> None:
    from vitmsn.eval.predict import attention_map

    path = attention_map(args.model, args.image, args.out, layer=args.layer, device=args.device)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------- register


def _crop_scale(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. 0.08,1), got {s!r}") from None
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI <= 1, got {s!r}")
    return lo, hi


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add this module's subcommands; ``add(name, fn, help, description)`` returns an argparse parser."""
    from vitmsn.eval.finetune import finetune_defaults

    d = finetune_defaults()
    sp = add(
        "finetune", cmd_finetune, "fine-tune a model with a new classifier on labelled images",
        "Supervised fine-tuning: the encoder of --model plus a new linear classifier on the CLS token, trained\n"
        "end to end with AdamW (warm-up + cosine learning rate, label smoothing, optional layer-wise lr decay,\n"
        "RandomResizedCrop + flip). Pixels follow the model's preprocessor_config.json. Evaluates every epoch;\n"
        "the best model (by validation accuracy) goes to OUT/best in transformers' format, with class names.\n"
        "OUT also holds metrics.json, log.csv and checkpoints/latest.pt; --resume continues exactly.\n\n"
        "examples:\n"
        "  vitmsn finetune --model my-model --data fashion-mnist --out runs/ft --epochs 5\n"
        "  vitmsn finetune --model my-model --data ~/photos --out runs/photos --layer-decay 0.75\n"
        "  vitmsn finetune --out runs/ft --resume",
    )  # fmt: skip
    sp.add_argument("--model", help="model directory or Hub id (a bare ViT-MSN encoder is fine)")
    sp.add_argument("--data", help="'fashion-mnist', or a folder of class sub-folders (with train/ and val/ "
                                   "sub-folders if it has them)")  # fmt: skip
    sp.add_argument("--out", required=True, help="run folder")
    sp.add_argument("--epochs", type=int, help=f"epochs (default {d['epochs']})")
    sp.add_argument("--batch-size", type=int, help=f"images per step (default {d['batch_size']})")
    sp.add_argument("--lr", type=float, help=f"peak learning rate (default {d['lr']})")
    sp.add_argument(
        "--min-lr", type=float, help=f"learning rate at the end of the cosine, from 0 to --lr (default {d['min_lr']})"
    )
    sp.add_argument("--weight-decay", type=float, help=f"AdamW weight decay, >= 0 (default {d['weight_decay']})")
    sp.add_argument("--warmup-epochs", type=float, help=f"linear warm-up (default {d['warmup_epochs']})")
    sp.add_argument(
        "--label-smoothing",
        type=float,
        help=f"label smoothing of the training loss (default {d['label_smoothing']})",
    )
    sp.add_argument("--layer-decay", type=float, metavar="D",
                    help="layer-wise lr decay: block i learns at lr * D^(layers + 1 - i), the embeddings at "
                         "lr * D^(layers + 1), the classifier at lr (default: off)")  # fmt: skip
    sp.add_argument("--no-augment", action="store_true",
                    help="the processor's resize (and center crop) only, no random crops and flips")
    sp.add_argument("--crop-scale", type=_crop_scale, metavar="LO,HI",
                    help="RandomResizedCrop area range (default 0.08,1.0)")  # fmt: skip
    sp.add_argument("--val-fraction", type=float,
                    help=f"held-out share of each class when the data has no val/ folder (default "
                         f"{d['val_fraction']}; 0: no validation, OUT/best is the last epoch)")  # fmt: skip
    sp.add_argument("--val-data", metavar="DIR", help="a validation folder with the same class sub-folders")
    sp.add_argument("--data-root", help="where the Fashion-MNIST files are (default: the usual places)")
    sp.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value, > 0 (default: off)")
    sp.add_argument(
        "--max-steps", type=int, help="stop after this many steps (resumable; default: all epochs)"
    )
    sp.add_argument("--checkpoint-every-steps", type=int, metavar="N",
                    help="also save OUT/checkpoints/latest.pt every N steps (default 0: at the end of each epoch; "
                         "Ctrl-C or SIGTERM saves it too)")  # fmt: skip
    sp.add_argument(
        "--seed",
        type=int,
        help=f"seed of the data order, augmentations, validation split and classifier (default {d['seed']})",
    )
    sp.add_argument("--num-workers", type=int, help=f"data-loading processes (default {d['num_workers']})")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--bf16", action="store_true", help="bfloat16 autocast (on GPUs that support it)")
    sp.add_argument("--no-tf32", action="store_true",
                    help="full fp32 matmuls on a GPU (default: TensorFloat-32 on Ampere or newer; no effect on CPU)")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its latest checkpoint, with its saved settings")  # fmt: skip
    sp.add_argument("--no-tensorboard", action="store_true", help="log.csv only")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--json", action="store_true", help="print metrics.json instead of the table")

    sp = add(
        "predict", cmd_predict, "top-k labels of images with a fine-tuned classifier",
        "Classify image files with a ViT(-MSN)ForImageClassification directory (e.g. RUN/best of vitmsn\n"
        "finetune). Prints each image's top labels with probabilities, or JSON with --json.\n\n"
        "example:\n  vitmsn predict --model runs/ft/best cat.jpg dog.png --top-k 3",
    )  # fmt: skip
    sp.add_argument("--model", required=True, help="classifier directory or Hub id")
    sp.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    sp.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    sp.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    sp.add_argument("--skip-bad", action="store_true",
                    help="report unreadable images in the output instead of stopping at the first")  # fmt: skip
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add(
        "extract", cmd_extract, "write a model's frozen features of a dataset to an .npz",
        "CLS features of every image, with labels (class sub-folders; -1 for loose images) and paths, in an\n"
        ".npz (features (N, D) float32, labels (N,), paths (N,), classes: the class names, empty for loose images,\n"
        "whose labels are -1). Unreadable images are left out.\n\n"
        "example:\n  vitmsn extract --model my-model --data fashion-mnist --split test --out test.npz",
    )  # fmt: skip
    sp.add_argument(
        "--model", required=True, help="model directory or Hub id (any ViT / ViT-MSN; heads dropped)"
    )
    sp.add_argument("--data", required=True, help="'fashion-mnist' or an image folder")
    sp.add_argument("--split", help="fashion-mnist: train (default) or test; a folder: a sub-folder to use "
                                    "(default for a folder with train/ and val/ or test/: train)")
    sp.add_argument("--out", required=True, help="output file (.npz is appended if missing)")
    sp.add_argument("--pool", choices=("cls", "cls_prenorm"), default="cls",
                    help="CLS after the final LayerNorm (default, as transformers) or before it (as the original "
                         "MSN evaluation)")  # fmt: skip
    sp.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    sp.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    sp.add_argument("--data-root", help="where the Fashion-MNIST files are (default: the usual places)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--json", action="store_true", help="print a JSON summary")

    sp = add(
        "attention", cmd_attention, "draw a model's CLS attention maps over an image",
        "The CLS token's attention to the patches in one layer: one panel per head and their mean, upsampled\n"
        "and overlaid on the image, saved as a PNG.\n\n"
        "example:\n  vitmsn attention --model my-model cat.jpg --out cat-attention.png",
    )  # fmt: skip
    sp.add_argument("--model", required=True, help="model directory or Hub id")
    sp.add_argument("image", help="image file")
    sp.add_argument("--out", required=True, help="PNG file to write")
    sp.add_argument(
        "--layer", type=int, default=-1, help="block to show, negative from the end (default -1: last)"
    )
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
