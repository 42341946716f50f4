"""Image preprocessing for ViT / ViT-MSN, a drop-in for transformers' ``ViTImageProcessor``.

Two backends, as in transformers 5:

- ``backend="torch"``, the default (``ViTImageProcessor()``, ``AutoImageProcessor.from_pretrained(...)``, and
  ``ViTImageProcessorFast``, transformers 4's name): what transformers 5's ``ViTImageProcessor`` (its torchvision
  backend, also the one its ``AutoImageProcessor`` picks) computes, to ~1e-7 on photographs. Whole batches are
  resized with ``torch.nn.functional.interpolate`` (antialiased bilinear / bicubic / lanczos, ``nearest-exact``;
  on ``device`` if given); uint8 images with torch's uint8 kernel, float images in float32. Images are kept
  channels-last (the layout of torch's fast uint8 resize kernel), and rescale + normalize is one multiply-add
  into the output batch.
- ``backend="pil"`` (``ViTImageProcessorPil``, transformers 5's name; ``use_fast=False`` / ``fast=False``, as a
  transformers 4 user writes for 4.x's default numbers): bit for bit what transformers' PIL backend computes
  (transformers 5's ``ViTImageProcessorPil``, transformers 4's ``ViTImageProcessor``).

The two differ by at most one uint8 level on a small fraction of pixels (1/255/std, e.g. 0.0078 with std 0.5;
mean |diff| ~1e-5 on photographs); float images are quantized to uint8 before resizing only by the PIL backend.

Pipeline of the PIL backend, per image:

1. to a channels-first numpy array (C, H, W); grayscale and RGBA become RGB (RGBA is composited on white);
2. resize with PIL: the array is turned into a uint8 PIL image (floats in [0, 1] are multiplied by 255 and
   *truncated*, then divided by 255 again after resizing), exactly as transformers does;
3. center crop to ``crop_size`` if ``do_center_crop`` (zero padding where the crop is larger than the image);
4. rescale: ``x * rescale_factor`` (computed in float64, stored as float32);
5. normalize: ``(x - mean) / std`` per channel, in float32;
6. pad if ``do_pad``: zeros at the bottom and right, to ``pad_size`` or else to the largest height and width of
   the batch (both backends, as in transformers 5).

Steps 4-5 are element-wise, so for uint8 pixels they are computed once for each of the 256 levels of each
channel and looked up (the same float32 bits, in one pass), into one output batch when every image comes
out the same size. PIL images are resized as the RGB PIL image they convert to (transformers goes through
an array and back: the same pixels), and the images of a batch of large images are resized in threads
(torch's intra-op thread count; PIL's resize runs without the GIL), each with the same numbers.

Note, as in transformers: float inputs are *not* detected as already rescaled. A float image in [0, 1] with
``do_rescale=True`` is multiplied by ``rescale_factor`` again (a warning is emitted); pass ``do_rescale=False``
for such inputs.

Saved files (``save_pretrained``) are transformers' ``preprocessor_config.json`` with ``image_processor_type``
``"ViTImageProcessor"``, the name both transformers backends write, which transformers 4.x and 5.x load (each
with its own default backend: 4.x its PIL one, 5.x its torchvision one). A PIL-backend processor adds
``"vitmsn_backend": "pil"``, a key transformers keeps as a plain attribute, so that vitmsn loads it with the PIL
backend again; without it (files of transformers, or of vitmsn's torch backend) vitmsn loads the torch backend,
as transformers 5 does, except for an ``image_processor_type`` of ``"ViTImageProcessorPil"`` (PIL).
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

from vitmsn.hub import PushToHubMixin

__all__ = [
    "BACKEND_KEY",
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
    "ViTImageProcessorFast",
    "ViTImageProcessorPil",
]

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
#: transformers 5's processor file; its ``image_processor`` entry, when present, is read first
NESTED_PROCESSOR_CONFIG_NAME = "processor_config.json"
#: key of ``preprocessor_config.json`` with which a PIL-backend processor says so (transformers ignores it)
BACKEND_KEY = "vitmsn_backend"
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

#: every filter of this Pillow (NEAREST, BOX, BILINEAR, HAMMING, BICUBIC, LANCZOS; Pillow 13 adds MKS2013)
_RESAMPLE_NAMES = {member.name.lower(): int(member) for member in PIL.Image.Resampling}
# PIL filter -> (torch interpolate mode, antialias) for the torch backend (BOX and HAMMING have none, as in
# transformers' torchvision backend).
_TORCH_MODES = {
    int(PIL.Image.Resampling.NEAREST): ("nearest-exact", False),
    int(PIL.Image.Resampling.BILINEAR): ("bilinear", True),
    int(PIL.Image.Resampling.BICUBIC): ("bicubic", True),
    int(PIL.Image.Resampling.LANCZOS): ("lanczos", True),
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
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
    "do_pad",
    "pad_size",
)
#: keyword arguments that from_dict / from_pretrained pass on as settings: the constructor's, and the other
#: names of transformers 5's ``ImagesKwargs`` (kept as attributes, as transformers keeps them)
_SETTING_KEYS = frozenset({
    *_CALL_OPTIONS, "backend", "fast", "default_to_square", "data_format",
    "input_data_format", "device", "return_tensors", "disable_grouping", "image_seq_length",
})
#: what transformers 5's ``ImageProcessingMixin.from_pretrained`` takes for itself (never a setting, never
#: "unused"); ``use_auth_token`` (transformers 4's name of ``token``) and ``use_fast`` are used here too
_PROCESSOR_LOADER_KEYS = frozenset({
    "cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "subfolder",
    "image_processor_filename", "_from_pipeline", "_from_auto", "use_auth_token", "use_fast",
})
#: likewise for transformers 5's ``AutoImageProcessor.from_pretrained`` (``_from_pipeline`` is not one of them)
_AUTO_LOADER_KEYS = frozenset({
    "config", "cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "subfolder",
    "image_processor_filename", "processor_config", "use_fast", "backend", "trust_remote_code", "code_revision",
    "_commit_hash", "use_auth_token",
})


def _is_array_like(value: Any) -> bool:
    """Whether ``convert_to_tensors`` converts ``value`` (arrays, tensors, numbers, and lists of those)."""
    if isinstance(value, np.ndarray | torch.Tensor | int | float | bool | np.number):
        return True
    if isinstance(value, list | tuple):
        return len(value) == 0 or _is_array_like(value[0])
    return False


def _tensor_type_name(tensor_type: Any) -> str | None:
    """``"pt"`` / ``"np"`` / None from a string or transformers' ``TensorType`` member."""
    name = getattr(tensor_type, "value", tensor_type)
    if name is None:
        return None
    name = str(name).lower()
    if name not in ("pt", "np"):
        raise ValueError(f"Unsupported tensor type {tensor_type!r}; use 'pt', 'np' or None.")
    return name


class BatchFeature(dict):
    """A ``dict`` of model inputs, with what transformers' ``BatchFeature`` adds: attribute access
    (``inputs.pixel_values``), ``.data``, ``.convert_to_tensors(tensor_type)`` and ``.to(device or dtype)``.

    Args:
        data: The entries.
        tensor_type: ``"pt"`` or ``"np"`` to convert the entries at once (see :meth:`convert_to_tensors`).
        skip_tensor_conversion: Keys that are never converted.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, tensor_type: Any = None,
                 skip_tensor_conversion: list[str] | set[str] | None = None) -> None:
        super().__init__(data or {})
        self.skip_tensor_conversion = skip_tensor_conversion
        self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data(self) -> BatchFeature:
        """The entries, as transformers' ``BatchFeature.data`` (here the mapping itself: a ``dict``)."""
        return self

    @data.setter
    def data(self, value: Mapping[str, Any]) -> None:
        entries = dict(value)
        self.clear()
        self.update(entries)

    def convert_to_tensors(self, tensor_type: Any = None,
                           skip_tensor_conversion: list[str] | set[str] | None = None) -> BatchFeature:
        """Convert the array-like entries to torch tensors (``"pt"``) or numpy arrays (``"np"``), in place, as
        transformers does: lists of tensors or arrays are stacked; ``None`` changes nothing. Entries that are
        not array-like (strings, dicts, ...) and the keys of ``skip_tensor_conversion`` are left as they are."""
        name = _tensor_type_name(tensor_type)
        if name is None:
            return self
        skip = skip_tensor_conversion if skip_tensor_conversion is not None else self.skip_tensor_conversion
        for key, value in list(self.items()):
            if (skip and key in skip) or not _is_array_like(value):
                continue
            try:
                self[key] = _to_torch(value) if name == "pt" else _to_numpy(value)
            except Exception as err:
                raise ValueError(
                    f"Unable to convert output {key!r} (type: {type(value).__name__}) to a tensor: {err}. Images of "
                    "different output sizes cannot be stacked: use a fixed {'height', 'width'} size or "
                    "return_tensors=None."
                ) from err
        return self

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """``Tensor.to(*args, **kwargs)`` for every tensor (also inside lists and tuples), as transformers does:
        dtype casts only apply to floating-point tensors, the others only move to the device; the first
        argument must be a device (str, int, ``torch.device``) or a dtype."""
        device = kwargs.get("device")
        if device is None and args:
            first = args[0]
            if isinstance(first, str | int | torch.device) and not isinstance(first, bool):
                device = first
            elif not isinstance(first, torch.dtype):
                raise ValueError(f"Attempting to cast a BatchFeature to type {first}. This is not supported.")
        non_blocking = kwargs.get("non_blocking", False)

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if torch.is_floating_point(value):
                    return value.to(*args, **kwargs)
                return value.to(device=device, non_blocking=non_blocking) if device is not None else value
            if isinstance(value, list | tuple):
                return type(value)(move(v) for v in value)
            return value

        for key, value in list(self.items()):
            self[key] = move(value)
        return self


def _to_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple) and value and isinstance(value[0], torch.Tensor):
        return torch.stack(list(value))
    if isinstance(value, list | tuple) and value and (
        isinstance(value[0], np.ndarray)
        or (isinstance(value[0], list | tuple) and value[0] and isinstance(value[0][0], np.ndarray))
    ):
        value = np.array(value)
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.tensor(value)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple) and isinstance(value[0], list | tuple | np.ndarray):  # [] fails, as there
        if len({len(v) for v in value}) > 1:  # ragged: an array of arrays
            ragged = np.empty(len(value), dtype=object)
            ragged[:] = [np.asarray(v) for v in value]
            return ragged
    return np.asarray(value)


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


class SizeDict(dict):
    """A size as a dict (``{"height": 224, "width": 224}``) whose keys also read as attributes
    (``size.height``), as transformers 5's ``SizeDict``; a key it does not hold reads as None."""

    _FIELDS = frozenset({"height", "width", "shortest_edge", "longest_edge", "max_height", "max_width",
                         "min_pixels", "max_pixels"})

    def __getattr__(self, name: str) -> Any:
        if name in SizeDict._FIELDS:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _standardize_size(size: Any, default_to_square: bool = True, name: str = "size") -> SizeDict:
    """``int`` -> square (or shortest edge if not ``default_to_square``); ``(h, w)``; or a valid size dict
    (``name``: the argument's, for the errors)."""
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        out = {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    elif isinstance(size, list | tuple) and len(size) == 2:
        out = {"height": size[0], "width": size[1]}
    elif isinstance(size, Mapping):
        out = {k: v for k, v in size.items() if v is not None}
        if frozenset(out) not in _SIZE_KEY_SETS:
            raise ValueError(
                f"{name} must have keys {{'height', 'width'}}, {{'shortest_edge'}}, {{'shortest_edge', "
                f"'longest_edge'}} or {{'max_height', 'max_width'}}; got {dict(size)!r}."
            )
    else:
        raise ValueError(f"{name} must be an int, a (height, width) pair or a dict; got {size!r}.")
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name}[{key!r}] must be a positive int; got {value!r}.")
        out[key] = int(value)
    return SizeDict(out)


def _pad_size_error(pad_size: Any) -> ValueError:
    """The error for a ``pad_size`` that cannot be padded to."""
    return ValueError(
        "pad_size must be {'height': h, 'width': w} (or an int for a square, or a (height, width) pair) to pad "
        f"to; got {pad_size!r}."
    )


def _standardize_pad_size(pad_size: Any) -> dict[str, int] | None:
    """``pad_size`` as kept and saved: None, or a size dict (an int is a square, a pair (height, width)).

    As in transformers, the other size dicts (``{"shortest_edge"}``, ...) are accepted here and refused only when
    padding (:func:`_pad_target`): a file that has one and does not pad loads."""
    if pad_size is None:
        return None
    if isinstance(pad_size, Mapping) and frozenset(k for k, v in pad_size.items() if v is not None) not in _SIZE_KEY_SETS:
        raise _pad_size_error(dict(pad_size))
    return _standardize_size(pad_size, name="pad_size")


def _standardize_stats(value: Any, name: str) -> tuple[float, ...] | float:
    """``image_mean`` / ``image_std`` as a float or a tuple of floats; they must be finite, and a std nonzero
    (it divides: a 0 would make every pixel inf or nan)."""
    try:
        out = float(value) if isinstance(value, int | float | np.number) else tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float or a sequence of floats; got {value!r}.") from None
    values = out if isinstance(out, tuple) else (out,)
    if not all(np.isfinite(v) for v in values) or (name == "image_std" and 0.0 in values):
        raise ValueError(f"{name} must be finite{' and nonzero' if name == 'image_std' else ''}; got {value!r}.")
    return out


def _standardize_backend(backend: str | None, fast: bool | None, default: str = "torch") -> str:
    """``"torch"`` or ``"pil"`` from ``backend`` (also transformers' names ``"torchvision"``), else from ``fast``
    (True: torch, False: pil), else ``default``."""
    if backend is None:
        return default if fast is None else ("torch" if fast else "pil")
    name = str(backend).lower()
    if name in ("torch", "torchvision", "fast"):
        if fast is False:
            raise ValueError(f"fast=False conflicts with backend={backend!r}.")
        return "torch"
    if name in ("pil", "numpy", "slow"):
        if fast:
            raise ValueError(f"fast=True conflicts with backend={backend!r}.")
        return "pil"
    raise ValueError(f"Unknown backend {backend!r}; use 'torch' (transformers 5's default) or 'pil'.")


def _backend_of_config(config: Mapping[str, Any]) -> str | None:
    """The backend a saved config asks for, or None (then the loader's default): vitmsn's :data:`BACKEND_KEY`,
    else ``"pil"`` for an ``image_processor_type`` of ``"ViTImageProcessorPil"`` and ``"torch"`` for
    ``"ViTImageProcessorFast"`` (transformers 4's fast class)."""
    if config.get(BACKEND_KEY) is not None:
        return _standardize_backend(config[BACKEND_KEY], None)
    kind = config.get("image_processor_type")
    return {"ViTImageProcessorPil": "pil", "ViTImageProcessorFast": "torch"}.get(kind)


# ---------------------------------------------------------------------------------------------------------
# Input handling: any supported input -> list of channels-first numpy arrays
# ---------------------------------------------------------------------------------------------------------


def _is_image(x: Any) -> bool:
    return isinstance(x, PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike)


#: seconds to wait for an image URL's server
URL_TIMEOUT = 30.0


def _read_source(source: str | os.PathLike[str]) -> tuple[bytes | str, str]:
    """An image given by name -> (what ``PIL.Image.open`` reads: a file path or the bytes, a name for errors):
    a local file, an http(s) URL (downloaded), or base64 data (with or without a ``data:image/...`` prefix),
    as transformers' ``load_image`` takes them."""
    import base64
    import binascii

    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        import http.client
        import urllib.error
        import urllib.request

        from vitmsn import __version__

        request = urllib.request.Request(text, headers={"User-Agent": f"vitmsn/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
                return response.read(), text
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", None) or err or type(err).__name__
            raise ValueError(f"Could not download the image {text}: {reason}") from None
    if os.path.isfile(text):
        return text, text
    if not isinstance(source, str) or os.path.exists(text):
        raise ValueError(f"Image {text!r} is not a file.")
    data = "".join((text.split(",", 1)[1] if text.startswith("data:image/") else text).split())  # lines of 76
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        return base64.b64decode(data, validate=True), f"{shown!r} (no such file; read as base64 image data)"
    except (binascii.Error, ValueError):
        raise ValueError(
            f"Image {shown!r} is neither a file, nor a URL starting with http:// or https://, nor base64 image "
            "data."
        ) from None


def _open_source(source: str | os.PathLike[str]) -> PIL.Image.Image:
    """An image given by name (see :func:`_read_source`), decoded, turned upright by its EXIF orientation and
    converted to RGB, as transformers' ``load_image`` does."""
    import io

    import PIL.ImageOps

    data, name = _read_source(source)
    try:
        with PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image).convert("RGB")
    except PIL.UnidentifiedImageError:
        raise ValueError(f"Cannot read {name}: not an image format Pillow recognises.") from None
    except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read {name}: {err}") from None


def _flatten_images(images: Any) -> list[Any]:
    """A single image, a batched array/tensor, or (nested) lists of those -> a flat list of single images.
    Images given by name (paths, URLs, base64 data) are read here."""
    if isinstance(images, str | os.PathLike):
        return [_open_source(images)]
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
                    "numpy.ndarray, torch.Tensor, or a file path, URL or base64 string."
                )
        return flat
    raise ValueError(
        f"Unsupported image type {type(images).__name__}; expected a PIL.Image.Image, numpy.ndarray, "
        "torch.Tensor, or a file path, URL or base64 string, or a list of them."
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


#: PIL modes of three 8-bit bands that transformers reads as they are unless asked to convert them to RGB
_THREE_BANDS = frozenset({"RGB", "YCbCr", "LAB", "HSV"})


def _pil_to_rgb(image: PIL.Image.Image, do_convert_rgb: bool | None) -> PIL.Image.Image:
    """The PIL image whose pixels are used: RGB (transparency composited on white) unless
    ``do_convert_rgb=False``; an image of three bands (RGB, YCbCr, LAB, HSV) as it is unless
    ``do_convert_rgb=True`` (which converts them, and composites the transparent colour some RGB images
    carry), as transformers reads them."""
    if do_convert_rgb is False or (do_convert_rgb is None and image.mode in _THREE_BANDS):
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


def _crop_axis(length: int, crop: int, pad_ceil: bool) -> tuple[int, int, int]:
    """Center crop of one axis of ``length`` to ``crop``: (start in the source, start in the output, count).

    A crop larger than the axis pads it with zeros: transformers' PIL backend puts the extra odd pixel before
    the image (``pad_ceil``), its torchvision backend after it."""
    if crop <= length:
        return (length - crop) // 2, 0, crop
    pad = crop - length
    return 0, (pad + 1) // 2 if pad_ceil else pad // 2, length


def _crop_plan(height: int, width: int, crop: tuple[int, int], pad_ceil: bool) -> tuple[slice, slice, slice, slice] | None:
    """(source rows, source columns, output rows, output columns) of a center crop of (height, width) to
    ``crop``; None when the crop lies inside the image (then the source slices alone are the crop)."""
    (sh, dh, nh), (sw, dw, nw) = _crop_axis(height, crop[0], pad_ceil), _crop_axis(width, crop[1], pad_ceil)
    plan = slice(sh, sh + nh), slice(sw, sw + nw), slice(dh, dh + nh), slice(dw, dw + nw)
    return plan if (nh, nw) != crop else None


def _center_crop_np(chw: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *crop) as transformers' PIL backend crops (zero padding where the crop is larger)."""
    height, width = chw.shape[1:]
    plan = _crop_plan(height, width, crop, pad_ceil=True)
    if plan is None:
        top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
        return chw[:, top:top + crop[0], left:left + crop[1]]
    rows, cols, out_rows, out_cols = plan
    out = np.zeros((chw.shape[0], *crop), dtype=chw.dtype)
    out[:, out_rows, out_cols] = chw[:, rows, cols]
    return out


def _center_crop_torch(batch: torch.Tensor, crop: tuple[int, int], pad_ceil: bool = False) -> torch.Tensor:
    """(..., H, W) -> (..., *crop) as transformers' torchvision backend crops (zero padding where the crop is
    larger, its extra odd pixel after the image; ``pad_ceil``: before it, as the PIL backend pads)."""
    height, width = batch.shape[-2:]
    plan = _crop_plan(height, width, crop, pad_ceil=pad_ceil)
    if plan is None:
        top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
        return batch[..., top:top + crop[0], left:left + crop[1]]
    rows, cols, out_rows, out_cols = plan
    out = batch.new_zeros((*batch.shape[:-2], *crop))
    out[..., out_rows, out_cols] = batch[..., rows, cols]
    return out


def _crop_hw(crop_size: Mapping[str, int] | None) -> tuple[int, int]:
    """``crop_size`` as (height, width); it must be a ``{"height", "width"}`` size, as in transformers."""
    if crop_size is None:
        raise ValueError("`crop_size` must be specified if `do_center_crop` is `True`.")
    if "height" not in crop_size or "width" not in crop_size:
        raise ValueError(f"The crop_size dictionary must have keys 'height' and 'width'. Got {dict(crop_size)}.")
    return crop_size["height"], crop_size["width"]


def _pad_target(pad_size: Mapping[str, int] | None, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) that ``do_pad`` brings every image of a batch to, given each one's processed (height,
    width): ``pad_size``'s, or without it the batch's largest height and largest width (apart)."""
    if pad_size is None:
        return max(h for h, _ in sizes), max(w for _, w in sizes)
    if set(pad_size) != {"height", "width"}:
        raise _pad_size_error(dict(pad_size))
    target = pad_size["height"], pad_size["width"]
    for i, (h, w) in enumerate(sizes):
        if h > target[0] or w > target[1]:
            raise ValueError(
                f"pad_size={dict(pad_size)} is smaller than image {i} of the batch, which is {h} x {w} (height x "
                "width) before padding. Padding only adds zeros at the bottom and right: pad_size must be at least "
                "the size of every processed image (or None: the batch's largest)."
            )
    return target


def _pad_np(chw: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, *target) with zeros below and to the right (as transformers' PIL backend pads)."""
    if chw.shape[1:] == target:
        return chw
    out = np.zeros((chw.shape[0], *target), dtype=chw.dtype)
    out[:, :chw.shape[1], :chw.shape[2]] = chw
    return out


def _pad_torch(chw: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) -> (C, *target) with zeros below and to the right (as transformers' torchvision backend pads)."""
    if tuple(chw.shape[1:]) == target:
        return chw
    out = chw.new_zeros((chw.shape[0], *target))
    out[:, :chw.shape[1], :chw.shape[2]] = chw
    return out


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


def _torch_mode(resample: int, device: torch.device) -> tuple[str, bool]:
    """(interpolate mode, antialias) of the torch backend for a PIL filter, with transformers' fallback:
    LANCZOS becomes BICUBIC (with a warning) off the CPU or where torch has no ``"lanczos"`` mode."""
    if resample not in _TORCH_MODES:
        raise ValueError(
            f"resample={PIL.Image.Resampling(resample).name} is not available with backend='torch' (nor in "
            "transformers' torchvision backend); use NEAREST, BILINEAR, BICUBIC or LANCZOS, or backend='pil'."
        )
    mode, antialias = _TORCH_MODES[resample]
    if mode == "lanczos" and (device.type != "cpu" or not _has_lanczos()):
        warnings.warn(
            "LANCZOS resampling on the torch backend needs the CPU and a torch whose interpolate has a 'lanczos' "
            "mode; falling back to BICUBIC, which approximates it (transformers' torchvision backend does the "
            "same). For LANCZOS itself, process on the CPU with a recent torch, or use backend='pil'.",
            UserWarning,
            stacklevel=4,
        )
        return _TORCH_MODES[int(PIL.Image.Resampling.BICUBIC)]
    return mode, antialias


_LANCZOS: list[bool] = []  # whether F.interpolate has mode="lanczos", found out once


def _has_lanczos() -> bool:
    if not _LANCZOS:
        try:
            F.interpolate(torch.zeros(1, 1, 4, 4), size=(2, 2), mode="lanczos", antialias=True, align_corners=False)
            _LANCZOS.append(True)
        except (NotImplementedError, ValueError, RuntimeError, TypeError):
            _LANCZOS.append(False)
    return _LANCZOS[0]


def _torch_resize(batch: torch.Tensor, out_hw: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    """Resize (B, C, H, W) with ``F.interpolate`` (``mode``, ``antialias``: from :func:`_torch_mode`). uint8
    batches use torch's uint8 kernel when available (on CPU it follows PIL's fixed-point arithmetic closely);
    otherwise resize in float32 and, for uint8 input, round and clip back to integer levels as PIL does."""
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


def _output_shapes(arrays: list[np.ndarray | PIL.Image.Image], size: Mapping[str, int], do_resize: bool,
                   crop: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
    """The (C, h, w) each (C, H, W) image comes out as before padding (``crop``: the center crop's (h, w), if
    any)."""
    return [(c, *(crop or (_output_size(size, h, w) if do_resize else (h, w)))) for c, h, w in map(_chw_shape, arrays)]


def _common_output_shape(arrays: list[np.ndarray | PIL.Image.Image], size: Mapping[str, int],
                         do_resize: bool, crop: tuple[int, int] | None = None,
                         pad_to: tuple[int, int] | None = None) -> tuple[int, int, int] | None:
    """The (C, h, w) every (C, H, W) image comes out as (``crop``: the center crop's (h, w), if any; ``pad_to``:
    the (h, w) of every image once padded, if padded), or None if they come out in different shapes."""
    if pad_to is not None:
        shapes = {(c, *pad_to) for c, _, _ in map(_chw_shape, arrays)}
    else:
        shapes = set(_output_shapes(arrays, size, do_resize, crop))
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
    r"""Resize, (center crop,) rescale and normalize images for ViT / ViT-MSN models (transformers-compatible).

    As transformers 5's ``ViTImageProcessor``, it uses the torch backend unless told otherwise (``backend``,
    ``fast``); :class:`ViTImageProcessorPil` is the PIL one. Loaded with :meth:`from_pretrained`, it takes the
    backend the file asks for (see the module docstring), else the torch one.

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
        do_convert_rgb: ``None`` (default): convert grayscale / RGBA / palette images to RGB and leave images of
            three bands as they are (RGB; YCbCr, LAB and HSV PIL images give their own bands, as in
            transformers); ``True``: always convert to RGB (also composites RGB PIL images that carry
            transparency); ``False``: never convert.
        do_center_crop: After resizing, crop the center ``crop_size`` of each image (as transformers 5 does in
            both backends; transformers 4.x's PIL ``ViTImageProcessor`` ignores it). A crop larger than the image
            pads it with zeros (before rescaling and normalizing), as each transformers backend does.
        crop_size: The crop's size: ``int`` (square), ``(h, w)`` or ``{"height", "width"}``.
        do_pad: Last of all (after rescaling and normalizing), pad each image with zeros at the bottom and right
            to ``pad_size``, so that images of different sizes (e.g. ``do_resize=False``) make one batch. As in
            both transformers 5 backends and transformers 4.x's ``ViTImageProcessorFast``; transformers 4.x's PIL
            ``ViTImageProcessor`` ignores it.
        pad_size: The size padded to: ``int`` (square), ``(h, w)`` or ``{"height", "width"}``, at least the size
            of every processed image; None (default): the largest height and the largest width of the batch.
        backend: ``"torch"`` (default; also ``"torchvision"``): batched ``F.interpolate`` (antialiased bilinear /
            bicubic / lanczos, ``nearest-exact``), transformers 5's default numbers. ``"pil"``: per-image PIL
            resizing, bit for bit transformers' PIL backend. They differ by at most one uint8 level on a few
            pixels for uint8 inputs (see the module docstring). BOX and HAMMING (and Pillow 13's MKS2013) are
            only available with ``"pil"`` (the torch backend raises when it would resize with them, as
            transformers' torchvision backend does); LANCZOS on the torch backend falls back to BICUBIC, with a
            warning, off the CPU or with a torch that has no lanczos interpolation, as transformers does.
        fast: ``True``: ``backend="torch"``; ``False``: ``backend="pil"`` (transformers 4's ``use_fast``).
        **kwargs: Unknown keys are kept as attributes and saved by ``save_pretrained``.
    """

    model_input_names = ["pixel_values"]
    #: the backend of this class: None for the file's (else torch) in from_pretrained / from_dict
    _class_backend: str | None = None

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
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_pad: bool | None = None,
        pad_size: int | Sequence[int] | Mapping[str, int] | None = None,
        backend: str | None = None,
        fast: bool | None = None,
        **kwargs: Any,
    ) -> None:
        default_to_square = kwargs.pop("default_to_square", True)
        # a saved file's choice of backend (a config passed as keywords, e.g. by from_dict)
        asked = _backend_of_config(kwargs) if self._class_backend is None else None
        kwargs.pop(BACKEND_KEY, None)
        for key in _SERVICE_KEYS:
            kwargs.pop(key, None)
        self.do_resize = bool(do_resize)
        self.size = _standardize_size(
            size if size is not None else {"height": 224, "width": 224}, default_to_square
        )
        self.resample = _standardize_resample(resample)
        self.do_center_crop = None if do_center_crop is None else bool(do_center_crop)
        self.crop_size = crop_size  # (sizes are standardised on assignment: see __setattr__)
        self.do_pad = None if do_pad is None else bool(do_pad)
        self.pad_size = pad_size
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
        self.backend = _standardize_backend(backend, fast, self._class_backend or asked or "torch")
        self._extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            self._set_extra(key, value, stacklevel=3)

    def __setattr__(self, name: str, value: Any) -> None:
        # sizes set after construction (an int, a pair) are kept as the constructor keeps them: a SizeDict
        if name in ("size", "crop_size") and value is not None:
            value = _standardize_size(value, name=name)
        elif name == "pad_size":
            value = _standardize_pad_size(value)
        super().__setattr__(name, value)

    def _set_extra(self, key: str, value: Any, stacklevel: int = 2) -> bool:
        """Keep an unknown key as an attribute (saved by ``save_pretrained``), unless it would shadow a method or
        a private attribute; whether it was kept."""
        own = getattr(type(self), key, None)
        if key.startswith("_") or callable(own) or isinstance(own, property):
            warnings.warn(f"Ignoring config key {key!r}: it would shadow a method.", UserWarning,
                          stacklevel=stacklevel + 1)
            return False
        self._extra[key] = value
        setattr(self, key, value)
        return True

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
                (B, C, H, W) / (B, H, W, C), uint8 or float, an image file's path, an http(s) URL or base64
                image data (read as transformers' ``load_image`` reads them: upright by their EXIF
                orientation, RGB), or a (nested) list of these.
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
            **overrides: Any of ``do_resize, size, resample, do_center_crop, crop_size, do_rescale,
                rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb, do_pad, pad_size`` for this
                call only.
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
        crop = None
        if opts["do_center_crop"]:
            crop = _crop_hw(_standardize_size(opts["crop_size"], name="crop_size") if "crop_size" in overrides
                            else self.crop_size)

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
        pad_to = None  # with do_pad: the (height, width) every image is padded to
        if opts["do_pad"]:
            pad_size = _standardize_pad_size(opts["pad_size"]) if "pad_size" in overrides else self.pad_size
            pad_to = _pad_target(pad_size, [(h, w) for _, h, w in _output_shapes(arrays, size, opts["do_resize"], crop)])

        if self.backend == "torch":
            pixel_values = self._run_torch(
                arrays, opts["do_resize"], size, resample, opts["do_rescale"], rescale_factor,
                opts["do_normalize"], mean, std, device, crop, pad_to,
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
            shape = _common_output_shape(arrays, size, opts["do_resize"], crop, pad_to)
            dtypes = {_pil_output_dtype(chw, opts["do_resize"], opts["do_rescale"], opts["do_normalize"])
                      for chw in arrays}
            out_dtype = dtypes.pop() if len(dtypes) == 1 else None
            # one output batch when every image comes out the same size: no stacking copy afterwards (padded:
            # zeros, each image written into its top left corner)
            whole = ((np.empty if pad_to is None else np.zeros)((len(arrays), *shape), dtype=out_dtype)
                     if shape is not None and out_dtype is not None and return_tensors is not None else None)
            pixel_values: list[np.ndarray] = [None] * len(arrays)  # type: ignore[list-item]
            tables: dict[int, np.ndarray] = {}  # channels -> (C, 256), made once per call
            tables_lock = threading.Lock()

            def one(i: int) -> None:
                chw = arrays[i]
                if opts["do_resize"]:
                    chw = _pil_resize(chw, _output_size(size, *_chw_shape(chw)[1:]), resample)
                if crop is not None:
                    chw = _center_crop_np(chw, crop)
                target = None if whole is None else whole[i]
                if target is not None and pad_to is not None:
                    target = target[:, :chw.shape[1], :chw.shape[2]]
                if chw.dtype == np.uint8 and convert:
                    with tables_lock:
                        if chw.shape[0] not in tables:
                            tables[chw.shape[0]] = _level_table(rescale_normalize, chw.shape[0])
                    chw = _through_table(chw, tables[chw.shape[0]], out=target)
                else:
                    # without rescale and normalize a copy: not a view of the caller's array
                    chw = rescale_normalize(chw) if convert else chw.copy()
                    if target is not None:
                        target[...] = chw
                if pad_to is not None and whole is None:
                    chw = _pad_np(chw, pad_to)
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
        crop: tuple[int, int] | None = None,
        pad_to: tuple[int, int] | None = None,
    ) -> list[torch.Tensor] | torch.Tensor:
        """Batched resize/(center crop)/rescale/normalize(/pad to ``pad_to``) with torch; images of equal shape
        and kind are resized together.

        Returns one (B, C, h, w) tensor when every image comes out the same size and dtype, else a list of
        (C, h, w). The dtype is float32 unless ``do_normalize=False``; then it is the input's, as transformers'
        torchvision backend gives it: the pixels' own without ``do_rescale``, a float input's own with it."""
        if do_resize:  # the filter is checked (and LANCZOS may fall back) before any work
            mode, antialias = _torch_mode(resample, torch.device("cpu" if device is None else device))
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, chw in enumerate(arrays):
            is_int = not np.issubdtype(chw.dtype, np.floating)
            dtype = _torch_output_dtype(chw.dtype, do_rescale, do_normalize)
            groups.setdefault((chw.shape, is_int, dtype), []).append(i)
        common = _common_output_shape(arrays, size, do_resize, crop, pad_to)
        dtypes = {dtype for _, _, dtype in groups}
        # one output batch when every image comes out the same size: no stacking copy afterwards (padded: zeros,
        # each image written into its top left corner)
        whole = ((torch.empty if pad_to is None else torch.zeros)((len(arrays), *common), dtype=dtypes.pop(),
                                                                   device=device)
                 if common is not None and len(dtypes) == 1 else None)
        out: list[torch.Tensor | None] = [None] * len(arrays)
        for (shape, is_int, dtype), idx in groups.items():
            batch = _stack_channels_last([arrays[i] for i in idx])  # (b, C, H, W), channels-last in memory
            if device is not None:
                batch = batch.to(device)
            if do_resize:
                # torch's uint8 antialiased kernel works on channels-last images (faster than channels-first: bench/parts.py, rows "resize")
                resized = _torch_resize(batch, _output_size(size, shape[1], shape[2]), mode, antialias)
                # other integers resize in float32 and are rounded to integers, as torchvision resizes them
                # (transformers' torch backend), whatever their range
                batch = resized.round_() if is_int and batch.dtype != torch.uint8 else resized
            if crop is not None:
                batch = _center_crop_torch(batch, crop)
            # where each image goes in whole, if anywhere: (C, h, w), padded ones in its top left corner
            height, width = batch.shape[-2:]
            slots = ([None] * len(idx) if whole is None else [whole[i] for i in idx] if pad_to is None
                     else [whole[i, :, :height, :width] for i in idx])
            if dtype != torch.float32:  # do_normalize=False and a non-float32 output (rare: made simply)
                for j, i in enumerate(idx):
                    value = batch[j].to(dtype)
                    value = value * rescale_factor if do_rescale else value
                    target = slots[j]
                    out[i] = target.copy_(value) if target is not None else value.contiguous()
                    if pad_to is not None and target is None:
                        out[i] = _pad_torch(out[i], pad_to)
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
                target = slots[j]
                out[i] = torch.addcmul(shift, batch[j].float(), scale, out=target)
                if pad_to is not None and target is None:
                    out[i] = _pad_torch(out[i], pad_to)
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
        if self.do_center_crop is not None:
            out["do_center_crop"] = self.do_center_crop
        if self.crop_size is not None:
            out["crop_size"] = dict(self.crop_size)
        if self.do_pad is not None:
            out["do_pad"] = self.do_pad
        if self.pad_size is not None:
            out["pad_size"] = dict(self.pad_size)
        if self.backend == "pil":  # so that vitmsn loads it with this backend again (transformers ignores it)
            out[BACKEND_KEY] = "pil"
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
    def from_dict(cls, image_processor_dict: Mapping[str, Any], /, **kwargs: Any) -> Any:
        """Build from a config dict (as found in ``preprocessor_config.json``), as transformers does: keyword
        arguments that are settings (the constructor's, and transformers' image-processor options) replace the
        config's values, and those naming an attribute the processor already has (e.g. a key of the config) set
        it; the others are not kept. ``return_unused_kwargs=True`` returns ``(processor, unused)``, ``unused``
        the keyword arguments that were not used."""
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        processor, unused = cls._build(image_processor_dict, kwargs)
        return (processor, unused) if return_unused_kwargs else processor

    @classmethod
    def _build(cls, config: Mapping[str, Any], kwargs: Mapping[str, Any]) -> tuple[ViTImageProcessor, dict[str, Any]]:
        """(processor, unused keyword arguments) for :meth:`from_dict`: settings go to the constructor, then
        keys of attributes the processor has are set, as transformers' ``from_dict`` does."""
        merged = dict(config)
        rest: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in _SETTING_KEYS:
                merged[key] = value
            else:
                rest[key] = value
        processor = cls(**merged)
        unused = {}
        for key, value in rest.items():
            if not (hasattr(processor, key) and processor._set_extra(key, value, stacklevel=4)):
                unused[key] = value
        return processor, unused

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
        **kwargs: Any,
    ) -> Any:
        """Load from a directory, a ``preprocessor_config.json`` file, or a Hub repo id.

        Hub ids are resolved with :func:`vitmsn.hub.resolve_file` (honours ``HF_HUB_OFFLINE`` and the Hub cache);
        ``subfolder`` is a folder of the directory or repository that holds the file, ``image_processor_filename``
        another name for the file. The backend is ``backend`` / ``use_fast`` if given (``use_fast=False``:
        ``"pil"``), else the class's (:class:`ViTImageProcessorPil`, :class:`ViTImageProcessorFast`), else the one
        the file asks for (see the module docstring), else ``"torch"``.

        Other keyword arguments are handled as by transformers 5: settings (``size=384``, ``do_center_crop``,
        ...) replace the file's values, keys of attributes the processor has set them, and the rest (``foo=1``,
        ``trust_remote_code``, ``proxies``, ...) is not kept as settings (nor saved).
        ``return_unused_kwargs=True`` returns ``(processor, unused)``, ``unused`` the keyword arguments that had
        no use here, as transformers' (e.g. ``{"foo": 1, "trust_remote_code": True}``; ``use_fast`` and
        ``use_auth_token`` are used here).
        """
        hub = _hub_kwargs(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in _PROCESSOR_LOADER_KEYS}
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
        if use_fast is not None and kwargs.get("backend") is None and kwargs.get("fast") is None:
            kwargs["fast"] = bool(use_fast)  # backend wins, as in transformers
        try:
            return cls.from_dict(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        except ValueError as e:
            raise ValueError(f"the image processor of {pretrained_model_name_or_path}: {e}") from None

    def __repr__(self) -> str:
        default = self._class_backend or "torch"
        backend = "" if self.backend == default else f"(backend={self.backend!r})"
        return f"{type(self).__name__}{backend} {self.to_json_string()}"


class ViTImageProcessorPil(ViTImageProcessor):
    """:class:`ViTImageProcessor` with the PIL backend by default (transformers 5's name for it): bit for bit
    transformers' PIL numbers (``ViTImageProcessorPil`` of 5.x, ``ViTImageProcessor`` of 4.x)."""

    _class_backend = "pil"


class ViTImageProcessorFast(ViTImageProcessor):
    """:class:`ViTImageProcessor` with the torch backend by default (transformers 4's name for its torchvision
    processor)."""

    _class_backend = "torch"


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
            "{'shortest_edge': ...} keeps aspect ratios); use a fixed {'height', 'width'} size, do_pad=True (zeros "
            "at the bottom and right) or return_tensors=None."
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


def _hub_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`load_processor_config` among from_pretrained's extra keywords
    (``image_processor_filename``; ``use_auth_token``, the old name of ``token``)."""
    hub: dict[str, Any] = {}
    if "image_processor_filename" in kwargs:
        hub["filename"] = kwargs["image_processor_filename"]
    if "use_auth_token" in kwargs:
        hub["use_auth_token"] = kwargs["use_auth_token"]
    return hub


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

    As transformers 5's ``AutoImageProcessor``, it gives the torch backend (transformers' torchvision one, a
    :class:`ViTImageProcessor`) unless ``backend="pil"`` or ``use_fast=False`` is passed (then a
    :class:`ViTImageProcessorPil`, bit for bit transformers' PIL numbers) or the file asks for the PIL backend:
    a processor saved by vitmsn with ``backend="pil"`` (its ``"vitmsn_backend": "pil"``), or an
    ``image_processor_type`` of ``"ViTImageProcessorPil"``.
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
        **kwargs: Any,
    ) -> Any:
        """Read the config, check it describes a ViT processor, and build a :class:`ViTImageProcessor` (torch
        backend) or :class:`ViTImageProcessorPil`.

        ``backend``: ``"torch"`` (also ``"torchvision"``) or ``"pil"``; ``use_fast=True`` / ``False`` mean the
        same; without either, the backend the file asks for, else ``"torch"``. ``processor_config``: a config
        dict to use instead of reading one. Other keyword arguments are handled as by transformers 5:
        settings replace the file's values; loader arguments (``subfolder``, ``trust_remote_code``,
        ``config``, ...) are used or dropped, never kept as settings; ``return_unused_kwargs=True`` returns
        ``(processor, unused)``, ``unused`` the keyword arguments that had no use (e.g. ``{"foo": 1}``).
        """
        hub = _hub_kwargs(kwargs)
        config = kwargs.get("processor_config")
        kwargs = {k: v for k, v in kwargs.items() if k not in _AUTO_LOADER_KEYS}
        if config is None:
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
        fast = kwargs.pop("fast", None) if use_fast is None else use_fast  # backend wins, as in transformers
        chosen = _standardize_backend(backend, None if backend is not None else fast,
                                      _backend_of_config(config) or "torch")
        processor_class = ViTImageProcessorPil if chosen == "pil" else ViTImageProcessor
        try:
            return processor_class.from_dict(config, backend=chosen, return_unused_kwargs=return_unused_kwargs,
                                             **kwargs)
        except ValueError as e:
            raise ValueError(f"the image processor of {pretrained_model_name_or_path}: {e}") from None


AutoFeatureExtractor = AutoImageProcessor
