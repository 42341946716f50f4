"""Low-shot evaluation on frozen features: the paper's logistic-regression protocol, k-NN, linear probe.

The protocol of the MSN paper (Sec. 5 and its ``logistic_eval.py``): each feature vector is centred (its
own mean removed) and L2-normalised; a multinomial logistic regression without intercept is fitted with an
L2 penalty lambda divided by the number of training samples (lambda = 0.00025). With scikit-learn's
objective ``C * sum(loss) + ||w||^2 / 2`` this is ``C = 1 / lambda``, whatever the number of samples.
Labelled subsets hold k images per class (seeded, balanced) or come from subset files; results are the
mean and standard deviation over splits.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

LAMBDA = 0.00025

logger = logging.getLogger("vitmsn")


def preprocess(features: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit L2 norm: (N, D) -> (N, D) float64."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_labelled(features: object, labels: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``features`` (N, D) and ``labels`` (N,) as numpy arrays (tensors and lists too), checked: N > 0 rows on
    both, finite features, integer class labels >= 0 (-1, the label of loose images, is no class). An error
    names the set (``name``: "train", "test")."""
    x, y = (np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in (features, labels))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} features must be a non-empty (N, D) array, got shape {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{name}: {len(x)} feature rows, but labels of shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{name} labels must be integer class indices, got {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{name} labels must be class indices >= 0; {int((y < 0).sum())} are negative (-1 is the "
                         "label of loose images, which have no class)")
    bad = ~np.isfinite(x).all(axis=1) if np.issubdtype(x.dtype, np.floating) else np.zeros(len(x), bool)
    if bad.any():
        raise ValueError(f"{name} features: {int(bad.sum())} row(s) hold nan or inf (the first: row "
                         f"{int(np.argmax(bad))}); a model whose outputs are not finite gives no accuracy")
    return x, y


def _train_and_test(train_x: object, train_y: object, test_x: object, test_y: object) -> tuple[np.ndarray, ...]:
    (tx, ty), (vx, vy) = check_labelled(train_x, train_y, "train"), check_labelled(test_x, test_y, "test")
    if tx.shape[1] != vx.shape[1]:
        raise ValueError(f"train features have {tx.shape[1]} dimensions, test features {vx.shape[1]}")
    return tx, ty, vx, vy


def logistic_regression(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                        lambd: float = LAMBDA, max_iter: int = 1000, name: str | None = None) -> float:
    """Top-1 accuracy (%) of the paper's L2-regularised multinomial logistic regression.

    Stopping at ``max_iter`` before convergence is silent (as in the paper's low-shot runs, where it is common
    and harmless), unless ``name`` is given: then one warning line says so, with the iterations used."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = _train_and_test(train_x, train_y, test_x, test_y)
    if not lambd > 0:
        raise ValueError(f"lambd (the L2 penalty) must be > 0, got {lambd}")
    if len(np.unique(train_y)) < 2:
        raise ValueError("logistic regression needs labelled images of at least two classes")
    clf = LogisticRegression(C=1.0 / lambd, fit_intercept=False, max_iter=max_iter, tol=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(preprocess(train_x), train_y)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # not ours to silence
        elif name is not None:
            iterations = int(np.max(getattr(clf, "n_iter_", [max_iter])))
            logger.warning("%s: the logistic regression did not converge in %d iterations (max_iter %d, tol "
                           "1e-4); its accuracy is that of the last iterate", name, iterations, max_iter)
            name = None  # one line
    return 100.0 * float((clf.predict(preprocess(test_x)) == test_y).mean())


def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 20,
        temperature: float = 0.07, batch: int = 2048) -> float:
    """Top-1 accuracy (%) of a cosine k-NN, votes weighted by exp(similarity / temperature) (as DINO).

    A ``k`` above the number of training images uses them all (see :func:`knn_neighbours`)."""
    import torch

    from vitmsn.config import check_int

    k, batch = check_int(k, "k of the k-NN", 1), check_int(batch, "batch", 1)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    train_x, train_y, test_x, test_y = _train_and_test(train_x, train_y, test_x, test_y)
    tr = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    te = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(train_y)
    classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(tr))
    correct = 0
    for i in range(0, len(te), batch):
        sim, idx = (te[i: i + batch] @ tr.T).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, ytr[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1).numpy() == test_y[i: i + batch]).sum())
    return 100.0 * correct / len(te)


@dataclass
class LowShotRow:
    """One line of the table: a labelled-set size and its accuracies over splits."""

    label: str  # "1 per class", "1%", "all", or a subset file name
    per_class: float | None  # labelled images per class (for the plot), None for files
    accuracies: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def balanced_indices(labels: np.ndarray, per_class: int, seed: int,
                     classes: Sequence[str] | None = None) -> np.ndarray:
    from vitmsn.data.folder import balanced_subset

    return balanced_subset(labels, per_class, seed, classes)


def percent_indices(labels: np.ndarray, percent: float, seed: int) -> np.ndarray:
    from vitmsn.data.folder import percent_subset

    return percent_subset(labels, percent, seed)


def check_settings(*, splits: int = 3, knn_k: int | None = None, batch_size: int = 1) -> None:
    """Refuse settings that would give no number (``splits`` 0 averages nothing: nan) or silently skip a row
    (``knn_k`` 0); the messages name the ``vitmsn lowshot`` options. Cheap: call it before extracting features."""
    if splits < 1:
        raise ValueError(f"--splits must be >= 1 (labelled splits per row), got {splits}")
    if knn_k is not None and knn_k < 1:
        raise ValueError(f"--knn must be >= 1 (neighbours of the k-NN), got {knn_k}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")


def check_subset(name: str, idx: np.ndarray, labels: np.ndarray) -> None:
    """A labelled subset (the training images at ``idx``) a logistic regression can be fitted on: not empty,
    and of at least two classes; an error names it."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise ValueError(f"subset {name} is empty: it holds no labelled image")
    if idx.min() < 0 or idx.max() >= len(labels):
        raise ValueError(f"subset {name}: image indices must be in [0, {len(labels)}) (the training images), got "
                         f"{int(idx.min())} .. {int(idx.max())}")
    if len(np.unique(np.asarray(labels)[idx])) < 2:
        raise ValueError(f"subset {name}: its {len(idx)} image(s) are all of one class; logistic regression needs "
                         "labelled images of at least two classes")


def knn_neighbours(knn_k: int, num_train: int) -> int:
    """The k a k-NN over ``num_train`` images can use: ``knn_k``, or all of them when there are fewer (with a
    warning), so that the table reports the k actually used."""
    if knn_k > num_train:
        logger.warning("--knn %d: only %d training images, so the k-NN uses k = %d", knn_k, num_train, num_train)
    return min(knn_k, num_train)


def evaluate(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
             shots: Sequence[int] = (1, 2, 5, 10), splits: int = 3, percent: Sequence[float] = (),
             subsets: Sequence[tuple[str, np.ndarray]] = (), lambd: float = LAMBDA, seed: int = 0,
             full: bool = False, knn_k: int | None = None,
             classes: Sequence[str] | None = None) -> list[LowShotRow]:
    """Low-shot accuracies for every requested labelled-set size, over ``splits`` seeded splits.

    ``classes`` (optional): the class names, so that an error about a class names it.

    ``knn_k`` (None: no k-NN row) above the number of training images is lowered to it; the row's label
    gives the k used (``all (8-NN)``).
    """
    check_settings(splits=splits, knn_k=knn_k)
    train_x, train_y, test_x, test_y = _train_and_test(*train, *test)
    for name, idx in subsets:  # before any row is computed
        check_subset(name, idx, train_y)
    rows: list[LowShotRow] = []
    for k in shots:
        row = LowShotRow(f"{k} per class", float(k))
        for s in range(splits):
            idx = balanced_indices(train_y, k, seed + s, classes)
            row.accuracies.append(logistic_regression(train_x[idx], train_y[idx], test_x, test_y, lambd=lambd))
        rows.append(row)
    num_classes = len(np.unique(train_y))
    for p in percent:
        row = LowShotRow(f"{p:g}%", None)
        for s in range(splits):
            idx = percent_indices(train_y, p, seed + s)
            row.per_class = len(idx) / num_classes
            row.accuracies.append(logistic_regression(train_x[idx], train_y[idx], test_x, test_y, lambd=lambd))
        rows.append(row)
    for name, idx in subsets:
        rows.append(LowShotRow(name, len(idx) / num_classes,
                               [logistic_regression(train_x[idx], train_y[idx], test_x, test_y, lambd=lambd)]))
    if full:
        rows.append(LowShotRow("all (linear probe)", len(train_y) / num_classes,
                               [linear_probe(train_x, train_y, test_x, test_y, lambd=lambd)]))
    if knn_k is not None:
        k = knn_neighbours(knn_k, len(train_y))
        rows.append(LowShotRow(f"all ({k}-NN)", len(train_y) / num_classes,
                               [knn(train_x, train_y, test_x, test_y, k=k)]))
    return rows


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 lambd: float = LAMBDA, max_iter: int = 1000) -> float:
    """The logistic regression on all training labels, with a log line when it starts and when it ends (with
    its wall time: on tens of thousands of images it is by far the slowest row) and a warning when it stops
    at ``max_iter`` before converging."""
    logger.info("linear probe: logistic regression on all %d training images (%d features, %d classes, up to "
                "%d lbfgs iterations); on a large training set this can take many minutes",
                len(train_y), train_x.shape[1], len(np.unique(train_y)), max_iter)  # fmt: skip
    t0 = time.perf_counter()
    acc = logistic_regression(train_x, train_y, test_x, test_y, lambd=lambd, max_iter=max_iter,
                              name="linear probe")
    logger.info("linear probe: done in %.1f s (top-1 %.2f %%)", time.perf_counter() - t0, acc)
    return acc


def format_table(columns: dict[str, list[LowShotRow]]) -> str:
    """A plain-text table: one row per labelled-set size, one column per model, mean ± std."""
    names = list(columns)
    if not names:
        raise ValueError("format_table needs at least one column")
    labels = [r.label for r in columns[names[0]]]
    for n in names[1:]:
        if [r.label for r in columns[n]] != labels:
            raise ValueError(f"the columns' rows differ: {names[0]} has {labels}, {n} has "
                             f"{[r.label for r in columns[n]]}")
    width = max(12, *(len(n) + 2 for n in names))
    head = f"{'labels':<22}" + "".join(f"{n:>{width}}" for n in names)
    lines = [head, "-" * len(head)]
    for i, label in enumerate(labels):
        cells = []
        for n in names:
            r = columns[n][i]
            cells.append(f"{r.mean:6.2f} ± {r.std:4.2f}" if len(r.accuracies) > 1 else f"{r.mean:6.2f}")
        lines.append(f"{label:<22}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def save_json(path: str | os.PathLike, columns: dict[str, list[LowShotRow]], meta: dict | None = None) -> Path:
    from vitmsn.checkpoints import atomic_write_text

    data = {"meta": meta or {}, "results": {n: [r.to_dict() for r in rows] for n, rows in columns.items()}}
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def plot(path: str | os.PathLike, columns: dict[str, list[LowShotRow]], title: str = "Low-shot accuracy") -> Path:
    """PNG: accuracy (mean ± std over splits) against labelled images per class, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rows in columns.items():
        pts = sorted((r.per_class, r.mean, r.std) for r in rows if r.per_class is not None
                     and "per class" in r.label)
        if not pts:
            continue
        x, y, e = map(np.array, zip(*pts, strict=True))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
