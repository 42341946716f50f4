"""The image processors vitmsn's own pipelines make.

- Feature extraction (low-shot, k-NN, quickstart), prediction and fine-tuning load the processor of the model
  folder as a user does (``AutoImageProcessor``: the backend it was saved with, else transformers 5's torch
  one); a folder without one gets the default processor.
- ``vitmsn export`` (after pretraining) and the MSN checkpoint conversion save a processor without a backend
  of its own, so that vitmsn and each transformers version load their default (torch in vitmsn and
  transformers 5, and the same numbers in both).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vitmsn.config import ViTMSNConfig
from vitmsn.eval.features import load_backbone
from vitmsn.eval.predict import load_processor
from vitmsn.models.hf import ViTMSNModel
from vitmsn.processing import AutoImageProcessor, ViTImageProcessor

transformers = pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")


def tiny_model(folder):
    ViTMSNModel(ViTMSNConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    return folder


def test_folder_without_processor_gets_the_default(tmp_path):
    model = tiny_model(tmp_path / "model")
    _, processor = load_backbone(model)
    assert processor.backend == "torch" and processor.size == {"height": 32, "width": 32}
    processor = load_processor(model, 32)
    assert processor.backend == "torch" and processor.size == {"height": 32, "width": 32}


def test_folder_processor_loads_as_a_user_gets_it(tmp_path):
    """A transformers-saved processor: the torch backend, transformers 5's numbers; a vitmsn PIL one: PIL."""
    pytest.importorskip("torchvision")
    model = tiny_model(tmp_path / "model")
    transformers.ViTImageProcessorPil(size=32, image_mean=[0.4, 0.45, 0.5]).save_pretrained(model)
    img = skdata.chelsea()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoImageProcessor.from_pretrained(model)(img, return_tensors="pt")["pixel_values"]
    for processor in (load_backbone(model)[1], load_processor(model, 32)):
        assert processor.backend == "torch"
        torch.testing.assert_close(processor(img, return_tensors="pt")["pixel_values"], theirs, atol=1e-5, rtol=0)
    ViTImageProcessor(size=32, backend="pil").save_pretrained(model)
    assert load_backbone(model)[1].backend == "pil" and load_processor(model, 32).backend == "pil"


def test_msn_checkpoint_conversion_saves_the_default(tmp_path):
    """The converted model's processor gives transformers 5's numbers in vitmsn and in transformers 5."""
    from vitmsn.convert import msn_preprocessor

    msn_preprocessor(32).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "ViTImageProcessor" and "vitmsn_backend" not in data
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    assert ours.backend == "torch"
    img = skdata.chelsea()
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path)(img, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours(img, return_tensors="pt")["pixel_values"], theirs, atol=1e-5, rtol=0)


def test_pretraining_export_saves_the_default(tmp_path):
    """``export_encoder`` (what ``vitmsn export`` and the quickstart run) writes a processor without a backend
    of its own, which the quickstart's feature extraction loads as a user would."""
    from tests.test_pretrain import Shapes, tiny_config
    from vitmsn.msn.train import export_encoder, pretrain

    cfg = tiny_config(tmp_path / "run", max_steps=1)
    pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    out = export_encoder(cfg.out, tmp_path / "model")
    data = json.loads((out / "preprocessor_config.json").read_text())
    assert "vitmsn_backend" not in data and data["size"] == {"height": cfg.rand_size, "width": cfg.rand_size}
    _, processor = load_backbone(out)
    assert processor.backend == "torch"
    pixels = processor([np.zeros((40, 40, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, cfg.rand_size, cfg.rand_size)
