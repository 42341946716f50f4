"""Frozen features of a model for a set of images: what low-shot evaluation, k-NN and extraction use.

Two poolings, both the CLS token of the last block:
- ``"cls"``: after the final LayerNorm, as transformers' ``last_hidden_state[:, 0]`` (the default);
- ``"cls_prenorm"``: before it, as the original MSN evaluation (``forward_blocks`` with one block).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vitmsn.models.vit import VisionTransformer

POOLINGS = ("cls", "cls_prenorm")

logger = logging.getLogger("vitmsn")


def load_backbone(path_or_id: str | os.PathLike, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[VisionTransformer, Any]:
    """The encoder of any vitmsn/transformers ViT checkpoint (heads dropped) and its image processor."""
    from vitmsn.checkpoints import load_config_dict
    from vitmsn.models.hf import ViTModel, ViTMSNModel
    from vitmsn.processing import AutoImageProcessor, ViTImageProcessor

    model_type = load_config_dict(path_or_id).get("model_type")
    cls = ViTModel if model_type == "vit" else ViTMSNModel
    kwargs = {"add_pooling_layer": False} if cls is ViTModel else {}
    model = cls.from_pretrained(path_or_id, torch_dtype=dtype, **kwargs).to(device).eval()
    try:  # the folder's processor, as a user of the folder gets it
        processor = AutoImageProcessor.from_pretrained(path_or_id)
    except (FileNotFoundError, OSError):
        size = model.config.image_size
        processor = ViTImageProcessor(size={"height": size, "width": size} if isinstance(size, int) else size)
        warn_default_processor(path_or_id, processor)
    return model, processor


def warn_default_processor(path_or_id: str | os.PathLike, processor: Any) -> None:
    """One WARNING when a model folder has no ``preprocessor_config.json`` and a default processor stands in:
    the model may have been trained with other pixel statistics, which would silently change its features."""
    size = getattr(processor, "size", None)
    size = f"{size['height']}x{size['width']}" if isinstance(size, dict) and "height" in size else str(size)
    logger.warning(
        "%s has no preprocessor_config.json: using a default ViT image processor (resize to %s, "
        "mean %s, std %s); if the model was trained with other pixel statistics its features will be off: save "
        "its image processor into the folder", path_or_id, size, list(getattr(processor, "image_mean", [])),
        list(getattr(processor, "image_std", [])))  # fmt: skip


def check_writable_folder(folder: str | os.PathLike, label: str | None = None) -> Path:
    """Create ``folder`` (and its parents) and test-write a file in it, before minutes of work whose results
    go there; an error names the folder (``label``, default ``--out FOLDER``) instead of a bare ``[Errno 30]``
    at the end."""
    import tempfile

    folder = Path(folder)
    label = label or f"--out {folder}"
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{label} is a file, not a folder: choose a folder (new or existing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise type(e)(f"{label}: cannot write there ({e.strerror or e})") from None
    return folder


class _Labelled(Dataset):
    """Images (PIL or arrays, with or without labels) -> (image or None, label, position); -1 where unknown.

    The files of an image folder (or of a Subset of one) are read here without the folder's fallback to the
    next image: an unreadable one comes back as None (one warning), so that it is left out rather than
    counted twice, without decoding every file once more beforehand.
    """

    def __init__(self, images: Dataset | Sequence):
        from vitmsn.data.folder import ImageFolderDataset

        self.images = images
        base = getattr(images, "dataset", None)
        if isinstance(images, ImageFolderDataset):
            self.folder, self.rows = images, None
        elif isinstance(images, Subset) and isinstance(base, ImageFolderDataset):
            self.folder, self.rows = base, images.indices
        else:
            self.folder = self.rows = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        if self.folder is None:
            item = self.images[i]
            image, label = item if isinstance(item, tuple) else (item, -1)
            return image, int(label), i
        from vitmsn.data.folder import ImageLoadError, load_image

        path, label = self.folder.samples[i if self.rows is None else self.rows[i]]
        try:
            image = load_image(path, self.folder.mode)
        except ImageLoadError as err:
            logger.warning("leaving out unreadable image: %s", err)
            return None, int(label), i
        if self.folder.transform is not None:
            image = self.folder.transform(image)
        return image, int(label), i


class _ProcessBatch:
    """A DataLoader's collate function: the processor on a whole batch of images (one call per batch, not
    per image; the same pixels), the labels, and the positions of the images kept (unreadable ones left out)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, batch: list[tuple[Any, int, int]]) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        kept = [item for item in batch if item[0] is not None]
        if not kept:
            return None, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        images, labels, positions = zip(*kept, strict=True)
        pixels = self.processor(list(images), return_tensors="pt")["pixel_values"]  # (B, C, H, W)
        return pixels, torch.tensor(labels, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64)


@torch.inference_mode()
def extract_features(model: VisionTransformer, images: Dataset | Sequence, processor: Any, *,
                     pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device | None = None, progress: bool = True,
                     desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and labels (N,) int64 (-1 where unknown) of a dataset of (image, label).

    The unreadable files of an image folder (or of a Subset of one) are left out, one warning each, and
    removed from ``images`` in place, so that its ``.paths`` (and indices into it) line up with the rows:
    replacing them by the next image, as training does, would count that image twice.
    """
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    labelled = _Labelled(images)
    cuda = device.type == "cuda"
    loader = DataLoader(labelled, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        collate_fn=_ProcessBatch(processor), pin_memory=cuda)
    feats, labels, kept, on_device = [], [], [], []  # on_device: a GPU's features not yet copied to the host
    for pixels, y, positions in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        kept.append(positions)
        if pixels is None:
            continue
        out = model.forward_features(pixels.to(device, non_blocking=cuda), normalize=pool == "cls",
                                     cls_only=True)  # (B, 1, D)
        labels.append(y)
        (on_device if cuda else feats).append(out.tokens[:, 0].float())  # (B, D)
        if len(on_device) == 64:  # from a GPU, one copy (which waits for it) per 64 batches
            feats.append(torch.cat(on_device).cpu())
            on_device = []
    if on_device:
        feats.append(torch.cat(on_device).cpu())
    _leave_out_unread(labelled, set(torch.cat(kept).tolist()) if kept else set())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def _leave_out_unread(labelled: _Labelled, kept: set[int]) -> None:
    """Remove the positions not in ``kept`` from the folder (or Subset) ``labelled`` reads, in place."""
    dropped = [i for i in range(len(labelled)) if i not in kept]
    if not dropped or labelled.folder is None:
        return
    from vitmsn.data.folder import NoLoadableImageError

    if len(dropped) == len(labelled):
        raise NoLoadableImageError(labelled.folder.root, len(dropped))
    logger.warning("%s: left out %d unreadable image file(s)", labelled.folder.root, len(dropped))
    if labelled.rows is None:
        labelled.folder.drop(dropped)
    else:
        gone = set(dropped)
        labelled.images.indices = [r for j, r in enumerate(labelled.rows) if j not in gone]


def features_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_features` writes: ``.npz`` appended when missing (``feats.v2`` -> ``feats.v2.npz``;
    replacing the suffix would silently overwrite ``feats.npz``); a directory is refused."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a directory: give the .npz file to write")
    return path


def check_features_out(path: str | os.PathLike) -> Path:
    """:func:`features_path`, and its folder created and test-written: a bad ``--out`` (a directory, a
    read-only folder, a folder that is a file) fails before the features are computed, naming the path."""
    path = features_path(path)
    check_writable_folder(path.parent, f"--out {path}: its folder {path.parent}")
    return path


def save_features(path: str | os.PathLike, features: np.ndarray, labels: np.ndarray,
                  paths: Sequence[str] | None = None, classes: Sequence[str] | None = None) -> Path:
    """``.npz`` with features, labels, and (when known) image paths and class names; ``.npz`` is appended to a
    path without it (``feats.v2`` -> ``feats.v2.npz``: replacing the suffix would overwrite ``feats.npz``)."""
    from vitmsn.checkpoints import atomic_write

    path = features_path(path)
    arrays: dict[str, np.ndarray] = {"features": features, "labels": labels}
    if paths is not None:
        arrays["paths"] = np.asarray(list(paths), dtype=str)
    if classes is not None:
        arrays["classes"] = np.asarray(list(classes), dtype=str)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
