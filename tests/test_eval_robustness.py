"""Mistakes in the inputs and outputs of lowshot / extract / quickstart are reported before the minutes of
work they would waste, by name, in one line; and what used to be silent is now said."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmsn.cli import main
from vitmsn.config import ViTMSNConfig
from vitmsn.eval import lowshot
from vitmsn.models.hf import ViTMSNModel
from vitmsn.processing import ViTImageProcessor

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    ViTMSNModel(ViTMSNConfig(**TINY)).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def _images(folder: Path, n: int, value: int, seed: int = 0, bad: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(value + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    for i in range(bad):
        (folder / f"bad{i}.png").write_text("not an image")


def _split_folder(root: Path, train: dict[str, tuple[int, int]], val_per_class: int = 2) -> Path:
    """root/train/<class> with (readable, unreadable) images, root/val/<class> with readable ones."""
    for j, (name, (good, bad)) in enumerate(train.items()):
        _images(root / "train" / name, good, 30 + 60 * j, seed=j, bad=bad)
        _images(root / "val" / name, val_per_class, 30 + 60 * j, seed=10 + j)
    return root


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitmsn ")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def no_features(monkeypatch):
    """Make computing features an error: the checks under test must fail before it."""
    from vitmsn.eval import features, predict  # noqa: F401  (predict imported unpatched: it binds the name)

    def fail(*args, **kwargs):
        raise AssertionError("features were computed before the check")

    monkeypatch.setattr(features, "extract_features", fail)


# ---------------------------------------------------------------------------------- 1. lowshot / extract I/O


def test_lowshot_subset_file_and_out_checked_before_features(model, tmp_path, capsys, no_features):
    data = _split_folder(tmp_path / "data", {"a": (3, 0), "b": (3, 0)})
    base = ["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--no-progress"]
    missing = tmp_path / "nonexistent.txt"
    assert main([*base, "--subset-file", str(missing)]) == 2
    line = _error_line(capsys)
    assert f"subset file {missing} does not exist" in line and "[Errno" not in line
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("a/0.png\nb/nope.png\n")
    assert main([*base, "--subset-file", str(unknown)]) == 2
    line = _error_line(capsys)
    assert str(unknown) in line and "b/nope.png" in line
    one_class = tmp_path / "one_class.txt"
    one_class.write_text("a/0.png\na/1.png\n")
    assert main([*base, "--subset-file", str(one_class)]) == 2
    assert "all of one class" in _error_line(capsys)
    # --out an existing file, or below one
    afile = tmp_path / "afile"
    afile.write_text("the user's")
    for out in (afile, afile / "sub"):
        assert main([*base, "--out", str(out)]) == 2
        line = _error_line(capsys)
        assert str(out) in line and "[Errno" not in line, line
    assert afile.read_text() == "the user's"


def test_lowshot_out_read_only_checked_before_features(model, tmp_path, capsys, monkeypatch, no_features):
    import tempfile

    data = _split_folder(tmp_path / "data", {"a": (3, 0), "b": (3, 0)})

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    out = tmp_path / "ro"
    assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--no-progress",
                 "--out", str(out)]) == 2  # fmt: skip
    line = _error_line(capsys)
    assert f"--out {out}: cannot write there (Read-only file system)" in line


def test_lowshot_prints_the_table_before_saving(model, tmp_path, capsys, monkeypatch):
    data = _split_folder(tmp_path / "data", {"a": (3, 0), "b": (3, 0)})
    subset = tmp_path / "pick.txt"
    subset.write_text("a/0.png\nb/1.png\n")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lowshot, "save_json", disk_full)
    assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--splits", "1",
                 "--subset-file", str(subset), "--no-progress", "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert "1 per class" in captured.out and "pick.txt" in captured.out  # the results were shown
    assert "No space left" in captured.err


def test_subset_file_survives_unreadable_images(model, tmp_path, capsys, caplog):
    """A subset file is matched before the extraction, which then leaves out unreadable files (shifting the
    indices): the row must still use the images the file names."""
    data = _split_folder(tmp_path / "data", {"a": (3, 1), "b": (3, 0)})  # train/a/bad0.png: dropped by the extraction
    subset = tmp_path / "pick.txt"
    subset.write_text("a/bad0.png\na/2.png\nb/2.png\n")
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "1", "--splits", "1",
                     "--subset-file", str(subset), "--no-progress", "--json"]) == 0  # fmt: skip
    rows = next(iter(json.loads(capsys.readouterr().out).values()))
    assert rows[-1]["label"] == "pick.txt" and rows[-1]["per_class"] == 1.0  # 2 readable images, 2 classes
    assert "subset file pick.txt: 1 of its 3 images are unreadable and left out" in caplog.text


def test_extract_out_checked_before_features(model, tmp_path, capsys, monkeypatch, no_features):
    import tempfile

    from vitmsn.eval import predict

    monkeypatch.setattr(predict, "extract_features", lambda *a, **k: pytest.fail("features computed"))
    data = tmp_path / "imgs"
    _images(data / "a", 2, 50)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["extract", "--model", str(model), "--data", str(data), "--out", str(afile / "f.npz"),
                 "--no-progress"]) == 2  # fmt: skip
    assert str(afile) in _error_line(capsys)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    out = tmp_path / "ro" / "f.npz"
    assert main(["extract", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert str(out) in line and "Read-only file system" in line


# ----------------------------------------------------------------------- 2. classes left with too few images


def test_lowshot_class_with_only_unreadable_images(model, tmp_path, capsys, caplog):
    data = _split_folder(tmp_path / "data", {"cat": (3, 0), "dog": (3, 0), "owl": (0, 2)})
    assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "1,2", "--splits", "1",
                 "--no-progress"]) == 2  # fmt: skip
    line = _error_line(capsys)
    assert "'owl' (0 readable of 2)" in line and "cat" not in line and "--shots 2" in line, line
    # without any k-shot row, a class with no readable image is an error all the same
    assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "", "--knn", "3",
                 "--no-progress"]) == 2  # fmt: skip
    assert "'owl' (0 readable of 2)" in _error_line(capsys)


def test_lowshot_class_short_after_unreadable_images_is_named(model, tmp_path, capsys, monkeypatch):
    data = _split_folder(tmp_path / "data", {"cat": (5, 0), "owl": (3, 2)})
    from vitmsn.eval import features

    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    assert main(["lowshot", "--model", str(model), "--data", str(data), "--shots", "5", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "--shots 5 needs 5 readable training images per class" in line
    assert "'owl' (3 readable of 5)" in line and "class 1" not in line, line
    assert calls == ["train features"]  # the test features were not computed for nothing


def test_balanced_subset_names_the_class():
    from vitmsn.data.folder import balanced_subset

    with pytest.raises(ValueError, match="class 'owl' has only 1 images"):
        balanced_subset(np.array([0, 0, 1]), 2, classes=["cat", "owl"])
    with pytest.raises(ValueError, match="class 1 has only 1 images"):
        balanced_subset(np.array([0, 0, 1]), 2)


# ---------------------------------------------------------------------------- 3. extract on train/ + val/


def test_extract_train_val_layout_uses_train(model, tmp_path, capsys, caplog):
    data = _split_folder(tmp_path / "data", {"a": (2, 0), "b": (3, 0)}, val_per_class=1)
    out = tmp_path / "f.npz"
    with caplog.at_level(logging.INFO, logger="vitmsn"):
        assert main(["extract", "--model", str(model), "--data", str(data), "--out", str(out),
                     "--no-progress"]) == 0  # fmt: skip
    with np.load(out) as f:
        assert f["classes"].tolist() == ["a", "b"]  # not ["train", "val"]
        assert f["labels"].tolist() == [0, 0, 1, 1, 1]
    assert "extracting train/" in caplog.text and "--split val" in caplog.text
    val = tmp_path / "val.npz"
    assert main(["extract", "--model", str(model), "--data", str(data), "--split", "val", "--out", str(val),
                 "--no-progress"]) == 0  # fmt: skip
    with np.load(val) as f:
        assert f["classes"].tolist() == ["a", "b"] and f["labels"].tolist() == [0, 1]


# ------------------------------------------------------------------------------------------- 4. quickstart


def test_quickstart_refuses_what_it_would_overwrite_or_half_do(tmp_path, capsys, monkeypatch):
    from vitmsn.msn import train

    monkeypatch.setattr(train, "pretrain", lambda *a, **k: pytest.fail("pretraining started"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "report.md").write_text("my report")
    assert main(["quickstart", "--smoke", "--out", str(other), "--no-progress"]) == 2
    assert "not a quickstart run" in _error_line(capsys)
    assert (other / "report.md").read_text() == "my report"
    for setting in ("dataset=folder", "data=/tmp/x", "out=/tmp/y"):
        assert main(["quickstart", "--smoke", "--out", str(tmp_path / "new"), "--set", setting]) == 2
        line = _error_line(capsys)
        assert f"--set {setting}" in line and "vitmsn pretrain" in line
    images = tmp_path / "photos"
    _images(images / "cats", 1, 80)
    assert main(["quickstart", "--smoke", "--data", str(images), "--out", str(tmp_path / "new")]) == 2
    line = _error_line(capsys)
    assert "quickstart's --data is the folder of Fashion-MNIST's IDX files" in line
    assert "vitmsn pretrain --preset vit-small/16" in line and "--set dataset=folder" not in line
    assert not (tmp_path / "new").exists()


def test_quickstart_out_accepts_runs():
    from vitmsn.eval.quickstart import _check_quickstart_out

    def check(path: Path) -> None:
        _check_quickstart_out(path)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        check(root / "new")  # does not exist
        check(root)  # empty
        (root / "pretrain").mkdir()  # an interrupted run
        check(root)
        (root / "report.md").write_text("a finished run")
        check(root)


# ------------------------------------------------------------------------------------------ 5. linear probe


def test_linear_probe_logs_time_and_non_convergence(caplog):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(30, 8)) + c for c in (0, 3, 6)])
    y = np.repeat(np.arange(3), 30)
    with caplog.at_level(logging.INFO, logger="vitmsn"):
        rows = lowshot.evaluate((x, y), (x, y), shots=[1], splits=1, full=True)
    assert rows[-1].label == "all (linear probe)"
    assert "linear probe: logistic regression on all 90 training images" in caplog.text
    assert "linear probe: done in" in caplog.text and "did not converge" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitmsn"):
        lowshot.linear_probe(x, y, x, y, max_iter=1)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "did not converge in 1 iterations" in warned[0].getMessage()


# -------------------------------------------------------------------------------- 6. default image processor


def test_default_processor_is_a_warning(tmp_path, caplog):
    from vitmsn.eval.features import load_backbone
    from vitmsn.eval.predict import load_processor

    bare = tmp_path / "bare"
    ViTMSNModel(ViTMSNConfig(**TINY)).save_pretrained(bare)
    for load in (lambda: load_backbone(bare)[1], lambda: load_processor(bare, 32)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vitmsn"):
            processor = load()
        assert list(processor.image_mean) == [0.5, 0.5, 0.5]
        (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        msg = rec.getMessage()
        assert str(bare) in msg and "no preprocessor_config.json" in msg
        assert "mean [0.5, 0.5, 0.5]" in msg and "std [0.5, 0.5, 0.5]" in msg and "32x32" in msg


def _separable(n_per_class: int = 10, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    return np.eye(8)[y] * 5 + rng.normal(0, 0.1, (len(y), 8)), y


def test_probes_refuse_inputs_that_give_no_accuracy():
    """One clear error, naming the set, for what would give a wrong number silently (a nan row sent every
    k-NN vote to one class; labels -1 scored 0 %; misaligned arrays used part of the features) or crash deep
    in numpy / torch; torch tensors and lists are taken as arrays."""
    X, y = _separable()
    assert lowshot.knn(X, y, X, y, k=5) == 100.0 == lowshot.logistic_regression(X, y, X, y)
    assert lowshot.knn(torch.as_tensor(X), y.tolist(), X, torch.as_tensor(y), k=5) == 100.0
    Xn = X.copy()
    Xn[7, 2] = np.nan
    bad = [
        (lambda: lowshot.knn(Xn, y, X, y), "train features: 1 row.* nan or inf .*row 7"),
        (lambda: lowshot.evaluate((X, y), (Xn, y), shots=(), knn_k=5), "test features: 1 row"),
        (lambda: lowshot.knn(X, y, X, -np.ones_like(y)), "test labels must be class indices >= 0"),
        (lambda: lowshot.knn(X, y - 1, X, y), "train labels must be class indices >= 0"),
        (lambda: lowshot.evaluate((X, y[:30]), (X, y), shots=(1,)), "train: 40 feature rows, but labels of shape"),
        (lambda: lowshot.evaluate((X, y), (X[:, :4], y), shots=(1,)), "train features have 8 dimensions, test features 4"),
        (lambda: lowshot.knn(X[:0], y[:0], X, y), "train features must be a non-empty"),
        (lambda: lowshot.knn(X, y, X, y, k=2.5), "k of the k-NN must be an integer"),
        (lambda: lowshot.knn(X, y, X, y, batch=0), "batch must be an integer >= 1"),
        (lambda: lowshot.logistic_regression(X, y, X, y, lambd=0), "lambd .* must be > 0"),
        (lambda: lowshot.evaluate((X, y), (X, y), shots=(), subsets=[("s", np.array([-1, 0, 15]))]),
         r"subset s: image indices must be in \[0, 40\)"),
        (lambda: lowshot.format_table({}), "at least one column"),
    ]
    for call, message in bad:
        with pytest.raises(ValueError, match=message):
            call()
    rows = lowshot.evaluate((X, y), (X, y), shots=(1,), splits=1)
    with pytest.raises(ValueError, match="the columns' rows differ"):
        lowshot.format_table({"a": rows, "b": rows + rows})


def test_msn_parts_refuse_bad_arguments_and_take_numpy_ints():
    from vitmsn.msn.batch_views import BatchViews
    from vitmsn.msn.losses import MSNLoss, msn_loss, prototype_logits
    from vitmsn.msn.masking import num_kept_patches
    from vitmsn.msn.transforms import ViewConfig

    assert num_kept_patches(np.int64(196), 0.15) == 166 == num_kept_patches(196, 0.15)
    MSNLoss(np.int64(3))
    a, t, q = torch.randn(12, 16), torch.randn(4, 16), torch.randn(10, 16)
    torch.testing.assert_close(msn_loss(a, t, q, num_anchor_views=np.int64(3)).loss, msn_loss(a, t, q, num_anchor_views=3).loss)
    with pytest.raises(ValueError, match="empty batch"):
        msn_loss(a[:0], t[:0], q, num_anchor_views=3)
    with pytest.raises(ValueError, match="num_anchor_views must be an int"):
        msn_loss(a, t, q, num_anchor_views=3.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        prototype_logits(a, q, 0.0)
    views = BatchViews(ViewConfig(rand_size=16, focal_size=8, focal_views=1))
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    assert len(views(images, torch.Generator().manual_seed(0))) == 3
    with pytest.raises(ValueError, match="expected uint8 images .* got torch.float32"):  # would be divided by 255 again
        views(images.float() / 255, torch.Generator().manual_seed(0))
    for kwargs, message in (({"rand_views": 1.5}, "rand_views must be an integer >= 0"),
                            ({"crop_ratio": (2, 0.5)}, "crop_ratio must satisfy"),
                            ({"crop_ratio": (-1, 1)}, "crop_ratio must satisfy")):
        with pytest.raises(ValueError, match=message):  # (accepted before, then failed deep in the first call)
            ViewConfig(**kwargs)
