"""Shared fixtures: tiny random models saved by transformers (the reference nobody here wrote)."""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8, num_channels=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_hf(cls_name: str, config_name: str, *, init_kwargs=None, **config_kwargs):
    """A random transformers model (TINY unless overridden), its weights perturbed so nothing is zero or one."""
    import transformers

    cfg = getattr(transformers, config_name)(**{**TINY, **config_kwargs})
    torch.manual_seed(1)
    model = getattr(transformers, cls_name)(cfg, **(init_kwargs or {})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_fc2_weight(names, layer: int) -> str:
    """The name transformers gives block ``layer``'s second MLP weight, in 4.x's layout or 5.x's."""
    matches = [k for k in names if re.search(rf"layers?\.{layer}\.(mlp\.fc2|output\.dense)\.weight$", k)]
    assert len(matches) == 1, matches
    return matches[0]


def save_hf(tmp_path_factory, cls_name: str, config_name: str, *, safe: bool = True, init_kwargs=None,
            **config_kwargs):
    """Build a random transformers model (:func:`make_hf`) and save it."""
    model = make_hf(cls_name, config_name, init_kwargs=init_kwargs, **config_kwargs)
    out = tmp_path_factory.mktemp(f"{cls_name}_{'st' if safe else 'bin'}")
    model.save_pretrained(out)
    if not safe:  # transformers 5 writes safetensors only; write the pickle as transformers 4.x did
        from safetensors.torch import load_file

        torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    return model, out


def leave_worker() -> None:
    """End a DDP test worker that finished cleanly without the interpreter's teardown. 2-process gloo runs
    aborted there now and then ("terminate called without an active exception", SIGABRT), after their work
    was done and their process group destroyed; importing torch.distributed.nn made it frequent (vitmsn no
    longer does), and it was still seen once without it, in a full run of the suite."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
