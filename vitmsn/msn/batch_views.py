"""MSN's views made for a whole batch at once, on the training device.

:class:`~vitmsn.msn.transforms.MSNViews` augments one image at a time in DataLoader workers, with
torchvision's transforms: it takes images of any size, but on a small machine the workers compete with
the model for the same cores (on 2 CPU cores, the ``fashion-mnist`` preset's views of a batch made one
image at a time take close to a whole training step; ``bench/parts.py``, rows ``views``). When every
image has the same size and the data set sits in memory as one uint8 array, :class:`BatchViews` draws the
same augmentations for a batch with a handful of tensor operations, on the CPU or the GPU, in about a
ninth of that time:

- **crop**: ``RandomResizedCrop``'s box distribution (10 tries of area and log-aspect-ratio, then the
  whole image), resampled with ``torchvision.ops.roi_align`` (``aligned=True``): bilinear, with
  ``ceil(box / output)`` samples averaged per output pixel when shrinking (torchvision antialiases
  with a triangle filter instead, so shrunk views differ slightly);
- **flip** with probability ``hflip_prob``;
- **colour jitter** with probability ``color_jitter_prob``: brightness, contrast, saturation and hue
  with torchvision's factor ranges and formulas, in a random order per image, as ``ColorJitter``;
- **grayscale** with probability ``grayscale_prob`` (3 channels only);
- **Gaussian blur** with probability ``blur_prob``, sigma uniform in the configured range, the kernel
  size and reflect padding of :class:`~vitmsn.msn.transforms.MSNViews`;
- normalisation.

Every random number comes from the ``torch.Generator`` passed in, so a step's views depend only on
how that generator was seeded (the training loop seeds it from (seed, step, rank): exact resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from vitmsn.distributed import to_device
from vitmsn.msn.transforms import ViewConfig, blur_kernel_size

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               g: torch.Generator, tries: int = 10) -> torch.Tensor:
    """``RandomResizedCrop.get_params`` for ``n`` images at once: (n, 4) boxes ``(x0, y0, w, h)`` in pixels.

    Each image takes the first of ``tries`` draws of (area, log aspect ratio) that fits; images with no
    fitting draw take the central crop of the largest allowed aspect ratio, as torchvision's fallback.
    """
    area = height * width
    target = area * _uniform(n * tries, *scale, g).view(n, tries)  # (n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), g).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, tries)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))  # (n,)
    ok = first >= 0
    pick = first.clamp(min=0)[:, None]
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]  # (n,)
    # torchvision's fallback: the whole image, narrowed to the ratio range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    # top-left corner uniform over the positions that fit (torch.randint(0, H - h + 1))
    y0 = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (height - h + 1))
    x0 = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (width - w + 1))
    y0 = torch.where(ok, y0, torch.full_like(y0, (height - fh) // 2))
    x0 = torch.where(ok, x0, torch.full_like(x0, (width - fw) // 2))
    return torch.stack([x0, y0, w, h], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float, (B, 4) boxes ``(x0, y0, w, h)`` -> (B, C, size, size): bilinear resampling,
    averaging several samples per output pixel when the box is larger than the output."""
    x0, y0, w, h = to_device(boxes.float(), images.device).unbind(1)
    rois = torch.stack([torch.arange(len(images), device=images.device, dtype=torch.float32),
                        x0, y0, x0 + w, y0 + h], dim=1)  # (B, 5)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# -- colour: torchvision's float formulas, one factor per image ((B,) tensors); factor 1 / shift 0 = identity


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma (the channel itself for one channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r = ratio.view(-1, 1, 1, 1).to(a.dtype)
    return (r * a + (1 - r) * b).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) through HSV, as torchvision."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)  # (B, H, W) each
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.view(-1, 1, 1).to(x.dtype), 1.0)
    # HSV -> RGB
    v = maxc
    i = torch.floor(hue * 6.0)
    f = hue * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                                      (v, p, q))], 1)  # (B, 6, 3, H, W)
    return table.gather(1, i[:, None, None].expand(-1, 1, 3, -1, -1)).squeeze(1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image Gaussian blur: (B, C, H, W), sigma (B,) in pixels (0 = unchanged), reflect padding."""
    B, C, H, W = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)  # (k,)
    s = to_device(sigma.to(x.dtype), x.device).view(B, 1)
    k = torch.exp(-0.5 * (t / s.clamp(min=1e-6)) ** 2)  # (B, k)
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).to(x.dtype).expand(B, -1)
    k = torch.where(s > 0, k, delta).repeat_interleave(C, 0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(B * C, 1, 1, kernel_size), groups=B * C)
    y = F.conv2d(y, k.view(B * C, 1, kernel_size, 1), groups=B * C)
    return y.view(B, C, H, W)


class BatchViews:
    """uint8 images (B, C, H, W) of one size -> MSN's views, as :class:`~vitmsn.msn.transforms.MSNViews`
    returns them collated: ``[target, rand_1 .. rand_R, focal_1 .. focal_F]``, each (B, C', s, s) float32
    normalised, ``C' = cfg.num_channels`` (one-channel images are replicated to three)."""

    def __init__(self, cfg: ViewConfig | None = None):
        self.cfg = cfg if cfg is not None else ViewConfig()

    def __call__(self, images: torch.Tensor, generator: torch.Generator, *, offset: int = 0,
                 total: int | None = None) -> list[torch.Tensor]:
        """Views of ``images``, rows ``offset .. offset + B`` of a global batch of ``total`` images.

        The random draws are made for all ``total`` images and sliced, so that processes that each hold
        a slice of a global batch, with generators seeded alike, make the views one process would make
        for the whole batch (``total`` defaults to the batch itself).
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8 or 0 in images.shape:
            raise ValueError(f"expected uint8 images (B, 1|3, H, W), got {images.dtype} of shape "
                             f"{tuple(images.shape)}")
        c = self.cfg
        x = images.float().div_(255)
        if x.shape[1] == 3 and c.num_channels == 1:
            x = _gray(x)
        rows = slice(offset, offset + len(x))
        total = len(x) if total is None else total
        if rows.stop > total:
            raise ValueError(f"rows {offset}..{rows.stop} do not fit in a global batch of {total}")
        draws = [(c.rand_size, c.rand_crop_scale)] * (1 + c.rand_views) + [(c.focal_size, c.focal_crop_scale)] * c.focal_views
        views = [self.view(x, size, scale, generator, rows, total) for size, scale in draws]
        mean = to_device(torch.tensor(c.mean), x.device).view(1, -1, 1, 1)
        std = to_device(torch.tensor(c.std), x.device).view(1, -1, 1, 1)
        if x.shape[1] == 1 and c.num_channels == 3 and len(set(c.mean)) == 1 and len(set(c.std)) == 1:
            # gray images, equal statistics: normalise one channel, then replicate (a view, no copy)
            return [((v - mean[:, :1]) / std[:, :1]).expand(-1, 3, -1, -1) for v in views]
        return [(v.expand(-1, c.num_channels, -1, -1) - mean) / std for v in views]

    def view(self, x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
             rows: slice | None = None, total: int | None = None) -> torch.Tensor:
        """One view of every image: (B, C, H, W) float in [0, 1] -> (B, C, size, size) in [0, 1]
        (random draws for ``total`` images, of which ``rows`` are these)."""
        c = self.cfg
        B, C, H, W = x.shape
        dev = x.device
        N = B if total is None else total
        rows = slice(0, B) if rows is None else rows

        def coin(p: float) -> torch.Tensor:  # (B,) bool on the device
            return to_device(torch.rand(N, generator=g)[rows] < p, dev)

        def uniform(lo: float, hi: float) -> torch.Tensor:  # (B,) float64 on the CPU
            return _uniform(N, lo, hi, g)[rows]

        v = resized_crops(x, crop_boxes(N, H, W, scale, c.crop_ratio, g)[rows], size)
        v = torch.where(coin(c.hflip_prob).view(B, 1, 1, 1), v.flip(-1), v)
        s = c.color_jitter_strength
        if s > 0 and c.color_jitter_prob > 0:
            apply = coin(c.color_jitter_prob).view(B, 1)
            bright, contrast, sat = (0.8 * s,) * 3
            hue = min(0.5, 0.2 * s)
            f = torch.stack([uniform(max(0.0, 1 - bright), 1 + bright), uniform(max(0.0, 1 - contrast), 1 + contrast),
                             uniform(max(0.0, 1 - sat), 1 + sat), uniform(-hue, hue)], 1).float()  # (B, 4)
            f = to_device(f, dev)
            order = torch.argsort(torch.rand(N, 4, generator=g)[rows], dim=1)  # (B, 4) on the CPU: op at each slot
            identity = to_device(torch.tensor([1.0, 1.0, 1.0, 0.0]), dev)
            f = torch.where(apply, f, identity)
            ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
            for slot in range(4):
                for k, op in enumerate(ops):
                    here = order[:, slot] == k  # (B,) bool; tested on the CPU, so no wait for a GPU
                    if C == 1 and k >= 2 or not bool(here.any()):
                        continue
                    v = op(v, torch.where(to_device(here, dev), f[:, k], identity[k]))
        if C == 3 and c.grayscale_prob > 0:
            v = torch.where(coin(c.grayscale_prob).view(B, 1, 1, 1), _gray(v).expand(-1, 3, -1, -1), v)
        if c.blur_prob > 0:
            lo, hi = c.effective_blur_sigma
            k = blur_kernel_size(hi, size, c.blur_kernel_size)
            sigma = to_device(uniform(lo, hi).float(), dev) * coin(c.blur_prob)
            if k > 1:
                v = gaussian_blur(v, sigma, k)
        return v
