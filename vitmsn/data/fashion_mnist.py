"""Fashion-MNIST loading from IDX files (Debian package, a local folder, or a download).

The four official files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each either gzip-compressed
(``.gz``, as distributed) or raw.  On Debian/Ubuntu ``apt-get install dataset-fashion-mnist``
puts the ``.gz`` files in ``/usr/share/datasets/fashion-mnist``.

Search order used by :func:`load_fashion_mnist`:

1. ``root`` if given (also ``root/FashionMNIST/raw``, the torchvision layout);
2. otherwise the directory in the environment variable ``VITMSN_FASHION_MNIST``,
   then ``/usr/share/datasets/fashion-mnist``, then the user cache
   (``$XDG_CACHE_HOME/vitmsn/fashion-mnist``, default ``~/.cache/vitmsn/fashion-mnist``);
3. if ``download`` is true, the files are fetched from the official URLs into ``root``
   (when given) or the user cache.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.utils.data
from PIL import Image

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "ENV_VAR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FILES",
    "URL_BASE",
    "FashionMNIST",
    "default_cache_dir",
    "load_fashion_mnist",
    "read_idx",
]

logger = logging.getLogger("vitmsn")

#: Class names, index = label (from the dataset's README).
CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Per-channel mean/std of the training images scaled to [0, 1] (computed on the 60k train set).
FASHION_MNIST_MEAN: tuple[float] = (0.2860,)
FASHION_MNIST_STD: tuple[float] = (0.3530,)

ENV_VAR = "VITMSN_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Download location listed in the Fashion-MNIST README.
URL_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: split -> (images file, labels file), without the optional ``.gz`` suffix.
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: MD5 of the official ``.gz`` files (README).  Only checked after a download, and only
#: logged on mismatch: repackaged copies (e.g. Debian's) are recompressed and differ.
_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim
_NUM_CLASSES = len(CLASSES)


def default_cache_dir() -> Path:
    """User cache directory for downloaded files (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitmsn" / "fashion-mnist"


def _open_maybe_gzip(path: Path) -> Any:
    """Open ``path`` for binary reading, transparently decompressing gzip (by magic bytes)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or raw) into a uint8 array.

    Args:
        path: the file.
        expected_magic: if given, the 32-bit magic number the file must have
            (``0x803`` for image files, ``0x801`` for label files).

    Raises:
        ValueError: corrupt or unexpected header, or a payload whose size does not match
            the dimensions in the header.  The message names the file.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as fh:
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(data) < 4:
        raise ValueError(f"{path}: corrupt IDX file: {len(data)} bytes, too short for a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected unsigned-byte data, 0x0000080N)"
        )
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if ndim == 0:
        raise ValueError(f"{path}: corrupt IDX header: zero dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: corrupt IDX file: truncated header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header_len
    if actual != expected:
        raise ValueError(
            f"{path}: corrupt IDX file: header dims {dims} need {expected} data bytes, found {actual}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _find_file(directory: Path, name: str, tried: list[Path]) -> Path | None:
    """Return ``directory/name.gz`` or ``directory/name`` if one exists; record what was tried."""
    for candidate in (directory / f"{name}.gz", directory / name):
        tried.append(candidate)
        if candidate.is_file():
            return candidate
    return None


def _find_split(directory: Path, split: str, tried: list[Path]) -> tuple[Path, Path] | None:
    for d in (directory, directory / "FashionMNIST" / "raw"):
        found = [_find_file(d, name, tried) for name in FILES[split]]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    return None


def _download(name: str, target_dir: Path, magic: int, url_base: str = URL_BASE) -> Path:
    """Download ``name.gz`` into ``target_dir`` atomically (temp file + rename), checking the IDX magic."""
    made = [d for d in (target_dir, *target_dir.parents) if not d.exists()]  # folders to remove if it fails
    target_dir.mkdir(parents=True, exist_ok=True)
    fname = f"{name}.gz"
    dest = target_dir / fname
    url = url_base + fname
    logger.info("downloading %s -> %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        md5 = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
        with gzip.open(tmp, "rb") as fh:
            head = fh.read(4)
        if len(head) < 4 or struct.unpack(">I", head)[0] != magic:
            raise ValueError(f"{url}: downloaded file is not an IDX file with magic 0x{magic:08x}")
        if md5.hexdigest() != _MD5.get(fname, md5.hexdigest()):
            logger.warning("%s: MD5 %s differs from the README's %s", url, md5.hexdigest(), _MD5[fname])
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for d in made:  # innermost first: a failed download leaves no empty folders behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    return dest


def _resolve_files(
    split: str, root: str | Path | None, download: bool, url_base: str = URL_BASE
) -> tuple[Path, Path]:
    tried: list[Path] = []
    if root is not None:
        dirs = [Path(root).expanduser()]
    else:
        dirs = []
        env = os.environ.get(ENV_VAR)
        if env:
            dirs.append(Path(env).expanduser())
        dirs += [DEBIAN_DIR, default_cache_dir()]
    for d in dirs:
        found = _find_split(d, split, tried)
        if found is not None:
            return found

    errors: list[str] = []
    if download:
        target = dirs[0] if root is not None else default_cache_dir()
        try:
            paths = tuple(
                _download(name, target, magic, url_base)
                for name, magic in zip(FILES[split], (_IMAGES_MAGIC, _LABELS_MAGIC), strict=True)
            )
            return paths  # type: ignore[return-value]
        except (OSError, ValueError) as err:  # URLError is an OSError
            errors.append(f"download from {url_base} into {target} failed: {err}")

    lines = [f"Fashion-MNIST {split!r} files not found. Tried:"]
    lines += [f"  {p}" for p in tried]
    if errors:
        lines += [f"  {e}" for e in errors]
    else:
        lines.append("  (download disabled: download=False)")
    lines.append(
        "Install them with `apt-get install dataset-fashion-mnist` (-> /usr/share/datasets/fashion-mnist), "
        f"pass a directory holding the IDX files with `--data DIR` (or root=DIR), or set {ENV_VAR}=DIR."
    )
    raise FileNotFoundError("\n".join(lines))


def load_fashion_mnist(
    split: Literal["train", "test"] = "train",
    root: str | Path | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split.

    Args:
        split: ``"train"`` (60k images) or ``"test"`` (10k images).
        root: directory holding the IDX files (``.gz`` or raw).  When ``None`` the
            environment variable ``VITMSN_FASHION_MNIST``, the Debian package directory and the
            user cache are searched in turn.
        download: fetch the files from the official URLs when they are not found.

    Returns:
        ``(images, labels)``: uint8 array ``(N, 28, 28)`` and int64 array ``(N,)`` with values in 0..9.

    Raises:
        FileNotFoundError: nothing found (and download disabled or failed); lists every path tried.
        ValueError: unknown split or corrupt files.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    images_path, labels_path = _resolve_files(split, root, download)
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, header says {images.shape[1:]}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..{_NUM_CLASSES - 1}")
    logger.debug("loaded Fashion-MNIST %s: %d images from %s", split, len(images), images_path)
    return images, labels.astype(np.int64)


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST as a torch Dataset returning ``(PIL image mode "L", int label)``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: see :func:`load_fashion_mnist`.
        transform: applied to the PIL image (e.g. :class:`vitmsn.msn.transforms.MSNViews`).
        download: see :func:`load_fashion_mnist`.

    Attributes:
        images: uint8 ``(N, 28, 28)``; targets: int64 ``(N,)``; classes: class names.
    """

    classes: Sequence[str] = CLASSES

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        root: str | Path | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        download: bool = True,
    ) -> None:
        self.split = split
        self.transform = transform
        self.images, self.targets = load_fashion_mnist(split, root=root, download=download)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
