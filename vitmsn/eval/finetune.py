"""Supervised fine-tuning: a pretrained encoder plus a new linear classifier on the CLS token, trained end to end.

Recipe (DeiT/MAE-style, scaled down): AdamW, linear warm-up then half cosine of the learning rate (the shared
:class:`~vitmsn.msn.schedules.Schedule`), no weight decay on biases, norms and the position/CLS embeddings,
cross-entropy with label smoothing, optional layer-wise learning-rate decay, RandomResizedCrop + horizontal
flip for training and a plain resize for evaluation.

Pixels match the model directory's ``preprocessor_config.json``: the training transform is built from the
processor's size (its crop size, if it center-crops: the size it predicts at), filter, rescale factor, mean and
std (torchvision transforms v2), and evaluation runs the processor itself. Grayscale images become three equal
channels.

A run folder holds ``finetune.json`` (the settings), ``log.csv``, ``checkpoints/latest.pt`` (written atomically:
weights, optimizer, step, RNG states, running metrics), ``metrics.json`` (per-epoch train/val loss and
accuracy, the best epoch) and ``best/`` (the best model so far by validation accuracy, in transformers'
format with its image processor and class names). ``resume=True`` continues exactly where the run stopped:
the data order depends on (seed, epoch), each augmentation on (seed, epoch, index), the rest is in the
checkpoint, so a stopped and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2
from tqdm.auto import tqdm

from vitmsn.checkpoints import CheckpointError
from vitmsn.distributed import bf16_autocast, resolve_device, tf32_matmuls
from vitmsn.msn.schedules import Schedule, default_no_decay, param_groups
from vitmsn.processing import _center_crop_torch, _pad_target, _pad_torch
from vitmsn.training import (
    FINETUNE_KEYS,
    GlobalBatchSampler,
    MetricLogger,
    NonFiniteLossError,
    SeededTransform,
    StopRequests,
    TrainingInterrupted,
    adamw,
    ignore_sigint,
    load_checkpoint,
    load_optimizer_state,
    load_weights_into,
    non_finite_advice,
    non_finite_message,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    skip_if_non_finite,
)

logger = logging.getLogger("vitmsn")

__all__ = [
    "LabelledData",
    "ProcessorTransform",
    "evaluate",
    "finetune",
    "finetune_defaults",
    "finetune_param_groups",
    "layer_id",
    "load_labelled_data",
    "saved_settings",
    "set_scaled_lr",
    "train_transform",
]

LATEST = "latest.pt"
SETTINGS_FILE = "finetune.json"
LR_SCALE_KEY = "lr_scale"
# settings that may differ between a run and its resumption (everything else must match)
_RESUMABLE_CHANGES = frozenset(
    {"num_workers", "max_steps", "device", "tensorboard", "log_every", "checkpoint_every_steps", "data_root",
     "lr", "min_lr", "bf16", "clip_grad", "tf32"}  # lr .. tf32: the way out of a loss that became NaN
)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class LabelledData:
    """Training and validation datasets of (PIL image, label) and the class names (index = label)."""

    train: Dataset
    val: Dataset | None
    classes: list[str]


def load_labelled_data(
    data: str | os.PathLike,
    *,
    val_data: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_root: str | None = None,
) -> LabelledData:
    """Training and validation data.

    - ``"fashion-mnist"``: its train and test splits (``data_root``: where the IDX files are);
    - a folder with ``train/`` and ``val/`` (or ``test/``) sub-folders, one sub-folder per class in each;
    - a folder of class sub-folders (or one with only ``train/``): a seeded stratified ``val_fraction`` of
      each class (at least one image) is held out; ``val_fraction=0`` trains on everything without validation;
    - ``val_data``: an explicit validation folder (same class sub-folders) for any folder ``data``.
    """
    from vitmsn.data.folder import ImageFolderDataset, drop_unreadable, percent_subset
    from vitmsn.eval.quickstart import labelled_splits

    if str(data) == "fashion-mnist":
        if val_data is not None:
            raise ValueError(
                "val_data cannot be combined with fashion-mnist (its test split is the validation)"
            )
        train, test, classes = labelled_splits("fashion-mnist", root=data_root)
        return LabelledData(train, test, classes)
    base = Path(data)
    if not base.is_dir():
        raise FileNotFoundError(f"{data} is neither 'fashion-mnist' nor a directory")
    has_val = any((base / n).is_dir() for n in ("val", "test"))
    if val_data is None and (base / "train").is_dir() and has_val:
        train, val, classes = labelled_splits(str(base))
        _need_two_classes(base / "train", classes)
        return LabelledData(train, drop_unreadable(val), classes)  # evaluation: each readable image once
    full = ImageFolderDataset(base / "train" if (base / "train").is_dir() else base, labelled=True)
    classes = list(full.classes)
    _need_two_classes(full.root, classes, " (a folder with val/ or test/ needs a train/ beside it)"
                      if has_val and not (base / "train").is_dir() else "")
    if val_data is not None:
        val = ImageFolderDataset(val_data, labelled=True)
        if list(val.classes) != classes:
            raise ValueError(f"{val_data} has other classes than {data}: {val.classes} vs {classes}")
        return LabelledData(full, drop_unreadable(val), classes)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return LabelledData(full, None, classes)
    targets = np.asarray(full.targets)
    val_idx = percent_subset(targets, 100 * val_fraction, seed=seed)
    train_idx = np.setdiff1d(np.arange(len(full)), val_idx)
    missing = sorted(set(range(len(classes))) - set(targets[train_idx].tolist()))
    if missing:
        raise ValueError(
            f"classes {[classes[i] for i in missing]} have too few images to hold some out for validation; "
            "add images, pass a val folder, or val_fraction=0"
        )
    val = drop_unreadable(Subset(full, val_idx.tolist()))  # evaluation: each readable image once
    return LabelledData(Subset(full, train_idx.tolist()), val, classes)


def _need_two_classes(root: Path, classes: list[str], hint: str = "") -> None:
    if len(classes) < 2:
        raise ValueError(f"{root} has {len(classes)} class folder ({', '.join(classes)}): a classifier needs at "
                         f"least two{hint}")


class _Rescale:
    """x * factor (the processor's ``rescale_factor``), picklable for DataLoader workers."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def __repr__(self) -> str:
        return f"Rescale(factor={self.factor})"


def _channel_stats(value: float | Sequence[float], channels: int) -> list[float]:
    return [float(value)] * channels if isinstance(value, int | float) else [float(v) for v in value]


def train_transform(
    processor: Any, image_size: int | Sequence[int], *, augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0), num_channels: int = 3,
) -> v2.Compose:  # fmt: skip
    """PIL image -> (C, H, W) float32 as the processor would make it, with training augmentation.

    The output size is the processor's final one, at which it predicts: its ``crop_size`` when it has
    ``do_center_crop``, else its ``{"height", "width"}`` size (else ``image_size``); the interpolation is its
    ``resample`` filter; then the processor's rescale factor and mean/std, and its zero padding to
    ``pad_size`` when it has ``do_pad`` with one. ``augment``: RandomResizedCrop to
    that size (``crop_scale``) + horizontal flip; otherwise the processor's resize (and center crop), which
    gives its numbers.
    """
    size = processor.size
    if "height" in size:
        resize: Any = (size["height"], size["width"])
    elif "shortest_edge" in size and "longest_edge" not in size:
        resize = size["shortest_edge"]  # torchvision's int size: the shorter edge, as the processor resizes it
    else:
        resize = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    crop = _center_crop_size(processor)
    if crop is None and not (processor.do_resize and isinstance(resize, tuple)):
        raise ValueError(
            f"the image processor (preprocessor_config.json) makes images of no fixed size (size {dict(size)}, "
            f"do_resize {processor.do_resize}, no center crop), and training batches need one: give it a "
            "{'height', 'width'} size, or do_center_crop with a crop_size")
    hw = crop or resize
    from PIL.Image import Resampling

    interpolation = InterpolationMode(Resampling(processor.resample).name.lower())
    if augment:
        steps: list[Any] = [v2.RandomResizedCrop(hw, scale=crop_scale, interpolation=interpolation, antialias=True),
                            v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(resize, interpolation=interpolation, antialias=True)] if processor.do_resize else []
        steps += [v2.ToImage(), _CenterCrop(crop, processor)] if crop else []
    steps += [v2.ToImage(), v2.RGB() if num_channels == 3 else v2.Grayscale(1), v2.ToDtype(torch.float32)]
    if processor.do_rescale:
        steps.append(_Rescale(processor.rescale_factor))
    if processor.do_normalize:
        steps.append(
            v2.Normalize(
                _channel_stats(processor.image_mean, num_channels),
                _channel_stats(processor.image_std, num_channels),
            )
        )
    pad_size = getattr(processor, "pad_size", None) if getattr(processor, "do_pad", False) else None
    if pad_size is not None:  # last, as the processor pads: zeros at the bottom and right
        hw = _height_width(pad_size)
        if hw is None:
            raise ValueError(f"the image processor has do_pad but its pad_size {pad_size!r} is not a "
                             "{'height', 'width'} size")
        steps.append(_PadTo({"height": hw[0], "width": hw[1]}))
    return v2.Compose(steps)


class _PadTo:
    """(C, h, w) -> (C, *pad_size) with zeros at the bottom and right, as the processor's ``do_pad`` pads (and
    with its errors: a pad_size smaller than the image, or not a {"height", "width"} size)."""

    def __init__(self, pad_size: Any):
        self.pad_size = pad_size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return _pad_torch(image, _pad_target(self.pad_size, [tuple(image.shape[-2:])]))


def _center_crop_size(processor: Any) -> tuple[int, int] | None:
    """(height, width) of the processor's center crop, or None when it does not crop."""
    if not getattr(processor, "do_center_crop", False):
        return None
    crop = getattr(processor, "crop_size", None)
    hw = _height_width(crop)
    if hw is None:
        raise ValueError(f"the image processor has do_center_crop but its crop_size {crop!r} is not a "
                         "{'height', 'width'} size")
    return hw


def _height_width(size: Any) -> tuple[int, int] | None:
    """(height, width) of a processor's size setting: an int (a square), a dict or transformers 5's SizeDict
    (attributes, not keys) with height and width; None for anything else."""
    if isinstance(size, int):
        return size, size
    hw = [size.get(k) if isinstance(size, dict) else getattr(size, k, None) for k in ("height", "width")]
    return None if None in hw else (int(hw[0]), int(hw[1]))


class _CenterCrop:
    """(C, H, W) -> (C, *crop), cropped where the processor's backend crops: the offset ``(H - h) // 2`` (where
    torchvision's CenterCrop rounds half to even, one pixel off when H - h is 3 mod 4), and zero padding with
    the odd pixel before the image for the PIL backend, after it for the torch one."""

    def __init__(self, crop: tuple[int, int], processor: Any):
        self.crop, self.pad_ceil = crop, getattr(processor, "backend", "torch") == "pil"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return _center_crop_torch(image, self.crop, pad_ceil=self.pad_ceil)


class ProcessorTransform:
    """PIL image -> (C, H, W) float32 through the image processor itself (evaluation)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


class _Mapped(Dataset):
    """(image, label) -> (transform(image), label), with no RNG side effects (evaluation)."""

    def __init__(self, base: Dataset, transform: Any):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        return self.transform(image), int(label)


# ------------------------------------------------------------------------------------ optimizer groups


_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDINGS = ("cls_token", "pos_embed", "mask_token", "patch_embed")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, ``i + 1`` for ``blocks.i``, ``num_layers + 1`` for the final norm and heads."""
    m = _BLOCK_RE.search(name)
    if m:
        return int(m.group(1)) + 1
    bare = name.removeprefix("vit.")
    if bare.startswith(_EMBEDDINGS):
        return 0
    return num_layers + 1


def finetune_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, CLS / position / mask tokens; with ``layer_decay`` each
    layer's groups carry ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)`` (embeddings the smallest,
    final norm and classifier 1). Apply a learning rate with :func:`set_scaled_lr`."""
    backbone = getattr(model, "vit", model)
    skip_names = set(backbone.no_weight_decay())

    def no_decay(name: str, p: torch.Tensor) -> bool:
        return default_no_decay(name, p) or name.removeprefix("vit.") in skip_names

    named = list(model.named_parameters())
    if layer_decay is None:
        groups = param_groups(named, weight_decay, no_decay=no_decay)
        for g in groups:
            g[LR_SCALE_KEY] = 1.0
        return groups
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = len(backbone.blocks) + 1
    by_layer: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, p in named:
        by_layer.setdefault(layer_id(name, depth - 1), []).append((name, p))
    groups = []
    for lid in sorted(by_layer):
        for g in param_groups(by_layer[lid], weight_decay, no_decay=no_decay):
            g[LR_SCALE_KEY] = layer_decay ** (depth - lid)
            g["layer_id"] = lid
            groups.append(g)
    return groups


def set_scaled_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set ``lr = value * lr_scale`` on every group (``lr_scale`` 1 where absent)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get(LR_SCALE_KEY, 1.0)


# ------------------------------------------------------------------------------------------ evaluation


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, *, bf16: bool = False, progress: bool = False
) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and top-1 accuracy (%) of a classifier over a loader of (pixels,
    labels); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    # [loss sum, correct], read once at the end (float64 where the device has it: Apple's GPUs do not)
    sums = torch.zeros(2, dtype=torch.float32 if torch.device(device).type == "mps" else torch.float64, device=device)
    count = 0
    try:
        for pixels, labels in tqdm(loader, desc="evaluate", disable=not progress, leave=False, unit="batch"):
            pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with bf16_autocast(device, bf16):
                logits = model(pixel_values=pixels).logits  # (B, num_labels)
            sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
            sums[1] += (logits.argmax(-1) == labels).sum()
            count += len(labels)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no validation images")
    loss_sum, correct = sums.tolist()
    return {"loss": loss_sum / count, "accuracy": 100.0 * correct / count, "images": count}


# ----------------------------------------------------------------------------------------------- runs


def finetune_defaults() -> dict[str, Any]:
    """The default value of every keyword argument of :func:`finetune`."""
    return {
        k: p.default
        for k, p in inspect.signature(finetune).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def saved_settings(out: str | os.PathLike) -> dict[str, Any]:
    """The settings of the run in ``out`` (its ``finetune.json``), e.g. to resume it with the same ones."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no fine-tuning run ({SETTINGS_FILE} is missing)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file of fine-tuning settings ({e})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold fine-tuning settings (a JSON object of setting: value, as "
                         "vitmsn finetune writes it)")
    for key, value in saved.items():
        expected = _SETTING_TYPES.get(key)
        if expected is not None and not _is_a(value, expected):
            raise ValueError(f"{path}: {key} must be {expected}, got {value!r} (the file is damaged: fix the value, "
                             f"or start the run again in another folder)")
    return saved


# what each saved setting must be (finetune.json is checked before its values reach the run)
_SETTING_TYPES = {
    **dict.fromkeys(("model", "data"), "a string"),
    **dict.fromkeys(("val_data", "data_root", "device"), "a string or null"),
    **dict.fromkeys(("epochs", "batch_size", "seed", "num_workers", "log_every", "checkpoint_every_steps"),
                    "a whole number"),
    "max_steps": "a whole number or null",
    **dict.fromkeys(("lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "val_fraction"), "a number"),
    **dict.fromkeys(("layer_decay", "clip_grad"), "a number or null"),
    **dict.fromkeys(("augment", "bf16", "tf32", "tensorboard"), "true or false"),
    "crop_scale": "two numbers",
}


def _is_a(value: Any, expected: str) -> bool:
    if value is None:
        return expected.endswith("or null")
    if isinstance(value, bool):
        return expected == "true or false"
    if expected.startswith("a string"):
        return isinstance(value, str)
    if expected.startswith("a whole number"):
        return isinstance(value, int)
    if expected.startswith("a number"):
        return isinstance(value, int | float) and math.isfinite(value)
    if expected == "two numbers":
        return isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return False


def _check_run_folder(out: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """With ``resume``: the run's checkpoint, once its settings and the checkpoint itself have been checked
    (before any data or model is loaded); otherwise None, once ``out`` is known to hold no run."""
    latest = out / "checkpoints" / LATEST
    if not resume:
        if latest.exists():
            raise FileExistsError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        if out.is_dir() and not (out / SETTINGS_FILE).exists() and any(out.iterdir()):
            # the user's files (the model or data folder, say): a run stopped before its first checkpoint
            # (finetune.json written) may start again, anything else is left alone
            raise FileExistsError(f"{out} is not empty and holds no fine-tuning run; choose a new or empty --out")
        return None
    if not latest.exists():
        raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
    saved = saved_settings(out)
    now = json.loads(json.dumps(settings))
    diff = sorted(k for k in saved if k in now and saved[k] != now[k] and k not in _RESUMABLE_CHANGES)
    if diff:
        raise ValueError(
            "the settings differ from the run being resumed: "
            + ", ".join(f"{k} (run: {saved[k]!r}, now: {now[k]!r})" for k in diff)
        )
    try:
        return load_checkpoint(latest, FINETUNE_KEYS)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the run cannot continue from it (damaged or cut short): start it again "
                              "in another folder") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from vitmsn.checkpoints import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def finetune(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 5e-4,
    min_lr: float = 1e-6,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.1,
    layer_decay: float | None = None,
    augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    val_fraction: float = 0.1,
    val_data: str | None = None,
    clip_grad: float | None = None,
    device: str | None = None,
    bf16: bool = False,
    tf32: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    log_every: int = 10,
    checkpoint_every_steps: int = 0,
    tensorboard: bool = True,
    data_root: str | None = None,
) -> Path:
    """Fine-tune ``model`` with a new classifier for the classes of ``data``; returns the run folder ``out``.

    Args:
        model: a ViT-MSN (or ViT) directory or Hub id; a bare encoder gets a newly initialised classifier.
        data: ``"fashion-mnist"`` or an image folder (see :func:`load_labelled_data`).
        out: the run folder; the best model goes to ``out/best``.
        epochs, batch_size: the schedule spans ``epochs * (len(train) // batch_size)`` steps.
        lr, min_lr: peak learning rate (reached after ``warmup_epochs``) and the end of the cosine.
        weight_decay: AdamW weight decay (constant; not on biases, norms, CLS and position embeddings).
        label_smoothing: of the training cross-entropy.
        layer_decay: layer-wise lr decay: block ``i`` (1-based) learns at ``lr * decay ** (L + 1 - i)``, the
            embeddings at ``lr * decay ** (L + 1)``, the final norm and the classifier at ``lr``.
        augment: RandomResizedCrop (``crop_scale``) + flip for training, else the processor's resize (and
            center crop, if it has one).
        val_fraction, val_data: validation split (when ``data`` has no val/ folder) or an explicit folder.
        clip_grad: clip the gradient norm to this value.
        device, bf16: where to train (default cuda when available) and bfloat16 autocast.
        tf32: on CUDA, fp32 matmuls as TensorFloat-32 while the run lasts (Ampere or newer GPUs; several times
            the speed at ~1e-3 relative precision); no effect on the CPU.
        seed: data order, augmentation, the validation split and the classifier's initialisation.
        resume: continue the run in ``out`` from ``checkpoints/latest.pt``.
        max_steps: stop after this many steps in total (the schedules still span all epochs; continue with
            ``resume=True``).
        log_every, checkpoint_every_steps: log.csv rows and extra checkpoints (0: only at epoch ends and stops).

    SIGINT (Ctrl-C) or SIGTERM while the steps run: the step in progress finishes, ``checkpoints/latest.pt`` is
    written as a mid-epoch checkpoint (``resume=True`` continues exactly) and :class:`~vitmsn.training.
    TrainingInterrupted` (a KeyboardInterrupt) is raised, saying where; a second Ctrl-C stops at once.
    """
    from vitmsn.eval.predict import load_processor
    from vitmsn.models.hf import ViTMSNForImageClassification

    whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("log_every", log_every)):
        if not (whole(value) and value >= 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    for name, value in (("seed", seed), ("num_workers", num_workers), ("checkpoint_every_steps",
                                                                        checkpoint_every_steps)):
        if not (whole(value) and value >= 0):
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if max_steps is not None and not (whole(max_steps) and max_steps >= 0):
        raise ValueError(f"max_steps must be a whole number >= 0 (0 or unset: all epochs), got {max_steps!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
    finite = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not (finite(lr) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr}")
    if not (finite(min_lr) and min_lr >= 0):
        raise ValueError(f"min_lr must be a number >= 0, got {min_lr}")
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}, the end of the cosine) is above lr ({lr}): pass a lower --min-lr "
                         "(min_lr=...) as well")
    if not (finite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay}")
    if not (finite(warmup_epochs) and warmup_epochs >= 0):
        raise ValueError(f"warmup_epochs must be a number >= 0, got {warmup_epochs}")
    if clip_grad is not None and not (finite(clip_grad) and clip_grad >= 0):
        raise ValueError(f"clip_grad must be a number > 0 (0 or unset: off), got {clip_grad}")
    out = Path(out)
    settings = {
        "model": str(model), "data": str(data), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "min_lr": min_lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "layer_decay": layer_decay, "augment": augment,
        "crop_scale": list(crop_scale), "val_fraction": val_fraction, "val_data": val_data, "clip_grad": clip_grad,
        "bf16": bf16, "tf32": tf32, "seed": seed, "num_workers": num_workers, "max_steps": max_steps,
        "log_every": log_every, "checkpoint_every_steps": checkpoint_every_steps, "tensorboard": tensorboard, "data_root": data_root,
        "device": device,
    }  # fmt: skip
    state = _check_run_folder(out, settings, resume)
    dev = resolve_device(device)
    seed_everything(seed)

    # -- data and model
    splits = load_labelled_data(
        data, val_data=val_data, val_fraction=val_fraction, seed=seed, data_root=data_root
    )
    classes = splits.classes
    id2label = {i: c for i, c in enumerate(classes)}
    net = ViTMSNForImageClassification.from_pretrained(
        model, num_labels=len(classes), id2label=id2label, label2id={c: i for i, c in id2label.items()},
        ignore_mismatched_sizes=True,
    ).to(dev)  # fmt: skip
    processor = load_processor(model, net.config.image_size)
    b = batch_size
    if len(splits.train) < b:
        logger.warning(
            "only %d training images: batch size %d -> %d", len(splits.train), b, len(splits.train)
        )
        b = len(splits.train)
    transform = train_transform(
        processor, net.config.image_size, augment=augment, crop_scale=tuple(crop_scale),
        num_channels=net.config.num_channels,
    )  # fmt: skip
    train_ds = SeededTransform(splits.train, transform, seed=seed)
    sampler = GlobalBatchSampler(len(train_ds), b, seed=seed)
    cuda = dev.type == "cuda"
    loader = DataLoader(train_ds, batch_size=b, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=cuda, worker_init_fn=ignore_sigint if num_workers else None)  # fmt: skip
    val_loader = None
    if splits.val is not None:
        val_loader = DataLoader(_Mapped(splits.val, ProcessorTransform(processor)), batch_size=b,
                                num_workers=num_workers, pin_memory=cuda)  # fmt: skip
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = steps_per_epoch * epochs
    stop_at = min(total_steps, max_steps) if max_steps else total_steps
    lr_schedule = Schedule("warmup_cosine", total_steps, 0.0, min_lr, ref=lr,
                           warmup_steps=round(warmup_epochs * steps_per_epoch))  # fmt: skip
    optimizer = adamw(finetune_param_groups(net, weight_decay, layer_decay), lr, dev)
    amp = bf16_autocast(dev, bf16)

    # -- state: what a checkpoint holds besides weights and optimizer
    step, best_acc, best_loss, best_epoch = 0, -1.0, float("inf"), 0
    saved_step = -1  # the step latest.pt holds
    history: list[dict[str, Any]] = []
    running = [0.0, 0, 0]  # this epoch's training loss sum, correct predictions, images
    if state is not None:  # resume
        load_weights_into(net, state["model"], out / "checkpoints" / LATEST, "its run's finetune.json says which "
                          "model it fine-tunes")
        load_optimizer_state(optimizer, state["optimizer"])
        step, best_epoch = int(state["step"]), int(state["best_epoch"])
        best_acc, best_loss = float(state["best_acc"]), float(state["best_loss"])
        history, running = list(state["history"]), list(state["running"])
        set_rng_state(state["rng"], dev)
        saved_step = step
        logger.info("resumed %s at step %d", out, step)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / SETTINGS_FILE, settings)
    log = MetricLogger(out, tensorboard=tensorboard)
    log.truncate_after(step)
    meta = {"model": str(model), "data": str(data), "classes": classes, "train_images": len(splits.train),
            "val_images": len(splits.val) if splits.val is not None else 0, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps}  # fmt: skip

    unread: list[tuple[int, int, torch.Tensor]] = []  # (step, images, (3,) loss, grad norm, correct) on the device

    def read_steps() -> tuple[float, float]:
        """Add the unread steps to the running metrics, in order; return the last one's loss and grad norm.
        A non-finite loss stops the run here (its update was skipped, see :func:`skip_if_non_finite`)."""
        nonlocal unread
        rows, steps, unread = torch.stack([v for _, _, v in unread]).tolist(), unread, []
        for (at, n, _), (loss_value, grad_norm, correct) in zip(steps, rows, strict=True):
            if not math.isfinite(loss_value) or (clip_grad and not math.isfinite(grad_norm)):
                raise NonFiniteLossError(non_finite_message(loss_value, at))
            running[0] += loss_value * n
            running[1] += int(correct)
            running[2] += n
        return rows[-1][0], rows[-1][1]

    def checkpoint() -> None:
        nonlocal saved_step
        if unread:  # the running metrics it saves include every step (a signal may come after a step's reads)
            read_steps()
        saved_step = step
        save_checkpoint(
            {"step": step, "model": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(dev),
             "best_acc": best_acc, "best_loss": best_loss, "best_epoch": best_epoch, "history": history, "running": running,
             "settings": settings},
            out / "checkpoints" / LATEST,
        )  # fmt: skip

    def write_metrics() -> None:
        _write_json(out / "metrics.json", {**meta, "step": step, "finished": step >= total_steps,
                                           "best_epoch": best_epoch or None,
                                           "best_val_accuracy": best_acc if best_acc >= 0 else None,
                                           "epochs": history})  # fmt: skip

    net.train()
    bar = tqdm(
        total=stop_at, initial=step, disable=not progress, desc="finetune", unit="step", dynamic_ncols=True
    )
    t0, seen = time.perf_counter(), 0
    # SIGINT / SIGTERM: finish the step, save latest.pt as a mid-epoch checkpoint, raise TrainingInterrupted
    with StopRequests(announce=True) as stop, tf32_matmuls(dev, tf32):
        try:
            while step < stop_at:
                epoch, start_batch = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch, start_batch)
                train_ds.set_epoch(epoch)
                for pixels, labels in stop.batches(loader):
                    cur_lr = lr_schedule(step + 1)
                    set_scaled_lr(optimizer, cur_lr)
                    pixels = pixels.to(dev, non_blocking=True)  # (b, C, H, W)
                    labels = labels.to(dev, non_blocking=True)  # (b,)
                    with amp:
                        logits = net(pixel_values=pixels).logits  # (b, num_labels)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad) if clip_grad else None
                    # (3,) loss, grad norm (nan without clipping), correct predictions: they stay on the device
                    # until the host reads them (read_steps), on logging steps (the end of an epoch is one) and
                    # before a checkpoint; a GPU is not waited for between
                    step_numbers = torch.stack([
                        loss.detach().float(), norm.float() if norm is not None else loss.new_full((), float("nan")),
                        (logits.detach().argmax(-1) == labels).sum().float()])  # fmt: skip
                    # a non-finite loss (or, when clipped, gradient norm) changes no weight
                    skip_if_non_finite(optimizer, step_numbers[: 1 if norm is None else 2], step)
                    optimizer.step()
                    unread.append((step, len(labels), step_numbers))
                    step += 1
                    seen += len(labels)
                    bar.update(1)
                    end_of_epoch = step % steps_per_epoch == 0
                    log_now = step % log_every == 0 or end_of_epoch or step == stop_at
                    if log_now:  # (a checkpoint reads the steps too)
                        loss_value, grad_norm = read_steps()
                        train_loss, train_acc = running[0] / running[2], 100.0 * running[1] / running[2]
                        metrics: dict[str, Any] = {
                            "epoch": epoch, "loss": loss_value, "train_loss": train_loss, "train_acc": train_acc,
                            "lr": cur_lr, "grad_norm": grad_norm,
                            "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                            "val_loss": None, "val_acc": None,  # filled at the end of an epoch (empty cells otherwise)
                        }  # fmt: skip
                        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.1f}", lr=f"{cur_lr:.2e}")

                    # -- end of an epoch: evaluate, keep the best model (accuracy, then loss, decides)
                    if end_of_epoch:
                        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": cur_lr,
                                               "train_loss": train_loss, "train_accuracy": train_acc}  # fmt: skip
                        better = val_loader is None  # without validation: the latest epoch
                        if val_loader is not None:
                            val = evaluate(net, val_loader, dev, bf16=bf16)
                            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                            metrics.update(val_loss=val["loss"], val_acc=val["accuracy"])
                            better = (val["accuracy"], -val["loss"]) > (best_acc, -best_loss)
                            if better:
                                best_acc, best_loss = val["accuracy"], val["loss"]
                        if better:
                            best_epoch = epoch + 1
                            net.save_pretrained(out / "best")
                            processor.save_pretrained(out / "best")
                        history.append(row)
                        running = [0.0, 0, 0]
                        summary = f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.1f}%"
                        if val_loader is not None:
                            summary += f", val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.1f}%"
                        if progress:  # above the bar, on stderr (stdout may carry JSON)
                            bar.write(summary, file=sys.stderr)
                        else:
                            logger.info(summary)
                    if log_now:
                        log.log(step, metrics)
                    if end_of_epoch:
                        write_metrics()
                        checkpoint()
                    elif step == stop_at or (checkpoint_every_steps and step % checkpoint_every_steps == 0):
                        checkpoint()
                    if step >= stop_at or stop.signum is not None:
                        break
                if stop.signum is not None and step < stop_at:
                    if step != saved_step:
                        checkpoint()  # as a mid-epoch checkpoint: --resume continues exactly from here
                    write_metrics()
                    bar.close()
                    raise TrainingInterrupted(
                        f"stopped at step {step}; saved {out / 'checkpoints' / LATEST}; continue with: "
                        f"vitmsn finetune --out {out} --resume", stop.signum)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}; " + non_finite_advice(
                out / "checkpoints" / LATEST, "a lower learning rate (--resume --lr ...)",
                "a lower learning rate (the same command with --lr ..., without --resume)")) from None
        finally:
            bar.close()
            log.close()
    write_metrics()
    if step >= total_steps:
        logger.info(
            "fine-tuning finished after %d steps; best model (epoch %d) in %s", step, best_epoch, out / "best"
        )
    else:
        # (the command line says how to continue; a library caller sees metrics.json's "finished": false)
        logger.debug("stopped at step %d of %d; continue with resume=True", step, total_steps)
    return out
