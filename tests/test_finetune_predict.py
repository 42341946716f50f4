"""Fine-tuning, prediction, feature extraction and attention maps, on tiny models and generated images.

The images are coloured squares with noise, one colour per class: a tiny ViT learns them in a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmsn.cli import main
from vitmsn.config import ViTMSNConfig
from vitmsn.data.folder import ImageLoadError
from vitmsn.eval.finetune import (
    finetune,
    finetune_param_groups,
    layer_id,
    load_labelled_data,
    set_scaled_lr,
    train_transform,
)
from vitmsn.eval.predict import attention_map, cls_attention, extract, predict
from vitmsn.models.hf import ViTMSNForImageClassification, ViTMSNModel
from vitmsn.processing import ViTImageProcessor
from vitmsn.training import load_checkpoint

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)  # fmt: skip
COLOURS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}
FAST = dict(batch_size=8, lr=1e-3, warmup_epochs=1, tensorboard=False, progress=False)


def write_images(folder: Path, per_class: int, seed: int) -> Path:
    """``folder/<colour>/<i>.png``: 24 x 24 noisy images of the class colour."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb)[None, None] + rng.integers(-40, 40, (24, 24, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A bare ViT-MSN encoder with its image processor, as ``vitmsn export`` writes one."""
    out = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    ViTMSNModel(ViTMSNConfig(**TINY)).save_pretrained(out)
    ViTImageProcessor(size=32, image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3]).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("colours"), per_class=12, seed=0)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, model_dir, data_dir) -> Path:
    out = tmp_path_factory.mktemp("ft") / "run"
    return finetune(str(model_dir), str(data_dir), out, epochs=3, val_fraction=0.25, **FAST)


# ------------------------------------------------------------------------------------------ fine-tuning


def test_finetune_saves_reloads_and_predicts(finetuned, tmp_path):
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert metrics["finished"] and metrics["classes"] == ["blue", "green", "red"]
    assert (metrics["train_images"], metrics["val_images"]) == (27, 9)  # 3 of 12 per class held out
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert metrics["best_val_accuracy"] > 90
    best = finetuned / "best"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (best / name).is_file(), name
    assert json.loads((best / "preprocessor_config.json").read_text())["image_std"] == [0.2, 0.25, 0.3]
    model = ViTMSNForImageClassification.from_pretrained(best)
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    # new images of the same colours: well above chance (33 %)
    fresh = write_images(tmp_path / "fresh", per_class=5, seed=1)
    images = sorted(str(p) for p in fresh.glob("*/*.png"))
    results = predict(best, images, top_k=2, device="cpu")
    assert [r["path"] for r in results] == images
    assert all(len(r["predictions"]) == 2 for r in results)
    p = [r["predictions"][0]["probability"] for r in results]
    assert all(0 < x <= 1 for x in p)
    correct = sum(r["predictions"][0]["label"] == Path(r["path"]).parent.name for r in results)
    assert correct / len(results) >= 0.8
    assert (finetuned / "log.csv").read_text().startswith("step,")


def test_resume_after_stop_equals_uninterrupted_run(model_dir, data_dir, tmp_path, capsys):
    settings = dict(epochs=2, val_fraction=0.25, seed=3, layer_decay=0.8, **FAST)
    full = finetune(str(model_dir), str(data_dir), tmp_path / "full", **settings)
    # stopped mid-epoch 2 (3 steps per epoch) through the command line, then resumed with the saved settings
    stop = ["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "cut"),
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "1", "--val-fraction", "0.25",
            "--seed", "3", "--layer-decay", "0.8", "--no-tensorboard", "--no-progress"]  # fmt: skip
    assert main([*stop, "--max-steps", "4"]) == 0
    assert "stopped at step 4 of 6" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest.pt")["step"] == 4
    assert main(["finetune", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    assert "best model:" in capsys.readouterr().out
    a = load_checkpoint(full / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert ma["epochs"] == mb["epochs"]
    # a finished run is not overwritten; settings that change the result cannot change on resume
    with pytest.raises(FileExistsError):
        finetune(str(model_dir), str(data_dir), full, **settings)
    with pytest.raises(ValueError, match="weight_decay"):  # (lr may change: the way out of a NaN loss)
        finetune(str(model_dir), str(data_dir), full, resume=True, **{**settings, "weight_decay": 0.3})
    with pytest.raises(FileNotFoundError):
        finetune(str(model_dir), str(data_dir), tmp_path / "nothing", resume=True, **settings)


def test_layer_decay_learning_rates():
    model = ViTMSNForImageClassification(ViTMSNConfig(**TINY, num_labels=3))
    depth = TINY["num_hidden_layers"] + 1
    assert layer_id("vit.pos_embed", 2) == 0 and layer_id("vit.patch_embed.proj.weight", 2) == 0
    assert layer_id("vit.blocks.1.mlp.fc1.weight", 2) == 2 and layer_id("classifier.weight", 2) == depth
    for decay in (None, 0.5):
        groups = finetune_param_groups(model, 0.05, layer_decay=decay)
        optimizer = torch.optim.AdamW(groups, lr=1.0)
        set_scaled_lr(optimizer, 2e-3)
        lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        named = dict(model.named_parameters())
        assert len(lr) == len(named)  # every parameter once
        d = 1.0 if decay is None else decay
        expected = {
            "vit.cls_token": 2e-3 * d**depth,
            "vit.pos_embed": 2e-3 * d**depth,
            "vit.patch_embed.proj.weight": 2e-3 * d**depth,
            "vit.blocks.0.attn.qkv.weight": 2e-3 * d**2,
            "vit.blocks.1.mlp.fc2.bias": 2e-3 * d,
            "vit.norm.weight": 2e-3,
            "classifier.weight": 2e-3,
        }
        for name, value in expected.items():
            assert lr[id(named[name])] == pytest.approx(value), name
        # no weight decay on biases, norms, CLS and position embeddings
        for name in ("vit.cls_token", "vit.pos_embed", "vit.blocks.0.norm1.weight", "vit.blocks.1.mlp.fc2.bias",
                     "vit.norm.bias", "classifier.bias"):  # fmt: skip
            assert wd[id(named[name])] == 0.0, name
        for name in ("vit.patch_embed.proj.weight", "vit.blocks.0.attn.qkv.weight", "classifier.weight"):
            assert wd[id(named[name])] == 0.05, name


def test_training_pixels_follow_the_processor(model_dir):
    processor = ViTImageProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 27, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))  # mode "L", as Fashion-MNIST
    plain = train_transform(processor, 32, augment=False)
    for image in (rgb, gray):
        want = processor(image, return_tensors="pt")["pixel_values"][0]  # (3, 32, 32)
        got = plain(image)
        assert got.shape == want.shape == (3, 32, 32)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    augmented = train_transform(processor, 32, augment=True)(gray)
    assert augmented.shape == (3, 32, 32)
    # three equal channels once normalisation is undone
    mean, std = torch.tensor([0.4, 0.45, 0.5])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    raw = augmented * std + mean
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


def test_training_pixels_take_the_processors_center_crop(model_dir, data_dir, tmp_path):
    """A processor saved with do_center_crop (resize to 40, crop 32, as "resize 256, crop 224"): the training
    images come out at its crop size, which it predicts at (not at its resize size: the 32-pixel model would
    refuse 40-pixel images), without augmentation they are its own pixels, and fine-tuning runs."""
    import shutil

    from vitmsn.eval.predict import load_processor

    enc = tmp_path / "enc"
    shutil.copytree(model_dir, enc)
    ViTImageProcessor(size=40, do_center_crop=True, crop_size=32, image_mean=[0.4, 0.45, 0.5],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(enc)
    processor = load_processor(enc)
    assert processor.do_center_crop and processor.crop_size == {"height": 32, "width": 32}
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 27, 3), dtype=np.uint8))
    want = processor(rgb, return_tensors="pt")["pixel_values"][0]
    assert want.shape == (3, 32, 32)
    torch.testing.assert_close(train_transform(processor, 32, augment=False)(rgb), want, atol=1e-5, rtol=0)
    assert train_transform(processor, 32, augment=True)(rgb).shape == (3, 32, 32)
    # the crop's size, not the model's image size, whatever their shapes
    other = ViTImageProcessor(size=48, do_center_crop=True, crop_size={"height": 32, "width": 24})
    for augment in (True, False):
        assert train_transform(other, 32, augment=augment)(rgb).shape == (3, 32, 24)
    out = finetune(str(enc), str(data_dir), tmp_path / "ft", epochs=1, max_steps=1, val_fraction=0.25, **FAST)
    assert json.loads((out / "metrics.json").read_text())["step"] == 1


@pytest.mark.parametrize("backend", ["torch", "pil"])
@pytest.mark.parametrize("size,crop,shape", [(27, 24, (20, 27)), ({"shortest_edge": 27}, 24, (27, 40)),
                                             (20, 25, (30, 30)), (23, {"height": 26, "width": 20}, (17, 29))])
def test_no_augment_pixels_are_the_processors_own(backend, size, crop, shape):
    """--no-augment's training pixels are the processor's, where the crop's offset (H - h) // 2 is not
    torchvision's rounding (resize 27, crop 24: 3 pixels to share), and where a larger crop pads with zeros
    (the odd pixel before the image for the PIL backend, after it for the torch one)."""
    processor = ViTImageProcessor(size=size, do_center_crop=True, crop_size=crop, backend=backend)
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8))
    want = processor(rgb, return_tensors="pt")["pixel_values"][0]
    # the torch backend's resize may differ from torchvision's PIL resize by a uint8 level on a few pixels
    torch.testing.assert_close(train_transform(processor, 32, augment=False)(rgb), want,
                               atol=1e-5 if backend == "pil" else 2 / 255 / 0.5 + 1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_training_pixels_are_padded_as_the_processor_pads(backend):
    """A processor with do_pad and a pad_size: the training images come out padded (zeros at the bottom and
    right, after normalizing) to its size, with and without augmentation; without, they are its pixels."""
    processor = ViTImageProcessor(size={"height": 24, "width": 20}, do_pad=True, pad_size=32, backend=backend)
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 26, 3), dtype=np.uint8))
    want = processor(rgb, return_tensors="pt")["pixel_values"][0]
    assert want.shape == (3, 32, 32) and (want[:, 24:] == 0).all() and (want[:, :, 20:] == 0).all()
    got = train_transform(processor, 32, augment=False)(rgb)
    torch.testing.assert_close(got, want, atol=1e-5 if backend == "pil" else 2 / 255 / 0.5 + 1e-5, rtol=0)
    augmented = train_transform(processor, 32, augment=True)(rgb)
    assert augmented.shape == (3, 32, 32) and (augmented[:, 24:] == 0).all() and (augmented[:, :, 20:] == 0).all()


def test_processor_without_a_fixed_size_is_one_error_and_sizedict_crops_are_read():
    """A processor that resizes the shortest edge without a center crop makes images of no fixed size:
    training refuses it at once (not a stacking error at the first batch); transformers 5's processors keep
    crop_size as a SizeDict, which train_transform reads."""
    with pytest.raises(ValueError, match="no fixed size"):
        train_transform(ViTImageProcessor(size={"shortest_edge": 32}), 32, augment=False)
    with pytest.raises(ValueError, match="no fixed size"):
        train_transform(ViTImageProcessor(size=32, do_resize=False), 32)
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ViTImageProcessor(size=40, do_center_crop=True, crop_size=32)
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert train_transform(theirs, 32, augment=False)(rgb).shape == (3, 32, 32)


def test_stratified_split_and_folders(data_dir, tmp_path):
    split = load_labelled_data(data_dir, val_fraction=0.25, seed=0)
    assert split.classes == ["blue", "green", "red"] and len(split.train) == 27 and len(split.val) == 9
    assert sorted(split.val[i][1] for i in range(9)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert split.train[0][0].mode == "RGB"
    write_images(tmp_path / "tv" / "train", 2, 0)
    write_images(tmp_path / "tv" / "val", 1, 1)
    folders = load_labelled_data(tmp_path / "tv")
    assert (len(folders.train), len(folders.val)) == (6, 3)
    with pytest.raises(FileNotFoundError):
        load_labelled_data(tmp_path / "missing")


def test_finetune_grayscale_fashion_mnist_format(tmp_path):
    """Fashion-MNIST's loader (mode "L" images) through a 28-pixel model: three equal channels."""
    from tests.test_quickstart import write_fashion_like

    root = write_fashion_like(tmp_path / "fm", per_class=4)
    enc = tmp_path / "enc28"
    ViTMSNModel(ViTMSNConfig(**{**TINY, "image_size": 28, "patch_size": 7})).save_pretrained(enc)
    ViTImageProcessor(size=28).save_pretrained(enc)
    out = finetune(str(enc), "fashion-mnist", tmp_path / "ft", epochs=1, data_root=str(root), augment=False,
                   **{**FAST, "batch_size": 20})  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_images"] == 40 and len(metrics["classes"]) == 10
    assert ViTMSNForImageClassification.from_pretrained(out / "best").config.id2label[9] == "Ankle boot"


# ------------------------------------------------------------------------------------ predict, extract


def test_predict_bad_images(finetuned, data_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = str(data_dir / "red" / "0.png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        predict(finetuned / "best", [good, str(bad)])
    results = predict(finetuned / "best", [good, str(bad), str(tmp_path / "missing.jpg")], skip_bad=True)
    assert "predictions" in results[0] and "error" not in results[0]
    assert results[1]["path"] == str(bad) and "error" in results[1] and "predictions" not in results[1]
    assert "error" in results[2]
    # a bare encoder has no classifier to predict with
    encoder = json.loads((finetuned / "finetune.json").read_text())["model"]
    with pytest.raises(ValueError, match="finetune"):
        predict(encoder, [good])


def test_extract_writes_npz(model_dir, data_dir, tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, per_class=2, seed=5)
    (folder / "red" / "corrupt.png").write_bytes(b"")  # left out, so that paths stay aligned
    path = extract(model_dir, folder, tmp_path / "feats", batch_size=4, device="cpu", progress=False)
    assert path == tmp_path / "feats.npz"
    with np.load(path) as f:
        assert f["features"].shape == (6, TINY["hidden_size"]) and f["features"].dtype == np.float32
        assert f["labels"].tolist() == [0, 0, 1, 1, 2, 2]
        assert f["paths"].shape == (6,) and all("corrupt" not in p for p in f["paths"])
        assert f["classes"].tolist() == ["blue", "green", "red"]
        cls = f["features"]
    prenorm = extract(
        model_dir, folder, tmp_path / "pre.npz", pool="cls_prenorm", device="cpu", progress=False
    )
    with np.load(prenorm) as f:
        assert f["features"].shape == cls.shape and not np.allclose(f["features"], cls)
    # loose images: unlabelled
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in (data_dir / "red").glob("[01].png"):
        (loose / p.name).write_bytes(p.read_bytes())
    with np.load(extract(model_dir, loose, tmp_path / "loose.npz", device="cpu", progress=False)) as f:
        assert f["labels"].tolist() == [-1, -1] and f["classes"].shape == (0,)  # always there, as --help says


def test_attention_maps(model_dir, data_dir, tmp_path):
    model = ViTMSNModel.from_pretrained(model_dir)
    processor = ViTImageProcessor.from_pretrained(model_dir)
    pixels = processor(Image.open(data_dir / "red" / "0.png"), return_tensors="pt")["pixel_values"]
    maps = cls_attention(model, pixels)  # (heads, 4, 4)
    assert maps.shape == (4, 4, 4)
    sums = maps.sum(dim=(1, 2))
    assert torch.all(sums > 0) and torch.all(sums <= 1 + 1e-6)
    assert cls_attention(model, pixels, layer=0).shape == (4, 4, 4)
    with pytest.raises(ValueError, match="layer"):
        cls_attention(model, pixels, layer=2)
    png = attention_map(model_dir, data_dir / "red" / "0.png", tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# ------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", ["finetune", "predict", "extract", "attention"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: vitmsn " + command) and "default" in text


def test_cli_predict_extract_attention(finetuned, model_dir, data_dir, tmp_path, capsys):
    image = str(data_dir / "green" / "1.png")
    assert (
        main(["predict", "--model", str(finetuned / "best"), image, "--top-k", "3", "--device", "cpu"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and lines[1].split()[:2] == ["1.", "green"] and len(lines) == 4
    assert main(["predict", "--model", str(finetuned / "best"), image, "--json", "--top-k", "1"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["predictions"][0]["label"] == "green"
    # a bad image: one line naming the file, exit status 2
    assert main(["predict", "--model", str(finetuned / "best"), str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.png" in err[0]
    out = tmp_path / "f.npz"
    assert main(["extract", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    assert "36 images x 32 features" in capsys.readouterr().out
    assert main(["attention", "--model", str(model_dir), image, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file()


# --------------------------------------------------------------------------------------- bad input, CLI


def _one_error_line(capsys, *needles: str) -> str:
    """The command printed exactly one error line, holding every needle."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitmsn ")]
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


def test_cli_all_unreadable_folder_is_one_line(model_dir, tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "allbad" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "allbad" / cls / f"{i}.png").write_text("not an image")
    assert main(["finetune", "--model", str(model_dir), "--data", str(tmp_path / "allbad"), "--out",
                 str(tmp_path / "ft"), "--val-fraction", "0", "--batch-size", "2", "--no-progress",
                 "--no-tensorboard", "--device", "cpu"]) == 2  # fmt: skip
    _one_error_line(capsys, "no loadable image under", "allbad")


def test_extract_drops_unreadable_images_of_evaluation_sets(model_dir, tmp_path, caplog):
    from vitmsn.data.folder import ImageFolderDataset
    from vitmsn.eval.features import extract_features, load_backbone

    folder = write_images(tmp_path / "val", per_class=2, seed=3)
    (folder / "red" / "0_bad.png").write_text("not an image")
    (folder / "blue" / "2_empty.png").write_bytes(b"")
    dataset = ImageFolderDataset(folder)
    backbone, processor = load_backbone(model_dir)
    with caplog.at_level("WARNING", logger="vitmsn"):
        feats, labels = extract_features(backbone, dataset, processor, progress=False)
    # each readable image once (not 8 rows with the next image standing in for a bad one)
    assert feats.shape[0] == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2] and len(dataset.paths) == 6
    assert "0_bad.png" in caplog.text and "2_empty.png" in caplog.text
    assert "left out 2 unreadable image file(s)" in caplog.text
    with pytest.raises(ValueError, match="--batch-size"):
        extract_features(backbone, dataset, processor, batch_size=0, progress=False)


def test_cli_extract_appends_npz(model_dir, data_dir, tmp_path, capsys):
    old = tmp_path / "feats.npz"
    old.write_bytes(b"the user's earlier features")
    assert main(["extract", "--model", str(model_dir), "--data", str(data_dir / "red"), "--out",
                 str(tmp_path / "feats.v2"), "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    assert f"wrote {tmp_path / 'feats.v2.npz'}:" in capsys.readouterr().out
    assert old.read_bytes() == b"the user's earlier features"
    assert main(["extract", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "x"),
                 "--batch-size", "0", "--no-progress"]) == 2  # fmt: skip
    _one_error_line(capsys, "--batch-size must be >= 1")


def test_cli_attention_refuses_bad_out(model_dir, data_dir, tmp_path, capsys):
    image = tmp_path / "in.png"
    image.write_bytes((data_dir / "red" / "0.png").read_bytes())
    before = image.read_bytes()
    (tmp_path / "folder").mkdir()
    for out, needle in ((image, "is the input image itself"), (tmp_path / "sub" / ".." / "in.png", "input image"),
                        (tmp_path / "folder", "is a directory"), (tmp_path / "a.jpg", "must end in .png")):
        assert main(["attention", "--model", str(model_dir), str(image), "--out", str(out)]) == 2
        line = _one_error_line(capsys, needle)
        assert ".tmp" not in line
    assert image.read_bytes() == before and list((tmp_path / "folder").iterdir()) == []
    assert not (tmp_path / "a.jpg").exists()


def test_cli_predict_batch_size_and_all_bad(finetuned, data_dir, tmp_path, capsys):
    model = str(finetuned / "best")
    good = str(data_dir / "red" / "0.png")
    assert main(["predict", "--model", model, good, "--batch-size", "0"]) == 2
    _one_error_line(capsys, "--batch-size must be >= 1, got 0")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    # --skip-bad: a partial failure is reported and succeeds; nothing readable at all is an error
    assert main(["predict", "--model", model, good, str(bad), "--skip-bad"]) == 0
    assert "error:" in capsys.readouterr().out
    assert main(["predict", "--model", model, str(bad), str(tmp_path / "missing.png"), "--skip-bad"]) == 2
    _one_error_line(capsys, "none of the 2 image(s) could be read", "bad.png", "missing.png")


@pytest.mark.parametrize("argv,message", [
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--crop-scale", "0.9,0.1"], "0 < LO <= HI <= 1"),
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--crop-scale", "a"], "expected LO,HI"),
    (["lowshot", "--model", "m", "--data", "d", "--shots", "1,a"], "whole numbers separated by commas"),
])
def test_cli_list_options_name_what_they_expect(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("option,value,message", [
    ("--min-lr", "nan", "min_lr must be a number >= 0"),
    ("--min-lr", "0.5", "is above lr (0.001): pass a lower --min-lr"),
    ("--clip-grad", "-1", "clip_grad must be a number > 0"),
    ("--weight-decay", "-1", "weight_decay must be a number >= 0"),
    ("--lr", "inf", "lr must be a number > 0"),
])
def test_cli_finetune_refuses_numbers_that_would_train_nonsense(model_dir, data_dir, tmp_path, capsys, option,
                                                                 value, message):
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--lr", "1e-3",
                 option, value, "--no-progress", "--no-tensorboard", "--device", "cpu"]) == 2  # fmt: skip
    _one_error_line(capsys, message)
    assert not out.exists()  # refused before anything was written


def test_finetune_needs_two_classes(model_dir, tmp_path):
    write_images(tmp_path / "one" / "val", per_class=4, seed=1)  # only val/: its colour folders are no classes
    (tmp_path / "single" / "red").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (24, 24), (200, 40, 40)).save(tmp_path / "single" / "red" / f"{i}.png")
    with pytest.raises(ValueError, match=r"1 class folder \(val\).*needs a train/ beside it"):
        load_labelled_data(tmp_path / "one")
    with pytest.raises(ValueError, match=r"1 class folder \(red\): a classifier needs at least two"):
        finetune(str(model_dir), str(tmp_path / "single"), tmp_path / "ft", epochs=1, **FAST)


def test_cli_predict_names_a_foreign_model_type(tmp_path, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    Image.new("RGB", (24, 24)).save(tmp_path / "x.png")
    assert main(["predict", "--model", str(tmp_path / "bert"), str(tmp_path / "x.png")]) == 2
    _one_error_line(capsys, "is a 'bert' model; vitmsn reads 'vit' and 'vit_msn' models")


@pytest.mark.parametrize("device,message", [("xpu", "vitmsn runs on cpu, cuda or cuda:N"),
                                            ("meta", "vitmsn runs on cpu, cuda or cuda:N"),
                                            ("mps", "no Apple GPU (mps) is available here")])
def test_cli_unsupported_devices_are_one_line(finetuned, data_dir, capsys, device, message):
    import torch.backends.mps

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    image = next((data_dir / "red").glob("*.png"))
    assert main(["predict", "--model", str(finetuned / "best"), str(image), "--device", device]) == 2
    _one_error_line(capsys, message)


def test_cli_info_and_the_architectures_of_a_config(model_dir, tmp_path, capsys):
    """info names the class config.json's architectures give (a list, or one name as a string, as some files
    hold it), the bare model of its model_type without them; anything else is one error line."""
    import json
    import shutil

    assert main(["info", "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class"] == "ViTMSNModel"
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    for architectures, expected in (("ViTMSNModel", "ViTMSNModel"), (None, "ViTMSNModel"), ([], "ViTMSNModel")):
        (folder / "config.json").write_text(json.dumps({**config, "architectures": architectures}))
        assert main(["info", "--model", str(folder), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["class"] == expected
    for architectures, message in ((7, "architectures must be a list of class names"),
                                   (["BertModel"], "architecture 'BertModel' is not one vitmsn provides")):
        (folder / "config.json").write_text(json.dumps({**config, "architectures": architectures}))
        assert main(["info", "--model", str(folder)]) == 2
        _one_error_line(capsys, message)


def test_cli_dead_data_loader_worker_is_one_line(monkeypatch, capsys):
    import vitmsn.cli as cli

    def dies(args):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), dies))
    assert main(["info", "--model", "m"]) == 2
    _one_error_line(capsys, "DataLoader worker (pid 4242)", "out of memory", "--resume")


def _with_func(parser, func):
    """The parser, with every subcommand calling ``func``."""
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_finetune_takes_numpy_numbers(model_dir, tmp_path):
    """numpy scalars are numbers too: the checks pass them, and the run goes on to read the data."""
    with pytest.raises(FileNotFoundError, match="neither 'fashion-mnist' nor a directory"):
        finetune(str(model_dir), str(tmp_path / "missing"), tmp_path / "ft", lr=np.float32(1e-3),
                 min_lr=np.float64(0.0), clip_grad=np.float32(1.0), **{k: v for k, v in FAST.items() if k != "lr"})


def test_cli_resume_of_a_gpu_run_without_a_gpu_names_device_cpu(tmp_path, capsys, monkeypatch):
    # a run fine-tuned on a GPU, resumed on a machine without one: one line saying how to go on on the CPU
    from vitmsn.eval.finetune import SETTINGS_FILE

    run = tmp_path / "ft"
    run.mkdir()
    (run / SETTINGS_FILE).write_text(json.dumps({"model": "m", "data": "d", "device": "cuda:0", "epochs": 1}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["finetune", "--out", str(run), "--resume", "--no-progress"]) == 2
    _one_error_line(capsys, "fine-tuned on cuda:0", "--device cpu")


@pytest.mark.parametrize("log_every", [1, 100])  # 100: the steps' numbers are read only before the checkpoint
def test_non_finite_loss_stops_before_a_checkpoint(model_dir, data_dir, tmp_path, log_every):
    """A learning rate that blows the weights up: the run stops at the first non-finite loss, naming its step,
    and writes no checkpoint after it."""
    from vitmsn.training import NonFiniteLossError

    settings = {**FAST, "lr": 1e30, "warmup_epochs": 0, "log_every": log_every}
    with pytest.raises(NonFiniteLossError, match=r"the loss became (nan|inf) at step 1; no checkpoint was written"):
        finetune(str(model_dir), str(data_dir), tmp_path / "ft", epochs=2, val_fraction=0.25, **settings)
    assert not (tmp_path / "ft" / "checkpoints" / "latest.pt").exists()


def test_predict_takes_one_path_and_refuses_an_encoder_object(finetuned, model_dir, data_dir):
    image = next((data_dir / "red").glob("*.png"))
    one = predict(str(finetuned / "best"), str(image), top_k=2)  # one path, not its characters
    assert len(one) == 1 and one[0]["path"] == str(image)
    assert one == predict(str(finetuned / "best"), [image], top_k=2)
    encoder = ViTMSNModel.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="ViTMSNModel has no trained classifier"):
        predict(encoder, [image], processor=ViTImageProcessor(size=32))
