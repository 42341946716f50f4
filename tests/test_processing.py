"""ViTImageProcessor: parity with transformers' PIL backend (``backend="pil"``) and torchvision backend (the
default, ``backend="torch"``), I/O format, errors, offline hub ids. Default backends, saved files, center crop,
resample filters, BatchFeature and from_pretrained's unused keywords: tests/test_processing_backends.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vitmsn.hub import resolve_file
from vitmsn.processing import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    BatchFeature,
    ViTFeatureExtractor,
    ViTImageProcessor,
    ViTImageProcessorPil,
)

transformers = pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")
try:  # transformers >= 5: the PIL backend has its own class
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil as RefProcessor
except ImportError:  # transformers 4: the default (slow) processor is the PIL one
    from transformers import ViTImageProcessor as RefProcessor

TOL = 1e-6
MSN = {"size": 224, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
CONFIGS = {"default": {}, "msn": MSN, "96x128": {"size": {"height": 96, "width": 128}}}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}


def ours(images, cfg=None, **kwargs) -> np.ndarray:
    """vitmsn's PIL backend (compared with transformers' PIL backend, ``ref``)."""
    return ViTImageProcessor(**(cfg or {}), backend="pil")(images, return_tensors="np", **kwargs)["pixel_values"]


def ref(images, cfg=None, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RefProcessor(**(cfg or {}))(images, return_tensors="np", **kwargs)["pixel_values"]


def assert_same(a, b, what: str = "") -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    assert np.abs(a - b).max() <= TOL, f"{what}: max |diff| {np.abs(a - b).max()}"


def rgba_of(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    alpha = np.broadcast_to((np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8), (h, w))[..., None]
    return np.concatenate([rgb, alpha], axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers (PIL backend)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_parity_photographs(photos, photo, cfg_name):
    cfg, img = CONFIGS[cfg_name], photos[photo]
    out = ours(img, cfg)
    h, w = (96, 128) if cfg_name == "96x128" else (224, 224)
    assert out.shape == (1, 3, h, w) and out.dtype == np.float32
    assert_same(out, ref(img, cfg))
    assert_same(ours(PIL.Image.fromarray(img), cfg), ref(PIL.Image.fromarray(img), cfg))


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_parity_input_kinds(photos, cfg_name):
    cfg = CONFIGS[cfg_name]
    che, cof = photos["chelsea"], photos["coffee"]
    chw = np.ascontiguousarray(che.transpose(2, 0, 1))
    cases = {
        "chw uint8": (chw, chw),
        "torch chw uint8": (torch.from_numpy(chw), torch.from_numpy(chw)),
        "torch hwc uint8": (torch.from_numpy(che), torch.from_numpy(che)),
        "int64 hwc": (che.astype(np.int64), che.astype(np.int64)),
        "float integral 0..255": (che.astype(np.float32), che.astype(np.float32)),
        "4-d batch": (np.stack([che, che[::-1]]), np.stack([che, che[::-1]])),
    }
    for name, (a, b) in cases.items():
        assert_same(ours(a, cfg), ref(b, cfg), name)
    # grayscale: 2-D arrays (transformers needs a PIL "L" image or HxWx1 with do_convert_rgb=True)
    cam = skdata.camera()
    assert_same(ours(cam, cfg), ref(PIL.Image.fromarray(cam), cfg, do_convert_rgb=True))
    assert_same(ours(cam[..., None], cfg), ref(cam[..., None], cfg, do_convert_rgb=True))
    assert_same(ours(PIL.Image.fromarray(cam), cfg), ref(PIL.Image.fromarray(cam), cfg, do_convert_rgb=True))
    # RGBA, composited onto white
    rgba = rgba_of(cof)
    assert_same(ours(rgba, cfg), ref(rgba, cfg, do_convert_rgb=True))
    pil_rgba = PIL.Image.fromarray(rgba)
    assert_same(ours(pil_rgba, cfg), ref(pil_rgba, cfg, do_convert_rgb=True))
    # palette images, with and without a transparent colour
    palette = PIL.Image.fromarray(cof).convert("P")
    assert_same(ours(palette, cfg), ref(palette, cfg, do_convert_rgb=True))
    palette.info["transparency"] = 0
    assert_same(ours(palette, cfg), ref(palette, cfg, do_convert_rgb=True))
    # an RGB image with a transparent colour: composited with do_convert_rgb=True, kept as it is by default
    keyed = PIL.Image.fromarray(cof)
    keyed.info["transparency"] = tuple(int(v) for v in cof[0, 0])
    assert_same(ours(keyed, cfg, do_convert_rgb=True), ref(keyed, cfg, do_convert_rgb=True))
    assert_same(ours(keyed, cfg), ref(keyed, cfg))
    assert not np.array_equal(ours(keyed, cfg, do_convert_rgb=True), ours(keyed, cfg))


@pytest.mark.parametrize("cfg_name", ["default", "msn"])
def test_parity_float_inputs(photos, cfg_name):
    """Floats in [0, 1]: transformers truncates to uint8 for PIL resizing and still applies rescale_factor."""
    cfg = CONFIGS[cfg_name]
    f32 = photos["astronaut"].astype(np.float32) / 255  # (H, W, 3)
    f64_chw = np.random.default_rng(0).random((3, 61, 75))
    t_chw = torch.from_numpy(photos["chelsea"]).permute(2, 0, 1).float() / 255
    for img in (f32, f64_chw, t_chw):
        with pytest.warns(UserWarning, match="do_rescale=False"):
            out = ours(img, cfg)
        assert_same(out, ref(img, cfg))
        assert_same(ours(img, cfg, do_rescale=False), ref(img, cfg, do_rescale=False))
    # the transformers behaviour we reproduce: already-scaled input ends up scaled twice
    assert ours(f32, cfg, do_rescale=False).max() > 0.5
    with pytest.warns(UserWarning):
        assert ours(f32, {"image_mean": 0.0, "image_std": 1.0}).max() <= 1 / 255 + TOL


def test_parity_mixed_batch(photos):
    batch = [
        photos["astronaut"],
        PIL.Image.fromarray(photos["coffee"]),
        torch.from_numpy(photos["chelsea"]).permute(2, 0, 1),
    ]
    for cfg in CONFIGS.values():
        out = ViTImageProcessorPil(**cfg)(batch, return_tensors="pt")["pixel_values"]
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape[:2] == (3, 3)
        assert_same(out.numpy(), ref(batch, cfg))


def test_batch_resized_in_threads_is_the_same(photos, tmp_path):
    """The PIL backend resizes the images of a batch on torch's thread count: the same bits as one thread
    and as transformers, also for a lazily opened file that appears twice in the batch."""
    PIL.Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.png")
    lazy = PIL.Image.open(tmp_path / "coffee.png")
    batch = [lazy, PIL.Image.fromarray(photos["astronaut"]), lazy, photos["chelsea"]] * 3
    previous = torch.get_num_threads()
    try:
        outs = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs[threads] = ours(batch)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_array_equal(outs[1], outs[2])
    assert_same(outs[2], ref([PIL.Image.open(tmp_path / "coffee.png") if im is lazy else im for im in batch]))


def test_error_in_a_resize_thread_is_one_clear_error():
    """A bad image among large ones (resized in threads) raises its own error, once, in the caller."""
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (200, 200, 3), dtype=np.uint8) for _ in range(5)]
    batch[3] = rng.normal(0, 5, (200, 200, 3)).astype(np.float32)  # floats outside [0, 1]: cannot be resized
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match=r"Floating-point images must have values in \[0, 1\]"):
            ours(batch)
    finally:
        torch.set_num_threads(previous)


def test_parity_other_options(photos):
    img = photos["coffee"]
    for cfg, kwargs in [
        ({"resample": PIL.Image.Resampling.BICUBIC}, {}),
        ({"resample": 0, "size": (33, 57)}, {}),
        ({}, {"do_resize": False}),
        ({}, {"do_normalize": False}),
        ({"size": {"shortest_edge": 100}}, {}),  # transformers 5: aspect-preserving, not square
        ({"size": {"shortest_edge": 100, "longest_edge": 130}}, {}),
    ]:
        assert_same(ours(img, cfg, **kwargs), ref(img, cfg, **kwargs))
    assert ours(img, {"size": {"shortest_edge": 100}}).shape == (1, 3, 100, 150)
    # per-call overrides equal constructor arguments
    assert_same(
        ours(img, size=96, image_mean=MSN["image_mean"]),
        ours(img, {"size": 96, "image_mean": MSN["image_mean"]}),
    )


# ---------------------------------------------------------------------------------------------------------
# Output format
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_return_types_and_batch_feature(photos, backend):
    proc = ViTImageProcessor(backend=backend)
    img = photos["chelsea"]
    listed = proc([img, img])["pixel_values"]
    assert isinstance(listed, list) and len(listed) == 2  # of tensors (torch) / arrays (pil), as transformers
    assert isinstance(listed[0], torch.Tensor if backend == "torch" else np.ndarray)
    assert listed[0].shape == (3, 224, 224) and dtype_name(listed) == "float32"
    assert isinstance(proc(img, return_tensors="np").pixel_values, np.ndarray)
    inputs = proc(img, return_tensors="PT")
    assert isinstance(inputs, BatchFeature) and isinstance(inputs, dict)
    assert inputs.pixel_values is inputs["pixel_values"] and inputs.pixel_values.shape == (1, 3, 224, 224)
    assert inputs.to("cpu") is inputs and inputs.to(torch.float16).pixel_values.dtype == torch.float16
    with pytest.raises(AttributeError):
        _ = inputs.input_ids

    class Model(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values.mean(dim=(1, 2, 3))

    assert Model()(**proc([img, img], return_tensors="pt")).shape == (2,)
    with pytest.raises(ValueError, match="different output shapes"):
        ViTImageProcessor(size={"shortest_edge": 50}, backend=backend)([img, img.transpose(1, 0, 2)],
                                                                       return_tensors="pt")


def test_batches_of_varied_photographs(photos):
    """Mixed sizes and kinds in one call (one output batch is filled in place): the PIL path gives
    transformers' PIL numbers bit for bit, the torch path transformers' torchvision numbers."""
    rng = np.random.default_rng(0)
    crops = []
    for i in range(7):
        a = list(photos.values())[i % 3]
        h, w = (int(s * rng.uniform(0.4, 1.0)) for s in a.shape[:2])
        crops.append(np.ascontiguousarray(a[:h, :w]))
    imgs = [PIL.Image.fromarray(c) for c in crops[:5]] + [crops[5], torch.from_numpy(crops[6]).permute(2, 0, 1)]
    imgs.append(imgs[0])  # two images of the same size: resized together on the torch path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = RefProcessor(**MSN)(imgs, return_tensors="pt")["pixel_values"]
        tv = transformers.ViTImageProcessor(**MSN)(imgs, return_tensors="pt")["pixel_values"]
    proc = ViTImageProcessor(**MSN, backend="pil")
    got = proc(imgs, return_tensors="pt")["pixel_values"]
    assert got.shape == (8, 3, 224, 224) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)
    assert np.array_equal(proc(imgs, return_tensors="np")["pixel_values"], expected.numpy())
    listed = proc(imgs)["pixel_values"]
    assert len(listed) == 8 and all(np.array_equal(a, b) for a, b in zip(listed, expected.numpy(), strict=True))
    fast = ViTImageProcessor(**MSN, backend="torch")
    got = fast(imgs, return_tensors="pt")["pixel_values"]
    assert got.shape == (8, 3, 224, 224) and got.is_contiguous()
    torch.testing.assert_close(got, tv, atol=1e-5, rtol=0)
    flipped = crops[5][::-1, ::-1]  # negative strides
    torch.testing.assert_close(fast(flipped, return_tensors="pt")["pixel_values"],
                               fast(flipped.copy(), return_tensors="pt")["pixel_values"], atol=0, rtol=0)
    for i in (0, 5, 6):  # a single image, as PIL, HWC array and CHW tensor
        torch.testing.assert_close(fast(imgs[i], return_tensors="pt")["pixel_values"], tv[i][None], atol=1e-5, rtol=0)
    listed = fast(imgs)["pixel_values"]
    assert len(listed) == 8 and np.abs(np.stack(listed) - tv.numpy()).max() <= 1e-5


def test_torch_backend_is_close(photos):
    imgs = [photos["astronaut"], photos["coffee"], np.ascontiguousarray(photos["coffee"][::-1])]
    for cfg in (CONFIGS["default"], MSN):
        pil = ours(imgs, cfg)
        fast = ViTImageProcessor(**cfg, backend="torch")(imgs, return_tensors="np").pixel_values
        assert fast.shape == pil.shape and fast.dtype == np.float32
        one_level = 1 / 255 / min(np.atleast_1d(cfg.get("image_std", 0.5)))
        assert np.abs(fast - pil).max() <= one_level + 1e-5
        assert np.abs(fast - pil).mean() < 1e-3
    fast_default = ViTImageProcessor(fast=True)
    assert fast_default.backend == "torch" and "backend" not in fast_default.to_dict()
    # It reproduces transformers' default (torchvision) backend on uint8 photographs.
    pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tv = transformers.ViTImageProcessor(**MSN)(imgs, return_tensors="np").pixel_values
    ours_fast = ViTImageProcessor(**MSN, backend="torch")(imgs, return_tensors="np").pixel_values
    assert np.abs(ours_fast - tv).max() <= 1e-5


def as_numpy(x) -> np.ndarray:
    """pixel_values (array, tensor, or list of either) as one numpy array; lists stacked without promotion."""
    if isinstance(x, list):
        return np.stack([as_numpy(v) for v in x])
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dtype_name(x) -> str:
    return str((x[0] if isinstance(x, list) else x).dtype).removeprefix("torch.")


def torchvision_ref(images, cfg=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.ViTImageProcessor(**(cfg or {}))(images, **kwargs)["pixel_values"]


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_data_format(photos, backend):
    """data_format="channels_last" (or ChannelDimension.LAST) gives contiguous (B, H, W, C) pixel_values, for
    every return_tensors, with transformers' numbers. transformers 5 accepts data_format but always returns
    channels first; transformers 4's ViTImageProcessor (PIL) returns the layout asked for (checked against it in
    test_transformers4_data_format_and_dtypes)."""
    from transformers.image_utils import ChannelDimension

    imgs = [photos["coffee"], PIL.Image.fromarray(photos["chelsea"])]
    proc = ViTImageProcessor(**MSN, backend=backend)
    if backend == "pil":
        expected = ref(imgs, MSN)
    else:
        pytest.importorskip("torchvision")
        expected = torchvision_ref(imgs, MSN, return_tensors="np")
    tol = 0 if backend == "pil" else 1e-5
    for data_format in ("channels_last", ChannelDimension.LAST, "channels_first", ChannelDimension.FIRST, None):
        last = data_format in ("channels_last", ChannelDimension.LAST)
        want = np.ascontiguousarray(expected.transpose(0, 2, 3, 1)) if last else expected
        for return_tensors in (None, "np", "pt"):
            got = proc(imgs, return_tensors=return_tensors, data_format=data_format)["pixel_values"]
            kind = {None: list, "np": np.ndarray, "pt": torch.Tensor}[return_tensors]
            assert isinstance(got, kind), (data_format, return_tensors)
            parts = got if isinstance(got, list) else [got]
            assert all(p.dtype in (np.float32, torch.float32) for p in parts)
            assert all(p.flags["C_CONTIGUOUS"] if isinstance(p, np.ndarray) else p.is_contiguous() for p in parts)
            assert as_numpy(got).shape == want.shape, (data_format, return_tensors)
            assert np.abs(as_numpy(got) - want).max() <= tol, (data_format, return_tensors)
    with pytest.raises(ValueError, match="data_format must be 'channels_first' or 'channels_last'"):
        proc(imgs, data_format="hwc_please")


DTYPE_INPUTS = {
    "uint8 hwc": lambda a: a,
    "PIL RGB": PIL.Image.fromarray,
    "PIL L": lambda a: PIL.Image.fromarray(a[..., 0]),
    "torch uint8 chw": lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))),
    "int64 hwc": lambda a: a.astype(np.int64),
    "float32 0..255": lambda a: a.astype(np.float32),
    "float64 0..1": lambda a: a / 255,
    "torch float16 0..1": lambda a: torch.from_numpy(a / 255).half(),
    "mixed uint8 + float32 0..1": lambda a: [a, (a[::-1] / 255).astype(np.float32)],
}


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_dtype_of_every_flag_combination(photos, backend):
    """do_resize / do_rescale / do_normalize in all combinations: the dtype, shape and numbers transformers
    gives (e.g. uint8 with do_rescale=do_normalize=False, float64 for float64 input with only do_normalize)."""
    if backend == "torch":
        pytest.importorskip("torchvision")
    img = np.ascontiguousarray(photos["coffee"][::12, ::12])  # 34 x 50
    for (do_resize, do_rescale, do_normalize), (name, make) in itertools.product(
        itertools.product([False, True], repeat=3), DTYPE_INPUTS.items()
    ):
        cfg = {"do_resize": do_resize, "do_rescale": do_rescale, "do_normalize": do_normalize, "size": 24}
        image = make(img)
        extra = {"do_convert_rgb": True} if name == "PIL L" else {}  # transformers only converts when asked
        proc = ViTImageProcessor(**cfg, backend=backend)
        # the torch backend's integer resize may differ by one uint8 level from torchvision's
        level = (1 / 255 if do_rescale else 1.0) / (0.5 if do_normalize else 1.0)
        tol = 0.0 if backend == "pil" else (1.001 if name == "int64 hwc" and do_resize else 1e-3) * level
        for return_tensors in (None, "np", "pt"):
            what = f"{name}, {cfg}, return_tensors={return_tensors}"
            if backend == "pil":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    expected = RefProcessor(**cfg)(image, return_tensors=return_tensors, **extra)["pixel_values"]
            else:
                expected = torchvision_ref(image, cfg, return_tensors=return_tensors, **extra)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = proc(image, return_tensors=return_tensors)["pixel_values"]
            assert dtype_name(got) == dtype_name(expected), what
            if return_tensors is None:  # a list, of arrays (PIL backend) or of tensors (torchvision backend)
                kind = np.ndarray if backend == "pil" else torch.Tensor
                assert isinstance(got, list) and all(isinstance(v, kind) for v in got), what
                assert all(isinstance(v, kind) for v in expected), what
            else:
                assert type(got) is type(expected), what
            a, b = as_numpy(got).astype(np.float64), as_numpy(expected).astype(np.float64)
            assert a.shape == b.shape, what
            assert np.abs(a - b).max() <= tol, what


TF4 = Path(os.environ.get("VITMSN_TRANSFORMERS4", Path(__file__).resolve().parents[1] / "build" / "transformers4"))
TF4_SCRIPT = """
import sys, warnings
import numpy as np, PIL.Image
warnings.simplefilter("ignore")
from transformers import ViTImageProcessor
img = np.load(sys.argv[1])
out = {}
for name, image in (("array", img), ("pil", PIL.Image.fromarray(img))):
    for fmt in ("channels_last", "channels_first"):
        out[f"{name} {fmt} np"] = ViTImageProcessor(size=24)(image, return_tensors="np", data_format=fmt).pixel_values
        listed = ViTImageProcessor(size=24)(image, data_format=fmt).pixel_values
        out[f"{name} {fmt} list"] = listed[0]
    for flags in range(8):
        kw = dict(do_resize=bool(flags & 4), do_rescale=bool(flags & 2), do_normalize=bool(flags & 1), size=24)
        out[f"{name} flags {flags}"] = ViTImageProcessor(**kw)(image, return_tensors="np").pixel_values
np.savez(sys.argv[2], **out)
"""


def test_transformers4_data_format_and_dtypes(photos, tmp_path):
    """transformers 4.x's ViTImageProcessor (the PIL one, which honours data_format) against vitmsn's
    ViTImageProcessorPil (what a 4.x user gets with use_fast=False): same layout, dtype and bits. transformers 4.x cannot share this environment; it runs in a subprocess when installed."""
    if not (TF4 / "transformers").is_dir():
        pytest.skip(f"transformers 4.x not installed at {TF4} (see tests/test_transformers4.py)")
    img = np.ascontiguousarray(photos["chelsea"][::10, ::10])
    np.save(tmp_path / "img.npy", img)
    env = {**os.environ, "PYTHONPATH": str(TF4), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", TF4_SCRIPT, str(tmp_path / "img.npy"), str(tmp_path / "out.npz")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = np.load(tmp_path / "out.npz")
    for name, image in (("array", img), ("pil", PIL.Image.fromarray(img))):
        for fmt in ("channels_last", "channels_first"):
            got = ViTImageProcessorPil(size=24)(image, return_tensors="np", data_format=fmt).pixel_values
            want = expected[f"{name} {fmt} np"]
            assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want), (name, fmt)
            got = ViTImageProcessorPil(size=24)(image, data_format=fmt).pixel_values[0]
            assert np.array_equal(got, expected[f"{name} {fmt} list"]), (name, fmt)
        for flags in range(8):
            kw = dict(do_resize=bool(flags & 4), do_rescale=bool(flags & 2), do_normalize=bool(flags & 1), size=24)
            got = ViTImageProcessorPil(**kw)(image, return_tensors="np").pixel_values
            want = expected[f"{name} flags {flags}"]
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (name, kw)


# ---------------------------------------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------------------------------------


def test_load_transformers_saved(tmp_path, photos):
    cfg = {**MSN, "size": 96, "resample": 3}
    RefProcessor(**cfg, custom_key="kept").save_pretrained(tmp_path)
    proc = ViTImageProcessor.from_pretrained(tmp_path)
    assert proc.size == {"height": 96, "width": 96} and proc.resample == 3 and proc.backend == "torch"
    assert proc.image_std == tuple(MSN["image_std"]) and proc.custom_key == "kept"
    # transformers 5 loads its torchvision backend from this file too (the PIL one with backend="pil")
    pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.ViTImageProcessor.from_pretrained(tmp_path)(photos["coffee"], return_tensors="np")
    np.testing.assert_allclose(proc(photos["coffee"], return_tensors="np").pixel_values, theirs.pixel_values,
                               atol=1e-5, rtol=0)
    pil = ViTImageProcessorPil.from_pretrained(tmp_path)
    assert pil.backend == "pil" and ViTImageProcessor.from_pretrained(tmp_path, backend="pil").backend == "pil"
    assert_same(pil(photos["coffee"], return_tensors="np").pixel_values, ref(photos["coffee"], cfg))
    assert AutoImageProcessor.from_pretrained(tmp_path).to_dict() == proc.to_dict()
    assert ViTImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json").size["height"] == 96
    assert ViTImageProcessor.from_pretrained(tmp_path, size=64, backend="torch").size == {
        "height": 64,
        "width": 64,
    }


def test_transformers_loads_ours(tmp_path, photos):
    cfg = {
        "size": {"height": 96, "width": 128},
        "resample": PIL.Image.Resampling.BICUBIC,
        **{k: MSN[k] for k in ("image_mean", "image_std")},
    }
    ViTImageProcessor(**cfg).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "ViTImageProcessor"
    assert data["size"] == {"height": 96, "width": 128} and data["resample"] == 3
    assert data["rescale_factor"] == 1 / 255 and data["image_mean"] == MSN["image_mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
        expected = theirs(photos["chelsea"], return_tensors="np").pixel_values
    assert_same(ours(photos["chelsea"], cfg), expected)


def test_default_json_matches_transformers(tmp_path):
    """The default (torch) processor writes transformers' file; the PIL one the same plus its backend key."""
    RefProcessor().save_pretrained(tmp_path / "theirs")
    ViTImageProcessor().save_pretrained(tmp_path / "ours")
    theirs = (tmp_path / "theirs" / "preprocessor_config.json").read_text()
    assert (tmp_path / "ours" / "preprocessor_config.json").read_text() == theirs
    text = repr(ViTImageProcessor())
    assert text.startswith("ViTImageProcessor {") and '"resample": 2' in text
    ViTImageProcessorPil().save_pretrained(tmp_path / "pil")
    assert json.loads((tmp_path / "pil" / "preprocessor_config.json").read_text()) == {
        **json.loads(theirs), "vitmsn_backend": "pil"}
    assert repr(ViTImageProcessorPil()).startswith("ViTImageProcessorPil {")
    assert repr(ViTImageProcessor(backend="pil")).startswith("ViTImageProcessor(backend='pil') {")


def test_msn_style_config_with_int_size(tmp_path, photos):
    """Published MSN checkpoints use the old feature-extractor format with ``"size": 224``."""
    config = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": MSN["image_mean"],
        "image_std": MSN["image_std"],
        "resample": 3,
        "size": 224,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    for loader in (AutoImageProcessor, AutoFeatureExtractor, ViTImageProcessor, ViTFeatureExtractor):
        proc = loader.from_pretrained(tmp_path)
        assert proc.size == {"height": 224, "width": 224} and proc.resample == 3 and proc.backend == "torch"
    assert "feature_extractor_type" not in proc.to_dict()
    pytest.importorskip("torchvision")
    for backend, tol in (("torch", 1e-5), ("pil", TOL)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, **({} if backend == "torch" else
                                                                                 {"backend": "pil"}))
            expected = theirs(photos["astronaut"], return_tensors="np").pixel_values
        got = AutoImageProcessor.from_pretrained(tmp_path, **({} if backend == "torch" else {"backend": "pil"}))
        assert got.backend == backend
        np.testing.assert_allclose(got(photos["astronaut"], return_tensors="np").pixel_values, expected,
                                   atol=tol, rtol=0)


LOADER_KWARGS = {
    "trust_remote_code": True,
    "force_download": False,
    "proxies": None,
    "revision": None,
    "cache_dir": None,
    "token": None,
    "local_files_only": False,
    "resume_download": None,
    "_from_auto": True,
}


def test_loader_kwargs_are_not_settings(tmp_path, photos):
    """from_pretrained's loader arguments (as transformers takes them) are not kept as attributes nor saved;
    subfolder finds the file in a folder of the directory, as in transformers."""
    cfg = {**MSN, "size": 96, "resample": 3}
    RefProcessor(**cfg).save_pretrained(tmp_path / "repo" / "sub")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoImageProcessor.from_pretrained(
            tmp_path / "repo", backend="pil", subfolder="sub", **LOADER_KWARGS
        )
    theirs.save_pretrained(tmp_path / "theirs")
    expected_json = json.loads((tmp_path / "theirs" / "preprocessor_config.json").read_text())
    pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {"pil": ref(photos["coffee"], cfg),
                    "torch": torchvision_ref(photos["coffee"], cfg, return_tensors="np")}
    for i, (backend, load) in enumerate([
        ("torch", lambda: AutoImageProcessor.from_pretrained(tmp_path / "repo", subfolder="sub", **LOADER_KWARGS)),
        ("pil", lambda: AutoImageProcessor.from_pretrained(str(tmp_path / "repo"), subfolder="sub/", use_fast=False,
                                                           config=None, **LOADER_KWARGS)),
        ("torch", lambda: ViTImageProcessor.from_pretrained(tmp_path / "repo", subfolder="sub", **LOADER_KWARGS)),
        ("torch", lambda: ViTFeatureExtractor.from_pretrained(tmp_path / "repo", subfolder="sub", _from_pipeline="x",
                                                              **LOADER_KWARGS)),
    ]):
        proc = load()
        for key in [*LOADER_KWARGS, "subfolder", "use_fast", "config", "_from_pipeline"]:
            assert not hasattr(proc, key), (i, key)
        assert proc.size == {"height": 96, "width": 96} and proc.resample == 3 and proc.backend == backend
        proc.save_pretrained(tmp_path / f"ours{i}")
        marker = {"vitmsn_backend": "pil"} if backend == "pil" else {}
        assert json.loads((tmp_path / f"ours{i}" / "preprocessor_config.json").read_text()) == {**expected_json,
                                                                                                **marker}
        np.testing.assert_allclose(proc(photos["coffee"], return_tensors="np").pixel_values, expected[backend],
                                   atol=TOL if backend == "pil" else 1e-5, rtol=0)
    # settings passed with them still apply; use_fast stays a backend switch
    proc = AutoImageProcessor.from_pretrained(tmp_path / "repo", subfolder="sub", size=64, use_fast=True,
                                              trust_remote_code=True)
    assert proc.size == {"height": 64, "width": 64} and proc.backend == "torch"
    proc, unused = ViTImageProcessor.from_pretrained(tmp_path / "repo", subfolder="sub", return_unused_kwargs=True,
                                                     trust_remote_code=True, _from_auto=True)
    assert unused == {"trust_remote_code": True} and not hasattr(proc, "return_unused_kwargs")
    # the subfolder decides where the file is looked for, as in transformers
    for loader in (AutoImageProcessor, ViTImageProcessor):
        with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
            loader.from_pretrained(tmp_path / "repo")
        with pytest.raises(FileNotFoundError, match="other/preprocessor_config.json"):
            loader.from_pretrained(tmp_path / "repo", subfolder="other")
        assert loader.from_pretrained(tmp_path / "repo" / "sub", subfolder="").size["height"] == 96


def test_auto_rejects_other_processors(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CLIPImageProcessor"})
    )
    with pytest.raises(ValueError, match="CLIPImageProcessor"):
        AutoImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(OSError):
        AutoImageProcessor()


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ("no-such-file.png", "neither a file, nor a URL"),
        (3.0, "Unsupported image type float"),
        ([], "empty list"),
        ([np.zeros((8, 8, 3), np.uint8), None], "Unsupported image type NoneType"),
        (np.zeros(5), "dimensions"),
        (np.zeros((1, 1, 3, 8, 8)), "dimensions"),
        (np.zeros((8, 9, 5), np.uint8), "channel axis of size 1, 3 or 4"),
        (np.zeros((2, 8, 9), np.uint8), "channel axis of size 1, 3 or 4"),
        (np.full((8, 8, 3), 3.5), r"\[0, 1\]"),
        (np.full((8, 8, 3), 300), r"\[0, 255\]"),
        (np.full((8, 8, 4), 2.5), r"\[0, 1\]"),
    ],
)
def test_bad_inputs(images, match):
    """(The PIL backend: floats outside [0, 1] cannot become a PIL image; the torch backend resizes them, as
    transformers' torchvision backend does.)"""
    with pytest.raises(ValueError, match=match):
        ViTImageProcessor(backend="pil")(images)


def test_std_of_zero_and_nan_stats(tmp_path):
    """A std of 0 (or a nan mean) would make every pixel inf or nan: one error, also naming a saved file's folder."""
    for kwargs in ({"image_std": [0.5, 0, 0.5]}, {"image_std": 0}, {"image_mean": [float("nan")] * 3}):
        with pytest.raises(ValueError, match="must be finite"):
            ViTImageProcessor(**kwargs)
    with pytest.raises(ValueError, match="image_std must be finite and nonzero"):
        ViTImageProcessor()(np.zeros((8, 8, 3), np.uint8), image_std=0.0)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_std": [0, 0, 0]}))
    for loader in (ViTImageProcessor, AutoImageProcessor):
        with pytest.raises(ValueError, match=f"image processor of {tmp_path}: image_std must be finite"):
            loader.from_pretrained(tmp_path)


def test_bad_arguments(photos):
    proc = ViTImageProcessor()
    with pytest.raises(ValueError, match="return_tensors"):
        proc(photos["coffee"], return_tensors="tf")
    with pytest.raises(TypeError, match="bogus"):
        proc(photos["coffee"], bogus=1)
    with pytest.raises(ValueError, match="size"):
        ViTImageProcessor(size={"width": 3})
    with pytest.raises(ValueError, match="resample"):
        ViTImageProcessor(resample=42)
    with pytest.raises(ValueError, match="backend"):
        ViTImageProcessor(backend="jax")
    with pytest.raises(ValueError, match="fast=True conflicts"):
        ViTImageProcessor(backend="pil", fast=True)
    with pytest.raises(ValueError, match=r"pad_size must be \{'height': h, 'width': w\}"):
        ViTImageProcessor(do_pad=True, pad_size={"height": 8})
    with pytest.raises(ValueError, match=r"pad_size\['width'\] must be a positive int"):
        ViTImageProcessor(pad_size=(8, 0))
    for backend in ("torch", "pil"):  # transformers raises these when called, not when made
        with pytest.raises(ValueError, match="crop_size` must be specified"):
            ViTImageProcessor(do_center_crop=True, backend=backend)(photos["coffee"])
        with pytest.raises(ValueError, match="must have keys 'height' and 'width'"):
            ViTImageProcessor(do_center_crop=True, crop_size={"shortest_edge": 8}, backend=backend)(photos["coffee"])
    with pytest.raises(ValueError, match="image_mean has 3 values but the image has 4 channels"):
        proc(rgba_of(photos["coffee"]), do_convert_rgb=False)


def test_unknown_kwargs_kept():
    proc = ViTImageProcessor(pad_size={"height": 1, "width": 1}, foo=[1, 2])
    assert proc.foo == [1, 2] and proc.to_dict()["foo"] == [1, 2] and proc.to_dict()["pad_size"]["height"] == 1


def test_nested_processor_config_first(tmp_path):
    """transformers 5 reads the ``image_processor`` entry of ``processor_config.json`` before
    ``preprocessor_config.json``; without that entry, the latter."""
    import transformers

    ViTImageProcessor(size=32).save_pretrained(tmp_path)
    nested = {"image_processor": {**ViTImageProcessor(size=40).to_dict()}, "processor_class": "SomeProcessor"}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    for loader in (ViTImageProcessor, AutoImageProcessor, transformers.ViTImageProcessor):
        assert loader.from_pretrained(tmp_path).size == {"height": 40, "width": 40}, loader
    for other in ({"processor_class": "SomeProcessor"}, [1, 2]):  # no image_processor entry: the other file
        (tmp_path / "processor_config.json").write_text(json.dumps(other))
        assert ViTImageProcessor.from_pretrained(tmp_path).size == {"height": 32, "width": 32}


# ---------------------------------------------------------------------------------------------------------
# Hub ids
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf_home" / "hub"


def test_offline_hub_id_error(offline):
    for loader in (ViTImageProcessor, AutoImageProcessor):
        with pytest.raises(OSError) as info:
            loader.from_pretrained("someone/missing-model")
        assert "someone/missing-model" in str(info.value) and "local directory" in str(info.value)


def test_hub_id_from_cache(offline):
    """Offline, a Hub id resolves through huggingface_hub's cache layout (what a download leaves behind)."""
    commit = "c" * 40
    repo = offline / "models--someone--tiny-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ViTImageProcessor(size=32).save_pretrained(repo / "snapshots" / commit)
    assert ViTImageProcessor.from_pretrained("someone/tiny-vit").size == {"height": 32, "width": 32}
    # optional files of a cached repo: None with missing_ok, an error otherwise
    assert resolve_file("someone/tiny-vit", "model.safetensors", missing_ok=True) is None
    with pytest.raises(OSError, match="local directory"):
        resolve_file("someone/tiny-vit", "model.safetensors")


def test_hub_id_subfolder_from_cache(offline):
    """A Hub id with subfolder: the file is ``subfolder/preprocessor_config.json`` of the repository."""
    commit = "d" * 40
    repo = offline / "models--someone--nested-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ViTImageProcessor(size=48).save_pretrained(repo / "snapshots" / commit / "image_processor")
    for loader in (ViTImageProcessor, AutoImageProcessor):
        proc = loader.from_pretrained("someone/nested-vit", subfolder="image_processor", trust_remote_code=True,
                                      force_download=False)
        assert proc.size == {"height": 48, "width": 48} and not hasattr(proc, "subfolder")
        assert "trust_remote_code" not in proc.to_dict()
        with pytest.raises(OSError, match="someone/nested-vit"):
            loader.from_pretrained("someone/nested-vit")


def test_resolve_file_local(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    assert resolve_file(tmp_path, "a.json") == tmp_path / "a.json"
    assert resolve_file(tmp_path, "b.json", missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match="b.json"):
        resolve_file(tmp_path, "b.json")
    with pytest.raises(OSError, match="neither an existing local directory"):
        resolve_file(str(tmp_path / "no" / "such" / "dir"), "a.json")


# ---------------------------------------------------------------------------------------------------------
# Images given by name, settings changed after construction, other integer types, three-band PIL modes
# ---------------------------------------------------------------------------------------------------------

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
needs_transformers_5 = pytest.mark.skipif(not TRANSFORMERS_5, reason="transformers 4's PIL processor takes no paths")


def both_references():
    """(vitmsn backend, transformers' processor of the same backend)."""
    return [("pil", RefProcessor()), ("torch", transformers.ViTImageProcessor())]


@pytest.fixture
def image_files(tmp_path, photos) -> dict[str, Path]:
    """A PNG, a JPEG and a JPEG whose EXIF orientation says "rotate 90 degrees" (tag 6), and a bad file."""
    img = PIL.Image.fromarray(photos["coffee"][::4, ::4].copy())
    files = {"png": tmp_path / "a.png", "jpg": tmp_path / "b.jpg", "rotated": tmp_path / "c.jpg"}
    img.save(files["png"])
    img.save(files["jpg"], quality=90)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    img.save(files["rotated"], quality=90, exif=exif)
    (tmp_path / "bad.jpg").write_text("not an image")
    files["bad"] = tmp_path / "bad.jpg"
    return files


@needs_transformers_5
def test_images_by_path_url_and_base64(image_files):
    """Paths (str or Path), lists of them, http URLs and base64 data are read as transformers' load_image reads
    them (EXIF orientation applied, RGB), on both backends."""
    import base64
    import functools
    import http.server
    import threading

    folder = image_files["png"].parent
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/b.jpg"
        b64 = base64.b64encode(image_files["png"].read_bytes()).decode()
        lines = base64.encodebytes(image_files["png"].read_bytes()).decode()  # 76 characters a line, as files hold it
        sources = [str(image_files["png"]), [str(image_files["jpg"]), str(image_files["rotated"])], url, b64,
                   "data:image/png;base64," + b64, lines]
        for backend, reference in both_references():
            proc = ViTImageProcessor(backend=backend)
            for source in sources:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    expected = reference(source, return_tensors="np")["pixel_values"]
                assert_same(proc(source, return_tensors="np")["pixel_values"], expected, f"{backend} {source!s:.60}")
            # a pathlib.Path too (transformers takes str only): the same as its str
            assert_same(proc(image_files["rotated"], return_tensors="np")["pixel_values"],
                        proc(str(image_files["rotated"]), return_tensors="np")["pixel_values"])
    finally:
        server.shutdown()
        server.server_close()
    upright = ViTImageProcessor(do_resize=False)(image_files["rotated"], return_tensors="pt")["pixel_values"]
    assert upright.shape[-2:] == (150, 100)  # the file holds 150 x 100 (w x h); tag 6 turns it upright


def test_bad_image_sources(image_files, tmp_path):
    proc = ViTImageProcessor()
    with pytest.raises(ValueError, match="bad.jpg: not an image format"):
        proc(str(image_files["bad"]))
    with pytest.raises(ValueError, match="is not a file"):
        proc(tmp_path)
    with pytest.raises(ValueError, match="neither a file, nor a URL"):
        proc([str(image_files["png"]), str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="no such file; read as base64"):
        proc("abcd")  # valid base64, but not an image
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ValueError, match="Could not download the image"):
        proc(f"http://127.0.0.1:{port}/x.png")
    with pytest.raises(ValueError, match="Could not download the image"):
        proc("http://exa mple.com/a.png")  # a malformed URL (http.client's InvalidURL)


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_settings_changed_after_construction(photos, backend, tmp_path):
    """size, crop_size and pad_size set as attributes (an int or a pair) work as at construction, as in
    transformers."""
    image = photos["chelsea"]
    proc = ViTImageProcessor(backend=backend)
    proc.size = 64
    assert proc(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)
    proc.size = (40, 48)
    assert proc(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 40, 48)
    proc.do_center_crop, proc.crop_size = True, 20
    same = ViTImageProcessor(size=(40, 48), do_center_crop=True, crop_size=20, backend=backend)
    assert_same(proc(image, return_tensors="np")["pixel_values"], same(image, return_tensors="np")["pixel_values"])
    proc.do_pad, proc.pad_size = True, 30
    assert proc(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 30, 30)
    # kept as the constructor keeps them: read as attributes, saved, loaded back
    assert (proc.size.height, proc.crop_size.width, proc.pad_size.height) == (40, 20, 30)
    proc.save_pretrained(tmp_path)
    again = ViTImageProcessor.from_pretrained(tmp_path, backend=backend)
    assert_same(again(image, return_tensors="np")["pixel_values"], proc(image, return_tensors="np")["pixel_values"])
    assert '"height": 40' in repr(proc)


def test_size_reads_as_attributes():
    """transformers 5 keeps sizes as a SizeDict (size.height); here a dict whose keys also read as attributes."""
    proc = ViTImageProcessor(size={"shortest_edge": 96}, do_center_crop=True, crop_size=(80, 64))
    assert proc.size.shortest_edge == 96 and proc.size.height is None and proc.size["shortest_edge"] == 96
    assert (proc.crop_size.height, proc.crop_size.width) == (80, 64) and dict(proc.crop_size) == {"height": 80, "width": 64}
    with pytest.raises(AttributeError):
        proc.size.bogus  # noqa: B018
    assert json.loads(proc.to_json_string())["crop_size"] == {"height": 80, "width": 64}


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint16])
@pytest.mark.parametrize("high", [256, 4000])
def test_torch_backend_integer_images(dtype, high):
    """Integer images other than uint8 resize as torchvision resizes them (transformers' torch backend): in
    float32, rounded to integers, whatever their range (uint16, which torch can hardly reduce, too)."""
    x = np.random.default_rng(0).integers(0, high, (40, 50, 3)).astype(dtype)
    ours_ = ViTImageProcessor()(x, return_tensors="np")["pixel_values"]
    as_int32 = ViTImageProcessor()(x.astype(np.int32), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(ours_, as_int32)
    if dtype != np.uint16:  # torchvision resizes uint16 otherwise (and wraps bicubic undershoots around)
        for kwargs in ({}, {"resample": 3}, {"do_resize": False}):
            expected = as_numpy(torchvision_ref(x, return_tensors="pt", **kwargs))
            got = ViTImageProcessor()(x, return_tensors="np", **kwargs)["pixel_values"]
            np.testing.assert_allclose(got, expected, atol=1e-5 * high / 255, rtol=0)


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB"])
@pytest.mark.parametrize("do_convert_rgb", [None, True, False])
def test_three_band_pil_modes(photos, mode, do_convert_rgb):
    """YCbCr, HSV and LAB images give their own bands unless do_convert_rgb=True, as in transformers."""
    rgb = PIL.Image.fromarray(photos["coffee"][::4, ::4].copy())
    image = rgb.convert(mode) if mode != "LAB" else PIL.Image.fromarray(np.asarray(rgb), mode="LAB")
    for backend, reference in both_references():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = reference(image, return_tensors="np", do_convert_rgb=do_convert_rgb)["pixel_values"]
        got = ViTImageProcessor(backend=backend)(image, return_tensors="np", do_convert_rgb=do_convert_rgb)
        assert_same(got["pixel_values"], expected, f"{backend} {mode} {do_convert_rgb}")
