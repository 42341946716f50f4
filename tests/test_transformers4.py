"""Checkpoints and numbers against transformers 4.x, which still has ``head_mask``.

transformers 4.x and 5.x cannot share an environment (they need different huggingface_hub majors), so
4.x is installed into a separate folder (``.ci/run`` does it: ``build/transformers4``, or set
``VITMSN_TRANSFORMERS4``) and run in a subprocess. Without it these tests are skipped, except in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitmsn

ROOT = Path(__file__).resolve().parents[1]
TF4 = Path(os.environ.get("VITMSN_TRANSFORMERS4", ROOT / "build" / "transformers4"))
SCRIPT = ROOT / "tests" / "scripts" / "transformers4_reference.py"

if not (TF4 / "transformers").is_dir():
    if os.environ.get("CI"):
        raise RuntimeError(f"transformers 4.x is not installed at {TF4}; .ci/run installs it")
    pytest.skip(f"transformers 4.x not installed at {TF4} (see .ci/run)", allow_module_level=True)


def run4(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(TF4), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf4")
    run4("make", str(out))
    return out, torch.load(out / "refs.pt", weights_only=False)


CLASSES = ["ViTMSNModel", "ViTMSNForImageClassification", "ViTModel", "ViTForImageClassification",
           "ViTForMaskedImageModeling"]
FIRST = {"ViTMSNModel": "last_hidden_state", "ViTModel": "last_hidden_state", "ViTMSNForImageClassification":
         "logits", "ViTForImageClassification": "logits", "ViTForMaskedImageModeling": "reconstruction"}


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def compare(ours_out, ref_out, key):
    close(getattr(ours_out, key), ref_out[key])
    assert len(ours_out.hidden_states) == len(ref_out["hidden_states"])
    for a, b in zip(ours_out.hidden_states, ref_out["hidden_states"], strict=True):
        close(a, b)
    for a, b in zip(ours_out.attentions, ref_out["attentions"], strict=True):
        close(a, b)


@pytest.mark.parametrize("fmt", ["st", "bin"])
@pytest.mark.parametrize("cls_name", CLASSES)
def test_transformers4_checkpoints_and_head_mask(refs, cls_name, fmt):
    out, r = refs
    model = getattr(vitmsn, cls_name).from_pretrained(out / f"{cls_name}_{fmt}")
    x = r["x"]
    kw = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        compare(model(x, **kw), r[cls_name]["plain"], FIRST[cls_name])
        compare(model(x, head_mask=torch.tensor([1.0, 0.0, 1.0, 0.5]), **kw), r[cls_name]["head_mask_h"],
                FIRST[cls_name])
        compare(model(x, head_mask=torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 0.25]]), **kw),
                r[cls_name]["head_mask_lh"], FIRST[cls_name])
        if r[cls_name]["interp"] is not None:
            compare(model(r["x48"], interpolate_pos_encoding=True, **kw), r[cls_name]["interp"], FIRST[cls_name])
    if cls_name == "ViTModel":
        close(model(x).pooler_output, r[cls_name]["plain"]["pooler_output"])


@pytest.mark.parametrize("cls_name", CLASSES)
def test_transformers4_state_dict_through_load_state_dict(refs, cls_name):
    """transformers 4.x's pytorch_model.bin is its model's state_dict(): it loads with load_state_dict too."""
    out, r = refs
    folder = out / f"{cls_name}_bin"
    cfg_cls = vitmsn.ViTMSNConfig if "MSN" in cls_name else vitmsn.ViTConfig
    model = getattr(vitmsn, cls_name)(cfg_cls.from_pretrained(folder)).eval()
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert any(".attention.attention.query." in k for k in state)  # 4.x's own names
    result = model.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        close(getattr(model(r["x"]), FIRST[cls_name]), r[cls_name]["plain"][FIRST[cls_name]])


def test_head_mask_changes_output(refs):
    """The reference itself: masking a head changes the output (so the comparison above means something)."""
    _, r = refs
    a = r["ViTMSNModel"]["plain"]["last_hidden_state"]
    b = r["ViTMSNModel"]["head_mask_h"]["last_hidden_state"]
    assert (a - b).abs().max() > 1e-3


def test_transformers4_loads_ours(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    dirs, ours = [], {}
    for cls_name in CLASSES:
        cfg_cls = vitmsn.ViTMSNConfig if "MSN" in cls_name else vitmsn.ViTConfig
        extra = {"encoder_stride": 8} if "Masked" in cls_name else {}
        model = getattr(vitmsn, cls_name)(cfg_cls(**TINY_KW, **extra)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            ours[cls_name] = model(x)[0]
        model.save_pretrained(tmp_path / cls_name)
        dirs.append(str(tmp_path / cls_name))
    run4("load", *dirs)
    report = torch.load(tmp_path / "report.pt", weights_only=False)
    for cls_name, d in zip(CLASSES, dirs, strict=True):
        info = report[d]["info"]
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        close(report[d]["first"], ours[cls_name])


TINY_KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
               patch_size=8)
