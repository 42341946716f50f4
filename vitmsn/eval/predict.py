"""Using a model on images: top-k predictions, feature files, and CLS attention maps.

- :func:`predict`: a fine-tuned classifier directory (``vitmsn finetune`` writes one to ``RUN/best``, or any
  transformers ``ViT[MSN]ForImageClassification``) -> the top-k labels of each image with probabilities;
- :func:`extract`: frozen CLS features of any ViT / ViT-MSN checkpoint for an image folder or Fashion-MNIST,
  written to ``.npz`` (features, labels, paths, classes) with :func:`vitmsn.eval.features.save_features`;
- :func:`attention_map`: the CLS token's attention to the patches in one layer, one panel per head and their
  mean, overlaid on the image and saved as a PNG (:func:`cls_attention` gives the maps themselves).

Images are read with :func:`vitmsn.data.folder.load_image` (a bad file raises ``ImageLoadError`` naming it) and
preprocessed by the model directory's own image processor (``preprocessor_config.json``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitmsn.distributed import bf16_autocast, resolve_device
from vitmsn.eval.features import (
    POOLINGS,
    check_features_out,
    extract_features,
    load_backbone,
    save_features,
    warn_default_processor,
)

logger = logging.getLogger("vitmsn")

__all__ = [
    "attention_map",
    "cls_attention",
    "extract",
    "labelled_or_unlabelled_folder",
    "load_classifier",
    "load_processor",
    "predict",
]


# --------------------------------------------------------------------------------------------- loading


def load_processor(path_or_id: str | os.PathLike, image_size: int | Sequence[int] | None = None) -> Any:
    """The checkpoint's image processor (with the backend a user of the folder gets: the one it was saved
    with, else transformers 5's torch one); without a ``preprocessor_config.json``, a default ViT processor
    (mean = std = 0.5) at ``image_size``, as :func:`vitmsn.eval.features.load_backbone` makes it."""
    from vitmsn.processing import AutoImageProcessor, ViTImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path_or_id)
    except (FileNotFoundError, OSError):
        if image_size is None:
            raise
        size = (
            {"height": image_size, "width": image_size}
            if isinstance(image_size, int)
            else {"height": image_size[0], "width": image_size[1]}
        )
        processor = ViTImageProcessor(size=size)
        warn_default_processor(path_or_id, processor)
        return processor


def load_classifier(
    model: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> tuple[torch.nn.Module, Any]:
    """A ``ViT[MSN]ForImageClassification`` directory or Hub id -> (model in eval mode, image processor).

    Raises:
        ValueError: the checkpoint is a bare encoder (it has no trained classifier).
    """
    from vitmsn.checkpoints import load_config_dict
    from vitmsn.models.hf import MODEL_CLASSES, architecture_of

    data = load_config_dict(model)
    arch = architecture_of(data)
    if data.get("model_type") not in ("vit", "vit_msn"):
        raise ValueError(f"{model} is a {data.get('model_type', 'model without model_type')!r} model; vitmsn reads "
                         "'vit' and 'vit_msn' models")
    if arch is None or "ForImageClassification" not in arch or arch not in MODEL_CLASSES:
        raise ValueError(
            f"{model} is a {arch or data.get('model_type', 'model')} without a trained classifier: fine-tune it "
            "first (vitmsn finetune), or use its features (vitmsn extract / vitmsn lowshot)"
        )
    net = MODEL_CLASSES[arch].from_pretrained(model).to(resolve_device(device)).eval()
    return net, load_processor(model, net.config.image_size)


def _as_classifier(
    model: str | os.PathLike | torch.nn.Module, processor: Any, device: str | torch.device | None
) -> tuple[torch.nn.Module, Any]:
    if isinstance(model, torch.nn.Module):
        if processor is None:
            raise ValueError("pass the image processor with a model object (processor=...)")
        if not type(model).__name__.endswith("ForImageClassification"):
            raise ValueError(f"{type(model).__name__} has no trained classifier: fine-tune it first (vitmsn "
                             "finetune), or use its features (vitmsn extract / vitmsn lowshot)")
        return model.eval(), processor
    net, proc = load_classifier(model, device=device)
    return net, processor or proc


# --------------------------------------------------------------------------------------------- predict


@torch.inference_mode()
def predict(
    model: str | os.PathLike | torch.nn.Module,
    images: Sequence[str | os.PathLike],
    top_k: int = 5,
    *,
    processor: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    bf16: bool = False,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """Top-k labels of each image.

    Args:
        model: a classifier directory / Hub id, or a loaded classifier (then also pass ``processor``).
        images: image file paths (or one path).
        top_k: labels per image (at most the number of classes).
        skip_bad: a file that cannot be read gives ``{"path": ..., "error": "..."}`` instead of raising; if
            no file at all can be read, ``ImageLoadError`` is raised all the same (there is nothing to report).

    Returns:
        One dict per image, in order: ``{"path": str, "predictions": [{"label": str, "index": int,
        "probability": float}, ...]}`` sorted by decreasing probability.

    Raises:
        ImageLoadError: (a ValueError) a file is missing, empty or not a decodable image; the message names it.
            With ``skip_bad``: no file could be read.
    """
    from vitmsn.data.folder import ImageLoadError, load_image

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    _check_batch_size(batch_size)
    net, proc = _as_classifier(model, processor, device)
    dev = next(net.parameters()).device
    id2label = net.config.id2label
    k = min(top_k, net.config.num_labels)
    results: list[dict[str, Any]] = []
    paths = [str(images)] if isinstance(images, str | os.PathLike) else [str(p) for p in images]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        loaded: list[tuple[int, Image.Image]] = []
        entries: list[dict[str, Any]] = []
        for i, path in enumerate(chunk):
            entries.append({"path": path})
            try:
                loaded.append((i, load_image(path)))
            except ImageLoadError as err:
                if not skip_bad:
                    raise
                entries[i]["error"] = err.reason
        if loaded:
            pixels = proc([im for _, im in loaded], return_tensors="pt")["pixel_values"].to(
                dev
            )  # (b, 3, H, W)
            with bf16_autocast(dev, bf16):
                logits = net(pixel_values=pixels).logits  # (b, num_labels)
            probs = logits.float().softmax(-1)
            top_p, top_i = probs.topk(k, dim=-1)  # (b, k) each
            for row, (i, _) in enumerate(loaded):
                entries[i]["predictions"] = [
                    {"label": id2label.get(int(j), str(int(j))), "index": int(j), "probability": float(p)}
                    for p, j in zip(top_p[row].tolist(), top_i[row].tolist(), strict=True)
                ]
        results.extend(entries)
    _check_some_readable(results)
    return results


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")


def _check_some_readable(results: list[dict[str, Any]]) -> None:
    """With skip_bad, a run where every image failed must not look like a success (exit status 0)."""
    from vitmsn.data.folder import ImageLoadError

    failed = [r for r in results if "error" in r]
    if results and len(failed) == len(results):
        first = "; ".join(f"{r['path']} ({r['error']})" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise ImageLoadError(f"none of the {len(failed)} image(s) could be read: {first}{more}")


# --------------------------------------------------------------------------------------------- extract


def labelled_or_unlabelled_folder(folder: str | os.PathLike) -> Any:
    """An :class:`~vitmsn.data.folder.ImageFolderDataset`: labelled by class sub-folder when the images are in
    sub-folders, else unlabelled (label -1). (:func:`extract_features` leaves its unreadable files out, in
    place, so that ``.paths`` stays aligned with the rows.)"""
    from vitmsn.data.folder import ImageFolderDataset

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder} is neither 'fashion-mnist' nor a directory")
    has_subfolders = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    return ImageFolderDataset(root, labelled=has_subfolders)


def _default_folder_split(folder: Path) -> str | None:
    """``"train"`` for a folder laid out as ``vitmsn lowshot`` and ``vitmsn finetune`` read it (``train/`` beside
    ``val/`` or ``test/``, class sub-folders in each), with a log line; else None (the folder itself). Without
    this, the split names would become the class labels."""
    from vitmsn.data.folder import held_out_splits

    held_out = held_out_splits(folder)
    if not held_out:
        return None
    other = held_out[0]
    logger.info("%s holds train/ and %s/ folders: extracting train/ (as finetune trains on it; pass --split %s "
                "for the other)", folder, other, other)  # fmt: skip
    return "train"


def extract(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pool: str = "cls",
    batch_size: int = 256,
    split: str | None = None,
    device: str | torch.device | None = None,
    bf16: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    data_root: str | None = None,
) -> Path:
    """Frozen CLS features of ``model`` for every image of ``data``, written to an ``.npz``.

    Args:
        model: any ViT / ViT-MSN checkpoint (heads are dropped).
        data: ``"fashion-mnist"`` (``split`` "train" (default) or "test"; ``data_root`` = where its files are),
            or an image folder (``split`` = a sub-folder of it to use instead; for a folder with ``train/`` and
            ``val/`` (or ``test/``) sub-folders the default is ``train``); images in class sub-folders get their
            class as label, loose images label -1.
        pool: ``"cls"`` (after the final LayerNorm) or ``"cls_prenorm"`` (before it).

    Returns:
        The ``.npz`` path, holding ``features`` (N, D) float32, ``labels`` (N,) int64, ``paths`` (N,) and
        ``classes`` (the class names labels index; empty for loose images, whose labels are -1).
    """
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
    _check_batch_size(batch_size)
    check_features_out(out)  # a bad --out (a directory, a folder that cannot be written) fails now, not after
    if str(data) == "fashion-mnist":
        from vitmsn.data.fashion_mnist import CLASSES, FashionMNIST

        split = split or "train"
        if split not in ("train", "test"):
            raise ValueError(f"Fashion-MNIST has the splits 'train' and 'test', not {split!r}")
        dataset: Any = FashionMNIST(split, root=data_root)
        paths = [f"fashion-mnist/{split}/{i}" for i in range(len(dataset))]
        classes: list[str] | None = list(CLASSES)
    else:
        split = split or _default_folder_split(Path(data))
        dataset = labelled_or_unlabelled_folder(Path(data) / split if split else data)
        paths, classes = None, list(dataset.classes)  # [] for loose images (labels -1)
    dev = resolve_device(device)
    backbone, processor = load_backbone(model, device=dev)
    with bf16_autocast(dev, bf16):
        feats, labels = extract_features(
            backbone, dataset, processor, pool=pool, batch_size=batch_size, num_workers=num_workers,
            device=dev, progress=progress, desc="extract",
        )  # fmt: skip
    paths = paths or dataset.paths  # read after the extraction, which leaves out unreadable files
    return save_features(out, feats, labels, paths=paths, classes=classes)


# ------------------------------------------------------------------------------------------- attention


@torch.inference_mode()
def cls_attention(backbone: torch.nn.Module, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """The CLS token's attention to the patches, per head, on the patch grid.

    Args:
        backbone: a :class:`~vitmsn.models.vit.VisionTransformer` (or a model with ``forward_features``).
        pixel_values: one preprocessed image (1, C, H, W).
        layer: which block (negative counts from the last).

    Returns:
        (heads, gh, gw) float32: each head's softmax row of the CLS query, without the CLS column, so every map
        sums to at most 1.
    """
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f"pixel_values must be one image (1, C, H, W), got {tuple(pixel_values.shape)}")
    vit = getattr(backbone, "vit", backbone)
    num_layers = len(vit.blocks)
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer must be in [{-num_layers}, {num_layers - 1}], got {layer}")
    enc = vit.forward_features(pixel_values, output_attentions=True, interpolate_pos_encoding=True)
    attn = enc.attentions[layer]  # (1, heads, 1 + P, 1 + P)
    ph, pw = vit.patch_size
    gh, gw = pixel_values.shape[2] // ph, pixel_values.shape[3] // pw
    return attn[0, :, 0, 1:].float().reshape(-1, gh, gw).cpu()  # (heads, gh, gw)


def attention_map(
    model: str | os.PathLike,
    image: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    layer: int = -1,
    device: str | torch.device | None = None,
    alpha: float = 0.6,
) -> Path:
    """PNG of the CLS attention of one layer (default: the last), one panel per head and one of their mean,
    each upsampled to the image and overlaid on it (colours scaled per panel; titles give each map's peak)."""
    from matplotlib.figure import Figure

    from vitmsn.checkpoints import atomic_write
    from vitmsn.data.folder import load_image

    out_png = _check_png_out(image, out_png)
    backbone, processor = load_backbone(model, device=resolve_device(device))
    picture = load_image(image)
    pixels = processor(picture, return_tensors="pt")["pixel_values"].to(
        backbone.pos_embed.device
    )  # (1, 3, H, W)
    maps = cls_attention(backbone, pixels, layer)  # (heads, gh, gw)
    H, W = pixels.shape[2:]
    shown = np.asarray(picture.convert("RGB").resize((W, H), Image.Resampling.BICUBIC))  # (H, W, 3)
    panels = torch.cat([maps.mean(0, keepdim=True), maps])  # (1 + heads, gh, gw)
    up = F.interpolate(panels[:, None], size=(H, W), mode="bilinear", align_corners=False)[
        :, 0
    ]  # (1+heads, H, W)
    titles = ["mean of heads"] + [f"head {h}" for h in range(maps.shape[0])]

    n = len(titles) + 1  # + the image itself
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows + 0.4), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    axes[0].imshow(shown)
    axes[0].set_title(Path(image).name, fontsize=9)
    for ax, title, heat, raw in zip(axes[1:], titles, up, panels, strict=False):
        ax.imshow(shown)
        ax.imshow(heat.numpy(), cmap="inferno", alpha=alpha)
        ax.set_title(f"{title} (max {raw.max():.2f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    num_layers = len(backbone.blocks)
    fig.suptitle(f"CLS attention to patches, layer {layer % num_layers + 1} of {num_layers}", fontsize=10)
    fig.tight_layout()
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))


def _check_png_out(image: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Refuse, before any work, an output that would replace the input image, is a directory, or is not named
    .png (the figure is always a PNG; a .jpg holding PNG bytes would mislead every viewer)."""
    out = Path(out_png)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory: give the PNG file to write")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the attention map is a PNG image, so the file name must end in .png")
    # by name ("d/../x.png" with no d yet: the write would create d, then replace x.png) or by file (links)
    same = os.path.abspath(out) == os.path.abspath(image)
    if same or (out.exists() and Path(image).exists() and os.path.samefile(out, image)):
        raise ValueError(f"--out {out} is the input image itself: it would be overwritten; choose another file")
    return out
