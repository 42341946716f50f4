"""The README's main job in its --smoke form, and the low-shot command on a problem with a known answer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from vitmsn.cli import main
from vitmsn.eval import lowshot


def write_fashion_like(folder: Path, per_class: int = 20, seed: int = 0) -> Path:
    """IDX files in Fashion-MNIST's format: 10 classes, each a bright bar at its own row, plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 80, (len(labels), 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 250
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([0x803, len(labels), 28, 28], dtype=">i4").tobytes() + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0x801, len(labels)], dtype=">i4").tobytes() + labels.tobytes())
    return folder


def test_quickstart_smoke(tmp_path, capsys):
    data = write_fashion_like(tmp_path / "fm")
    out = tmp_path / "qs"
    assert main(["quickstart", "--smoke", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "MSN (ours)" in printed and "raw pixels" in printed and "random ViT" in printed
    for name in ("report.md", "lowshot.png", "lowshot.json", "model/config.json", "model/model.safetensors",
                 "model/preprocessor_config.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "lowshot.json").read_text())["results"]
    assert set(results) == {"MSN (ours)", "random ViT", "raw pixels"}
    assert [r["label"] for r in results["raw pixels"]] == [f"{k} per class" for k in (1, 2, 5, 10)]
    # the classes are separable in pixel space: the raw-pixel baseline must find that
    assert results["raw pixels"][-1]["mean"] > 90
    # a second call reuses the finished run instead of starting over
    assert main(["quickstart", "--smoke", "--data", str(data), "--out", str(out), "--no-progress"]) == 0


def test_logistic_regression_known_answer():
    """Two well separated Gaussian classes: the protocol must classify them perfectly from one shot each."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 5
    x = np.concatenate([c + rng.normal(size=(200, 16)) for c in centers])
    y = np.repeat(np.arange(3), 200)
    rows = lowshot.evaluate((x, y), (x, y), shots=[1, 5], splits=2)
    assert [r.label for r in rows] == ["1 per class", "5 per class"]
    assert rows[1].mean == 100.0 and len(rows[1].accuracies) == 2
    # and chance level for labels unrelated to the features
    y_random = rng.integers(0, 3, len(y))
    acc = lowshot.logistic_regression(x[:300], y_random[:300], x[300:], y_random[300:])
    assert 20 < acc < 50


def test_preprocess_centres_and_normalises():
    x = np.array([[1.0, 2.0, 3.0], [10.0, 0.0, -4.0]])
    p = lowshot.preprocess(x)
    np.testing.assert_allclose(p.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1)


def test_lowshot_errors(tmp_path):
    with pytest.raises(ValueError, match="class"):
        lowshot.evaluate((np.zeros((4, 3)), np.array([0, 0, 1, 1])), (np.zeros((2, 3)), np.array([0, 1])),
                         shots=[5], splits=1)
    assert main(["lowshot", "--model", str(tmp_path / "missing"), "--data", "fashion-mnist"]) == 2
