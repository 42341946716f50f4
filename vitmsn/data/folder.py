"""Image-folder datasets that survive corrupt files, plus subset helpers for low-shot evaluation.

* :class:`ImageFolderDataset` scans a directory tree for images.  In labelled mode the
  first-level sub-folder is the class (``root/<class>/.../<image>``); in unlabelled mode every
  image gets label ``-1``.  Bad files (truncated, empty, not an image) are skipped at load time
  and replaced by the next good image, or dropped up front with :meth:`ImageFolderDataset.scan`
  (:func:`drop_unreadable` does so for evaluation sets, where a replacement would count an image twice).
* :func:`read_subset_file` reads the paper's split files (one image per line, e.g.
  ``n01440764_10026.JPEG``) into dataset indices; :func:`write_subset_file` writes one.
* :func:`balanced_subset` (k images per class) and :func:`percent_subset` (stratified percentage)
  draw deterministic subsets from a label array.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageLoadError",
    "NoLoadableImageError",
    "balanced_subset",
    "drop_unreadable",
    "is_image_file",
    "load_image",
    "held_out_splits",
    "percent_subset",
    "read_subset_entries",
    "read_subset_file",
    "subset_entries_to_indices",
    "write_subset_file",
]

logger = logging.getLogger("vitmsn")


def _readable_extensions() -> frozenset[str]:
    """Lower-case extensions (with dot) of the formats PIL can *open* (not save-only ones)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


#: File extensions recognised as images (those PIL can open), e.g. ``.jpg``, ``.png``, ``.webp``.
IMAGE_EXTENSIONS: frozenset[str] = _readable_extensions()


def _last_line(message: str) -> str:
    """The original ``module.Error: message`` line of a DataLoader worker's re-raised traceback text."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    head, sep, rest = line.partition(": ")
    return rest if sep and "Error" in head and " " not in head else line


class ImageLoadError(ValueError):
    """An image file could not be read or decoded.  ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            # A DataLoader re-raises a worker's error as ``type(err)(traceback_text)``: keep its last line, so
            # that the command line still prints one line (and not a RuntimeError) when a worker failed.
            message = _last_line(str(path))
            self.path, self.reason = "", message
            super().__init__(message)
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")


class NoLoadableImageError(ImageLoadError):
    """Every image file of a folder failed to load; ``path`` is the folder."""

    def __init__(self, root: str | os.PathLike[str], num_files: int | None = None) -> None:
        if num_files is None:  # re-raised from a DataLoader worker, see ImageLoadError
            super().__init__(root)
            return
        super().__init__(root, f"all {num_files} image files are unreadable")
        self.args = (f"no loadable image under {self.path}: all {num_files} image files are unreadable "
                     "(the warnings above name each)",)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if the extension of ``path`` is one PIL can open (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def held_out_splits(root: str | os.PathLike[str]) -> list[str]:
    """The held-out folders (``val``, ``test``, in that order) of an image folder laid out as ``train/`` beside
    them, as ``vitmsn lowshot`` and ``vitmsn finetune`` read it; [] when it has no ``train/`` or neither."""
    root = Path(root)
    if not (root / "train").is_dir():
        return []
    return [n for n in ("val", "test") if (root / n).is_dir()]


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grayscale image as 8-bit grayscale over its value range (PIL's own conversion clips
    them to 255, turning a 16-bit image nearly white): 16-bit integers scaled by 255/65535, floats in [0, 1]
    by 255; other floats, and 32-bit integers beyond 16 bits, clipped to [0, 255]. Other modes unchanged."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    x = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and 255 < x.max() <= 65535):
        x = x * (255 / 65535)
    elif img.mode == "F" and x.size and 0.0 <= x.min() and x.max() <= 1.0:
        x = x * 255
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), mode="L")


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Open, fully decode and convert an image (default RGB).

    Raises:
        ImageLoadError: missing, empty, truncated, or unrecognised file; the message names the
            file and the reason.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-with-transparency or EXIF warnings
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)  # as the photo is shown (a camera's rotation tag applied)
                if img.mode == "P" and "transparency" in img.info and mode != "P":
                    img = img.convert("RGBA")
                return _to_8bit(img).convert(mode)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        # Truncated JPEG/PNG -> OSError("image file is truncated ..."), etc.
        raise ImageLoadError(path, f"{type(err).__name__}: {err}") from err


def _scan_files(root: Path) -> list[Path]:
    """All image files below ``root`` (following symlinks, skipping hidden entries), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images found recursively under ``root``, in sorted (deterministic) order.

    Args:
        root: the directory.
        transform: applied to the RGB PIL image (e.g. :class:`vitmsn.msn.transforms.MSNViews`).
        labelled: if true the first-level sub-folder is the class (classes sorted; images
            directly in ``root`` are ignored with a warning); otherwise every label is ``-1``.
        verify: if true call :meth:`scan` (``verify=True``) in the constructor.
        mode: PIL mode to convert images to (``"RGB"``, or ``"L"`` for grayscale).

    Bad files do not crash iteration: ``__getitem__`` on a file that fails to load logs one
    warning per file, records it in :attr:`skipped`, and returns the next loadable index
    (wrapping around), so the result is deterministic; :meth:`load_item` also says whether that
    happened.  Note that with a multi-worker DataLoader each worker keeps its own counters;
    call :meth:`scan` up front to find every bad file in the main process.

    Attributes:
        root: the root directory; samples: ``[(path, label)]``; classes; class_to_idx.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        labelled: bool = True,
        verify: bool = False,
        mode: str = "RGB",
    ) -> None:
        self.root = Path(root).expanduser()
        self.transform = transform
        self.labelled = labelled
        self.mode = mode
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a directory")
        files = _scan_files(self.root)
        if labelled:
            loose = [f for f in files if f.parent == self.root]
            if loose:
                logger.warning(
                    "%s: %d image(s) directly in the root have no class folder and are ignored (e.g. %s)",
                    self.root,
                    len(loose),
                    loose[0].name,
                )
            files = [f for f in files if f.parent != self.root]
            self.classes: list[str] = sorted({f.relative_to(self.root).parts[0] for f in files})
            self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
            self.samples: list[tuple[str, int]] = [
                (str(f), self.class_to_idx[f.relative_to(self.root).parts[0]]) for f in files
            ]
        else:
            self.classes = []
            self.class_to_idx = {}
            self.samples = [(str(f), -1) for f in files]
        if not self.samples:
            kind = "in class sub-folders " if labelled else ""
            raise FileNotFoundError(
                f"no image files {kind}found under {self.root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS)[:12])}, ...)"
            )
        self._bad: dict[int, str] = {}  # position -> why it cannot be loaded
        self._skipped: Counter[str] = Counter()
        self._verified = False  # every remaining file decoded by scan(verify=True)
        if verify:
            self.scan(verify=True)

    # ------------------------------------------------------------------ properties
    @property
    def targets(self) -> list[int]:
        """Label of every sample (``-1`` in unlabelled mode)."""
        return [label for _, label in self.samples]

    @property
    def paths(self) -> list[str]:
        """Absolute path of every sample."""
        return [p for p, _ in self.samples]

    @property
    def relative_paths(self) -> list[str]:
        """Path of every sample relative to :attr:`root`, with ``/`` separators."""
        return [Path(p).relative_to(self.root).as_posix() for p, _ in self.samples]

    @property
    def skipped(self) -> Counter[str]:
        """``Counter`` path -> number of times that bad file was skipped in ``__getitem__``."""
        return self._skipped

    @property
    def num_skipped(self) -> int:
        """Number of distinct unreadable files met so far (:attr:`skipped` counts their replacements).

        Files, not replacements: a bad file met every epoch is still one unreadable image to the user.
        """
        return len(self._skipped)

    @property
    def verified(self) -> bool:
        """True after :meth:`scan` decoded every file (so every remaining sample is readable)."""
        return self._verified

    # ------------------------------------------------------------------ methods
    def scan(self, verify: bool = True, progress: bool = True) -> int:
        """Verify every file up front (full decode) and drop the bad ones.

        Args:
            verify: decode every file; if false only files already known to be bad are dropped.
            progress: show a tqdm progress bar.

        Returns:
            The number of samples dropped.

        Raises:
            FileNotFoundError: no valid image is left.
        """
        bad = set(self._bad)
        if verify:
            from tqdm.auto import tqdm

            for i, (path, _) in enumerate(
                tqdm(self.samples, desc=f"verifying {self.root.name}", unit="img", disable=not progress)
            ):
                if i in bad:
                    continue
                try:
                    load_image(path, self.mode)
                except ImageLoadError as err:
                    logger.warning("skipping bad image: %s", err)
                    bad.add(i)
        self.drop(bad)
        self._verified = self._verified or verify
        return len(bad)

    def drop(self, indices: Iterable[int]) -> None:
        """Leave out the samples at these positions (``paths``, ``targets`` and indices close up).

        Raises:
            FileNotFoundError: no sample is left.
        """
        bad = set(indices)
        if bad:
            self.samples = [s for i, s in enumerate(self.samples) if i not in bad]
        self._bad = {}
        if not self.samples:
            raise FileNotFoundError(f"no loadable image under {self.root}: all {len(bad)} files are bad")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label, _ = self.load_item(index)
        return image, label

    def load_item(self, index: int) -> tuple[Any, int, bool]:
        """``(image, label, replaced)``: as ``self[index]``, and whether the file asked for was unreadable (and
        the next readable one given instead). Exact in any process: it does not depend on which bad files this
        copy of the data set met before (DataLoader workers each hold a copy)."""
        image, label, reason = self._load(index, warn=True)
        return image, label, reason is not None

    def load_item_quietly(self, index: int) -> tuple[Any, int, str | None]:
        """As :meth:`load_item`, but without warnings: ``(image, label, reason)``, where ``reason`` says why the
        file asked for was replaced by the next readable one (``cannot load image PATH: ...``), else None.

        For a caller that warns about the images it uses itself: a training loop, whose DataLoader workers load
        batches ahead that a run stopped at ``max_steps`` never uses."""
        return self._load(index, warn=False)

    def _load(self, index: int, warn: bool) -> tuple[Any, int, str | None]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of size {n}")
        index %= n
        replaced: str | None = None  # why the file asked for is not the one returned
        for offset in range(n):
            i = (index + offset) % n
            path, label = self.samples[i]
            reason = self._bad.get(i)
            if reason is None:
                try:
                    img = load_image(path, self.mode)
                except ImageLoadError as err:
                    if warn:
                        logger.warning("skipping bad image (using the next one instead): %s", err)
                    reason = self._bad[i] = str(err)
            if reason is not None:
                self._skipped[path] += 1
                replaced = replaced or reason
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, label, replaced
        raise NoLoadableImageError(self.root, n)


def _unreadable(path: str, mode: str) -> bool:
    try:
        load_image(path, mode)
    except ImageLoadError as err:
        logger.warning("leaving out unreadable image: %s", err)
        return True
    return False


def drop_unreadable(dataset: Any, progress: bool = False) -> Any:
    """An evaluation set without its unreadable files, decoded up front (one warning per file).

    Evaluation must score each readable image once: the replace-with-the-next-image fallback of
    :class:`ImageFolderDataset` would score that next image twice.  Handles an
    :class:`ImageFolderDataset` (scanned in place, returned) and a ``torch.utils.data.Subset`` of one
    (a new Subset of its readable indices); anything else (e.g. Fashion-MNIST) is returned as is.

    Raises:
        FileNotFoundError: no readable image is left.
    """
    if isinstance(dataset, ImageFolderDataset):
        if not dataset.verified:
            dropped = dataset.scan(verify=True, progress=progress)
            if dropped:
                logger.warning("%s: left out %d unreadable image file(s)", dataset.root, dropped)
        return dataset
    base = getattr(dataset, "dataset", None)
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(base, ImageFolderDataset):
        if base.verified:
            return dataset
        keep = [i for i in dataset.indices if not _unreadable(base.samples[i][0], base.mode)]
        dropped = len(dataset.indices) - len(keep)
        if dropped:
            logger.warning("%s: left out %d unreadable image file(s)", base.root, dropped)
        if not keep:
            raise FileNotFoundError(f"no loadable image under {base.root}: all {dropped} files of the subset are bad")
        return torch.utils.data.Subset(base, keep)
    return dataset


# ---------------------------------------------------------------------- subset files
def _dataset_keys(dataset: Any) -> list[str] | None:
    rel = getattr(dataset, "relative_paths", None)
    if rel is not None:
        return list(rel)
    samples = getattr(dataset, "samples", None)
    root = getattr(dataset, "root", None)
    if samples is not None and root is not None:
        return [Path(p).relative_to(root).as_posix() for p, _ in samples]
    return None


def read_subset_file(path: str | os.PathLike[str], dataset: Any) -> list[int]:
    """Map the lines of a subset file to dataset indices (in file order, duplicates removed).

    Each non-blank line that does not start with ``#`` names one image:

    * a path relative to the dataset root (``n01440764/n01440764_10026.JPEG``),
    * a path relative to the class folder, i.e. a bare file name as in the paper's
      ``imagenet_subsets*/*.txt`` files (``n01440764_10026.JPEG``), matched by basename; if a
      basename is ambiguous the ImageNet convention ``<class>_<id>`` picks the class folder;
    * for datasets without file paths (e.g. :class:`~vitmsn.data.fashion_mnist.FashionMNIST`),
      an integer index.

    Raises:
        ValueError: unknown or ambiguous entries (the first few are listed).
    """
    path = Path(path)
    entries = read_subset_entries(path)
    return subset_entries_to_indices(entries, dataset, path)


def read_subset_entries(path: str | os.PathLike[str]) -> list[str]:
    """The entries of a subset file (non-blank lines not starting with ``#``, ``/`` separators).

    Raises:
        FileNotFoundError / OSError: the file cannot be read; the message names it.
    """
    path = Path(path)
    entries: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                line = raw.strip()
                if line and not line.startswith("#"):
                    entries.append(line.replace("\\", "/").removeprefix("./"))
    except FileNotFoundError:
        raise FileNotFoundError(f"subset file {path} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"subset file {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"subset file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise type(e)(f"subset file {path}: cannot read it ({e.strerror or e})") from None
    return entries


def subset_entries_to_indices(entries: Sequence[str], dataset: Any, path: str | os.PathLike[str] = "") -> list[int]:
    """The dataset indices of a subset file's ``entries`` (see :func:`read_subset_file`); ``path`` names the file
    in the error."""
    keys = _dataset_keys(dataset)
    missing: list[str] = []
    ambiguous: list[str] = []
    out: list[int] = []
    seen: set[int] = set()

    if keys is None:
        n = len(dataset)
        for e in entries:
            try:
                idx = int(e)
            except ValueError:
                missing.append(e)
                continue
            if not 0 <= idx < n:
                missing.append(e)
            elif idx not in seen:
                seen.add(idx)
                out.append(idx)
    else:
        by_rel = {k: i for i, k in enumerate(keys)}
        by_base: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_base.setdefault(k.rsplit("/", 1)[-1], []).append(i)
        for e in entries:
            idx = by_rel.get(e)
            if idx is None:
                cands = by_base.get(e.rsplit("/", 1)[-1], [])
                if "/" in e:  # relative path below a class folder, e.g. "sub/img.png"
                    cands = [i for i in cands if keys[i].endswith("/" + e)]
                if len(cands) > 1 and "_" in e:
                    guess = e.split("_", 1)[0] + "/" + e
                    cands = [i for i in cands if keys[i] == guess] or cands
                if len(cands) == 1:
                    idx = cands[0]
                elif cands:
                    ambiguous.append(e)
                    continue
                else:
                    missing.append(e)
                    continue
            if idx not in seen:
                seen.add(idx)
                out.append(idx)

    problems = []
    if missing:
        problems.append(f"{len(missing)} entries not in the dataset (first: {', '.join(missing[:5])})")
    if ambiguous:
        problems.append(f"{len(ambiguous)} ambiguous basenames (first: {', '.join(ambiguous[:5])})")
    if problems:
        root = getattr(dataset, "root", type(dataset).__name__)
        raise ValueError(f"subset file {path} vs dataset {root}: " + "; ".join(problems))
    return out


def write_subset_file(path: str | os.PathLike[str], dataset: Any, indices: Iterable[int]) -> None:
    """Write a subset file readable by :func:`read_subset_file` (relative paths, or indices)."""
    keys = _dataset_keys(dataset)
    lines = [str(int(i)) if keys is None else keys[int(i)] for i in indices]
    Path(path).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


# ---------------------------------------------------------------------- label-based subsets
def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0):
        raise ValueError("labels must be non-negative integers (unlabelled data, label -1, has no classes)")
    return arr.astype(np.int64)


def _class_permutation(idx: np.ndarray, seed: int, cls: int) -> np.ndarray:
    """Deterministic shuffle of one class's indices; depends only on (seed, class).

    Drawing the first k of a fixed per-class permutation makes subsets nested: with the same
    seed the 1-shot subset is contained in the 2-shot one, 1 % in 10 %, and so on.
    """
    rng = np.random.default_rng([seed, cls])
    return idx[rng.permutation(len(idx))]


def balanced_subset(labels: Sequence[int] | np.ndarray, shots_per_class: int, seed: int = 0,
                    classes: Sequence[str] | None = None) -> np.ndarray:
    """Exactly ``shots_per_class`` random indices per class, sorted ascending.

    Deterministic given ``seed`` (non-negative).  Raises ValueError naming the class (by its name in
    ``classes`` when given, else its index) when a class has fewer than ``shots_per_class`` images.
    """
    if shots_per_class < 1:
        raise ValueError(f"shots_per_class must be >= 1, got {shots_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    arr = _check_labels(labels)
    chosen = []
    for cls in np.unique(arr):
        idx = np.flatnonzero(arr == cls)
        if len(idx) < shots_per_class:
            name = f"{classes[int(cls)]!r}" if classes is not None and int(cls) < len(classes) else str(int(cls))
            raise ValueError(
                f"class {name} has only {len(idx)} images, fewer than shots_per_class={shots_per_class}"
            )
        chosen.append(_class_permutation(idx, seed, int(cls))[:shots_per_class])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def percent_subset(labels: Sequence[int] | np.ndarray, percent: float, seed: int = 0) -> np.ndarray:
    """A class-stratified ``percent`` % of the indices (at least one per class), sorted ascending.

    Each class contributes ``max(1, round(n_class * percent / 100))`` images (rounding half up).
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    arr = _check_labels(labels)
    chosen = []
    for cls in np.unique(arr):
        idx = np.flatnonzero(arr == cls)
        k = max(1, int(np.floor(len(idx) * percent / 100.0 + 0.5)))
        chosen.append(_class_permutation(idx, seed, int(cls))[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
