"""Data layer: Fashion-MNIST IDX loading, robust image folders, subset files and label subsets."""

from __future__ import annotations

import gzip
import io
import logging
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmsn.data import fashion_mnist as fm
from vitmsn.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist, read_idx
from vitmsn.data.folder import (
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    ImageLoadError,
    NoLoadableImageError,
    balanced_subset,
    drop_unreadable,
    load_image,
    percent_subset,
    read_subset_file,
    write_subset_file,
)

# --------------------------------------------------------------------------------- IDX helpers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = magic if magic is not None else 0x800 + arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def synthetic_split(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_split(root: Path, split: str = "train", n: int = 20, gz_images=True, gz_labels=True, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_split(n, seed)
    names = fm.FILES[split]
    write_idx(root / names[0], idx_bytes(images), gz_images)
    write_idx(root / names[1], idx_bytes(labels), gz_labels)
    return images, labels


# ------------------------------------------------------------------------------- Fashion-MNIST

DEBIAN_FILES = [fm.DEBIAN_DIR / f"{name}.gz" for pair in fm.FILES.values() for name in pair]


@pytest.mark.skipif(
    not all(p.is_file() for p in DEBIAN_FILES),
    reason="Debian Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist():
    x, y = load_fashion_mnist("test", root=fm.DEBIAN_DIR, download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000] * 10
    assert y[:5].tolist() == [9, 2, 1, 1, 6]
    ds = FashionMNIST("test", root=fm.DEBIAN_DIR, download=False)
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert label == 9 and CLASSES[label] == "Ankle boot"
    assert abs(x.mean() / 255 - fm.FASHION_MNIST_MEAN[0]) < 0.01


@pytest.mark.parametrize("gz_images,gz_labels", [(True, True), (False, False), (True, False)])
def test_synthetic_idx(tmp_path, gz_images, gz_labels):
    images, labels = write_split(tmp_path, "test", gz_images=gz_images, gz_labels=gz_labels)
    x, y = load_fashion_mnist("test", root=tmp_path, download=False)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64 and x.dtype == np.uint8


def test_dataset_and_transform(tmp_path):
    images, labels = write_split(tmp_path, "train", n=5)
    ds = FashionMNIST("train", root=tmp_path, transform=lambda im: np.asarray(im), download=False)
    assert len(ds) == 5 and ds.classes == CLASSES and ds.class_to_idx["Bag"] == 8
    arr, label = ds[3]
    np.testing.assert_array_equal(arr, images[3])
    assert label == labels[3] and isinstance(label, int)
    raw = FashionMNIST("train", root=tmp_path, download=False)[0][0]
    assert raw.mode == "L"


def test_env_var_and_torchvision_layout(tmp_path, monkeypatch):
    images, _ = write_split(tmp_path / "env", "train")
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    x, _ = load_fashion_mnist("train", download=False)
    np.testing.assert_array_equal(x, images)
    images2, _ = write_split(tmp_path / "tv" / "FashionMNIST" / "raw", "train", seed=3)
    x2, _ = load_fashion_mnist("train", root=tmp_path / "tv", download=False)
    np.testing.assert_array_equal(x2, images2)


@pytest.mark.parametrize(
    "kind,match",
    [
        ("bad_magic", "magic"),
        ("truncated", "need"),
        ("short", "too short"),
        ("dims", "28x28"),
        ("count", "labels"),
        ("label_range", "out of range"),
        ("bad_gzip", "cannot read"),
    ],
)
def test_corrupt_idx(tmp_path, kind, match):
    images, labels = synthetic_split(6)
    img_data, lab_data = idx_bytes(images), idx_bytes(labels)
    if kind == "bad_magic":
        img_data = struct.pack(">I", 0x00000901) + img_data[4:]
    elif kind == "truncated":
        img_data = img_data[:-10]
    elif kind == "short":
        img_data = b"\x00\x00"
    elif kind == "dims":
        img_data = idx_bytes(np.zeros((6, 32, 32), np.uint8))
    elif kind == "count":
        lab_data = idx_bytes(labels[:5])
    elif kind == "label_range":
        lab_data = idx_bytes(np.full(6, 12, np.uint8))
    names = fm.FILES["train"]
    if kind == "bad_gzip":
        (tmp_path / f"{names[0]}.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    else:
        write_idx(tmp_path / names[0], img_data, gz=True)
    write_idx(tmp_path / names[1], lab_data, gz=False)
    with pytest.raises(ValueError, match=match) as info:
        load_fashion_mnist("train", root=tmp_path, download=False)
    assert "idx" in str(info.value)  # names the file


def test_read_idx_expected_magic(tmp_path):
    p = write_idx(tmp_path / "labels", idx_bytes(np.arange(3, dtype=np.uint8)), gz=False)
    assert read_idx(p).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="0x00000803"):
        read_idx(p, expected_magic=0x803)


def test_not_found_lists_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("train", root=tmp_path / "nope", download=False)
    msg = str(info.value)
    assert str(tmp_path / "nope" / "train-images-idx3-ubyte.gz") in msg
    assert str(tmp_path / "nope" / "train-labels-idx1-ubyte") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data DIR" in msg

    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test", download=False)
    msg = str(info.value)
    for d in ("env", "debian", "cache/vitmsn/fashion-mnist"):
        assert str(tmp_path / d / "t10k-images-idx3-ubyte.gz") in msg
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root=tmp_path)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_atomic(tmp_path, monkeypatch):
    images, labels = synthetic_split(7)
    served = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels)),
    }
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return _FakeResponse(served[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    x, y = load_fashion_mnist("test")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    cache = tmp_path / "cache" / "vitmsn" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no temp files left
    assert all(u.startswith(fm.URL_BASE) for u in urls)
    # second call uses the cache, no download
    urls.clear()
    load_fashion_mnist("test")
    assert urls == []


def test_download_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="download from .* failed"):
        load_fashion_mnist("train")

    # HTML error page instead of IDX data: rejected, nothing kept
    monkeypatch.setattr(fm.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"<html>"))
    with pytest.raises(FileNotFoundError, match="failed"):
        load_fashion_mnist("train")
    assert not (tmp_path / "cache").exists()  # nothing kept, not even the folders it made


# --------------------------------------------------------------------------------- image folders


def _png(path: Path, color=(255, 0, 0), size=(8, 6), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


def _jpeg_bytes(size=(32, 32)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """cat/ and dog/ classes with 5 good images and 3 bad ones, plus ignorable non-images."""
    root = tmp_path / "images"
    _png(root / "cat" / "a.png", (255, 0, 0))
    jpeg = _jpeg_bytes()
    (root / "cat" / "b_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated JPEG
    (root / "cat" / "c.JPG").write_bytes(jpeg)
    (root / "cat" / "d_empty.jpeg").write_bytes(b"")  # zero bytes
    _png(root / "dog" / "e.png", (0, 255, 0))
    (root / "dog" / "f_text.png").write_text("this is not a PNG\n")
    _png(root / "dog" / "deeper" / "g.png", (0, 0, 255), mode="L")
    _png(root / "dog" / "h.bmp", (9, 9, 9))
    (root / "dog" / "notes.txt").write_text("ignored")
    _png(root / ".hidden" / "x.png")
    return root


BAD = {"cat/b_truncated.jpg", "cat/d_empty.jpeg", "dog/f_text.png"}


def test_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".webp"} <= IMAGE_EXTENSIONS
    assert ".pdf" not in IMAGE_EXTENSIONS  # PIL can write PDFs but not read them


def test_folder_labelled_skips_bad_files(messy_folder, caplog):
    ds = ImageFolderDataset(messy_folder, labelled=True)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.relative_paths == [
        "cat/a.png",
        "cat/b_truncated.jpg",
        "cat/c.JPG",
        "cat/d_empty.jpeg",
        "dog/deeper/g.png",
        "dog/e.png",
        "dog/f_text.png",
        "dog/h.bmp",
    ]
    assert ds.targets == [0, 0, 0, 0, 1, 1, 1, 1]
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        items = [ds[i] for i in range(len(ds))]
        items_again = [ds[i] for i in range(len(ds))]
    assert all(isinstance(img, Image.Image) and img.mode == "RGB" for img, _ in items)
    # deterministic replacement: the next loadable index
    rel = ds.relative_paths
    assert items[1][0].tobytes() == items[2][0].tobytes() and items[1][1] == 0  # b -> c
    assert items[3][0].getpixel((0, 0)) == items[4][0].getpixel((0, 0)) == (128, 128, 128)  # d -> g
    assert items[6][0].getpixel((0, 0)) == (9, 9, 9)  # f -> h
    assert [i[0].tobytes() for i in items] == [i[0].tobytes() for i in items_again]
    assert {Path(p).relative_to(messy_folder).as_posix() for p in ds.skipped} == BAD
    # files, not replacements: each bad file was replaced twice but is one unreadable image
    assert ds.num_skipped == 3 and all(v == 2 for v in ds.skipped.values())
    warnings = [r for r in caplog.records if r.name == "vitmsn" and r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per bad file, not per access
    assert len(rel) == 8


def test_folder_scan_and_verify(messy_folder):
    ds = ImageFolderDataset(messy_folder, labelled=True)
    assert ds.scan(verify=True, progress=False) == 3
    assert len(ds) == 5 and not set(ds.relative_paths) & BAD
    _ = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 0
    assert ds.classes == ["cat", "dog"]
    ds2 = ImageFolderDataset(messy_folder, labelled=True, verify=True)
    assert ds2.relative_paths == ds.relative_paths


def test_folder_unlabelled_with_loader(messy_folder):
    from vitmsn.msn.transforms import MSNViews, ViewConfig, collate_views

    _png(messy_folder / "loose.png")
    cfg = ViewConfig(rand_size=16, focal_size=8, focal_views=2)
    ds = ImageFolderDataset(messy_folder, transform=MSNViews(cfg), labelled=False)
    assert len(ds) == 9 and set(ds.targets) == {-1} and ds.classes == []
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_views)
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 9
    views, labels = batches[0]
    assert len(views) == 4 and views[0].shape == (4, 3, 16, 16) and views[3].shape == (4, 3, 8, 8)
    assert labels.tolist() == [-1] * 4
    assert ds.num_skipped == 3


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        ImageFolderDataset(tmp_path / "empty", labelled=False)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "text", labelled=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    _png(tmp_path / "flat" / "a.png")  # labelled mode needs class folders
    with pytest.raises(FileNotFoundError, match="class sub-folders"):
        ImageFolderDataset(tmp_path / "flat", labelled=True)
    (tmp_path / "allbad" / "c").mkdir(parents=True)
    (tmp_path / "allbad" / "c" / "a.png").write_bytes(b"")
    ds = ImageFolderDataset(tmp_path / "allbad")
    # a ValueError (an ImageLoadError), so that the command line prints it as one line
    with pytest.raises(NoLoadableImageError, match="no loadable image under .*allbad: all 1 image files") as info:
        ds[0]
    assert isinstance(info.value, ImageLoadError) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match="no loadable image"):
        ds.scan(progress=False)
    with pytest.raises(IndexError):
        ImageFolderDataset(tmp_path / "flat", labelled=False)[5]


def test_all_bad_folder_error_from_a_loader_worker(tmp_path):
    """A DataLoader re-raises a worker's error as type(err)(traceback text): still the same type, one line."""
    for i in range(3):
        (tmp_path / "allbad" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "allbad" / f"{i}.png").write_text("not an image")
    ds = ImageFolderDataset(tmp_path / "allbad", labelled=False)
    with pytest.raises(NoLoadableImageError) as info:
        next(iter(torch.utils.data.DataLoader(ds, num_workers=1)))
    assert str(info.value).startswith("no loadable image under") and "\n" not in str(info.value)
    assert "all 3 image files are unreadable" in str(info.value)


def test_drop_unreadable_for_evaluation(messy_folder, caplog):
    ds = ImageFolderDataset(messy_folder, labelled=True)
    subset = torch.utils.data.Subset(ds, [0, 1, 2, 3, 6])  # a.png, b_truncated, c.JPG, d_empty, f_text
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        kept = drop_unreadable(subset)
    assert [ds.relative_paths[i] for i in kept.indices] == ["cat/a.png", "cat/c.JPG"]
    assert len(ds) == 8  # the folder (and so a training set drawn from it) is left as it was
    named = [r.getMessage() for r in caplog.records if "leaving out unreadable image" in r.getMessage()]
    assert len(named) == 3 and {m.split("cannot load image ")[1].split(":")[0] for m in named} == {
        str(messy_folder / b) for b in BAD}  # fmt: skip
    assert "left out 3 unreadable image file(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        assert drop_unreadable(ds) is ds
    assert len(ds) == 5 and ds.verified and not set(ds.relative_paths) & BAD
    assert "left out 3 unreadable image file(s)" in caplog.text
    assert drop_unreadable(ds) is ds and len(ds) == 5  # verified: not decoded twice
    items = [(np.zeros(2), 0)]
    assert drop_unreadable(items) is items  # anything else is returned as is
    (messy_folder / "cat" / "a.png").write_bytes(b"")
    (messy_folder / "cat" / "c.JPG").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no loadable image"):
        drop_unreadable(torch.utils.data.Subset(ImageFolderDataset(messy_folder), [0, 1]))


def test_load_image(messy_folder):
    img = load_image(messy_folder / "dog" / "deeper" / "g.png")
    assert img.mode == "RGB" and img.size == (8, 6)
    assert load_image(messy_folder / "dog" / "deeper" / "g.png", mode="L").mode == "L"
    for name, reason in [
        ("cat/b_truncated.jpg", "truncated"),
        ("cat/d_empty.jpeg", "empty"),
        ("dog/f_text.png", "not a recognised image"),
        ("cat/missing.png", "No such file"),
    ]:
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(messy_folder / name)
        assert isinstance(info.value, ValueError)
        assert str(messy_folder / name) in str(info.value) and info.value.path == str(messy_folder / name)


# ---------------------------------------------------------------------------------- subset files


@pytest.fixture
def imagenet_like(tmp_path) -> ImageFolderDataset:
    for cls in ("n01", "n02"):
        for i in range(3):
            _png(tmp_path / "inet" / cls / f"{cls}_{i}.JPEG", size=(2, 2))
    _png(tmp_path / "inet" / "n02" / "n01_0.JPEG", size=(2, 2))  # same basename in two classes
    _png(tmp_path / "inet" / "n02" / "sub" / "x.png", size=(2, 2))
    return ImageFolderDataset(tmp_path / "inet")


def test_read_subset_file(imagenet_like, tmp_path):
    ds = imagenet_like
    rel = ds.relative_paths
    f = tmp_path / "1imgs_class.txt"
    f.write_text("# a comment\nn02_1.JPEG\n\n  n01/n01_2.JPEG  \nn01_0.JPEG\nsub/x.png\nn02_1.JPEG\n")
    idx = read_subset_file(f, ds)
    assert [rel[i] for i in idx] == ["n02/n02_1.JPEG", "n01/n01_2.JPEG", "n01/n01_0.JPEG", "n02/sub/x.png"]
    f.write_text("n01_1.JPEG\nmissing_1.JPEG\nn09/n09_9.JPEG\n")
    with pytest.raises(ValueError, match="2 entries not in the dataset.*missing_1.JPEG, n09/n09_9.JPEG"):
        read_subset_file(f, ds)
    out = tmp_path / "out.txt"
    write_subset_file(out, ds, [5, 0, 2])
    assert read_subset_file(out, ds) == [5, 0, 2]


def test_read_subset_file_index_dataset(tmp_path):
    write_split(tmp_path / "fm", "train", n=10)
    ds = FashionMNIST("train", root=tmp_path / "fm", download=False)
    f = tmp_path / "s.txt"
    write_subset_file(f, ds, [3, 1, 7])
    assert f.read_text() == "3\n1\n7\n"
    assert read_subset_file(f, ds) == [3, 1, 7]
    f.write_text("3\n10\nabc\n")
    with pytest.raises(ValueError, match="10, abc"):
        read_subset_file(f, ds)


def test_paper_subset_file_format():
    """The original split files are one bare ImageNet file name per line."""
    import subprocess

    repo = "/work/.mirror/facebookresearch+msn/repo"
    try:
        text = subprocess.run(
            ["git", "-C", repo, "show", "HEAD:imagenet_subsets1/1imgs_class.txt"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("original MSN repository mirror not available")
    lines = text.split()
    assert len(lines) == 1000 and all(line.startswith("n") and line.endswith(".JPEG") for line in lines)


# --------------------------------------------------------------------------------- label subsets


def _labels() -> np.ndarray:
    return np.repeat(np.arange(5), [10, 20, 30, 5, 100])[np.random.default_rng(1).permutation(165)]


def test_balanced_subset():
    labels = _labels()
    for k in (1, 2, 5):
        idx = balanced_subset(labels, k, seed=0)
        assert np.all(np.diff(idx) > 0)
        assert np.bincount(labels[idx]).tolist() == [k] * 5
        np.testing.assert_array_equal(idx, balanced_subset(labels, k, seed=0))
    assert not np.array_equal(balanced_subset(labels, 5, seed=0), balanced_subset(labels, 5, seed=1))
    assert set(balanced_subset(labels, 1, seed=3)) <= set(balanced_subset(labels, 2, seed=3))  # nested
    with pytest.raises(ValueError, match="class 3 has only 5 images"):
        balanced_subset(labels, 6, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        balanced_subset([-1, -1], 1, seed=0)
    with pytest.raises(ValueError):
        balanced_subset(labels, 0, seed=0)
    assert balanced_subset(list(labels), 1, seed=0).dtype == np.int64


def test_percent_subset():
    labels = _labels()
    idx = percent_subset(labels, 10, seed=0)
    assert np.bincount(labels[idx], minlength=5).tolist() == [1, 2, 3, 1, 10]  # 5 * 10% -> at least 1
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, percent_subset(labels, 10, seed=0))
    assert set(percent_subset(labels, 1, seed=2)) <= set(percent_subset(labels, 10, seed=2))
    assert len(percent_subset(labels, 100, seed=0)) == 165
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="percent"):
            percent_subset(labels, bad, seed=0)


def test_failed_download_leaves_no_folders(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    import vitmsn.data.fashion_mnist as fashion

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(urllib.error.URLError):
        fashion._download("train-images-idx3-ubyte", tmp_path / "a" / "b", 0x803)
    assert list(tmp_path.iterdir()) == []


def test_load_image_keeps_16_bit_and_float_images_and_applies_exif_rotation(tmp_path):
    """PIL's own conversion to RGB clips 16-bit and float pixels (a 16-bit ramp turns nearly white, a [0, 1]
    float image black); a camera's rotation tag is applied, as image viewers and transformers' load_image do."""
    from vitmsn.data.folder import load_image

    ramp16 = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp16 / 65535).astype(np.float32), mode="F").save(tmp_path / "ramp.tiff")
    for name in ("ramp16.png", "ramp.tiff"):
        x = np.asarray(load_image(tmp_path / name)).astype(np.float64)
        assert x.shape == (64, 64, 3) and x.min() == 0 and x.max() == 255
        assert abs(x.mean() - 127.5) < 0.5  # the ramp's mean, not 255 (clipped) or 0
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, :20] = 255
    img = Image.fromarray(half)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif)
    shown = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert shown.shape == (40, 20, 3) and shown[:15].mean() > 200 and shown[25:].mean() < 50
