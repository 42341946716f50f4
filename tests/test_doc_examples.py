"""The Python examples of the README and docs/ run as written, against local files instead of the Hub (no
network here), and give what the same code gives with ``transformers`` imported instead."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, save_hf

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [b for d in docs for b in re.findall(r"```python\n(.*?)```", d.read_text(), flags=re.S)]


def test_one_import_changed_example(tmp_path_factory, tmp_path, monkeypatch):
    block = next(b for b in python_blocks() if "from vitmsn import AutoImageProcessor" in b)
    _, model_dir = save_hf(tmp_path_factory, "ViTMSNModel", "ViTMSNConfig")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    code = block.replace('"facebook/vit-msn-small"', repr(str(model_dir)))
    ours: dict = {}
    exec(compile(code, "README.md", "exec"), ours)  # noqa: S102 - the README's own example
    ref: dict = {}
    reference = code.replace("from vitmsn import", "from transformers import")
    # both libraries' defaults: the torch backend (transformers 5's torchvision numbers, to float rounding)
    exec(compile(reference, "README.md (transformers)", "exec"), ref)
    assert ours["last_hidden_states"].shape == (1, 17, TINY["hidden_size"])
    torch.testing.assert_close(ours["inputs"]["pixel_values"], ref["inputs"]["pixel_values"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["last_hidden_states"], ref["last_hidden_states"], atol=1e-5, rtol=0)


def test_timm_example():
    pytest.importorskip("timm")
    block = next(b for b in python_blocks() if "import timm, vitmsn" in b)
    namespace: dict = {}
    exec(compile(block, "docs", "exec"), namespace)  # noqa: S102
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](x).last_hidden_state, namespace["t"].forward_features(x),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(namespace["back"].forward_features(x), namespace["t"].forward_features(x))
