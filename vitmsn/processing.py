"""Image preprocessing for ViT / ViT-MSN, a drop-in for transformers' ``ViTImageProcessor``.

Pipeline, per image (default ``backend="pil"``; identical numbers to transformers' PIL backend,
``ViTImageProcessorPil`` / ``AutoImageProcessor.from_pretrained(..., backend="pil")``):

1. to a channels-first numpy array (C, H, W); grayscale and RGBA become RGB (RGBA is composited on white);
2. resize with PIL: the array is turned into a uint8 PIL image (floats in [0, 1] are multiplied by 255 and
   *truncated*, then divided by 255 again after resizing), exactly as transformers does;
3. rescale: ``x * rescale_factor`` (computed in float64, stored as float32);
4. normalize: ``(x - mean) / std`` per channel, in float32.

Steps 3-4 are element-wise, so for uint8 pixels they are computed once for each of the 256 levels of each
channel and looked up (the same float32 bits, in one pass), into one output batch when every image comes
out the same size. PIL images are resized as the RGB PIL image they convert to (transformers goes through
an array and back: the same pixels), and the images of a batch of large images are resized in threads
(torch's intra-op thread count; PIL's resize runs without the GIL), each with the same numbers.

Note, as in transformers: float inputs are *not* detected as already rescaled. A float image in [0, 1] with
``do_rescale=True`` is multiplied by ``rescale_factor`` again (a warning is emitted); pass ``do_rescale=False``
for such inputs.

``backend="torch"`` (or ``fast=True``) resizes whole batches with ``torch.nn.functional.interpolate``
(antialiased bilinear/bicubic, on ``device`` if given). Its numbers are close to, not identical to, the PIL path:
integer images are resized with torch's uint8 kernel, which differs from PIL by at most one uint8 level on a
small fraction of pixels (max |diff| 1/255/std, e.g. 0.0078 with std 0.5; mean |diff| ~1e-5 on photographs);
float images are not quantized to uint8 before resizing. On the photographs in the tests it reproduces
transformers' default torchvision backend (``ViTImageProcessor``) to 1e-5. Images are kept channels-last
(as PIL holds them), the layout of torch's fast uint8 resize kernel, and rescale + normalize is one
multiply-add into the output batch.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from vitmsn.hub import LOADER_ONLY_KWARGS, PushToHubMixin

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMAGENET_STANDARD_MEAN",
    "IMAGENET_STANDARD_STD",
    "PROCESSOR_CONFIG_NAME",
    "AutoFeatureExtractor",
    "AutoImageProcessor",
    "BatchFeature",
    "ViTFeatureExtractor",
    "ViTImageProcessor",
]

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
#: transformers 5's processor file; its ``image_processor`` entry, when present, is read first
NESTED_PROCESSOR_CONFIG_NAME = "processor_config.json"
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_RESAMPLE_NAMES = {
    name: int(PIL.Image.Resampling[name.upper()])
    for name in ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
}
# PIL filter -> (torch interpolate mode, antialias) for the torch backend.
_TORCH_MODES = {
    int(PIL.Image.Resampling.NEAREST): ("nearest-exact", False),
    int(PIL.Image.Resampling.BILINEAR): ("bilinear", True),
    int(PIL.Image.Resampling.BICUBIC): ("bicubic", True),
}
_SIZE_KEY_SETS = (
    frozenset({"height", "width"}),
    frozenset({"shortest_edge"}),
    frozenset({"shortest_edge", "longest_edge"}),
    frozenset({"max_height", "max_width"}),
)
_RETURN_TENSORS = (None, "pt", "np")
_SERVICE_KEYS = ("image_processor_type", "feature_extractor_type", "processor_class")
_CALL_OPTIONS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


class BatchFeature(dict):
    """A ``dict`` of model inputs with attribute access (``inputs.pixel_values``) and ``.to(device)``."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move tensors with ``Tensor.to(*args, **kwargs)``; dtype casts only apply to floating tensors."""
        device = kwargs.get("device")
        if device is None and args and not isinstance(args[0], torch.dtype):
            device = args[0]
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                if torch.is_floating_point(value):
                    self[key] = value.to(*args, **kwargs)
                elif device is not None:
                    self[key] = value.to(device=device, non_blocking=kwargs.get("non_blocking", False))
        return self


# ---------------------------------------------------------------------------------------------------------
# Argument standardization
# ---------------------------------------------------------------------------------------------------------


def _standardize_resample(resample: Any) -> int:
    """PIL resampling filter as an int (accepts ints, ``PIL.Image.Resampling`` and names like "bicubic")."""
    if isinstance(resample, str):
        key = resample.lower().removeprefix("interpolationmode.")
        if key in _RESAMPLE_NAMES:
            return _RESAMPLE_NAMES[key]
    elif isinstance(resample, int | np.integer) and not isinstance(resample, bool):
        if int(resample) in _RESAMPLE_NAMES.values():
            return int(resample)
    raise ValueError(
        f"Unsupported resample={resample!r}; use a PIL.Image.Resampling member, its int code, or one of "
        f"{sorted(_RESAMPLE_NAMES)}."
    )


def _standardize_size(size: Any, default_to_square: bool = True) -> dict[str, int]:
    """``int`` -> square (or shortest edge if not ``default_to_square``); ``(h, w)``; or a valid size dict."""
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        out = {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    elif isinstance(size, list | tuple) and len(size) == 2:
        out = {"height": size[0], "width": size[1]}
    elif isinstance(size, Mapping):
        out = {k: v for k, v in size.items() if v is not None}
        if frozenset(out) not in _SIZE_KEY_SETS:
            raise ValueError(
                f"size must have keys {{'height', 'width'}}, {{'shortest_edge'}}, {{'shortest_edge', "
                f"'longest_edge'}} or {{'max_height', 'max_width'}}; got {dict(size)!r}."
            )
    else:
        raise ValueError(f"size must be an int, a (height, width) pair or a dict; got {size!r}.")
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"size[{key!r}] must be a positive int; got {value!r}.")
        out[key] = int(value)
    return out


def _standardize_stats(value: Any, name: str) -> tuple[float, ...] | float:
    if isinstance(value, int | float | np.number):
        return float(value)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float or a sequence of floats; got {value!r}.") from None


def _standardize_backend(backend: str | None, fast: bool | None) -> str:
    if backend is None:
        return "torch" if fast else "pil"
    name = str(backend).lower()
    if name in ("torch", "torchvision", "fast"):
        return "torch"
    if name in ("pil", "numpy", "slow"):
        if fast:
            raise ValueError(f"fast=True conflicts with backend={backend!r}.")
        return "pil"
    raise ValueError(f"Unknown backend {backend!r}; use 'pil' (exact transformers parity) or 'torch'.")


# ---------------------------------------------------------------------------------------------------------
# Input handling: any supported input -> list of channels-first numpy arrays
# ---------------------------------------------------------------------------------------------------------


def _is_image(x: Any) -> bool:
    return isinstance(x, PIL.Image.Image | np.ndarray | torch.Tensor)


def _flatten_images(images: Any) -> list[Any]:
    """A single image, a batched array/tensor, or (nested) lists of those -> a flat list of single images."""
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"An image array must have 2 (H, W), 3 (C, H, W or H, W, C) or 4 (batch) dimensions; got shape "
            f"{tuple(images.shape)}."
        )
    if isinstance(images, list | tuple):
        if len(images) == 0:
            raise ValueError("Got an empty list of images; pass at least one image.")
        flat: list[Any] = []
        for item in images:
            if isinstance(item, list | tuple):
                flat.extend(_flatten_images(item))
            elif _is_image(item):
                flat.extend(_flatten_images(item))
            else:
                raise ValueError(
                    f"Unsupported image type {type(item).__name__} in list; expected PIL.Image.Image, "
                    "numpy.ndarray or torch.Tensor."
                )
        return flat
    raise ValueError(
        f"Unsupported image type {type(images).__name__}; expected a PIL.Image.Image, numpy.ndarray or "
        "torch.Tensor, or a list of them."
    )


def _is_channels_first(data_format: Any, name: str) -> bool:
    """``"channels_first"`` / ``"channels_last"`` (or transformers' ``ChannelDimension`` members) as a bool."""
    fmt = str(getattr(data_format, "value", data_format)).lower()
    if fmt in ("channels_first", "first", "chw"):
        return True
    if fmt in ("channels_last", "last", "hwc"):
        return False
    raise ValueError(f"{name} must be 'channels_first' or 'channels_last'; got {data_format!r}.")


def _channel_axis_is_first(shape: tuple[int, ...], input_data_format: str | None) -> bool:
    """Channel order of a 3-D array, decided as transformers' ``infer_channel_dimension_format(.., (1, 3, 4))``."""
    if input_data_format is not None:
        return _is_channels_first(input_data_format, "input_data_format")
    if shape[0] in (1, 3, 4):  # also wins when ambiguous (e.g. 3 x H x 3), as in transformers
        return True
    if shape[-1] in (1, 3, 4):
        return False
    raise ValueError(
        f"Cannot find a channel axis of size 1, 3 or 4 in an image of shape {shape}. Images must be (H, W), "
        "(C, H, W) or (H, W, C) with C in {1, 3, 4}; a batch of grayscale images should be a list of 2-D arrays "
        "or a 4-D array with a channel axis."
    )


def _pil_to_rgb(image: PIL.Image.Image, do_convert_rgb: bool | None) -> PIL.Image.Image:
    """The PIL image whose pixels are used: RGB (transparency composited on white) unless
    ``do_convert_rgb=False``; an RGB image as it is unless ``do_convert_rgb=True`` (which also composites
    the transparent colour some RGB images carry)."""
    if do_convert_rgb is False or (do_convert_rgb is None and image.mode == "RGB"):
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _pil_for_resize(image: Any, do_convert_rgb: bool | None) -> PIL.Image.Image | None:
    """For the PIL backend's resize: the non-empty RGB PIL image of ``image`` (the one ``_to_chw_array``
    would make a uint8 array of and the resize would rebuild from that array), or None."""
    if not isinstance(image, PIL.Image.Image):
        return None
    rgb = _pil_to_rgb(image, do_convert_rgb)
    if rgb.mode != "RGB" or rgb.width == 0 or rgb.height == 0:
        return None
    rgb.load()  # decode a lazily opened file here, once: the resizes may run in threads (_for_each_image)
    return rgb


def _array_to_rgb(hwc: np.ndarray) -> np.ndarray:
    """(H, W, C) with C in {1, 3, 4} -> (H, W, 3); alpha is blended onto a white background."""
    channels = hwc.shape[-1]
    if channels == 1:
        return np.repeat(hwc, 3, axis=-1)
    if channels == 4:
        if np.issubdtype(hwc.dtype, np.floating):
            if hwc.min() < 0.0 or hwc.max() > 1.0:
                raise ValueError(
                    "A floating-point RGBA image must have values in [0, 1] to be blended onto white; got "
                    f"[{hwc.min()}, {hwc.max()}]."
                )
            alpha = hwc[..., 3:] / 1.0
            return (alpha * hwc[..., :3] + (1 - alpha) * 1.0).astype(hwc.dtype)
        alpha = hwc[..., 3:] / 255
        return np.round(alpha * hwc[..., :3] + (1 - alpha) * 255).astype(hwc.dtype)
    return hwc


def _to_chw_array(image: Any, do_convert_rgb: bool | None, input_data_format: str | None) -> np.ndarray:
    """One image -> (C, H, W) numpy array in its original dtype, RGB unless ``do_convert_rgb=False``."""
    if isinstance(image, PIL.Image.Image):
        array = np.array(_pil_to_rgb(image, do_convert_rgb))
        hwc = array[..., None] if array.ndim == 2 else array
        return np.moveaxis(hwc, -1, 0)  # a view: the PIL resize moves the axis back without a copy

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:  # numpy has no bfloat16 (float16 stays float16, as in transformers)
            image = image.float()
        array = image.numpy()
    else:
        array = np.asarray(image)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"Unsupported image dtype {array.dtype}; expected an integer or float array.")
    if array.ndim == 2:  # grayscale (H, W)
        hwc = array[..., None]
    elif array.ndim == 3:
        first = _channel_axis_is_first(array.shape, input_data_format)
        hwc = np.moveaxis(array, 0, -1) if first else array
    else:
        raise ValueError(f"A single image must have 2 or 3 dimensions; got shape {array.shape}.")
    if 0 in hwc.shape[:2]:
        raise ValueError(f"Empty image of shape {array.shape}.")
    if hwc.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Images must have 1, 3 or 4 channels; got {hwc.shape[-1]} (shape {array.shape}).")
    if do_convert_rgb is not False:
        hwc = _array_to_rgb(hwc)
    return np.moveaxis(hwc, -1, 0)  # a view, as for PIL images


# ---------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------


def _output_size(size: Mapping[str, int], height: int, width: int) -> tuple[int, int]:
    """Target (height, width) for an input of (height, width), following transformers' size semantics."""
    if "shortest_edge" in size and "longest_edge" in size:
        short_target, max_size = size["shortest_edge"], size["longest_edge"]
        lo, hi = float(min(height, width)), float(max(height, width))
        raw = None
        if hi / lo * short_target > max_size:
            raw = max_size * lo / hi
            short_target = int(round(raw))
        if (height <= width and height == short_target) or (width <= height and width == short_target):
            return height, width
        scale_base = raw if raw is not None else short_target
        if width < height:
            return int(scale_base * height / width), short_target
        return short_target, int(scale_base * width / height)
    if "shortest_edge" in size:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    return size["height"], size["width"]


def _needs_unit_rescale(chw: np.ndarray) -> bool:
    """Whether a non-uint8 array must be scaled by 255 to become a uint8 PIL image (floats in [0, 1])."""
    if chw.dtype == np.uint8:
        return False
    if np.allclose(chw, chw.astype(int)):
        if np.all(chw >= 0) and np.all(chw <= 255):
            return False
        raise ValueError(
            f"Integer-valued images must be in [0, 255] to be resized; got [{chw.min()}, {chw.max()}]."
        )
    if np.all(chw >= 0) and np.all(chw <= 1):
        return True
    raise ValueError(
        f"Floating-point images must have values in [0, 1] (or be integer-valued in [0, 255]) to be resized; got "
        f"[{chw.min()}, {chw.max()}]."
    )


def _pil_resize(chw: np.ndarray | PIL.Image.Image, out_hw: tuple[int, int], resample: int) -> np.ndarray:
    """Resize (C, H, W) -> (C, h, w) through a uint8 PIL image, as transformers' PIL backend does.

    An RGB PIL image is resized as it is: it is the image transformers rebuilds from its array.
    """
    if isinstance(chw, PIL.Image.Image):
        return np.moveaxis(np.array(chw.resize((out_hw[1], out_hw[0]), resample=resample)), -1, 0)
    unit = _needs_unit_rescale(chw)
    hwc = np.moveaxis(chw, 0, -1)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if unit:  # floats in [0, 1]: x * 255 in float64, then float32, then truncated to uint8
        hwc = (hwc.astype(np.float64) * 255).astype(np.float32)
    pil = PIL.Image.fromarray(np.ascontiguousarray(hwc.astype(np.uint8, copy=False)))
    resized = np.array(pil.resize((out_hw[1], out_hw[0]), resample=resample))
    if resized.ndim == 2:
        resized = resized[..., None]
    out = np.moveaxis(resized, -1, 0)
    return _rescale(out, 1 / 255) if unit else out


def _level_table(fn: Callable[[np.ndarray], np.ndarray], channels: int) -> np.ndarray:
    """``fn`` (rescale, then normalize; element by element) of the 256 uint8 levels of each channel: (C, 256).

    Looking an image's pixels up in it gives the same float32 bits as applying ``fn`` to the image, in one
    pass instead of several float64/float32 passes.
    """
    return fn(np.broadcast_to(np.arange(256, dtype=np.uint8), (channels, 1, 256)).copy())[:, 0]


def _through_table(chw: np.ndarray, table: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A uint8 (C, H, W) image looked up in a (C, 256) table of :func:`_level_table`."""
    if out is None:
        out = np.empty(chw.shape, dtype=table.dtype)
    for c in range(chw.shape[0]):
        # uint8 indices are always in range: "clip" changes nothing but skips the buffer "raise" writes through
        np.take(table[c], chw[c], out=out[c], mode="clip")
    return out


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, pool threads) -> pool

#: mean pixels per source image from which the PIL backend resizes a batch's images in threads; below it
#: the per-image Python work, which holds the GIL, outweighs the resize (28 x 28 Fashion-MNIST images ran
#: slower in threads in bench/lowshot.py, photographs of a few hundred pixels a side faster in
#: bench/preprocess.py; the threshold lies between the two and is not tuned further)
THREADED_RESIZE_PIXELS = 128 * 128


def _for_each_image(fn: Callable[[int], None], areas: list[int]) -> None:
    """``fn(i)`` for every image of a batch (``areas``: each one's source pixels), in threads when it pays.

    PIL's resize runs without the GIL, so on several cores the large images of a batch resize in parallel
    (each image's numbers are unchanged). The calling thread and ``threads - 1`` pool threads take the
    images from one queue, largest first, so that a thread that starts late (a core waking up) takes fewer.
    Threads: torch's intra-op count, which is 1 inside DataLoader workers. Pools are kept per process (a
    forked child makes its own).
    """
    n = len(areas)
    threads = min(torch.get_num_threads(), n)
    if threads <= 1 or sum(areas) < THREADED_RESIZE_PIXELS * n:
        for i in range(n):
            fn(i)
        return
    key = (os.getpid(), threads - 1)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads - 1, thread_name_prefix="vitmsn-images")
    queue = iter(sorted(range(n), key=lambda i: -areas[i]))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            fn(i)

    helpers = [_POOLS[key].submit(work) for _ in range(threads - 1)]
    errors = []
    try:
        work()
    except Exception as e:  # the helpers still finish their images before it is raised
        errors.append(e)
    for future in helpers:
        if future.exception() is not None:
            errors.append(future.exception())
    if errors:
        raise errors[0]


def _rescale(x: np.ndarray, factor: float) -> np.ndarray:
    return (x.astype(np.float64) * factor).astype(np.float32)


def _normalize(chw: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]) -> np.ndarray:
    if not np.issubdtype(chw.dtype, np.floating):
        chw = chw.astype(np.float32)
    channels = chw.shape[0]
    m, sd = (np.asarray(_per_channel(v, name, channels), dtype=chw.dtype)[:, None, None]  # (C, 1, 1)
             for v, name in ((mean, "image_mean"), (std, "image_std")))
    return (chw - m) / sd


def _per_channel(value: float | Sequence[float], name: str, channels: int) -> list[float]:
    """``image_mean`` / ``image_std`` as one value per channel."""
    values = [value] * channels if isinstance(value, float | int) else list(value)
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values but the image has {channels} channels; convert the image to RGB "
            "(do_convert_rgb=None or True) or pass matching statistics."
        )
    return values


def _torch_resize(batch: torch.Tensor, out_hw: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize (B, C, H, W) with ``F.interpolate``. uint8 batches use torch's uint8 kernel when available
    (on CPU it follows PIL's fixed-point arithmetic closely); otherwise resize in float32 and, for uint8 input,
    round and clip back to integer levels as PIL does."""
    mode, antialias = _TORCH_MODES[resample]
    kwargs = {"antialias": True, "align_corners": False} if antialias else {}
    if batch.dtype == torch.uint8:
        try:
            return F.interpolate(batch, size=out_hw, mode=mode, **kwargs)
        except (RuntimeError, NotImplementedError):  # no uint8 kernel for this mode / device
            resized = F.interpolate(batch.float(), size=out_hw, mode=mode, **kwargs)
            return resized.round_().clamp_(0, 255)
    return F.interpolate(batch.float(), size=out_hw, mode=mode, **kwargs)


def _torch_output_dtype(dtype: np.dtype, do_rescale: bool, do_normalize: bool) -> torch.dtype:
    """dtype of an image's output on the torch backend, as transformers' torchvision backend gives it:
    normalizing makes float32, rescaling keeps a float dtype and makes float32 of any other."""
    if do_normalize:
        return torch.float32
    own = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return torch.float32 if do_rescale and not own.is_floating_point else own


def _chw_shape(image: np.ndarray | PIL.Image.Image) -> tuple[int, int, int]:
    """(C, H, W) of a channels-first array or of an RGB PIL image kept for the PIL backend's resize."""
    return (3, image.height, image.width) if isinstance(image, PIL.Image.Image) else image.shape


def _common_output_shape(arrays: list[np.ndarray | PIL.Image.Image], size: Mapping[str, int],
                         do_resize: bool) -> tuple[int, int, int] | None:
    """The (C, h, w) every (C, H, W) image comes out as, or None if they come out in different shapes."""
    shapes = {(c, *(_output_size(size, h, w) if do_resize else (h, w))) for c, h, w in map(_chw_shape, arrays)}
    return shapes.pop() if len(shapes) == 1 else None


def _stack_channels_last(arrays: list[np.ndarray]) -> torch.Tensor:
    """Same-shape (C, H, W) arrays -> a (b, C, H, W) tensor stored channels-last (b, H, W, C).

    PIL images arrive as (C, H, W) views of (H, W, C) memory, so this is one straight copy (none for a
    single image), where stacking channels-first would transpose every image.
    """
    a = arrays[0]
    if len(arrays) == 1 and a.strides[0] == a.itemsize and min(a.strides) > 0:  # a (C, H, W) view of (H, W, C)
        return torch.from_numpy(a)[None]
    hwc = np.stack([np.moveaxis(a, 0, -1) for a in arrays])  # (b, H, W, C)
    return torch.from_numpy(hwc).permute(0, 3, 1, 2)


def _pil_output_dtype(image: np.ndarray | PIL.Image.Image, do_resize: bool, do_rescale: bool,
                      do_normalize: bool) -> np.dtype | None:
    """dtype of one image's output on the PIL backend, as transformers' PIL backend gives it, or None when it
    depends on the pixel values.

    Rescaling makes float32; normalizing keeps a float dtype and makes float32 of any other; the PIL resize
    makes uint8, except of floats in [0, 1] (float32 again: divided by 255 after resizing)."""
    if do_rescale:
        return np.dtype(np.float32)
    dtype = np.dtype(np.uint8) if isinstance(image, PIL.Image.Image) else image.dtype
    floating = np.issubdtype(dtype, np.floating)
    if do_resize:
        if floating:  # resized to uint8 (integer values) or float32 (values in [0, 1])
            return np.dtype(np.float32) if do_normalize else None
        dtype = np.dtype(np.uint8)
    if do_normalize:
        return dtype if floating else np.dtype(np.float32)
    return dtype


def _looks_prescaled(chw: np.ndarray) -> bool:
    """Float image with fractional values in [0, 1] (the same test the PIL resize uses)."""
    if not np.issubdtype(chw.dtype, np.floating):
        return False
    return bool(chw.min() >= 0 and chw.max() <= 1 and not np.allclose(chw, chw.astype(int)))


# ---------------------------------------------------------------------------------------------------------
# The image processor
# ---------------------------------------------------------------------------------------------------------


class ViTImageProcessor(PushToHubMixin):
    r"""Resize, rescale and normalize images for ViT / ViT-MSN models (transformers-compatible).

    Args:
        do_resize: Resize images to ``size``.
        size: Output size. ``int`` -> square ``{"height": s, "width": s}``; ``(h, w)``; or a dict with
            ``{"height", "width"}`` (default 224 x 224), ``{"shortest_edge"}`` (aspect-preserving, as
            transformers 5 does: the output is *not* square), ``{"shortest_edge", "longest_edge"}`` or
            ``{"max_height", "max_width"}``.
        resample: PIL filter (``PIL.Image.Resampling``, its int code, or a name such as ``"bicubic"``).
        do_rescale: Multiply pixel values by ``rescale_factor``.
        rescale_factor: Scale factor, default ``1 / 255``.
        do_normalize: Normalize with ``image_mean`` / ``image_std``.
        image_mean: Per-channel mean, default ``(0.5, 0.5, 0.5)``.
        image_std: Per-channel std, default ``(0.5, 0.5, 0.5)``.
        do_convert_rgb: ``None`` (default): convert grayscale / RGBA / palette images to RGB and leave RGB ones
            as they are; ``True``: always convert (also composites RGB PIL images that carry transparency);
            ``False``: never convert.
        backend: ``"pil"`` (default): per-image PIL resizing, numerically identical to transformers' PIL
            backend. ``"torch"``: batched ``F.interpolate`` (antialiased bilinear/bicubic, ``nearest-exact``);
            differs from the PIL path by at most one uint8 level on a few pixels for uint8 inputs (see the module
            docstring). Only NEAREST, BILINEAR and BICUBIC are available with it.
        fast: Shorthand for ``backend="torch"``.
        **kwargs: Unknown keys are kept as attributes and saved by ``save_pretrained``.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | PIL.Image.Resampling | str = PIL.Image.Resampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        *,
        backend: str | None = None,
        fast: bool | None = None,
        **kwargs: Any,
    ) -> None:
        default_to_square = kwargs.pop("default_to_square", True)
        for key in _SERVICE_KEYS:
            kwargs.pop(key, None)
        if kwargs.get("do_center_crop") or kwargs.get("do_pad"):
            raise ValueError(
                "do_center_crop / do_pad are not supported by this ViT image processor (ViT checkpoints do not use "
                "them); set them to false or null."
            )
        self.do_resize = bool(do_resize)
        self.size = _standardize_size(
            size if size is not None else {"height": 224, "width": 224}, default_to_square
        )
        self.resample = _standardize_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _standardize_stats(
            IMAGENET_STANDARD_MEAN if image_mean is None else image_mean, "image_mean"
        )
        self.image_std = _standardize_stats(
            IMAGENET_STANDARD_STD if image_std is None else image_std, "image_std"
        )
        self.do_convert_rgb = do_convert_rgb
        self.backend = _standardize_backend(backend, fast)
        if self.backend == "torch" and self.resample not in _TORCH_MODES:
            raise ValueError(
                f"resample={PIL.Image.Resampling(self.resample).name} is not available with backend='torch'; "
                "use NEAREST, BILINEAR or BICUBIC, or backend='pil'."
            )
        self._extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if hasattr(type(self), key):
                warnings.warn(
                    f"Ignoring config key {key!r}: it would shadow a method.", UserWarning, stacklevel=2
                )
                continue
            self._extra[key] = value
            setattr(self, key, value)

    # ---- processing ---------------------------------------------------------------------------------------

    def __call__(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """Preprocess an image or a batch of images; see :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        *,
        input_data_format: str | None = None,
        data_format: str | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Preprocess images into ``BatchFeature({"pixel_values": ...})``.

        Args:
            images: A PIL image, a numpy array / torch tensor (H, W), (C, H, W), (H, W, C) or batched
                (B, C, H, W) / (B, H, W, C), uint8 or float, or a (nested) list of these.
            return_tensors: ``"pt"`` -> torch (B, 3, H, W) float32; ``"np"`` -> numpy (B, 3, H, W) float32;
                ``None`` -> list of (3, H, W) float32 numpy arrays (PIL backend) or tensors (torch backend), as
                transformers. With ``do_rescale=False`` the dtype is transformers' too: the pixels' own (e.g.
                uint8) without ``do_normalize``, a float input's own (e.g. float64) with it.
            input_data_format: Force ``"channels_first"`` or ``"channels_last"`` for arrays/tensors; by default
                the channel axis is the first axis of size 1, 3 or 4 (first wins when ambiguous).
            data_format: Layout of ``pixel_values``: ``"channels_first"`` (default, (B, 3, H, W)) or
                ``"channels_last"`` ((B, H, W, 3), contiguous), as transformers' ``ViTImageProcessor`` 4.x (PIL)
                returns it; transformers' ``ChannelDimension`` members are accepted too.
            device: With ``return_tensors="pt"``, put ``pixel_values`` on this device (the torch backend also
                resizes there).
            **overrides: Any of ``do_resize, size, resample, do_rescale, rescale_factor, do_normalize,
                image_mean, image_std, do_convert_rgb`` for this call only.
        """
        if isinstance(return_tensors, str):
            return_tensors = return_tensors.lower()
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None; got {return_tensors!r}.")
        channels_last = data_format is not None and not _is_channels_first(data_format, "data_format")
        unknown = set(overrides) - set(_CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"Unexpected keyword argument(s) {sorted(unknown)}; valid ones are {list(_CALL_OPTIONS)}."
            )
        overrides = {key: value for key, value in overrides.items() if value is not None}  # None: keep own
        opts = {key: overrides.get(key, getattr(self, key)) for key in _CALL_OPTIONS}
        size = _standardize_size(opts["size"]) if "size" in overrides else self.size
        resample = _standardize_resample(opts["resample"])
        mean = _standardize_stats(opts["image_mean"], "image_mean")
        std = _standardize_stats(opts["image_std"], "image_std")
        rescale_factor = float(opts["rescale_factor"])

        # each (C, H, W); the PIL backend resizes PIL images as RGB PIL images (no round trip through an array)
        keep_pil = self.backend != "torch" and opts["do_resize"]
        arrays: list[np.ndarray | PIL.Image.Image] = []
        for image in _flatten_images(images):
            kept = _pil_for_resize(image, opts["do_convert_rgb"]) if keep_pil else None
            arrays.append(kept if kept is not None else _to_chw_array(image, opts["do_convert_rgb"], input_data_format))
        if opts["do_rescale"] and any(isinstance(chw, np.ndarray) and _looks_prescaled(chw) for chw in arrays):
            warnings.warn(
                "A floating-point image with values in [0, 1] is being rescaled by rescale_factor again (as "
                "transformers does). If the image is already scaled to [0, 1], pass do_rescale=False.",
                UserWarning,
                stacklevel=3,
            )

        if self.backend == "torch":
            pixel_values = self._run_torch(
                arrays, opts["do_resize"], size, resample, opts["do_rescale"], rescale_factor,
                opts["do_normalize"], mean, std, device,
            )  # fmt: skip
        else:
            # float32, or as in transformers: a float input's own dtype (normalize only), the pixels' (neither)
            def rescale_normalize(chw: np.ndarray) -> np.ndarray:
                if opts["do_rescale"]:
                    chw = _rescale(chw, rescale_factor)
                if opts["do_normalize"]:
                    chw = _normalize(chw, mean, std)
                return chw

            convert = opts["do_rescale"] or opts["do_normalize"]
            shape = _common_output_shape(arrays, size, opts["do_resize"])
            dtypes = {_pil_output_dtype(chw, opts["do_resize"], opts["do_rescale"], opts["do_normalize"])
                      for chw in arrays}
            out_dtype = dtypes.pop() if len(dtypes) == 1 else None
            # one output batch when every image comes out the same size: no stacking copy afterwards
            whole = (np.empty((len(arrays), *shape), dtype=out_dtype)
                     if shape is not None and out_dtype is not None and return_tensors is not None else None)
            pixel_values: list[np.ndarray] = [None] * len(arrays)  # type: ignore[list-item]
            tables: dict[int, np.ndarray] = {}  # channels -> (C, 256), made once per call
            tables_lock = threading.Lock()

            def one(i: int) -> None:
                chw = arrays[i]
                if opts["do_resize"]:
                    chw = _pil_resize(chw, _output_size(size, *_chw_shape(chw)[1:]), resample)
                if chw.dtype == np.uint8 and convert:
                    with tables_lock:
                        if chw.shape[0] not in tables:
                            tables[chw.shape[0]] = _level_table(rescale_normalize, chw.shape[0])
                    chw = _through_table(chw, tables[chw.shape[0]], out=None if whole is None else whole[i])
                else:
                    # without rescale and normalize a copy: not a view of the caller's array
                    chw = rescale_normalize(chw) if convert else chw.copy()
                    if whole is not None:
                        whole[i] = chw
                pixel_values[i] = chw  # (C, H, W), float32 unless do_rescale=False

            # threads only help the resize; without it the images go one after the other
            areas = [h * w if opts["do_resize"] else 0 for _, h, w in map(_chw_shape, arrays)]
            _for_each_image(one, areas)
            if whole is not None:
                pixel_values = whole
        pixel_values = _collate(pixel_values, return_tensors, device, list_of_tensors=self.backend == "torch")
        return BatchFeature({"pixel_values": _to_channels_last(pixel_values) if channels_last else pixel_values})

    @staticmethod
    def _run_torch(
        arrays: list[np.ndarray],
        do_resize: bool,
        size: Mapping[str, int],
        resample: int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        mean: float | tuple[float, ...],
        std: float | tuple[float, ...],
        device: str | torch.device | None,
    ) -> list[torch.Tensor] | torch.Tensor:
        """Batched resize/rescale/normalize with torch; images of equal shape and kind are resized together.

        Returns one (B, C, h, w) tensor when every image comes out the same size and dtype, else a list of
        (C, h, w). The dtype is float32 unless ``do_normalize=False``; then it is the input's, as transformers'
        torchvision backend gives it: the pixels' own without ``do_rescale``, a float input's own with it."""
        if do_resize and resample not in _TORCH_MODES:
            raise ValueError(f"resample={resample} is not available with backend='torch'; use backend='pil'.")
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, chw in enumerate(arrays):
            is_int = not np.issubdtype(chw.dtype, np.floating)
            dtype = _torch_output_dtype(chw.dtype, do_rescale, do_normalize)
            groups.setdefault((chw.shape, is_int, dtype), []).append(i)
        common = _common_output_shape(arrays, size, do_resize)
        dtypes = {dtype for _, _, dtype in groups}
        # one output batch when every image comes out the same size: no stacking copy afterwards
        whole = (torch.empty((len(arrays), *common), dtype=dtypes.pop(), device=device)
                 if common is not None and len(dtypes) == 1 else None)
        out: list[torch.Tensor | None] = [None] * len(arrays)
        for (shape, is_int, dtype), idx in groups.items():
            batch = _stack_channels_last([arrays[i] for i in idx])  # (b, C, H, W), channels-last in memory
            if is_int and do_resize and batch.dtype != torch.uint8:
                lo, hi = batch.min().item(), batch.max().item()
                if lo < 0 or hi > 255:
                    raise ValueError(f"Integer images must be in [0, 255] to be resized; got [{lo}, {hi}].")
                batch = batch.to(torch.uint8)
            if device is not None:
                batch = batch.to(device)
            if do_resize:
                # torch's uint8 antialiased kernel works on channels-last images (faster than channels-first: bench/parts.py, rows "resize")
                batch = _torch_resize(batch, _output_size(size, shape[1], shape[2]), resample)
            if dtype != torch.float32:  # do_normalize=False and a non-float32 output (rare: made simply)
                for j, i in enumerate(idx):
                    value = batch[j].to(dtype)
                    value = value * rescale_factor if do_rescale else value
                    out[i] = whole[i].copy_(value) if whole is not None else value.contiguous()
                continue
            # (x * rescale - mean) / std as one multiply-add into a channels-first float32 batch
            channels = batch.shape[1]
            scale = torch.full((channels,), rescale_factor if do_rescale else 1.0, dtype=torch.float64)
            shift = torch.zeros(channels, dtype=torch.float64)
            if do_normalize:
                m, sd = (torch.tensor(_per_channel(v, name, channels), dtype=torch.float64)
                         for v, name in ((mean, "image_mean"), (std, "image_std")))
                scale, shift = scale / sd, -m / sd
            shift = shift.float().to(batch.device).view(-1, 1, 1)
            scale = scale.float().to(batch.device).view(-1, 1, 1)
            for j, i in enumerate(idx):
                target = whole[i] if whole is not None else None  # (C, h, w)
                out[i] = torch.addcmul(shift, batch[j].float(), scale, out=target)
        return whole if whole is not None else out  # type: ignore[return-value]

    # ---- serialization ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Configuration in transformers' ``preprocessor_config.json`` format."""
        out = copy.deepcopy(self._extra)
        out.update(
            do_normalize=self.do_normalize,
            do_rescale=self.do_rescale,
            do_resize=self.do_resize,
            image_mean=list(self.image_mean) if isinstance(self.image_mean, tuple) else self.image_mean,
            image_processor_type="ViTImageProcessor",
            image_std=list(self.image_std) if isinstance(self.image_std, tuple) else self.image_std,
            resample=self.resample,
            rescale_factor=self.rescale_factor,
            size=dict(self.size),
        )
        if self.do_convert_rgb is not None:
            out["do_convert_rgb"] = self.do_convert_rgb
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default) + "\n"

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False,
                        **kwargs: Any) -> list[str]:
        """Write ``preprocessor_config.json`` into ``save_directory`` (created if needed); with
        ``push_to_hub``, also upload it (to ``repo_id``, default the folder's name)."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"save_pretrained expects a directory, got the file {str(directory)!r}.")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PROCESSOR_CONFIG_NAME
        self.to_json_file(path)
        if push_to_hub:
            self._push_saved(directory, kwargs)
        return [str(path)]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> ViTImageProcessor:
        """Build from a config dict (as found in ``preprocessor_config.json``); ``overrides`` win."""
        merged = dict(config)
        merged.update(overrides)
        return cls(**merged)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ViTImageProcessor:
        return cls.from_dict(_load_json(Path(path)))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        subfolder: str = "",
        use_fast: bool | None = None,
        return_unused_kwargs: bool = False,
        **overrides: Any,
    ) -> ViTImageProcessor | tuple[ViTImageProcessor, dict[str, Any]]:
        """Load from a directory, a ``preprocessor_config.json`` file, or a Hub repo id.

        ``overrides`` replace values from the file (e.g. ``size=384``, ``backend="torch"``). Hub ids are resolved
        with :func:`vitmsn.hub.resolve_file` (honours ``HF_HUB_OFFLINE`` and the Hub cache); ``subfolder`` is a
        folder of the directory or repository that holds the file. transformers' other loader arguments
        (``proxies``, ``trust_remote_code``, ``image_processor_filename``, ...) are accepted as transformers does;
        like the ones above, they are never kept as settings (nor saved). ``use_fast=True`` means
        ``backend="torch"``. ``return_unused_kwargs=True`` returns ``(processor, unused)``, ``unused`` the
        loader arguments that had no use here (e.g. ``trust_remote_code``); every other keyword is used
        (unknown ones are kept as attributes, as by the constructor).
        """
        unused = {k: v for k, v in overrides.items() if k in LOADER_ONLY_KWARGS and not k.startswith("_")}
        hub, overrides = _split_loader_kwargs(overrides)
        config = load_processor_config(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            subfolder=subfolder,
            **hub,
        )
        if use_fast is not None and "backend" not in overrides:
            overrides["backend"] = "torch" if use_fast else "pil"
        processor = cls.from_dict(config, **overrides)
        return (processor, unused) if return_unused_kwargs else processor

    def __repr__(self) -> str:
        backend = "" if self.backend == "pil" else f"(backend={self.backend!r})"
        return f"{type(self).__name__}{backend} {self.to_json_string()}"


ViTFeatureExtractor = ViTImageProcessor


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _collate(
    pixel_values: list[np.ndarray] | list[torch.Tensor] | torch.Tensor, return_tensors: str | None, device: Any,
    list_of_tensors: bool = False,
) -> Any:
    """List of (C, H, W) (or one (B, C, H, W) tensor) -> (B, C, H, W) tensor/array, or with
    ``return_tensors=None`` a list: of numpy arrays (as transformers' PIL backend), or of torch tensors with
    ``list_of_tensors`` (as its torchvision backend)."""
    if return_tensors is None and list_of_tensors:
        return [torch.as_tensor(v) for v in pixel_values]  # (C, H, W) each, where they were made
    if isinstance(pixel_values, np.ndarray):  # already one (B, C, H, W) batch (PIL path)
        pixel_values = torch.from_numpy(pixel_values)  # shares the memory
    if isinstance(pixel_values, torch.Tensor):  # already one (B, C, H, W) batch
        if return_tensors is None:
            return list(pixel_values.cpu().numpy())
        if return_tensors == "np":
            return pixel_values.cpu().numpy()
        return pixel_values.to(device) if device is not None else pixel_values
    if return_tensors is None:
        return [v.cpu().numpy() if isinstance(v, torch.Tensor) else v for v in pixel_values]
    shapes = {tuple(v.shape) for v in pixel_values}
    if len(shapes) > 1:
        raise ValueError(
            f"Cannot stack images of different output shapes {sorted(shapes)} into one tensor (size="
            "{'shortest_edge': ...} keeps aspect ratios); use a fixed {'height', 'width'} size or return_tensors=None."
        )
    if isinstance(pixel_values[0], torch.Tensor):
        batch = torch.stack(pixel_values)  # (B, C, H, W)
        return batch.cpu().numpy() if return_tensors == "np" else batch
    stacked = np.stack(pixel_values)  # (B, C, H, W)
    if return_tensors == "np":
        return stacked
    batch = torch.from_numpy(stacked)
    return batch.to(device) if device is not None else batch


def _to_channels_last(pixel_values: Any) -> Any:
    """Collated ``pixel_values`` (a (B, C, H, W) tensor / array or a list of (C, H, W) arrays / tensors) as
    contiguous (B, H, W, C) / (H, W, C)."""
    if isinstance(pixel_values, torch.Tensor):
        return pixel_values.permute(0, 2, 3, 1).contiguous()
    if isinstance(pixel_values, np.ndarray):
        return np.ascontiguousarray(np.moveaxis(pixel_values, 1, -1))
    return [v.permute(1, 2, 0).contiguous() if isinstance(v, torch.Tensor)
            else np.ascontiguousarray(np.moveaxis(v, 0, -1)) for v in pixel_values]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def _load_json(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must contain a JSON object.")
    return data


def _split_loader_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """from_pretrained's extra keywords -> (loader arguments for :func:`load_processor_config`, processor
    settings); transformers' loader-only arguments are dropped, ``use_auth_token`` is the old name of
    ``token``."""
    hub: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "image_processor_filename":
            hub["filename"] = value
        elif key == "use_auth_token":
            hub["use_auth_token"] = value
        elif key not in LOADER_ONLY_KWARGS:
            settings[key] = value
    return hub, settings


def load_processor_config(
    path_or_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    subfolder: str | None = "",
    filename: str = PROCESSOR_CONFIG_NAME,
    use_auth_token: str | bool | None = None,
) -> dict[str, Any]:
    """Read the processor settings from a file path, a local directory or a Hub repo id (in its folder
    ``subfolder``, if given), as transformers 5 does: the ``image_processor`` entry of a
    ``processor_config.json`` if there is one, else ``preprocessor_config.json``."""
    from vitmsn.hub import in_subfolder, resolve_file

    local = Path(os.path.expanduser(os.fspath(path_or_id)))
    if local.is_file():
        return _load_json(local)
    hub = {"revision": revision, "cache_dir": cache_dir, "token": token if token is not None else use_auth_token,
           "local_files_only": local_files_only, "force_download": force_download}
    nested = resolve_file(path_or_id, in_subfolder(NESTED_PROCESSOR_CONFIG_NAME, subfolder), missing_ok=True, **hub)
    if nested is not None:
        data = _read_json(nested)  # without an image_processor object, the other file (as transformers)
        settings = data.get("image_processor") if isinstance(data, dict) else None
        if isinstance(settings, dict):
            return settings
    path = resolve_file(path_or_id, in_subfolder(filename, subfolder), **hub)
    assert path is not None
    return _load_json(path)


_VIT_PROCESSOR_TYPES = frozenset(
    {"ViTImageProcessor", "ViTImageProcessorFast", "ViTImageProcessorPil", "ViTFeatureExtractor"}
)


class AutoImageProcessor:
    """Load the image processor of a ViT / ViT-MSN checkpoint (only ViT processors are supported).

    Unlike transformers (whose ``AutoImageProcessor`` picks the torchvision backend when available), the
    default here is the PIL backend, which reproduces transformers' ``backend="pil"`` numbers exactly.
    """

    def __init__(self) -> None:
        raise OSError(
            "AutoImageProcessor is instantiated with AutoImageProcessor.from_pretrained(path_or_id)."
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        backend: str | None = None,
        use_fast: bool | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        subfolder: str = "",
        return_unused_kwargs: bool = False,
        **overrides: Any,
    ) -> ViTImageProcessor | tuple[ViTImageProcessor, dict[str, Any]]:
        """Read the config, check it describes a ViT processor, and build a :class:`ViTImageProcessor`.

        ``backend``: ``"pil"`` (default) or ``"torch"``/``"torchvision"``; ``use_fast=True`` means ``"torch"``.
        Loader arguments (``subfolder``, ``trust_remote_code``, ...) are handled as by
        :meth:`ViTImageProcessor.from_pretrained`: never kept as settings.
        """
        unused = {k: v for k, v in overrides.items() if k in LOADER_ONLY_KWARGS and not k.startswith("_")}
        hub, overrides = _split_loader_kwargs(overrides)
        config = load_processor_config(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            subfolder=subfolder,
            **hub,
        )
        kind = config.get("image_processor_type") or config.get("feature_extractor_type")
        if kind is not None and kind not in _VIT_PROCESSOR_TYPES:
            raise ValueError(
                f"{os.fspath(pretrained_model_name_or_path)!r} has a {kind!r} image processor; only ViT processors "
                f"({sorted(_VIT_PROCESSOR_TYPES)}) are supported."
            )
        if backend is None and use_fast is not None:
            backend = "torch" if use_fast else "pil"
        processor = ViTImageProcessor.from_dict(config, backend=backend, **overrides)
        return (processor, unused) if return_unused_kwargs else processor


AutoFeatureExtractor = AutoImageProcessor
