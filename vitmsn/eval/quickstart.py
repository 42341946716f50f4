"""``vitmsn lowshot`` and ``vitmsn quickstart``: label efficiency, measured.

The quickstart pretrains the ``fashion-mnist`` preset, then compares the low-shot accuracy of its features
with two baselines computed in the same run: logistic regression on the raw pixels, and on the features of
the same ViT with random weights. It writes ``report.md``, ``lowshot.png`` and ``lowshot.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitmsn.distributed import resolve_device
from vitmsn.eval import lowshot

logger = logging.getLogger("vitmsn")


# ---------------------------------------------------------------------------------------------- data


def labelled_splits(data: str, *, root: str | None = None) -> tuple[Any, Any, list[str]]:
    """(train, test, class names) as datasets of (PIL image, label): Fashion-MNIST or an image folder
    with ``train/`` and ``val/`` (or ``test/``) subfolders, one subfolder per class in each."""
    if data == "fashion-mnist":
        from vitmsn.data.fashion_mnist import CLASSES, FashionMNIST

        return FashionMNIST("train", root=root), FashionMNIST("test", root=root), list(CLASSES)
    from vitmsn.data.folder import ImageFolderDataset, held_out_splits

    base = Path(data)
    if not base.is_dir():
        raise FileNotFoundError(f"{data} is neither 'fashion-mnist' nor a directory")
    held_out = held_out_splits(base)
    if not held_out:
        raise FileNotFoundError(f"{data} must hold train/ and val/ (or test/) folders, one subfolder per class")
    test_dir = base / held_out[0]
    train = ImageFolderDataset(base / "train", labelled=True)
    test = ImageFolderDataset(test_dir, labelled=True)
    if train.classes != test.classes:
        raise ValueError(f"train and {test_dir.name} folders have different classes")
    return train, test, list(train.classes)


class _Subset(torch.utils.data.Dataset):
    def __init__(self, base: Any, indices: np.ndarray):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[int(self.indices[i])]


def _labels_of(dataset: Any) -> np.ndarray | None:
    """The labels of a data set without reading its images, where it has them (``targets``)."""
    if isinstance(dataset, _Subset):
        base = _labels_of(dataset.base)
        return None if base is None else base[dataset.indices]
    targets = getattr(dataset, "targets", None)
    return None if targets is None else np.asarray(targets)


def _check_shots(train: Any, shots: list[int], classes: list[str]) -> None:
    """Each class needs ``max(shots)`` labelled images: say which one has too few, by name."""
    labels = _labels_of(train)
    if labels is None or not shots:
        return
    present, counts = np.unique(labels[labels >= 0], return_counts=True)  # as the subsets are drawn: classes
    short = [(classes[c], int(n)) for c, n in zip(present, counts, strict=True) if n < max(shots)]  # present
    if short:
        names = ", ".join(f"{name!r} ({n})" for name, n in short[:8]) + (" ..." if len(short) > 8 else "")
        raise ValueError(f"--shots {max(shots)} needs {max(shots)} training images per class; these classes have "
                         f"fewer: {names}")


def _first(dataset: Any, n: int | None) -> Any:
    if n is None or n >= len(dataset):
        return dataset
    return _Subset(dataset, np.arange(n))


def pixels_of(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels in [0, 1] as flat vectors (N, H*W*C), and labels."""
    xs, ys = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        xs.append(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)
        ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


# -------------------------------------------------------------------------------------------- lowshot


def run_lowshot(model: str, data: str, *, shots: list[int], splits: int, percent: list[float], pool: str,
                knn_k: int | None, full: bool, subset_files: list[str], batch_size: int, device: str | None,
                out: str | None, seed: int = 0, progress: bool = True, data_root: str | None = None,
                max_train: int | None = None, max_test: int | None = None,
                report: Callable[[dict[str, list[lowshot.LowShotRow]]], None] | None = None,
                ) -> dict[str, list[lowshot.LowShotRow]]:
    """Frozen features of ``model`` on ``data``, then the low-shot table; optional JSON and PNG in ``out``.

    Everything that can be checked without the features is checked first (settings, ``out`` created and
    test-written, shot counts, subset files read and matched); ``report(columns)`` (e.g. printing the table)
    runs before the files are written, so that a failing write does not lose the results.
    """
    from vitmsn.eval.features import check_writable_folder, extract_features, load_backbone

    lowshot.check_settings(splits=splits, knn_k=knn_k, batch_size=batch_size)  # before minutes of features
    entries = [(f, _subset_entries(f)) for f in subset_files]  # a missing or empty file: before anything else
    train, test, classes = labelled_splits(data, root=data_root)
    train, test = _first(train, max_train), _first(test, max_test)
    _check_shots(train, shots, classes)  # before minutes of features
    subsets = [(Path(f).name, _subset_keys(f, e, train)) for f, e in entries]
    outp = check_writable_folder(out) if out else None  # once all else is checked: an error leaves no folder
    train_labels, test_labels = _labels_of(train), _labels_of(test)
    backbone, processor = load_backbone(model, device=resolve_device(device))
    tx, ty = extract_features(backbone, train, processor, pool=pool, batch_size=batch_size, progress=progress,
                              desc="train features")
    _check_readable_per_class(train_labels, ty, shots, classes)  # before the test features
    subset_rows = [(name, _indices_now(name, keys, train)) for name, keys in subsets]  # so are these
    vx, vy = extract_features(backbone, test, processor, pool=pool, batch_size=batch_size, progress=progress,
                              desc="test features")
    _warn_classes_gone(test_labels, vy, classes)
    rows = lowshot.evaluate((tx, ty), (vx, vy), shots=shots, splits=splits, percent=percent, subsets=subset_rows,
                            seed=seed, full=full, knn_k=knn_k, classes=classes)
    columns = {Path(model).name or model: rows}
    if report is not None:
        report(columns)
    if outp is not None:
        lowshot.save_json(outp / "lowshot.json", columns, {"model": model, "data": data, "pool": pool,
                                                           "splits": splits, "classes": classes})
        lowshot.plot(outp / "lowshot.png", columns)
    return columns


def _subset_entries(path: str) -> list[str]:
    """The entries of a subset file; an error names the file if it is missing or empty (names no image)."""
    from vitmsn.data.folder import read_subset_entries

    entries = read_subset_entries(path)
    if not entries:
        only = " (it has only blank and # comment lines)" if Path(path).read_text(encoding="utf-8").strip() else ""
        raise ValueError(f"subset file {path} is empty{only}: it names no image; give one labelled training image "
                         "per line (its path below the training folder or its file name; for fashion-mnist its "
                         "index)")
    return entries


def _subset_keys(path: str, entries: list[str], dataset: Any) -> list[Any]:
    """A subset file's entries matched against ``dataset`` before any feature is computed (an error names the
    file): the file paths of its images for an image folder (whose unreadable files the extraction leaves out,
    which shifts the indices), else their indices."""
    from vitmsn.data.folder import subset_entries_to_indices

    idx = np.asarray(subset_entries_to_indices(entries, dataset, path), dtype=np.int64)
    labels = _labels_of(dataset)
    if labels is not None:
        lowshot.check_subset(f"file {path}", idx, labels)
    samples = getattr(dataset, "samples", None)
    return [samples[i][0] for i in idx] if samples is not None else idx.tolist()


def _indices_now(name: str, keys: list[Any], dataset: Any) -> np.ndarray:
    """The indices of a subset file's images after the extraction left out the unreadable ones (a warning says
    how many of the file's images that removed)."""
    if not keys or not isinstance(keys[0], str):
        return np.asarray(keys, dtype=np.int64)
    position = {p: j for j, p in enumerate(dataset.paths)}
    idx = [position[p] for p in keys if p in position]
    if not idx:
        raise ValueError(f"subset file {name}: none of its {len(keys)} images is readable (the warnings above name "
                         "the unreadable files)")
    if len(idx) < len(keys):
        logger.warning("subset file %s: %d of its %d images are unreadable and left out", name,
                       len(keys) - len(idx), len(keys))
    lowshot.check_subset(f"file {name}", np.asarray(idx, dtype=np.int64), dataset.targets)
    return np.asarray(idx, dtype=np.int64)


def _check_readable_per_class(before: np.ndarray | None, after: np.ndarray, shots: list[int],
                              classes: list[str]) -> None:
    """After the unreadable training images are left out: every class that had images must keep at least one,
    and ``max(shots)`` for the k-shot rows. One error naming each such class, with its readable and total
    counts (a class whose files are all unreadable is reported too, not silently dropped from the table)."""
    if before is None:
        return
    need = max(shots) if shots else 1
    present, total = np.unique(before[before >= 0], return_counts=True)
    readable = np.bincount(after[after >= 0], minlength=len(classes))
    short = [(classes[c], int(readable[c]), int(n)) for c, n in zip(present, total, strict=True)
             if readable[c] < need]  # fmt: skip
    if not short:
        return
    names = ", ".join(f"{name!r} ({r} readable of {n})" for name, r, n in short[:8]) + (" ..." if len(short) > 8
                                                                                         else "")
    what = (f"--shots {need} needs {need} readable training images per class" if shots
            else "every class needs at least one readable training image")
    raise ValueError(f"after leaving out unreadable image files (the warnings above name them), {what}; these "
                     f"classes have fewer: {names}")


def _warn_classes_gone(before: np.ndarray | None, after: np.ndarray, classes: list[str]) -> None:
    """A test class whose images are all unreadable is not scored at all: say so."""
    if before is None:
        return
    gone = sorted(set(np.unique(before[before >= 0]).tolist()) - set(np.unique(after).tolist()))
    if gone:
        logger.warning("no readable test image left for class(es) %s: the accuracy is over the other classes",
                       ", ".join(repr(classes[c]) for c in gone))


# ------------------------------------------------------------------------------------------ quickstart


def quickstart(*, data: str | None = None, out: str = "runs/quickstart", smoke: bool = False,
               device: str | None = None, progress: bool = True, settings: list[str] | None = None) -> Path:
    """Pretrain the fashion-mnist preset (or reuse a finished run in ``out``), then the low-shot report."""
    from vitmsn.eval.features import extract_features, load_backbone
    from vitmsn.models.hf import ViTMSNModel
    from vitmsn.msn.config import preset
    from vitmsn.msn.train import LATEST, export_encoder, pretrain
    from vitmsn.training import fit_seed, load_checkpoint

    outp = Path(out)
    _check_quickstart_settings(settings or [])
    _check_quickstart_data(data)
    _check_quickstart_out(outp)
    cfg = preset("fashion-mnist").with_overrides({"out": str(outp / "pretrain"), "data": data})
    if smoke:  # a few steps on a few images: checks that everything runs, says nothing about accuracy
        cfg = cfg.with_overrides({"max_steps": 6, "batch_size": 32, "num_workers": 0, "tensorboard": False})
    cfg = cfg.with_overrides(settings or [])
    # what a stop says: the quickstart command continues the run (this one, with --smoke and --set as given),
    # and then writes the report; a --smoke run stops at its max_steps by design
    hints = {"continue_with": _quickstart_command(out, data=data, smoke=smoke, settings=settings or [],
                                                  device=device)}
    if smoke:
        hints["at_max_steps"] = ("the length of a --smoke run (vitmsn quickstart without --smoke, in another --out, "
                                 "pretrains the whole preset)")
    else:
        rest = [a for a in settings or [] if _setting_key(a) != "max_steps"]
        hints["at_max_steps"] = "continue with: " + _quickstart_command(
            out, data=data, smoke=False, settings=[*rest, "max_steps=0"], device=device)
    t0 = time.perf_counter()
    latest = Path(cfg.out) / "checkpoints" / LATEST
    if latest.exists():
        done = load_checkpoint(latest)["step"]
        logger.info("found a run in %s at step %d; continuing it (delete the folder to start over)", cfg.out, done)
        try:
            pretrain(cfg, resume=True, device=device, progress=progress, **hints)
        except ValueError as e:
            if "settings differ" not in str(e):
                raise
            raise ValueError(f"{out} holds a quickstart run made with other settings (with or without --smoke, or "
                             f"other --set): choose another --out, or delete it to start over ({e})") from None
    else:
        pretrain(cfg, device=device, progress=progress, **hints)
    pretrain_s = time.perf_counter() - t0
    model_dir = export_encoder(cfg.out, outp / "model", overwrite=True)  # the run may be newer

    # -- features of the pretrained ViT, of the same ViT with random weights, and raw pixels
    train, test, classes = labelled_splits("fashion-mnist", root=data)
    n_train, n_test = (2000, 1000) if smoke else (None, None)
    train, test = _first(train, n_train), _first(test, n_test)
    msn, processor = load_backbone(model_dir, device=resolve_device(device))
    torch.manual_seed(fit_seed(cfg.seed))
    random_vit = ViTMSNModel(cfg.encoder_config()).to(msn.pos_embed.device).eval()
    random_vit.init_backbone_weights(zero_embeddings=False)  # random, as at the start of pretraining
    feats = {}
    for name, model in (("MSN (ours)", msn), ("random ViT", random_vit)):
        feats[name] = (extract_features(model, train, processor, progress=progress, desc=f"{name}: train"),
                       extract_features(model, test, processor, progress=progress, desc=f"{name}: test"))
    feats["raw pixels"] = (pixels_of(train), pixels_of(test))

    shots, splits = [1, 2, 5, 10], (1 if smoke else 3)
    columns = {name: lowshot.evaluate(tr, te, shots=shots, splits=splits) for name, (tr, te) in feats.items()}
    table = lowshot.format_table(columns)
    print(f"\nFashion-MNIST low-shot top-1 accuracy (%), logistic regression on frozen features, "
          f"{splits} split(s), {len(test)} test images\n")
    print(table)
    meta = {"command": "vitmsn quickstart" + (" --smoke" if smoke else ""), "date": time.strftime("%Y-%m-%d"),
            "pretrain_seconds": round(pretrain_s, 1), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "splits": splits,
            "train_images": len(train), "test_images": len(test), "config": cfg.to_dict()}
    lowshot.save_json(outp / "lowshot.json", columns, meta)
    lowshot.plot(outp / "lowshot.png", columns, title="Fashion-MNIST: low-shot accuracy")
    _write_report(outp / "report.md", table, meta)
    print(f"\nreport: {outp / 'report.md'}  plot: {outp / 'lowshot.png'}  model: {model_dir}")
    return outp


#: the pretraining settings quickstart sets itself: ``--set`` of these would half work (e.g. pretrain on an
#: image folder, then look for Fashion-MNIST's files in it for the low-shot table)
_QUICKSTART_FIXED = ("dataset", "data", "out")


def _setting_key(setting: str) -> str:
    """The key of a ``--set key=value``, as the configuration reads it."""
    return setting.split("=", 1)[0].strip().replace("-", "_")


def _quickstart_command(out: str | Path, *, data: str | None, smoke: bool, settings: list[str],
                        device: str | None) -> str:
    """The ``vitmsn quickstart`` command line of these options (quoted for a POSIX shell)."""
    argv = ["vitmsn", "quickstart", *(["--smoke"] if smoke else []), "--out", str(out)]
    argv += ["--data", str(data)] if data else []
    for a in settings:
        argv += ["--set", a]
    argv += ["--device", device] if device else []
    return shlex.join(argv)


def _check_quickstart_settings(settings: list[str]) -> None:
    for a in settings:
        key = _setting_key(a)
        if key in _QUICKSTART_FIXED:
            raise ValueError(
                f"--set {a}: quickstart always pretrains on Fashion-MNIST (--data is the folder of its IDX files) "
                "and writes into --out; it cannot take --set dataset/data/out. For your own images use "
                "vitmsn pretrain --preset vit-small/16 --data DIR --out RUN, then vitmsn export RUN MODEL and "
                "vitmsn lowshot --model MODEL --data FOLDER")  # fmt: skip


def _check_quickstart_data(data: str | None) -> None:
    """``--data`` is the folder of Fashion-MNIST's IDX files: an image folder is refused before anything is
    pretrained or downloaded into it, with what to run instead (pretrain's message names ``--set
    dataset=folder`` and presets, which quickstart does not have)."""
    if data is None:
        return
    from vitmsn.data.fashion_mnist import _find_split
    from vitmsn.msn.train import _holds_images

    folder = Path(data)
    if folder.is_dir() and _find_split(folder, "train", []) is None and _holds_images(folder):
        raise ValueError(
            f"{data} holds image files, but quickstart's --data is the folder of Fashion-MNIST's IDX files "
            "(train-images-idx3-ubyte.gz, ...; without --data they are found or downloaded). For your own "
            f"images: vitmsn pretrain --preset vit-small/16 --data {data} --out RUN, then vitmsn export RUN "
            "MODEL, then vitmsn lowshot --model MODEL --data FOLDER (FOLDER with train/ and val/, one "
            "sub-folder per class)")  # fmt: skip


def _check_quickstart_out(outp: Path) -> None:
    """A new or empty folder, or a quickstart run (finished or interrupted: it holds ``pretrain/``), which is
    reused or continued. Anything else is refused: quickstart writes report.md, lowshot.json, lowshot.png,
    model/ and pretrain/ there, over whatever had those names (as export and convert refuse a non-empty OUT)."""
    if outp.exists() and not outp.is_dir():
        raise FileExistsError(f"--out {outp} is a file; give a folder for the quickstart run (a new one, or an "
                              "earlier quickstart run to reuse or continue)")
    if outp.is_dir() and any(outp.iterdir()) and not (outp / "pretrain").is_dir():
        raise FileExistsError(f"--out {outp} is not empty and is not a quickstart run (it has no pretrain/ "
                              "folder): choose a new or empty folder, so that nothing in it is overwritten")


def _write_report(path: Path, table: str, meta: dict) -> None:
    from vitmsn.checkpoints import atomic_write_text

    cfg = meta["config"]
    text = f"""# vitmsn quickstart report

Command: `{meta['command']}` ({meta['date']}, {meta['threads']} threads, torch {meta['torch']})

MSN pretraining of a ViT (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, patch {cfg['patch_size']})
on Fashion-MNIST's training images without labels took {meta['pretrain_seconds']:.0f} s. Then, with
k labelled images per class, a logistic regression on frozen features (the MSN paper's protocol) is scored
on {meta['test_images']} test images, mean ± std over {meta['splits']} split(s):

```
{table}
```

![low-shot accuracy](lowshot.png)
"""
    atomic_write_text(path, text)


# -------------------------------------------------------------------------------------------- commands


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas (e.g. 1,2,5), got {s!r}") from None


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (e.g. 1,10), got {s!r}") from None


def cmd_lowshot(args: argparse.Namespace) -> None:
    def show(columns: dict[str, list[lowshot.LowShotRow]]) -> None:  # before --out is written
        if args.json:
            print(json.dumps({n: [r.to_dict() for r in rows] for n, rows in columns.items()}, indent=2))
        else:
            print(lowshot.format_table(columns))
        sys.stdout.flush()

    run_lowshot(args.model, args.data, shots=args.shots, splits=args.splits, percent=args.percent,
                pool=args.pool, knn_k=args.knn, full=args.linear_probe, subset_files=args.subset_file or [],
                batch_size=args.batch_size, device=args.device, out=args.out, seed=args.seed,
                progress=not args.no_progress, data_root=args.data_root, report=show)


def cmd_quickstart(args: argparse.Namespace) -> None:
    quickstart(data=args.data, out=args.out, smoke=args.smoke, device=args.device, progress=not args.no_progress,
               settings=args.set)


def register(add) -> None:
    sp = add("lowshot", cmd_lowshot, "low-shot evaluation of a model's frozen features",
             "Frozen features, then the MSN paper's protocol: multinomial logistic regression with an L2 penalty\n"
             "(features centred and L2-normalised, no intercept, lambda = 0.00025 / number of samples) on k\n"
             "labelled images per class, mean ± std over seeded splits. Also a k-NN and a full linear probe.")
    sp.add_argument("--model", required=True, help="model directory or Hub id")
    sp.add_argument("--data", required=True,
                    help="'fashion-mnist', or a folder with train/ and val/ (or test/), one subfolder per class")
    sp.add_argument("--data-root", help="where the Fashion-MNIST files are (default: the usual places)")
    sp.add_argument("--shots", type=_ints, default=[1, 2, 5, 10], help="images per class (default 1,2,5,10)")
    sp.add_argument("--splits", type=int, default=3, help="seeded labelled splits per shot count (default 3)")
    sp.add_argument("--percent", type=_floats, default=[], help="also per-class stratified percentages, e.g. 1")
    sp.add_argument("--subset-file", action="append", help="a file of labelled images, one per line (repeatable)")
    sp.add_argument("--pool", choices=("cls", "cls_prenorm"), default="cls",
                    help="CLS after the final LayerNorm (default, as transformers) or before it (as the "
                         "original MSN evaluation)")
    sp.add_argument("--knn", type=int, metavar="K", help="also a cosine K-NN on all training labels (e.g. 20; a K above the number of training "
                         "images uses them all, and the table shows the K used)")
    sp.add_argument("--linear-probe", action="store_true", help="also logistic regression on all training labels")
    sp.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the labelled splits (default 0)")
    sp.add_argument("--out", help="folder for lowshot.json and lowshot.png")
    sp.add_argument("--json", action="store_true", help="print JSON instead of the table")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("quickstart", cmd_quickstart, "pretrain on Fashion-MNIST and print the low-shot table",
             "The main job: MSN pretraining of the fashion-mnist preset (about 10 minutes on 2 CPU cores), then\n"
             "the low-shot table for 1/2/5/10 labels per class beside two baselines computed in the same run:\n"
             "raw pixels, and the same ViT with random weights. A finished or interrupted run in --out is\n"
             "reused or continued. Writes report.md, lowshot.png and lowshot.json in --out.")
    sp.add_argument("--data", help="folder with the Fashion-MNIST IDX files (default: Debian's location, then download)")
    sp.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    sp.add_argument("--smoke", action="store_true", help="a few steps on few images: checks that it all runs")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a pretraining setting (not dataset, data or out)")
    sp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    sp.add_argument("--no-progress", action="store_true")
