"""Every model class against transformers on the same weights: fp32, max abs difference <= 1e-5."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch

import vitmsn
from tests.conftest import TINY, save_hf

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
CASES = [
    # (vitmsn / transformers class, config class, constructor kwargs)
    ("ViTMSNModel", "ViTMSNConfig", {}),
    ("ViTMSNForImageClassification", "ViTMSNConfig", {}),
    ("ViTModel", "ViTConfig", {}),
    ("ViTForImageClassification", "ViTConfig", {}),
    ("ViTForMaskedImageModeling", "ViTConfig", {}),
]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    cls_name, cfg_name, kw = request.param
    extra = {"encoder_stride": 8} if cls_name == "ViTForMaskedImageModeling" else {}
    ref, path = save_hf(tmp_path_factory, cls_name, cfg_name, attn_implementation="eager", **extra, **kw)
    ours = getattr(vitmsn, cls_name).from_pretrained(path)
    return cls_name, ref, ours, path


def main_output(cls_name: str, out):
    if "Classification" in cls_name:
        return out.logits
    if "MaskedImage" in cls_name:
        return out.reconstruction
    return out.last_hidden_state


def test_default_forward(pair):
    cls_name, ref, ours, _ = pair
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        r, o = ref(x), ours(x)
    close(main_output(cls_name, o), main_output(cls_name, r))
    if cls_name == "ViTModel":
        close(o.pooler_output, r.pooler_output)


def test_hidden_states_and_attentions(pair):
    cls_name, ref, ours, _ = pair
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        r = ref(x, output_hidden_states=True, output_attentions=True)
        o = ours(x, output_hidden_states=True, output_attentions=True)
    assert len(o.hidden_states) == len(r.hidden_states) == ref.config.num_hidden_layers + 1
    for a, b in zip(o.hidden_states, r.hidden_states, strict=True):
        close(a, b)
    assert len(o.attentions) == len(r.attentions) == ref.config.num_hidden_layers
    for a, b in zip(o.attentions, r.attentions, strict=True):
        close(a, b)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))  # real probabilities


@pytest.mark.parametrize("size", [(48, 48), (24, 40), (32, 56)])
def test_interpolate_pos_encoding(pair, size):
    cls_name, ref, ours, _ = pair
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        o = ours(x, interpolate_pos_encoding=True)
        if cls_name == "ViTForMaskedImageModeling" and size[0] != size[1]:
            # transformers cannot reshape a non-square grid; compare the encoder and check the decoder's shape
            close(ours.vit(x, interpolate_pos_encoding=True).last_hidden_state,
                  ref.vit(x, interpolate_pos_encoding=True).last_hidden_state)
            assert o.reconstruction.shape == x.shape
            return
        r = ref(x, interpolate_pos_encoding=True)
    close(main_output(cls_name, o), main_output(cls_name, r))


def test_return_dict_false(pair):
    cls_name, ref, ours, _ = pair
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        r = ref(x, return_dict=False, output_hidden_states=True)
        o = ours(x, return_dict=False, output_hidden_states=True)
    assert isinstance(o, tuple) and len(o) == len(r)
    close(o[0], r[0])
    assert all(isinstance(t, torch.Tensor | tuple) for t in o)


def test_labels_loss(pair):
    cls_name, ref, ours, _ = pair
    if "Classification" not in cls_name:
        pytest.skip("no labels")
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        close(ours(x, labels=labels).loss, ref(x, labels=labels).loss)


def _gradient_file(model, directory) -> dict[str, torch.Tensor]:
    """The model's gradients as its checkpoint file would hold its weights (transformers' names, q, k and v
    apart): a copy whose weights are the gradients (zero where none), saved by the model's own library."""
    from safetensors.torch import load_file

    copy = deepcopy(model)
    with torch.no_grad():
        for p, c in zip(model.parameters(), copy.parameters(), strict=True):
            c.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    copy.save_pretrained(directory)
    # transformers 5 saves ViTMSNForImageClassification's backbone without "vit." (4.x and vitmsn with it)
    return {k.removeprefix("vit."): v for k, v in load_file(Path(directory) / "model.safetensors").items()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gradients(pair, attn, tmp_path):
    """Training: the gradients of every weight and of the input equal transformers', with either kernel."""
    cls_name, ref, ours, path = pair
    if attn == "eager":
        ours = getattr(vitmsn, cls_name).from_pretrained(path, attn_implementation="eager")
    x = torch.randn(4, 3, 32, 32)
    files, inputs = [], []
    for name, model in (("ours", ours), ("ref", ref)):
        model.train()  # dropout is 0 in these configurations: the same function as in eval
        xi = x.clone().requires_grad_(True)
        out = main_output(cls_name, model(xi))
        model.zero_grad(set_to_none=True)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a dense upstream gradient
        files.append(_gradient_file(model, tmp_path / name))
        inputs.append(xi.grad)
        model.zero_grad(set_to_none=True)
        model.eval()
    close(inputs[0], inputs[1])
    assert files[0].keys() == files[1].keys() and len(files[0]) > 10
    assert any(g.abs().max() > 0 for g in files[1].values())
    for k, g in files[1].items():
        torch.testing.assert_close(files[0][k], g, atol=ATOL * max(1.0, g.abs().max().item()), rtol=0,
                                   msg=lambda m, k=k: f"{k}: {m}")


def test_mim_loss_with_mask(pair):
    cls_name, ref, ours, _ = pair
    if cls_name not in ("ViTForMaskedImageModeling", "ViTModel", "ViTMSNModel"):
        pytest.skip("bool_masked_pos is for models with a mask token")
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 16) > 0.5
    if cls_name == "ViTForMaskedImageModeling":
        with torch.no_grad():
            r, o = ref(x, bool_masked_pos=mask), ours(x, bool_masked_pos=mask)
        close(o.loss, r.loss)
        close(o.reconstruction, r.reconstruction)
    else:
        # a bare model built with use_mask_token=True: load the same file into both libraries
        _, _, _, path = pair
        r = getattr(transformers, cls_name).from_pretrained(path, use_mask_token=True).eval()
        o = getattr(vitmsn, cls_name).from_pretrained(path, use_mask_token=True)
        with torch.no_grad():
            close(o(x, bool_masked_pos=mask).last_hidden_state, r(x, bool_masked_pos=mask).last_hidden_state)


def test_sdpa_equals_eager(pair):
    cls_name, _, ours, path = pair
    eager = getattr(vitmsn, cls_name).from_pretrained(path, attn_implementation="eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(main_output(cls_name, ours(x)), main_output(cls_name, eager(x)))


@pytest.mark.parametrize("cls_name,cfg_name", [("ViTMSNForImageClassification", "ViTMSNConfig"),
                                               ("ViTModel", "ViTConfig")])
def test_pickle_bin_checkpoint(tmp_path_factory, cls_name, cfg_name):
    ref, path = save_hf(tmp_path_factory, cls_name, cfg_name, safe=False)
    assert (path / "pytorch_model.bin").exists() and not (path / "model.safetensors").exists()
    ours = getattr(vitmsn, cls_name).from_pretrained(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(main_output(cls_name, ours(x)), main_output(cls_name, ref(x)))


@pytest.mark.parametrize("num_labels,labels", [
    (1, torch.tensor([0.5, -1.0])),  # regression
    (3, torch.tensor([[1.0, 0, 1], [0, 1, 0]])),  # multi-label
])
def test_problem_types(tmp_path_factory, num_labels, labels):
    ref, path = save_hf(tmp_path_factory, "ViTMSNForImageClassification", "ViTMSNConfig", num_labels=num_labels)
    ours = vitmsn.ViTMSNForImageClassification.from_pretrained(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x, labels=labels).loss, ref(x, labels=labels).loss)
    assert ours.config.problem_type == ref.config.problem_type


def test_current_layout_keys_load(tmp_path_factory):
    """The transformers 5 in-memory names (layers.N.attention.q_proj, mlp.fc1) load too."""
    ref, _ = save_hf(tmp_path_factory, "ViTModel", "ViTConfig")
    sd = ref.state_dict()
    assert any(".q_proj." in k for k in sd), "transformers no longer uses the current layout in memory"
    ours = vitmsn.ViTModel(vitmsn.ViTConfig(**{k: getattr(ref.config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
        "patch_size")}))
    from vitmsn.checkpoints import load_state_dict_into

    load_state_dict_into(ours.eval(), sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x).pooler_output, ref(x).pooler_output)


def test_sharded_checkpoint(tmp_path_factory):
    """Weights split over two safetensors files with an index, as transformers writes large models."""
    import json

    from safetensors.torch import load_file, save_file

    ref, path = save_hf(tmp_path_factory, "ViTMSNModel", "ViTMSNConfig")
    sd = load_file(path / "model.safetensors")
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, path / name, metadata={"format": "pt"})
    (path / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x).last_hidden_state, ref(x).last_hidden_state)


def test_outputs_are_dicts_as_in_transformers():
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    ref = transformers.ViTModel(transformers.ViTConfig(**TINY)).eval()
    ours = vitmsn.ViTModel(vitmsn.ViTConfig(**TINY)).eval()
    with torch.no_grad():
        a, b = ours(x, output_hidden_states=True), ref(x, output_hidden_states=True)
    assert isinstance(a, dict) and list(a.keys()) == list(b.keys())
    assert a.get("attentions") is None and a.get("pooler_output") is a.pooler_output is a[1]
    a["pooler_output"] = b["pooler_output"]  # item and attribute stay one
    assert a.pooler_output is b.pooler_output and a.to_tuple()[1] is b.pooler_output


@pytest.mark.parametrize("cls_name,cfg_name", [c[:2] for c in CASES if "Masked" not in c[0]])
def test_image_size_the_patches_do_not_tile(tmp_path_factory, cls_name, cfg_name):
    """A checkpoint whose image_size is not a multiple of its patch_size (30 px, 8 px patches) loads and runs
    as in transformers: a 3 x 3 grid, the last 6 pixel rows and columns left out."""
    ref, path = save_hf(tmp_path_factory, cls_name, cfg_name, image_size=30)
    ours = getattr(vitmsn, cls_name).from_pretrained(path)
    assert ours.config.num_patches == 9
    x = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        close(main_output(cls_name, ours(x)), main_output(cls_name, ref(x)))
        y = torch.randn(2, 3, 46, 40)  # another size, also not tiled
        close(main_output(cls_name, ours(y, interpolate_pos_encoding=True)),
              main_output(cls_name, ref(y, interpolate_pos_encoding=True)))
