"""MSN multi-view data augmentation (torchvision.transforms.v2).

One image becomes ``1 + rand_views + focal_views`` independently augmented views, in this order::

    views[0]                              target view          (rand_size x rand_size)
    views[1 : 1 + rand_views]             random anchor views  (rand_size x rand_size)
    views[1 + rand_views :]               focal anchor views   (focal_size x focal_size)

As in the original code, the target is simply one more "random" view: it is drawn from the
same distribution as the random anchors (``make_transforms(rand_views=rand_views + 1)``; the
training loop feeds ``imgs[0]`` to the target encoder and ``imgs[1:]`` to the anchor encoder).

Per view, in order (same recipe for random and focal views, only size and crop scale differ):

1. ``RandomResizedCrop(size, scale)`` - random views scale (0.3, 1.0), focal views (0.05, 0.3);
2. ``RandomHorizontalFlip(p=0.5)``;
3. colour jitter ``(0.8s, 0.8s, 0.8s, 0.2s)`` with p=0.8, strength ``s`` (0.5 in the paper's
   config; 1.0 is the function default in the original code); then ``RandomGrayscale(p=0.2)``;
4. Gaussian blur with p=0.5, sigma uniform in [0.1, 2.0] pixels - applied to focal views too;
5. to float in [0, 1], ``Normalize(mean, std)`` (ImageNet statistics by default).

There is no solarisation in MSN.  The original blurs with ``PIL.ImageFilter.GaussianBlur(radius)``
(no explicit kernel size); here ``v2.GaussianBlur`` needs one, so the kernel is chosen as
``2 * ceil(3 * sigma_max) + 1`` (13 for sigma 2.0), clamped to the largest odd size not
exceeding the view.  For small images (``rand_size < 224``) the default sigma range is scaled by
``rand_size / 224`` so the blur covers the same fraction of the image (28 px: sigma in
[0.0125, 0.25]); set ``blur_sigma`` explicitly to override.

Grayscale data (``num_channels=1``): images are converted to mode ``"L"``, colour jitter only
changes brightness and contrast (saturation and hue are undefined for one channel) and random
grayscale is left out.  With ``num_channels=3`` a grayscale input (mode ``"L"``, or RGB with three
equal channels) is augmented as one channel and replicated to RGB before normalisation, which
has the same distribution (saturation, hue and grayscale do nothing to gray pixels) and works on
a third of the pixels.

The chain is made of v2 transform objects (``MSNViews.compose()`` returns it as a ``v2.Compose``)
but is run through their public ``make_params``/``transform`` methods on plain tensors, which
avoids v2's per-call input flattening, a fixed cost per call that dominates for small views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitmsn.config import check_int

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MSNViews",
    "ViewConfig",
    "blur_kernel_size",
    "collate_views",
    "split_views",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Image size the paper's blur sigma range (pixels) refers to.
_REFERENCE_SIZE = 224
_DEFAULT_SIGMA = (0.1, 2.0)


@dataclass
class ViewConfig:
    """Augmentation settings; defaults are the paper's (``configs/pretrain/msn_vits16.yaml``).

    Attributes:
        rand_size: side of the target and random anchor views.
        focal_size: side of the focal anchor views.
        rand_views: number of random anchor views (the target view comes in addition).
        focal_views: number of focal anchor views.
        rand_crop_scale / focal_crop_scale: area range of ``RandomResizedCrop``.
        crop_ratio: aspect-ratio range of ``RandomResizedCrop`` (torchvision default).
        hflip_prob: horizontal flip probability.
        color_jitter_strength: ``s``; jitter is (0.8s, 0.8s, 0.8s, 0.2s) for (brightness,
            contrast, saturation, hue).
        color_jitter_prob: probability of applying the jitter.
        grayscale_prob: probability of random grayscale (ignored when ``num_channels == 1``).
        blur_prob: Gaussian blur probability (all views, as in the original).
        blur_sigma: sigma range in pixels; ``None`` = (0.1, 2.0) scaled by
            ``min(1, rand_size / 224)``.
        blur_kernel_size: odd kernel size; ``None`` = ``2 * ceil(3 * sigma_max) + 1``; always
            clamped to the view size.
        mean / std: normalisation, one value per channel.
        num_channels: 3 (RGB) or 1 (grayscale).
    """

    rand_size: int = 224
    focal_size: int = 96
    rand_views: int = 1
    focal_views: int = 10
    rand_crop_scale: tuple[float, float] = (0.3, 1.0)
    focal_crop_scale: tuple[float, float] = (0.05, 0.3)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_prob: float = 0.5
    color_jitter_strength: float = 0.5
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] | None = None
    blur_kernel_size: int | None = None
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    num_channels: int = 3

    def __post_init__(self) -> None:
        for name, low in (("rand_size", 1), ("focal_size", 1), ("rand_views", 0), ("focal_views", 0)):
            check_int(getattr(self, name), name, low)
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {(lo, hi)}")
        for name in ("rand_crop_scale", "focal_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        for name in ("hflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.color_jitter_strength < 0:
            raise ValueError(f"color_jitter_strength must be >= 0, got {self.color_jitter_strength}")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {self.num_channels}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != self.num_channels or len(self.std) != self.num_channels:
            raise ValueError(
                f"mean/std need {self.num_channels} value(s) for num_channels={self.num_channels}, "
                f"got mean={self.mean}, std={self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.blur_sigma is not None:
            lo, hi = self.blur_sigma
            if not 0 < lo <= hi:
                raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if self.blur_kernel_size is not None and (
            self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0
        ):
            raise ValueError(f"blur_kernel_size must be a positive odd number, got {self.blur_kernel_size}")

    @property
    def num_views(self) -> int:
        """Total views per image: 1 target + ``rand_views`` + ``focal_views``."""
        return 1 + self.rand_views + self.focal_views

    @property
    def effective_blur_sigma(self) -> tuple[float, float]:
        """The sigma range actually used (see ``blur_sigma``)."""
        if self.blur_sigma is not None:
            return (float(self.blur_sigma[0]), float(self.blur_sigma[1]))
        r = min(1.0, self.rand_size / _REFERENCE_SIZE)
        return (_DEFAULT_SIGMA[0] * r, _DEFAULT_SIGMA[1] * r)

    @classmethod
    def fashion_mnist(cls, **overrides: Any) -> ViewConfig:
        """A preset for 28x28 grayscale Fashion-MNIST: 28 px target/random views, 12 px focal views,
        one channel normalised with the training-set statistics (0.2860, 0.3530).

        Use ``num_channels=3, mean=(0.286,) * 3, std=(0.353,) * 3`` to feed 3-channel models.
        """
        base: dict[str, Any] = dict(
            rand_size=28, focal_size=12, num_channels=1, mean=(0.2860,), std=(0.3530,)
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> ViewConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


def blur_kernel_size(sigma_max: float, image_size: int, kernel_size: int | None = None) -> int:
    """Odd Gaussian kernel size: ``kernel_size`` or ``2 * ceil(3 * sigma_max) + 1``, at most ``image_size``."""
    k = kernel_size if kernel_size is not None else 2 * math.ceil(3 * sigma_max) + 1
    limit = image_size if image_size % 2 == 1 else image_size - 1
    return max(1, min(k, limit))


_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"})


class _ViewPipeline:
    """One view's augmentation chain, run with the v2 transforms' own ``make_params``/``transform``.

    Equivalent to ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip, RandomApply([ColorJitter]),
    RandomGrayscale, RandomApply([GaussianBlur]), ToDtype, Normalize])`` (see :meth:`compose`),
    but calling the transforms' public ``make_params`` and ``transform`` directly on a plain
    tensor skips v2's per-call input flattening, which halves the cost on small images.
    """

    def __init__(self, cfg: ViewConfig, size: int, scale: tuple[float, float], channels: int) -> None:
        s = cfg.color_jitter_strength
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=cfg.crop_ratio, antialias=True)
        self.hflip_prob = cfg.hflip_prob
        self.jitter: v2.ColorJitter | None = None
        if s > 0 and cfg.color_jitter_prob > 0:
            if channels == 3:
                self.jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s))
            else:  # saturation and hue do not exist for one channel
                self.jitter = v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s)
        self.jitter_prob = cfg.color_jitter_prob
        self.grayscale_prob = cfg.grayscale_prob if channels == 3 else 0.0
        self.blur: v2.GaussianBlur | None = None
        if cfg.blur_prob > 0:
            sigma = cfg.effective_blur_sigma
            k = blur_kernel_size(sigma[1], size, cfg.blur_kernel_size)
            if k > 1:
                self.blur = v2.GaussianBlur(k, sigma=sigma)
        self.blur_prob = cfg.blur_prob

    @staticmethod
    def _coin(p: float) -> bool:
        return p > 0 and (p >= 1 or torch.rand(1).item() < p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(C, H, W)`` -> augmented float ``(C, size, size)`` in [0, 1] (not normalised)."""
        x = self.crop.transform(x, self.crop.make_params([x]))
        if self._coin(self.hflip_prob):
            x = F.horizontal_flip(x)
        if self.jitter is not None and self._coin(self.jitter_prob):
            x = self.jitter.transform(x, self.jitter.make_params([x]))
        if self._coin(self.grayscale_prob):
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if self.blur is not None and self._coin(self.blur_prob):
            x = self.blur.transform(x, self.blur.make_params([x]))
        return F.to_dtype(x, torch.float32, scale=True)

    def compose(self, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
        """The same chain as a standard ``v2.Compose`` (for inspection or reuse)."""
        ops: list[Any] = [v2.ToImage(), self.crop, v2.RandomHorizontalFlip(self.hflip_prob)]
        if self.jitter is not None:
            ops.append(v2.RandomApply([self.jitter], p=self.jitter_prob))
        if self.grayscale_prob > 0:
            ops.append(v2.RandomGrayscale(self.grayscale_prob))
        if self.blur is not None:
            ops.append(v2.RandomApply([self.blur], p=self.blur_prob))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        return v2.Compose(ops)


class MSNViews:
    """Callable: image -> list of ``1 + rand_views + focal_views`` normalised float tensors.

    Order: ``[target, rand_anchor_1 .. rand_anchor_R, focal_anchor_1 .. focal_anchor_F]``;
    the target and random anchors are ``(C, rand_size, rand_size)``, focal anchors
    ``(C, focal_size, focal_size)``, ``C = cfg.num_channels``, dtype float32.  Every view is an
    independent draw (its own crop, flip, jitter, blur) from torch's global RNG, so
    ``torch.manual_seed`` makes the output reproducible.

    Accepts a PIL image (any mode) or a ``(C, H, W)`` / ``(H, W)`` tensor (uint8, or float in
    [0, 1]).  A grayscale image given to a 3-channel config (e.g. Fashion-MNIST for an RGB
    model) is augmented as one channel and replicated to 3 channels before normalisation:
    saturation, hue and random grayscale leave gray pixels unchanged, so this has the same
    distribution as augmenting the replicated RGB image, at a third of the cost.

    Args:
        cfg: the settings (paper defaults if ``None``).
        single_thread: run each call with ``torch.set_num_threads(1)`` and then set the count back
            (default off). Per-image ops on small tensors gain little from intra-op threads, and the
            calls change the whole process: ``torch.set_num_threads``, even with torch's own count,
            switches MKL's dynamic thread adjustment off, after which this torch runs SDPA on short
            sequences markedly slower. With views made in the training process (``view_maker=workers``,
            ``num_workers=0``) the option made the views faster (by 7 % and 22 % in two runs, within a
            wide spread) and the training step after them slower (``bench/threads.py``). DataLoader
            workers already use one thread.
    """

    def __init__(self, cfg: ViewConfig | None = None, single_thread: bool = False) -> None:
        self.cfg = cfg if cfg is not None else ViewConfig()
        self.single_thread = single_thread
        c = self.cfg
        self.rand_transform = _ViewPipeline(c, c.rand_size, c.rand_crop_scale, c.num_channels)
        self.focal_transform = _ViewPipeline(c, c.focal_size, c.focal_crop_scale, c.num_channels)
        self._gray_rand = _ViewPipeline(c, c.rand_size, c.rand_crop_scale, 1)
        self._gray_focal = _ViewPipeline(c, c.focal_size, c.focal_crop_scale, 1)
        self._mean = torch.tensor(c.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(c.std, dtype=torch.float32).view(-1, 1, 1)

    def _to_tensor(self, img: Image.Image | torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Input -> ``(C, H, W)`` tensor with C in {1, 3}, and whether it is grayscale."""
        if isinstance(img, Image.Image):
            if img.mode in _GRAY_MODES:
                img = img.convert("L")
            elif img.mode != "RGB":
                img = img.convert("RGB")
            t = F.pil_to_tensor(img)
        elif isinstance(img, torch.Tensor):
            t = img if img.ndim == 3 else img.unsqueeze(0)
            if t.ndim != 3 or t.shape[0] not in (1, 3):
                raise ValueError(f"expected a (1|3, H, W) or (H, W) tensor, got shape {tuple(img.shape)}")
            t = t.as_subclass(torch.Tensor)
        else:
            raise TypeError(f"expected a PIL image or a tensor, got {type(img).__name__}")
        if t.shape[0] == 3 and torch.equal(t[0], t[1]) and torch.equal(t[0], t[2]):
            t = t[:1]
        if t.shape[0] == 3 and self.cfg.num_channels == 1:
            t = F.rgb_to_grayscale(t)
        return t, t.shape[0] == 1

    def __call__(self, img: Image.Image | torch.Tensor) -> list[torch.Tensor]:
        threads = torch.get_num_threads()
        if not self.single_thread or threads == 1:
            return self._views(img)
        torch.set_num_threads(1)
        try:
            return self._views(img)
        finally:
            torch.set_num_threads(threads)

    def _views(self, img: Image.Image | torch.Tensor) -> list[torch.Tensor]:
        x, gray = self._to_tensor(img)
        rand_t, focal_t = (
            (self._gray_rand, self._gray_focal) if gray else (self.rand_transform, self.focal_transform)
        )
        views = [rand_t(x) for _ in range(1 + self.cfg.rand_views)]
        views += [focal_t(x) for _ in range(self.cfg.focal_views)]
        c = self.cfg.num_channels
        return [
            (v.expand(c, -1, -1) if v.shape[0] != c else v).sub(self._mean).div_(self._std) for v in views
        ]

    def compose(self, focal: bool = False) -> v2.Compose:
        """The random (or focal) view chain as a plain ``v2.Compose`` for ``num_channels`` inputs."""
        t = self.focal_transform if focal else self.rand_transform
        return t.compose(self.cfg.mean, self.cfg.std)

    def split(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:func:`split_views` with this transform's ``rand_views``."""
        return split_views(views, self.cfg.rand_views)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"


def collate_views(
    batch: Sequence[tuple[Sequence[torch.Tensor], Any]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DataLoader ``collate_fn`` for ``(views, label)`` items.

    Returns:
        ``(views, labels)``: one ``(B, C, H, W)`` tensor per view position (same order as
        :class:`MSNViews`) and an int64 ``(B,)`` label tensor.
    """
    if not batch:
        raise ValueError("empty batch")
    n = len(batch[0][0])
    if any(len(views) != n for views, _ in batch):
        raise ValueError("all items in a batch must have the same number of views")
    views = [torch.stack([item[0][i] for item in batch]) for i in range(n)]
    labels = torch.as_tensor([int(label) for _, label in batch], dtype=torch.int64)
    return views, labels


def split_views(
    views: Sequence[torch.Tensor], rand_views: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Split collated views into the three groups the MSN loss uses.

    Args:
        views: output of :func:`collate_views` (``[target, rand..., focal...]``, each ``(B, C, H, W)``).
        rand_views: number of random anchor views ``R``.

    Returns:
        ``targets (B, C, H, W)``, ``rand_anchors (R*B, C, H, W)`` and ``focal_anchors
        (F*B, C, h, w)`` (``None`` if ``F == 0``).  Anchors are concatenated view-major
        (rows ``v*B .. v*B + B - 1`` are view ``v``), as the original multi-crop forward does.
    """
    if len(views) < 1 + rand_views:
        raise ValueError(
            f"need at least {1 + rand_views} views (target + {rand_views} random), got {len(views)}"
        )
    targets = views[0]
    b, c, h, w = targets.shape
    for group, name in ((views[: 1 + rand_views], "target/random"), (views[1 + rand_views :], "focal")):
        if len({tuple(v.shape) for v in group}) > 1:
            raise ValueError(
                f"the {name} views must all have the same shape, got {[tuple(v.shape) for v in group]}; "
                f"is rand_views={rand_views} right?"
            )
    rand = torch.cat(list(views[1 : 1 + rand_views])) if rand_views else targets.new_empty((0, c, h, w))
    focal_list = list(views[1 + rand_views :])
    focal = torch.cat(focal_list) if focal_list else None
    return targets, rand, focal
