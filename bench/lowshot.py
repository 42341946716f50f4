"""Low-shot evaluation wall time: frozen features and logistic regression on Fashion-MNIST's 60k/10k split.

vitmsn's own evaluation code, as ``vitmsn lowshot --data fashion-mnist --knn 20`` runs it: the Fashion-MNIST
IDX files (``vitmsn.data.fashion_mnist``), ``load_backbone`` and ``extract_features`` (the image processor
once per batch, then the ViT, CLS token after the final LayerNorm, batches of 256), then the MSN paper's
protocol from ``vitmsn.eval.lowshot``: L2-regularised multinomial logistic regression on 1, 2, 5 and 10
labelled images per class, 3 seeded splits each, every fit predicting the 10k test images; and a cosine
20-NN on all 60k training labels. Each phase is timed on its own (wall time); feature extraction is also
given in images/s.

The model: a ViT of the ``fashion-mnist`` preset's shape (28 px, patch 7, D=128, 4 blocks) with random
weights, saved with ``save_pretrained`` and loaded back as any model is, or ``--model DIR`` to time a trained
one. The time of the protocol does not depend on the weights; the accuracies (written to the result file as
a sanity check only) do, and mean nothing for random weights.

Threads: torch and the BLAS under scikit-learn (threadpoolctl) both get ``--threads``.
GPU variant (CUDA only): feature extraction on the GPU.

    python bench/lowshot.py [--quick] [--model DIR] [--data-root DIR] [--batch-size 256]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cuda_available, machine_info, parser, setup_torch, write_result  # noqa: E402

NAME = "lowshot"
SHOTS = (1, 2, 5, 10)
SPLITS = 3
KNN_K = 20
PRESET = "fashion-mnist"
#: --quick: the first images of each split
QUICK_TRAIN, QUICK_TEST = 3000, 1000


def random_model(out_dir: Path) -> Path:
    """A ViT of the fashion-mnist preset's shape with random weights (as at the start of pretraining), saved
    with its image processor as ``vitmsn pretrain``'s export writes them."""
    import torch

    from vitmsn.models.hf import ViTMSNModel
    from vitmsn.msn.config import preset
    from vitmsn.processing import ViTImageProcessor

    cfg = preset(PRESET)
    torch.manual_seed(cfg.seed)
    model = ViTMSNModel(cfg.encoder_config())
    model.init_backbone_weights(zero_embeddings=False)
    model.save_pretrained(out_dir)
    ViTImageProcessor(
        size={"height": cfg.rand_size, "width": cfg.rand_size},
        image_mean=list(cfg.mean),
        image_std=list(cfg.std),
    ).save_pretrained(out_dir)
    return out_dir


def first(dataset, n: int | None):
    import torch

    if n is None or n >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(n))


def blas_threads(threads: int):
    """Limit the BLAS / OpenMP pools scikit-learn and numpy use (threadpoolctl), if available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def run_once(args, model_dir: str, device: str = "cpu") -> dict[str, Any]:
    """One whole evaluation; every phase timed on its own."""
    import numpy as np

    from vitmsn.data.fashion_mnist import FashionMNIST
    from vitmsn.eval import lowshot
    from vitmsn.eval.features import extract_features, load_backbone

    n_train, n_test = (QUICK_TRAIN, QUICK_TEST) if args.quick else (None, None)
    phases: dict[str, Any] = {}

    t = time.perf_counter()
    train = first(FashionMNIST("train", root=args.data_root, download=False), n_train)
    test = first(FashionMNIST("test", root=args.data_root, download=False), n_test)
    phases["load data"] = {"seconds": time.perf_counter() - t}
    t = time.perf_counter()
    model, processor = load_backbone(model_dir, device=device)
    phases["load model"] = {"seconds": time.perf_counter() - t}
    if device == "cpu":  # timed apart, so that the first fit does not carry it
        t = time.perf_counter()
        import sklearn.linear_model  # noqa: F401

        phases["import scikit-learn"] = {"seconds": time.perf_counter() - t}

    feats = {}
    for split, data in (("train", train), ("test", test)):
        t = time.perf_counter()
        x, y = extract_features(
            model, data, processor, pool=args.pool, batch_size=args.batch_size, num_workers=args.num_workers,
            device=device, progress=False,
        )  # fmt: skip
        s = time.perf_counter() - t
        feats[split] = (x, y)
        phases[f"{split} features"] = {"seconds": s, "images": len(data), "images_per_s": len(data) / s}
    if device != "cpu":
        return {"phases": phases, "feature_dim": int(feats["train"][0].shape[1])}

    logreg, accuracy = [], {}
    for k in args.shots:
        t = time.perf_counter()
        (row,) = lowshot.evaluate(feats["train"], feats["test"], shots=[k], splits=args.splits)
        s = time.perf_counter() - t
        logreg.append(
            {
                "shots": k,
                "splits": args.splits,
                "train_images": k * len(np.unique(feats["train"][1])),
                "test_images": len(test),
                "seconds": s,
                "seconds_per_fit": s / args.splits,
            }
        )
        accuracy[row.label] = {"mean": row.mean, "std": row.std}
        phases[f"logistic regression, {k} per class x {args.splits} splits"] = {"seconds": s}
    t = time.perf_counter()
    (row,) = lowshot.evaluate(feats["train"], feats["test"], shots=[], knn_k=args.knn)
    s = time.perf_counter() - t
    accuracy[row.label] = {"mean": row.mean}
    phases[f"{args.knn}-NN on all {len(train)} labels"] = {"seconds": s}
    return {
        "phases": phases,
        "logistic_regression": logreg,
        "knn": {"k": args.knn, "train_images": len(train), "test_images": len(test), "seconds": s},
        "feature_dim": int(feats["train"][0].shape[1]),
        "accuracy_sanity_only": accuracy,
    }


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeated runs of every phase's seconds (and images/s), with the raw times."""
    out: dict[str, Any] = {"rows": []}
    for name in runs[0]["phases"]:
        times = [r["phases"][name]["seconds"] for r in runs]
        row = {"phase": name, "median_s": statistics.median(times), "times_s": times}
        if "images" in runs[0]["phases"][name]:
            row["images"] = runs[0]["phases"][name]["images"]
            row["images_per_s"] = row["images"] / row["median_s"]
        out["rows"].append(row)
    out["total_s"] = sum(r["median_s"] for r in out["rows"])
    for key in ("logistic_regression", "knn", "feature_dim", "accuracy_sanity_only"):
        if key in runs[-1]:
            out[key] = runs[-1][key]
    return out


def print_rows(label: str, res: dict[str, Any]) -> None:
    print(f"\n{label}")
    for row in res["rows"]:
        extra = f"  ({row['images']} images, {row['images_per_s']:.0f} images/s)" if "images" in row else ""
        print(f"  {row['phase']:45s} {row['median_s']:8.2f} s{extra}")
    print(f"  {'total':45s} {res['total_s']:8.2f} s")


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="a model directory (default: a random ViT of the preset's shape)"
    )
    p.add_argument(
        "--data-root", default=None, help="the Fashion-MNIST IDX files (default: the usual places)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="feature extraction batch (default 256)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for extraction (default 0)")
    p.add_argument("--pool", choices=("cls", "cls_prenorm"), default="cls")
    p.add_argument("--shots", default=",".join(map(str, SHOTS)), help="images per class (default 1,2,5,10)")
    p.add_argument("--splits", type=int, default=SPLITS, help="seeded splits per shot count (default 3)")
    p.add_argument("--knn", type=int, default=KNN_K, help="k of the k-NN on all labels (default 20)")
    args = p.parse_args(argv)
    args.shots = [int(s) for s in args.shots.split(",") if s.strip()]
    threads = setup_torch(args.threads)
    machine = machine_info()
    repeats = args.repeats or 1

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(random_model(Path(tmp)))
        with blas_threads(threads):
            cpu = summarize_runs([run_once(args, model_dir) for _ in range(repeats)])
        print_rows(f"CPU, {threads} thread(s), median of {repeats} run(s)", cpu)
        use_gpu, why = cuda_available(args)
        if use_gpu:
            gpu = summarize_runs([run_once(args, model_dir, "cuda") for _ in range(repeats)])
            print_rows("GPU feature extraction", gpu)
        else:
            gpu = {"skipped": why}
            print(f"GPU variant {why}")
        from vitmsn.checkpoints import load_config_dict

        model_config = {
            k: v
            for k, v in load_config_dict(model_dir).items()
            if k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            or k in ("patch_size", "image_size", "num_channels", "model_type")
        }

    images = {r["phase"]: r["images"] for r in cpu["rows"] if "images" in r}
    notes = [
        "Wall time of each phase of vitmsn's low-shot evaluation, one after the other in one process; "
        "feature extraction includes the image processor (once per batch, as the DataLoader's collate "
        "function, in the main process with the default --num-workers 0) and the DataLoader.",
        "logistic regression: scikit-learn's LogisticRegression (lbfgs, C = 1/0.00025, no intercept, "
        "max_iter 1000) on the centred, L2-normalised features, as the MSN paper's protocol; each fit also "
        "predicts the whole test split.",
        "Accuracies are in the result file only as a sanity check of the run; with the default random weights "
        "they say nothing about MSN.",
    ]
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "model": args.model or f"random ViT of the {PRESET} preset's shape",
            "model_config": model_config,
            "data": "Fashion-MNIST"
            + (f" from {args.data_root}" if args.data_root else " (default locations)"),
            "train_images": images["train features"],
            "test_images": images["test features"],
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "pool": args.pool,
            "shots": args.shots,
            "splits": args.splits,
            "knn_k": args.knn,
            "threads": threads,
            "repeats": repeats,
        },
        results={"cpu": cpu, "gpu": gpu},
        notes=notes,
    )
    return cpu


if __name__ == "__main__":
    main()
