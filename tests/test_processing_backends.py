"""Which backend vitmsn's image processors use, compared with transformers on photographs.

transformers 5's ``ViTImageProcessor`` (and what its ``AutoImageProcessor`` gives) is its torchvision backend,
``ViTImageProcessorPil`` the PIL one: vitmsn's default is its torch backend (transformers' torchvision numbers
to 1e-5), ``backend="pil"`` / ``use_fast=False`` / ``ViTImageProcessorPil`` its PIL one (transformers' PIL numbers
bit for bit). Also here: what saved files load as in vitmsn, transformers 5 and transformers 4.x (in a
subprocess, as in tests/test_transformers4.py), center crop, resample filters, ``BatchFeature`` and the
"unused" keywords of ``from_pretrained``.
"""

from __future__ import annotations

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

import vitmsn
from vitmsn import processing
from vitmsn.processing import (
    AutoImageProcessor,
    BatchFeature,
    ViTFeatureExtractor,
    ViTImageProcessor,
    ViTImageProcessorFast,
    ViTImageProcessorPil,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")
skdata = pytest.importorskip("skimage.data")
if not hasattr(transformers, "ViTImageProcessorPil"):
    pytest.skip("these tests compare with transformers 5 (its two backends)", allow_module_level=True)

ATOL = 1e-5  # torch backend against transformers' torchvision backend
EXACT = 1e-6  # PIL backend against transformers' PIL backend (the same bits in fact)
MSN = {"size": 224, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
TF4 = Path(os.environ.get("VITMSN_TRANSFORMERS4", Path(__file__).resolve().parents[1] / "build" / "transformers4"))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def as_numpy(x) -> np.ndarray:
    if isinstance(x, list):
        return np.stack([as_numpy(v) for v in x])
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_like(got, want, atol: float, what: str = "") -> None:
    """The same container types (a list of the same element type, or the same tensor type), dtype, shape
    and numbers within ``atol``."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), what
        assert all(type(g) is type(w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True)), what
    else:
        assert type(got) is type(want) and got.dtype == want.dtype, what
    for g, w in zip(*((x if isinstance(x, list) else [x]) for x in (got, want)), strict=True):
        a, b = as_numpy(g).astype(np.float64), as_numpy(w).astype(np.float64)
        assert a.shape == b.shape, what
        assert np.abs(a - b).max() <= atol, f"{what}: max |diff| {np.abs(a - b).max()}"


def theirs(processor, images, **kwargs):
    return quiet(processor, images, **kwargs)["pixel_values"]


# ---------------------------------------------------------------------------------------------------------
# Default backend: transformers 5's
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [{}, MSN], ids=["default", "msn"])
def test_default_is_transformers5_torchvision_backend(photos, cfg):
    """ViTImageProcessor() gives transformers 5's ViTImageProcessor() numbers and types (not its PIL ones,
    which differ by up to one uint8 level); the PIL backend is one argument away, as in transformers."""
    imgs = [photos[0], PIL.Image.fromarray(photos[1]), torch.from_numpy(photos[2]).permute(2, 0, 1)]
    tv, pil = transformers.ViTImageProcessor(**cfg), transformers.ViTImageProcessorPil(**cfg)
    torch_like = [ViTImageProcessor(**cfg), ViTImageProcessor(**cfg, fast=True),
                  ViTImageProcessor(**cfg, backend="torchvision"), ViTImageProcessorFast(**cfg),
                  ViTFeatureExtractor(**cfg), ViTImageProcessorPil(**cfg, backend="torch")]
    pil_like = [ViTImageProcessor(**cfg, backend="pil"), ViTImageProcessor(**cfg, fast=False),
                ViTImageProcessorPil(**cfg), ViTImageProcessorFast(**cfg, fast=False)]
    assert {p.backend for p in torch_like} == {"torch"} and {p.backend for p in pil_like} == {"pil"}
    assert vitmsn.ViTImageProcessorPil is ViTImageProcessorPil and vitmsn.ViTImageProcessorFast is ViTImageProcessorFast
    for return_tensors in ("pt", "np", None):
        want_tv, want_pil = theirs(tv, imgs, return_tensors=return_tensors), theirs(pil, imgs, return_tensors=return_tensors)
        for proc in torch_like:
            assert_like(proc(imgs, return_tensors=return_tensors)["pixel_values"], want_tv, ATOL, repr(proc))
        for proc in pil_like:
            assert_like(proc(imgs, return_tensors=return_tensors)["pixel_values"], want_pil, EXACT, repr(proc))
    # the two transformers backends do differ here: the default matters
    assert np.abs(as_numpy(theirs(tv, imgs, return_tensors="np")) - as_numpy(theirs(pil, imgs, return_tensors="np"))
                  ).max() > 1e-3


@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_return_types_per_backend(photos, return_tensors):
    """return_tensors=None: a list of tensors (torch backend) or of arrays (PIL backend), as transformers 5; also
    for images that come out in different sizes, and with do_rescale=do_normalize=False (uint8)."""
    imgs = [photos[0][::4, ::4], photos[1][::4, ::4]]  # 128 x 128 and 100 x 150
    for kw in ({}, {"size": {"shortest_edge": 40}}, {"do_rescale": False, "do_normalize": False, "size": 30}):
        if kw.get("size") == {"shortest_edge": 40} and return_tensors is not None:
            continue  # different output sizes: no batch, in transformers either
        for ours, ref, atol in ((ViTImageProcessor(**kw), transformers.ViTImageProcessor(**kw), ATOL),
                                (ViTImageProcessorPil(**kw), transformers.ViTImageProcessorPil(**kw), EXACT)):
            want = theirs(ref, imgs, return_tensors=return_tensors)
            got = ours(imgs, return_tensors=return_tensors)["pixel_values"]
            tol = atol if kw.get("do_normalize", True) else (0 if atol == EXACT else 1.0)  # uint8: one level
            assert_like(got, want, tol, f"{ours.backend} {kw} {return_tensors}")


def test_auto_image_processor_picks_as_transformers5(tmp_path, photos):
    """AutoImageProcessor: torch backend (a ViTImageProcessor) by default, PIL (a ViTImageProcessorPil) with
    backend="pil" or use_fast=False, as transformers 5 picks them for the same file and arguments."""
    cfg = {**MSN, "size": 96, "resample": 3}
    quiet(transformers.ViTImageProcessorPil(**cfg).save_pretrained, tmp_path)
    img = photos[0]
    for kwargs in ({}, {"use_fast": True}, {"use_fast": False}, {"backend": "pil"}, {"backend": "torchvision"},
                   {"backend": "pil", "use_fast": True}, {"backend": "torchvision", "use_fast": False}):
        ref = quiet(transformers.AutoImageProcessor.from_pretrained, tmp_path, **kwargs)
        ours = AutoImageProcessor.from_pretrained(tmp_path, **kwargs)
        assert type(ours).__name__ == type(ref).__name__, kwargs
        assert ours.backend == {"torchvision": "torch", "pil": "pil"}[ref.backend], kwargs
        assert_like(ours(img, return_tensors="pt")["pixel_values"], theirs(ref, img, return_tensors="pt"),
                    ATOL if ours.backend == "torch" else EXACT, str(kwargs))
    # ViTImageProcessor.from_pretrained: the torch backend too (use_fast=False: PIL, as AutoImageProcessor)
    assert ViTImageProcessor.from_pretrained(tmp_path).backend == "torch"
    assert ViTImageProcessor.from_pretrained(tmp_path, use_fast=False).backend == "pil"
    assert ViTImageProcessorPil.from_pretrained(tmp_path).backend == "pil"
    # transformers 4's fast type loads with the torch backend, in transformers 5 as here
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for kind, backend in (("ViTImageProcessorFast", "torch"), ("ViTImageProcessorPil", "pil")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "preprocessor_config.json").write_text(json.dumps({**data, "image_processor_type": kind}))
        assert AutoImageProcessor.from_pretrained(tmp_path / kind).backend == backend, kind
        assert AutoImageProcessor.from_pretrained(tmp_path / kind, use_fast=backend == "pil").backend != backend
    ref = quiet(transformers.AutoImageProcessor.from_pretrained, tmp_path / "ViTImageProcessorFast")
    assert ref.backend == "torchvision"


# ---------------------------------------------------------------------------------------------------------
# Saved files: vitmsn, transformers 5 and transformers 4.x
# ---------------------------------------------------------------------------------------------------------

TF4_LOAD = """
import sys, warnings
import numpy as np
warnings.simplefilter("ignore")
from transformers import AutoImageProcessor
img = np.load(sys.argv[1])
out = {}
for folder in sys.argv[3:]:
    for fast in (None, True, False):
        proc = AutoImageProcessor.from_pretrained(folder, **({} if fast is None else {"use_fast": fast}))
        key = f"{folder} {fast}"
        out[key] = proc(img, return_tensors="pt")["pixel_values"].numpy()  # 4.x's fast one: "pt" only
        out[key + " class"] = np.array(type(proc).__name__)
np.savez(sys.argv[2], **out)
"""


def run_transformers4(tmp_path: Path, img: np.ndarray, folders: list[Path]) -> dict[str, np.ndarray]:
    if not (TF4 / "transformers").is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"transformers 4.x is not installed at {TF4}; .ci/run installs it")
        pytest.skip(f"transformers 4.x not installed at {TF4} (see tests/test_transformers4.py)")
    np.save(tmp_path / "img.npy", img)
    env = {**os.environ, "PYTHONPATH": str(TF4), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", TF4_LOAD, str(tmp_path / "img.npy"), str(tmp_path / "out4.npz"),
                        *map(str, folders)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(tmp_path / "out4.npz"))


def test_saved_files_load_in_vitmsn_and_both_transformers(tmp_path, photos):
    """A saved processor loads with its own backend in vitmsn again; transformers 5 and 4.x load it as they
    load their own files (5.x: torchvision by default; 4.x: its PIL ViTImageProcessor, its fast one with
    use_fast=True), each giving its own numbers, which vitmsn's matching backend reproduces. Center crop and
    padding too: transformers 4.x's fast processor crops and pads, its PIL one ignores do_center_crop and do_pad."""
    img = np.ascontiguousarray(photos[1][::2, ::2])
    cfgs = {"msn": {**MSN, "resample": 3}, "crop": {"size": {"height": 80, "width": 120}, "do_center_crop": True,
                                                    "crop_size": {"height": 64, "width": 72}},
            "pad": {"size": 48, "do_pad": True, "pad_size": {"height": 56, "width": 64}}}
    ignored_by_4x_pil = {"crop": ({"do_center_crop": False}, (1, 3, 80, 120)), "pad": ({"do_pad": False}, (1, 3, 48, 48))}
    folders, ours = [], {}
    for (name, cfg), backend in [(c, b) for c in cfgs.items() for b in ("torch", "pil")]:
        folder = tmp_path / f"{name}-{backend}"
        proc = ViTImageProcessor(**cfg, backend=backend)
        proc.save_pretrained(folder)
        folders.append(folder)
        ours[folder] = {b: ViTImageProcessor(**cfg, backend=b)(img, return_tensors="np")["pixel_values"]
                        for b in ("torch", "pil")}
        data = json.loads((folder / "preprocessor_config.json").read_text())
        assert data["image_processor_type"] == "ViTImageProcessor"
        assert data.get("vitmsn_backend") == ("pil" if backend == "pil" else None)
        # vitmsn: the same backend again, however it is loaded
        for loader in (ViTImageProcessor, AutoImageProcessor, ViTFeatureExtractor):
            again = loader.from_pretrained(folder)
            assert again.backend == backend and again.to_dict() == proc.to_dict(), loader
            assert np.array_equal(again(img, return_tensors="np")["pixel_values"], ours[folder][backend])
        for loader, forced in ((ViTImageProcessorPil, "pil"), (ViTImageProcessorFast, "torch")):
            assert loader.from_pretrained(folder).backend == forced
        assert AutoImageProcessor.from_pretrained(folder, backend="torch").backend == "torch"
        assert AutoImageProcessor.from_pretrained(folder, use_fast=False).backend == "pil"
        # transformers 5: its default (torchvision) backend, or PIL when asked; re-saved, still ours
        for kwargs, b in (({}, "torch"), ({"backend": "pil"}, "pil"), ({"use_fast": False}, "pil")):
            ref = quiet(transformers.AutoImageProcessor.from_pretrained, folder, **kwargs)
            np.testing.assert_allclose(theirs(ref, img, return_tensors="np"), ours[folder][b],
                                       atol=ATOL if b == "torch" else EXACT, rtol=0)
        ref.save_pretrained(tmp_path / "resaved")
        assert AutoImageProcessor.from_pretrained(tmp_path / "resaved").backend == backend
    # transformers 4.x
    out4 = run_transformers4(tmp_path, img, folders)
    for folder in folders:
        name = folder.name.split("-")[0]
        for fast, b in ((None, "pil"), (True, "torch"), (False, "pil")):
            cls = str(out4[f"{folder} {fast} class"])
            assert cls == ("ViTImageProcessorFast" if b == "torch" else "ViTImageProcessor"), (folder, fast)
            got = out4[f"{folder} {fast}"]
            if name in ignored_by_4x_pil and b == "pil":  # 4.x's PIL processor has no center crop nor padding
                off, shape = ignored_by_4x_pil[name]
                assert got.shape == shape
                np.testing.assert_array_equal(got, ViTImageProcessorPil(**{**cfgs[name], **off})(
                    img, return_tensors="np")["pixel_values"])
                continue
            np.testing.assert_allclose(got, ours[folder][b], atol=ATOL if b == "torch" else EXACT, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Center crop
# ---------------------------------------------------------------------------------------------------------

CROPS = [
    {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224},
    {"size": 64, "do_center_crop": True, "crop_size": {"height": 97, "width": 51}},  # taller: padded, odd
    {"size": (60, 80), "do_center_crop": True, "crop_size": (31, 101)},  # wider: padded by 21 (odd)
    {"do_resize": False, "do_center_crop": True, "crop_size": (500, 333)},  # sizes differ: some padded
    {"size": {"shortest_edge": 100}, "do_center_crop": True, "crop_size": 101, "do_normalize": False},
    {"size": 50, "do_center_crop": True, "crop_size": 73, "do_normalize": False, "do_rescale": False},
]


@pytest.mark.parametrize("cfg", CROPS, ids=range(len(CROPS)))
@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_center_crop_matches_transformers5(photos, cfg, backend):
    """do_center_crop / crop_size as transformers 5 does them in each backend, crops larger than the image
    padded with zeros (the odd pixel on the side each backend puts it); every input kind and return type."""
    ref = (transformers.ViTImageProcessor if backend == "torch" else transformers.ViTImageProcessorPil)(**cfg)
    proc = ViTImageProcessor(**cfg, backend=backend)
    atol = ATOL if backend == "torch" else EXACT
    if not cfg.get("do_normalize", True) and not cfg.get("do_rescale", True) and backend == "torch":
        atol = 1.0  # uint8 pixels: the torch resize may differ by one level
    for images in (photos, [PIL.Image.fromarray(p) for p in photos], photos[2]):
        for return_tensors in (None, "np", "pt"):
            assert_like(proc(images, return_tensors=return_tensors)["pixel_values"],
                        theirs(ref, images, return_tensors=return_tensors), atol, f"{return_tensors}")
    # per call, as transformers takes it
    plain = ViTImageProcessor(**{k: v for k, v in cfg.items() if k not in ("do_center_crop", "crop_size")},
                              backend=backend)
    assert_like(plain(photos, return_tensors="pt", do_center_crop=True, crop_size=cfg["crop_size"])["pixel_values"],
                theirs(ref, photos, return_tensors="pt"), atol)
    assert_like(proc(photos[0], return_tensors="pt", do_center_crop=False)["pixel_values"],
                theirs(ref, photos[0], return_tensors="pt", do_center_crop=False), atol)
    # the saved settings are transformers' (and the PIL backend's key)
    want = json.loads(ref.to_json_string())
    assert json.loads(proc.to_json_string()) == {**want, **({"vitmsn_backend": "pil"} if backend == "pil" else {})}


def test_crop_padding_side_per_backend():
    """An odd padding goes before the image in transformers' PIL backend, after it in its torchvision one."""
    img = np.full((5, 4, 3), 255, np.uint8)
    kw = {"do_resize": False, "do_center_crop": True, "crop_size": (8, 7), "do_rescale": False,
          "do_normalize": False}
    for backend, ref_cls, top, left in (("pil", transformers.ViTImageProcessorPil, 2, 2),
                                        ("torch", transformers.ViTImageProcessor, 1, 1)):
        got = as_numpy(ViTImageProcessor(**kw, backend=backend)(img, return_tensors="np")["pixel_values"])[0, 0]
        assert np.array_equal(got, as_numpy(theirs(ref_cls(**kw), img, return_tensors="np"))[0, 0])
        rows, cols = np.nonzero(got)
        assert (rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (top, left, 5, 4)


# ---------------------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------------------

PADS = [
    {"do_resize": False, "do_pad": True},  # to the batch's largest height and width
    {"do_resize": False, "do_pad": True, "pad_size": {"height": 140, "width": 170}},
    {"size": {"shortest_edge": 40}, "do_pad": True},  # aspect ratios kept: padded after resizing
    {"size": 64, "do_center_crop": True, "crop_size": (50, 60), "do_pad": True, "pad_size": (56, 72)},
    {"do_resize": False, "do_pad": True, "pad_size": 150, "do_normalize": False},
    {"do_resize": False, "do_pad": True, "do_rescale": False, "do_normalize": False},  # uint8 pixels
]


@pytest.fixture(scope="module")
def small_photos(photos) -> list[np.ndarray]:
    """Three photographs of different sizes: 128 x 128, 100 x 150 and 75 x 113."""
    return [np.ascontiguousarray(p[::4, ::4]) for p in photos]


@pytest.mark.parametrize("cfg", PADS, ids=range(len(PADS)))
@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_pad_matches_transformers5(small_photos, cfg, backend):
    """do_pad / pad_size as transformers 5 does them in each backend: after rescaling and normalizing, zeros at
    the bottom and right, to pad_size or to the batch's largest height and width; every input kind, return
    type, per call, and the saved settings."""
    ref = (transformers.ViTImageProcessor if backend == "torch" else transformers.ViTImageProcessorPil)(**cfg)
    proc = ViTImageProcessor(**cfg, backend=backend)
    atol = ATOL if backend == "torch" else EXACT
    if cfg.get("do_rescale") is False and backend == "torch" and cfg.get("do_resize", True):
        atol = 1.0  # uint8 pixels: the torch resize may differ by one level
    unpadded = theirs(ref, small_photos, return_tensors=None, do_pad=False)
    want = theirs(ref, small_photos, return_tensors="np")
    assert any(tuple(v.shape) != want.shape[1:] for v in unpadded)  # padding matters here
    for images in (small_photos, [PIL.Image.fromarray(p) for p in small_photos], small_photos[1]):
        for return_tensors in (None, "np", "pt"):
            assert_like(proc(images, return_tensors=return_tensors)["pixel_values"],
                        theirs(ref, images, return_tensors=return_tensors), atol, f"{return_tensors}")
    # per call, both ways
    plain = ViTImageProcessor(**{k: v for k, v in cfg.items() if k not in ("do_pad", "pad_size")}, backend=backend)
    assert_like(plain(small_photos, return_tensors="pt", do_pad=True, pad_size=cfg.get("pad_size"))["pixel_values"],
                theirs(ref, small_photos, return_tensors="pt"), atol)
    assert_like(proc(small_photos, do_pad=False)["pixel_values"], unpadded, atol)
    # the saved settings are transformers' (and the PIL backend's key)
    saved = json.loads(ref.to_json_string())
    assert json.loads(proc.to_json_string()) == {**saved, **({"vitmsn_backend": "pil"} if backend == "pil" else {})}


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_pad_zeros_bottom_right_after_normalizing(backend):
    """The padding is zeros in the output (not the normalized value of a black pixel), below and to the right
    of each image, as in transformers 5; with do_rescale=False, the pixels keep their dtype."""
    white = [np.full((6, 4, 3), 255, np.uint8), np.full((7, 2, 3), 255, np.uint8)]
    ref_cls = transformers.ViTImageProcessor if backend == "torch" else transformers.ViTImageProcessorPil
    for kw in ({}, {"do_rescale": False, "do_normalize": False}):
        got = ViTImageProcessor(do_resize=False, do_pad=True, backend=backend, **kw)(white, return_tensors="np")
        got = got["pixel_values"]
        assert_like(got, theirs(ref_cls(do_resize=False, do_pad=True, **kw), white, return_tensors="np"),
                    ATOL if backend == "torch" else EXACT)
        assert got.shape == (2, 3, 7, 4) and got.dtype == (np.uint8 if kw else np.float32)
        value = 255 if kw else 1.0  # white, normalized with mean = std = 0.5
        assert np.allclose(got[0, :, :6, :4], value, rtol=0, atol=ATOL) and (got[0, :, 6:] == 0).all()
        assert np.allclose(got[1, :, :7, :2], value, rtol=0, atol=ATOL) and (got[1, :, :, 2:] == 0).all()


def test_pad_images_of_different_dtypes_as_transformers5(small_photos):
    """Images that come out in different dtypes (uint8 and float64 pixels, neither rescaled nor normalized) are
    each padded in their own dtype, as in transformers 5."""
    images = [small_photos[0], small_photos[1].astype(np.float64)]
    kw = {"do_resize": False, "do_rescale": False, "do_normalize": False, "do_pad": True}
    for backend, ref_cls in (("torch", transformers.ViTImageProcessor), ("pil", transformers.ViTImageProcessorPil)):
        got = ViTImageProcessor(**kw, backend=backend)(images)["pixel_values"]
        want = theirs(ref_cls(**kw), images)
        assert_like(got, want, 0)
        assert [v.dtype for v in want][0] != [v.dtype for v in want][1] and want[1].shape == (3, 128, 150)


def test_bad_pad_size_as_transformers5(small_photos):
    """A pad_size smaller than a processed image, or without 'height' and 'width', is a ValueError (where
    transformers 5 raises one too); without do_pad, a small pad_size changes nothing."""
    for backend, ref_cls in (("torch", transformers.ViTImageProcessor), ("pil", transformers.ViTImageProcessorPil)):
        small = {"do_resize": False, "pad_size": {"height": 120, "width": 160}}  # image 0 is 128 high
        for proc in (ViTImageProcessor(**small, do_pad=True, backend=backend), ref_cls(**small, do_pad=True)):
            with pytest.raises(ValueError, match="pad_size"):
                quiet(proc, small_photos)
        with pytest.raises(ValueError, match=r"smaller than image 0 of the batch, which is 128 x 128"):
            ViTImageProcessor(**small, backend=backend)(small_photos, do_pad=True)
        assert_like(ViTImageProcessor(**small, backend=backend)(small_photos)["pixel_values"],
                    theirs(ref_cls(**small), small_photos), ATOL if backend == "torch" else EXACT)
        # missing keys: when made (as transformers), or when called with it
        for proc_cls in (ref_cls, ViTImageProcessor):
            with pytest.raises(ValueError, match="pad_size"):
                proc_cls(do_pad=True, pad_size={"height": 20})
        with pytest.raises(ValueError, match=r"pad_size must be \{'height': h, 'width': w\}"):
            ViTImageProcessor(backend=backend)(small_photos, do_pad=True, pad_size={"width": 200})
        # another kind of size: kept and saved (a file with it loads), refused when padding, in both
        other = {"pad_size": {"shortest_edge": 200}}
        ours, ref = ViTImageProcessor(**other, backend=backend), ref_cls(**other)
        assert ours.to_dict()["pad_size"] == ref.to_dict()["pad_size"] == {"shortest_edge": 200}
        with pytest.raises(ValueError, match=r"pad_size must be \{'height': h, 'width': w\}"):
            ours(small_photos, do_pad=True)
        with pytest.raises(ValueError, match="height' and 'width"):
            quiet(ref, small_photos, do_pad=True)


def test_no_padding_work_without_do_pad(small_photos, monkeypatch):
    """Without do_pad (also with a pad_size set), none of the padding code runs."""
    def fail(*args, **kwargs):
        raise AssertionError("padding code ran without do_pad")

    for name in ("_pad_target", "_pad_np", "_pad_torch"):
        monkeypatch.setattr(processing, name, fail)
    for backend in ("torch", "pil"):
        for kw in ({}, {"do_pad": False, "pad_size": 300}):
            for return_tensors in (None, "pt"):
                images = small_photos if return_tensors is None else small_photos[:1]
                ViTImageProcessor(do_resize=False, backend=backend, **kw)(images, return_tensors=return_tensors)
        with pytest.raises(AssertionError, match="padding code ran"):  # (the check itself works)
            ViTImageProcessor(do_resize=False, backend=backend)(small_photos, do_pad=True)


def test_padded_processor_saved_and_loaded_both_ways(tmp_path, small_photos):
    """do_pad / pad_size survive save_pretrained / from_pretrained between vitmsn and transformers 5, in both
    directions and both backends, with the same numbers."""
    cfg = {"do_resize": False, "do_pad": True, "pad_size": (130, 160)}
    for backend, ref_cls in (("torch", transformers.ViTImageProcessor), ("pil", transformers.ViTImageProcessorPil)):
        atol = ATOL if backend == "torch" else EXACT
        want = theirs(ref_cls(**cfg), small_photos, return_tensors="pt")
        assert want.shape == (3, 3, 130, 160)
        ViTImageProcessor(**cfg, backend=backend).save_pretrained(tmp_path / f"ours-{backend}")
        ref = quiet(ref_cls.from_pretrained, tmp_path / f"ours-{backend}")
        assert ref.do_pad is True and dict(ref.pad_size) == {"height": 130, "width": 160}
        assert_like(theirs(ref, small_photos, return_tensors="pt"), want, atol)
        quiet(ref_cls(**cfg).save_pretrained, tmp_path / f"theirs-{backend}")
        for loader in (ViTImageProcessor, AutoImageProcessor):
            ours = loader.from_pretrained(tmp_path / f"theirs-{backend}", backend=backend)
            assert ours.do_pad is True and ours.pad_size == {"height": 130, "width": 160}
            assert_like(ours(small_photos, return_tensors="pt")["pixel_values"], want, atol, repr(loader))
            again = ViTImageProcessor.from_dict(ours.to_dict())
            assert again.to_dict() == ours.to_dict() and again.backend == backend


# ---------------------------------------------------------------------------------------------------------
# Resample filters
# ---------------------------------------------------------------------------------------------------------


def test_every_resample_filter_as_transformers5(photos):
    """NEAREST, BILINEAR, BICUBIC and LANCZOS: transformers 5's numbers on both backends. BOX and HAMMING (and
    Pillow 13's MKS2013): the PIL backend resizes with them; the torch backend, like transformers' torchvision
    one, cannot (an error when it would resize, none when it is made, saved or loaded, nor without do_resize)."""
    img = photos[1]
    for resample in PIL.Image.Resampling:
        pil = ViTImageProcessor(resample=resample, backend="pil")(img, return_tensors="np")["pixel_values"]
        assert_like(pil, theirs(transformers.ViTImageProcessorPil(resample=resample), img, return_tensors="np"), EXACT)
        proc, ref = ViTImageProcessor(resample=resample), transformers.ViTImageProcessor(resample=resample)
        assert ViTImageProcessor.from_dict(proc.to_dict()).resample == int(resample)
        try:
            want = theirs(ref, img, return_tensors="np")
        except (NotImplementedError, KeyError):
            assert resample.name not in ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS")
            with pytest.raises(ValueError, match=f"resample={resample.name} is not available with backend='torch'"):
                proc(img)
            assert_like(proc(img, return_tensors="np", do_resize=False)["pixel_values"],
                        theirs(ref, img, return_tensors="np", do_resize=False), ATOL)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert_like(proc(img, return_tensors="np")["pixel_values"], want, ATOL, resample.name)
        assert not [w for w in caught if "BICUBIC" in str(w.message)]  # LANCZOS on the CPU: no fallback


def test_lanczos_falls_back_to_bicubic_as_transformers(photos, monkeypatch):
    """Where the torch backend cannot do LANCZOS (off the CPU, or a torch without it), it resizes with BICUBIC
    and warns, as transformers' torchvision backend does (off the CPU, or torchvision < 0.27)."""
    img = photos[2]
    warning = "falling back to BICUBIC"
    with pytest.warns(UserWarning, match=warning):
        assert processing._torch_mode(int(PIL.Image.Resampling.LANCZOS), torch.device("cuda")) == ("bicubic", True)
    monkeypatch.setattr(processing, "_LANCZOS", [False])
    with pytest.warns(UserWarning, match=warning):
        got = ViTImageProcessor(resample=PIL.Image.Resampling.LANCZOS)(img, return_tensors="np")["pixel_values"]
    bicubic = theirs(transformers.ViTImageProcessor(resample=PIL.Image.Resampling.BICUBIC), img, return_tensors="np")
    assert_like(got, bicubic, ATOL)


# ---------------------------------------------------------------------------------------------------------
# BatchFeature
# ---------------------------------------------------------------------------------------------------------

VALUES = {
    "tensors": [torch.zeros(3, 2, 2), torch.ones(3, 2, 2)],
    "arrays": [np.zeros((3, 2, 2)), np.ones((3, 2, 2), np.float32)],
    "array": np.ones(3),
    "tensor": torch.arange(3),
    "floats": [1.0, 2.5],
    "nested": [[1, 2], [3, 4]],
    "ragged": [[1, 2], [3]],
    "text": "hello",
    "mapping": {"a": 1},
}


@pytest.mark.parametrize("tensor_type", ["pt", "np"])
def test_batch_feature_convert_to_tensors_as_transformers(tensor_type):
    ref_cls = transformers.BatchFeature
    for name, value in VALUES.items():
        results = []
        for cls in (ref_cls, BatchFeature):
            try:
                out = cls({name: value}).convert_to_tensors(tensor_type)[name]
                results.append((type(out), getattr(out, "dtype", None), tuple(getattr(out, "shape", ()))))
            except ValueError:
                results.append("ValueError")
        assert results[0] == results[1], name
    # at construction, with skipped keys, and on pixel values returned as lists
    data = {"pixel_values": VALUES["tensors"], "keep": VALUES["arrays"]}
    for cls in (ref_cls, BatchFeature):
        out = cls(dict(data), tensor_type=tensor_type, skip_tensor_conversion=["keep"])
        assert isinstance(out["pixel_values"], torch.Tensor if tensor_type == "pt" else np.ndarray)
        assert isinstance(out["keep"], list)
        assert out.convert_to_tensors(None) is out and out.convert_to_tensors(tensor_type, ["pixel_values"]) is out
    with pytest.raises(ValueError):
        BatchFeature({"x": [1]}).convert_to_tensors("tf")


def test_batch_feature_data_and_to_as_transformers(photos):
    img = photos[2][::4, ::4]
    for backend in ("torch", "pil"):
        listed = ViTImageProcessor(size=32, backend=backend)([img, img])
        batched = ViTImageProcessor(size=32, backend=backend)([img, img], return_tensors="pt")
        assert listed.data is listed and listed.data["pixel_values"] is listed["pixel_values"]
        assert list(listed.data.items()) == list(listed.items())
        assert torch.equal(listed.convert_to_tensors("pt")["pixel_values"], batched["pixel_values"])
    ref = transformers.BatchFeature({"pixel_values": torch.rand(2, 3, 4, 4), "ids": torch.arange(2),
                                     "listed": [torch.rand(3), torch.arange(3)], "n": np.ones(2)})
    ours = BatchFeature({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in ref.items()})
    ours.data = dict(ours)  # setting .data replaces the entries, as in transformers
    for args, kwargs in (((torch.float16,), {}), (("cpu",), {}), ((torch.device("cpu"), torch.float64), {}),
                         ((), {"dtype": torch.bfloat16}), ((), {"device": "cpu", "non_blocking": True})):
        a, b = ref.to(*args, **kwargs), ours.to(*args, **kwargs)
        assert b is ours
        for key in a:
            x, y = a[key], b[key]
            pairs = zip(x, y, strict=True) if isinstance(x, list) else [(x, y)]
            assert type(x) is type(y)
            for u, v in pairs:
                assert type(u) is type(v) and u.dtype == v.dtype, (args, kwargs, key)
    for bad in (3.5, None, [1]):
        with pytest.raises(ValueError, match="Attempting to cast a BatchFeature"):
            ref.to(bad)
        with pytest.raises(ValueError, match="Attempting to cast a BatchFeature"):
            ours.to(bad)


# ---------------------------------------------------------------------------------------------------------
# from_pretrained / from_dict: which keyword arguments are "unused"
# ---------------------------------------------------------------------------------------------------------

UNUSED_CASES = dict(foo=1, trust_remote_code=True, size=32, do_center_crop=True, crop_size=20, subfolder="",
                    proxies=None, _from_auto=True, _from_pipeline="x", config=None, resume_download=None,
                    code_revision=None, custom_key="new", model_input_names=["pixel_values", "x"],
                    disable_grouping=True, _commit_hash="abc", low_cpu_mem_usage=True,
                    image_processor_filename="preprocessor_config.json")


def test_unused_kwargs_as_transformers5(tmp_path, photos):
    """return_unused_kwargs=True: the same ``unused`` dict as transformers 5 (settings and keys of existing
    attributes are used; loader arguments each loader takes for itself are neither), and the same processor."""
    quiet(transformers.ViTImageProcessorPil(size=48, custom_key="old").save_pretrained, tmp_path)
    for ref_loader, loader in ((transformers.ViTImageProcessor, ViTImageProcessor),
                               (transformers.AutoImageProcessor, AutoImageProcessor)):
        ref, ref_unused = quiet(ref_loader.from_pretrained, tmp_path, return_unused_kwargs=True, **UNUSED_CASES)
        proc, unused = loader.from_pretrained(tmp_path, return_unused_kwargs=True, **UNUSED_CASES)
        assert unused == ref_unused, loader
        assert json.loads(proc.to_json_string()) == json.loads(ref.to_json_string()), loader
        assert not hasattr(proc, "foo") and proc.custom_key == "new" and proc.model_input_names[-1] == "x"
        assert_like(proc(photos[0], return_tensors="pt")["pixel_values"],
                    theirs(ref, photos[0], return_tensors="pt"), ATOL)
        proc, unused = loader.from_pretrained(tmp_path, return_unused_kwargs=True, foo=1)
        assert unused == {"foo": 1} and not hasattr(proc, "foo")
    ref, ref_unused = transformers.ViTImageProcessor.from_dict({"size": 30}, return_unused_kwargs=True, foo=2,
                                                               do_resize=False)
    proc, unused = ViTImageProcessor.from_dict({"size": 30}, return_unused_kwargs=True, foo=2, do_resize=False)
    assert unused == ref_unused == {"foo": 2} and proc.do_resize is ref.do_resize is False
    # vitmsn's own: use_fast chooses the backend of ViTImageProcessor.from_pretrained too (used, not unused)
    proc, unused = ViTImageProcessor.from_pretrained(tmp_path, return_unused_kwargs=True, use_fast=False, foo=1)
    assert proc.backend == "pil" and unused == {"foo": 1}
