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
    capsys.readouterr()
    # without --smoke the settings differ: one line that says what to do
    assert main(["quickstart", "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "with or without --smoke" in err and err.count("\n") == 1


def test_interrupted_smoke_run_says_the_command_that_continues_it(tmp_path, capsys, caplog, monkeypatch):
    """A --smoke quickstart stopped by Ctrl-C prints a quickstart --smoke command (not a pretrain --resume,
    which would skip the report, nor one that loses the smoke settings); running it finishes the smoke run.
    A smoke run's stop at its max_steps gives no command that would pretrain the whole preset."""
    import os
    import shlex
    import signal

    from vitmsn.msn import train
    from vitmsn.training import load_checkpoint

    data = write_fashion_like(tmp_path / "fm")
    out = tmp_path / "qs"
    step, calls = train.train_step, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then the run saves and stops
        return step(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train, "train_step", step_then_ctrl_c)
        assert main(["quickstart", "--smoke", "--data", str(data), "--out", str(out), "--no-progress"]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"stopped at step 2; saved {out / 'pretrain' / 'checkpoints' / 'latest.pt'}; "
                           "continue with: "), line
    argv = shlex.split(line.split("continue with: ", 1)[1])
    assert argv == ["vitmsn", "quickstart", "--smoke", "--out", str(out), "--data", str(data)], argv
    caplog.clear()
    with caplog.at_level("INFO", logger="vitmsn"):
        assert main([*argv[1:], "--no-progress"]) == 0
    assert load_checkpoint(out / "pretrain" / "checkpoints" / "latest.pt")["step"] == 6  # the smoke's max_steps
    assert f"found a run in {out / 'pretrain'} at step 2" in caplog.text
    assert json.loads((out / "lowshot.json").read_text())["meta"]["command"] == "vitmsn quickstart --smoke"
    assert "max_steps=0" not in caplog.text and "the length of a --smoke run" in caplog.text, caplog.text


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


def _tiny_model_and_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny ViT-MSN encoder, and train/ and val/ folders of two classes (4 readable images each, plus one
    unreadable file per class in val/)."""
    import torch
    from PIL import Image

    from vitmsn.config import ViTMSNConfig
    from vitmsn.models.hf import ViTMSNModel
    from vitmsn.processing import ViTImageProcessor

    model = tmp_path / "model"
    torch.manual_seed(0)
    ViTMSNModel(ViTMSNConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(model)  # fmt: skip
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, value in (("a", 40), ("b", 210)):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(value + rng.integers(-30, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    for c in ("a", "b"):
        (tmp_path / "data" / "val" / c / "9_bad.png").write_text("not an image")
    return model, tmp_path / "data"


def test_lowshot_settings_and_unreadable_test_images(tmp_path, capsys, caplog):
    model, data = _tiny_model_and_folders(tmp_path)
    base = ["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--no-progress"]
    for extra, message in ((["--splits", "0"], "--splits must be >= 1"), (["--knn", "0"], "--knn must be >= 1"),
                           (["--batch-size", "0"], "--batch-size must be >= 1"),
                           (["--shots", "5"], "--shots 5 needs 5 training images per class; these classes have "
                                              "fewer: 'a' (4), 'b' (4)")):
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # a k above the number of training images: all of them, and the table says so
    with caplog.at_level("WARNING", logger="vitmsn"):
        assert main([*base, "--splits", "1", "--knn", "1000", "--json"]) == 0
    rows = next(iter(json.loads(capsys.readouterr().out).values()))
    assert [r["label"] for r in rows] == ["1 per class", "all (8-NN)"]
    assert "only 8 training images, so the k-NN uses k = 8" in caplog.text
    # the val set is scored on its 8 readable images, each once (not 10, with a stand-in for each bad file)
    assert "9_bad.png" in caplog.text and "left out 2 unreadable image file(s)" in caplog.text
    for r in rows:
        assert abs(r["mean"] * 8 / 100 - round(r["mean"] * 8 / 100)) < 1e-9, r


def test_empty_subset_file_is_its_own_error_before_any_work(tmp_path, capsys, monkeypatch):
    """An empty --subset-file (or one of comments only) is one error naming the file and saying it is empty,
    not the one for a subset of fewer than two classes; no model is loaded and --out is not created."""
    from vitmsn.eval import features

    model, data = _tiny_model_and_folders(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the subset file was checked")

    monkeypatch.setattr(features, "load_backbone", no_work)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# picked by hand\n\n")
    for name in ("empty.txt", "comments.txt"):
        out = tmp_path / f"out-{name}"
        assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--no-progress",
                     "--subset-file", str(tmp_path / name), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"subset file {tmp_path / name} is empty" in err[0], err
        assert "two classes" not in err[0], err
        assert not out.exists()
    # the library: an empty subset is refused by name before any row is computed
    monkeypatch.setattr(lowshot, "logistic_regression", no_work)
    x, y = np.zeros((4, 3)), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="subset mine.txt is empty"):
        lowshot.evaluate((x, y), (x, y), shots=[1], splits=1, subsets=[("mine.txt", np.array([], dtype=np.int64))])


def test_lowshot_evaluate_checks_and_clamps_k():
    x, y = np.eye(4), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="splits"):
        lowshot.evaluate((x, y), (x, y), shots=[1], splits=0)
    with pytest.raises(ValueError, match="knn"):
        lowshot.evaluate((x, y), (x, y), shots=[], knn_k=0)
    (row,) = lowshot.evaluate((x, y), (x, y), shots=[], knn_k=50)
    assert row.label == "all (4-NN)"
    with pytest.raises(ValueError, match="k of the k-NN"):
        lowshot.knn(x, y, x, y, k=0)


def test_shots_check_counts_the_classes_present():
    """As the labelled subsets are drawn: a class absent from a --max-train subset is not "too small"."""
    from vitmsn.eval.quickstart import _check_shots

    class Labelled:
        targets = [2, 0, 0, 2, 2]

    _check_shots(Labelled(), [2], ["a", "b", "c"])  # b is absent: fine
    with pytest.raises(ValueError, match=r"fewer: 'a' \(2\)$"):
        _check_shots(Labelled(), [1, 3], ["a", "b", "c"])
