"""Frozen features of a model for a set of images: what low-shot evaluation, k-NN and extraction use.

Two poolings, both the CLS token of the last block:
- ``"cls"``: after the final LayerNorm, as transformers' ``last_hidden_state[:, 0]`` (the default);
- ``"cls_prenorm"``: before it, as the original MSN evaluation (``forward_blocks`` with one block).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitmsn.models.vit import VisionTransformer

POOLINGS = ("cls", "cls_prenorm")


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
    try:
        processor = AutoImageProcessor.from_pretrained(path_or_id)
    except (FileNotFoundError, OSError):
        size = model.config.image_size
        processor = ViTImageProcessor(size={"height": size, "width": size} if isinstance(size, int) else size)
    return model, processor


class _Labelled(Dataset):
    """Images (PIL or arrays, with or without labels) -> (image, label) pairs; -1 where unknown."""

    def __init__(self, images: Dataset | Sequence):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = self.images[i]
        image, label = item if isinstance(item, tuple) else (item, -1)
        return image, int(label)


class _ProcessBatch:
    """A DataLoader's collate function: the processor on a whole batch of images (one call per batch, not
    per image; the same pixels), and the labels as a tensor."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*batch, strict=True)
        pixels = self.processor(list(images), return_tensors="pt")["pixel_values"]  # (B, C, H, W)
        return pixels, torch.tensor(labels, dtype=torch.int64)


@torch.inference_mode()
def extract_features(model: VisionTransformer, images: Dataset | Sequence, processor: Any, *,
                     pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device | None = None, progress: bool = True,
                     desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and labels (N,) int64 (-1 where unknown) of a dataset of (image, label)."""
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(_Labelled(images), batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        collate_fn=_ProcessBatch(processor))
    feats, labels = [], []
    for pixels, y in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        out = model.forward_features(pixels.to(device), normalize=pool == "cls", cls_only=True)  # (B, 1, D)
        feats.append(out.tokens[:, 0].float().cpu())
        labels.append(y)
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def save_features(path: str | os.PathLike, features: np.ndarray, labels: np.ndarray,
                  paths: Sequence[str] | None = None, classes: Sequence[str] | None = None) -> Path:
    """``.npz`` with features, labels, and (when known) image paths and class names."""
    from vitmsn.checkpoints import atomic_write

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {"features": features, "labels": labels}
    if paths is not None:
        arrays["paths"] = np.asarray(list(paths), dtype=str)
    if classes is not None:
        arrays["classes"] = np.asarray(list(classes), dtype=str)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
