"""The parts of transformers' model API that generic code relies on (accelerate, DataParallel, Trainer,
torch.export), each compared with transformers on the same weights: output objects, save_pretrained's and
from_pretrained's options, head masks, parameter counts, config methods."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from torch.utils import _pytree

import vitmsn

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A transformers ViTMSNForImageClassification, saved, and vitmsn's model of the same folder."""
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    theirs = transformers.ViTMSNForImageClassification(transformers.ViTMSNConfig(**TINY)).eval()
    theirs.save_pretrained(path)
    ours = vitmsn.ViTMSNForImageClassification.from_pretrained(path)
    return theirs, ours, path


def _outputs(model):
    torch.manual_seed(1)
    return model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]), output_hidden_states=True)


def test_outputs_rebuilt_from_their_items_as_transformers(pair):
    """accelerate rebuilds outputs from a dict of their items, DataParallel's gather from (key, value) pairs;
    fields set later become items; outputs are pytree nodes with their tensors as leaves."""
    for model in pair[:2]:
        out = _outputs(model)
        keys = list(out.keys())
        assert keys == ["loss", "logits", "hidden_states"]
        for rebuilt in (type(out)({k: v for k, v in out.items()}), type(out)((k, v) for k, v in out.items())):
            assert list(rebuilt.keys()) == keys and rebuilt[0] is out.loss and rebuilt.logits is out.logits
        partial = type(out)(logits=out.logits)
        partial.loss = out.loss
        assert list(partial.keys()) == ["logits", "loss"] and partial.to_tuple() == (out.logits, out.loss)
        leaves, spec = _pytree.tree_flatten(out)
        assert len(leaves) == 2 + len(out.hidden_states)
        back = _pytree.tree_unflatten([t * 2 for t in leaves], spec)
        assert type(back) is type(out) and torch.equal(back.logits, out.logits * 2)
        with pytest.raises(Exception, match="cannot|You cannot"):
            out.pop("loss")


def test_save_pretrained_options_load_in_transformers(pair, tmp_path):
    """state_dict (the model's own names, as accelerate's get_state_dict gives), shards with an index, a variant;
    transformers loads what vitmsn writes, and the reverse; an earlier save's files do not linger."""
    theirs, ours, _ = pair
    x = torch.randn(2, 3, 32, 32)
    halved = {k: v / 2 if k.startswith("classifier.") else v for k, v in ours.state_dict().items()}
    ours.save_pretrained(tmp_path / "a", state_dict=halved, max_shard_size="20KB", variant="v1")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors.index.v1.json" in files and sum(f.startswith("model.v1-0") for f in files) > 1
    loaded = transformers.ViTMSNForImageClassification.from_pretrained(tmp_path / "a", variant="v1").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours(x).logits / 2 + ours.classifier.bias / 2,
                                   atol=1e-5, rtol=0)
    ours.save_pretrained(tmp_path / "a", variant="v1")  # one file now: the shards and index go
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.v1.safetensors"]
    ours.save_pretrained(tmp_path / "b", is_main_process=False)
    assert not (tmp_path / "b").exists()
    theirs.save_pretrained(tmp_path / "c", max_shard_size="20KB", variant="v2")
    back = vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path / "c", variant="v2")
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, theirs(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError):
        vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path / "c")  # no plain files there


def test_from_pretrained_with_a_state_dict_or_a_config_path(pair):
    theirs, ours, path = pair
    x = torch.randn(1, 3, 32, 32)
    config = vitmsn.ViTMSNConfig.from_pretrained(path)
    for model in (vitmsn.ViTMSNForImageClassification.from_pretrained(None, config=config,
                                                                      state_dict=theirs.state_dict()),
                  vitmsn.ViTMSNForImageClassification.from_pretrained(path, config=str(path)),
                  vitmsn.ViTMSNForImageClassification.from_pretrained(path, state_dict=ours.state_dict())):
        with torch.no_grad():
            torch.testing.assert_close(model(x).logits, theirs(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="config= and state_dict="):
        vitmsn.ViTMSNForImageClassification.from_pretrained(None, config=config)
    half = vitmsn.ViTMSNForImageClassification.from_pretrained(path, dtype=torch.float16)
    assert half.config.dtype == torch.float16 and half.dtype == torch.float16


def test_head_mask_shapes_and_labels_passed_by_position(pair):
    """(H,), (L, H) and transformers 4's (L, 1, H, 1, 1) mean the same; labels given where the head mask goes
    (transformers 5's second positional argument) are an error that says so, never a silent head mask."""
    _, ours, _ = pair
    x = torch.randn(4, 3, 32, 32)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        ref = ours(x, head_mask=mask).logits
        for other in (mask.expand(2, 4), mask.expand(2, 4)[:, None, :, None, None]):
            torch.testing.assert_close(ours(x, head_mask=other).logits, ref, atol=0, rtol=0)
        with pytest.raises(ValueError, match="labels=labels"):
            ours(x, torch.tensor([0, 2, 1, 2]))  # four images, four heads: labels by position


def test_num_parameters_as_transformers(pair):
    theirs, ours, _ = pair
    for flags in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert ours.num_parameters(**flags) == theirs.num_parameters(**flags)


def test_trainer_trains_as_with_transformers(pair, tmp_path):
    """transformers' Trainer (which passes num_items_in_batch to the loss) with gradient accumulation and its
    default (fused) AdamW: the same losses and the same weights after two optimizer steps as with
    transformers' own model, and the same evaluation loss before and after them (the evaluation after the
    steps must see the new weights, not the oneDNN copies packed for the first one)."""
    pytest.importorskip("accelerate")
    theirs, ours, path = pair
    torch.manual_seed(3)
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": torch.tensor(i % 3)} for i in range(8)]
    results = []
    for cls in (transformers.ViTMSNForImageClassification, vitmsn.ViTMSNForImageClassification):
        model = cls.from_pretrained(path)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / cls.__module__), per_device_train_batch_size=2,
            gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[],
            save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:4])
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append((losses, model.classifier.weight.detach().clone(), before, trainer.evaluate()["eval_loss"]))
    (loss_t, w_t, *eval_t), (loss_o, w_o, *eval_o) = results
    assert len(loss_t) == 2 and loss_o == pytest.approx(loss_t, abs=1e-5)
    torch.testing.assert_close(w_o, w_t, atol=1e-5, rtol=0)
    assert eval_o == pytest.approx(eval_t, abs=1e-5) and abs(eval_t[1] - eval_t[0]) > 1e-3


def test_config_methods_and_saved_flags_as_transformers(tmp_path, caplog):
    flags = dict(output_hidden_states=True, output_attentions=True, return_dict=False)
    for lib in (vitmsn, transformers):
        cfg = lib.ViTConfig(**TINY, **flags, dtype="float16")
        cfg.update({"qkv_bias": False, "my_key": 1})
        cfg.update_from_string("hidden_size=64,layer_norm_eps=1e-5,hidden_act=relu")
        cfg.save_pretrained(tmp_path / lib.__name__)
        cfg.to_json_file(tmp_path / f"{lib.__name__}.json")
    for folder in ("vitmsn", "transformers"):
        for lib in (vitmsn, transformers):
            back = lib.ViTConfig.from_pretrained(tmp_path / folder)
            got = (back.output_hidden_states, back.output_attentions, back.return_dict, back.dtype, back.qkv_bias,
                   back.my_key, back.hidden_size, back.layer_norm_eps, back.hidden_act)
            assert got == (True, True, False, torch.float16, False, 1, 64, 1e-5, "relu"), (folder, lib.__name__)
    ours = json.loads((tmp_path / "vitmsn.json").read_text())
    theirs = json.loads((tmp_path / "transformers.json").read_text())
    for diff in (ours, theirs):  # to_json_file leaves out the generic settings that keep their defaults
        assert diff["qkv_bias"] is False and diff["output_hidden_states"] is True and "problem_type" not in diff
    with pytest.raises(ValueError, match="qkv_bias"):
        vitmsn.ViTConfig().update_from_string("qkv_bias=maybe")
    msn = tmp_path / "msn"
    vitmsn.ViTMSNConfig(**TINY).save_pretrained(msn)
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        cfg = vitmsn.ViTConfig.from_pretrained(msn)  # as transformers: loads, with a warning
    assert "vit_msn" in caplog.text and cfg.hidden_size == 32 and cfg.name_or_path == str(msn)
    assert cfg.get_text_config() is cfg and not cfg.is_encoder_decoder


def test_torch_jit_trace_passes_its_check(pair):
    """``torch.jit.trace`` (with its default check, which traces again and compares the graphs) gives a module
    whose outputs equal the model's and transformers', at another batch size too."""
    import warnings

    theirs, ours, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's deprecation and tracer warnings
        traced = torch.jit.trace(ours, torch.randn(1, 3, 32, 32), strict=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = traced(x)["logits"]
        torch.testing.assert_close(logits, ours(x).logits, atol=1e-6, rtol=0)  # F.linear: eager may run oneDNN
        torch.testing.assert_close(logits, theirs(x).logits, atol=1e-5, rtol=0)


def test_torch_export_and_image_classification_pipeline(pair):
    """``torch.export.export`` gives a program whose logits equal the model's; transformers'
    image-classification pipeline runs vitmsn's classifier and gives transformers' scores."""
    import numpy as np
    from PIL import Image

    theirs, ours, _ = pair
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(ours, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x)["logits"], ours(x).logits, atol=1e-6, rtol=0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    processor = vitmsn.ViTImageProcessor(size={"height": 32, "width": 32})
    scores = [transformers.pipeline("image-classification", model=model, image_processor=processor)(image, top_k=3)
              for model in (ours, theirs)]
    assert [s["label"] for s in scores[0]] == [s["label"] for s in scores[1]]
    np.testing.assert_allclose([s["score"] for s in scores[0]], [s["score"] for s in scores[1]], atol=1e-5)
