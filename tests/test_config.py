"""Config dataclasses: transformers' defaults, config.json round trips, clear errors for impossible values."""

from __future__ import annotations

import json

import pytest
import torch

import vitmsn
from vitmsn.config import ViTConfig, ViTMSNConfig, config_from_dict

transformers = pytest.importorskip("transformers")

FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
          "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
          "image_size", "patch_size", "num_channels", "qkv_bias")


@pytest.mark.parametrize("ours,theirs", [(ViTMSNConfig, "ViTMSNConfig"), (ViTConfig, "ViTConfig")])
def test_defaults_match_transformers(ours, theirs):
    a, b = ours(), getattr(transformers, theirs)()
    for f in FIELDS:
        assert getattr(a, f) == getattr(b, f), f
    assert a.num_labels == b.num_labels == 2
    if ours is ViTConfig:
        assert (a.encoder_stride, a.pooler_output_size, a.pooler_act) == (16, 768, "tanh")


@pytest.mark.parametrize("ours,theirs", [(ViTMSNConfig, "ViTMSNConfig"), (ViTConfig, "ViTConfig")])
def test_config_json_both_ways(tmp_path, ours, theirs):
    cfg = ours(hidden_size=64, num_attention_heads=4, image_size=96, id2label={0: "a", 1: "b", 2: "c"},
               hidden_act="gelu_new", problem_type="single_label_classification")
    cfg.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == ours.model_type and data["id2label"] == {"0": "a", "1": "b", "2": "c"}
    ref = getattr(transformers, theirs).from_pretrained(tmp_path)
    for f in FIELDS:
        assert getattr(ref, f) == getattr(cfg, f), f
    assert ref.id2label == cfg.id2label and ref.num_labels == 3
    ref.save_pretrained(tmp_path / "back")
    back = ours.from_pretrained(tmp_path / "back")
    for f in (*FIELDS, "id2label", "label2id", "problem_type"):
        assert getattr(back, f) == getattr(cfg, f), f


def test_unknown_keys_are_kept(tmp_path):
    cfg = ViTMSNConfig.from_dict({"model_type": "vit_msn", "hidden_size": 64, "num_attention_heads": 4,
                                  "my_custom_key": [1, 2]})
    assert cfg.extra == {"my_custom_key": [1, 2]}
    cfg.save_pretrained(tmp_path)
    assert ViTMSNConfig.from_pretrained(tmp_path).extra["my_custom_key"] == [1, 2]


@pytest.mark.parametrize("ours,theirs", [(ViTMSNConfig, "ViTMSNConfig"), (ViTConfig, "ViTConfig")])
def test_attributes_set_later_are_saved_as_in_transformers(tmp_path, ours, theirs):
    """Attributes set on a config after it is built are saved (transformers saves every attribute); a name
    transformers has as a plain attribute (head_dim) reads back as set; copies do not share them."""
    cfg = ours(head_dim=7, my_key=1)
    cfg.my_key, cfg.added = 2, "x"
    other = cfg.copy(num_channels=1)
    other.my_key = 3
    cfg.hidden_size = 96  # a field stays a field
    assert "hidden_size" not in cfg.extra and cfg.hidden_size == 96
    cfg.save_pretrained(tmp_path)
    ref = getattr(transformers, theirs).from_pretrained(tmp_path)
    assert (ref.head_dim, ref.my_key, ref.added, ref.hidden_size) == (7, 2, "x", 96)
    assert (cfg.head_dim, other.my_key) == (7, 3)
    del cfg.added
    assert "added" not in cfg.to_dict()


@pytest.mark.parametrize("ours,theirs", [(ViTMSNConfig, "ViTMSNConfig"), (ViTConfig, "ViTConfig")])
def test_attribute_writes_transformers_code_makes(tmp_path, ours, theirs):
    """Writes transformers users make on a built config: num_labels (new default label names), id2label,
    _attn_implementation (keyword and attribute), a torch dtype (saved by name), and copies that stay apart."""
    import copy

    cfgs = [ours(_attn_implementation="eager"), getattr(transformers, theirs)(_attn_implementation="eager")]
    for cfg in cfgs:
        cfg.num_labels = 5
    ref = cfgs[1]
    cfg = cfgs[0]
    # the private keyword is honoured as transformers 4.x and 5.0-5.24 do (5.25 ignores it)
    assert (cfg.attn_implementation, cfg._attn_implementation) == ("eager", "eager")
    assert (cfg.num_labels, cfg.id2label, cfg.label2id) == (5, ref.id2label, ref.label2id)
    cfg.id2label = ref.id2label = {0: "cat", 1: "dog", 2: "fox"}
    assert cfg.num_labels == ref.num_labels == 3 and cfg.label2id == {"cat": 0, "dog": 1, "fox": 2}
    cfg._attn_implementation = "sdpa"
    assert cfg.attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        cfg._attn_implementation = "flash"
    cfg.dtype = torch.float16
    cfg.my_key = 1
    shallow = copy.copy(cfg)
    shallow.my_key = 2
    assert cfg.my_key == 1
    cfg.save_pretrained(tmp_path)
    back = getattr(transformers, theirs).from_pretrained(tmp_path)
    assert back.dtype == torch.float16 and back.id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert ours.from_pretrained(tmp_path).num_labels == 3


def test_read_only_settings_are_refused():
    """transformers refuses ``use_return_dict=`` as well (a property without a setter); saving it would
    make a config.json transformers cannot load."""
    with pytest.raises(AttributeError):
        transformers.ViTConfig(use_return_dict=False)
    with pytest.raises(ValueError, match="use_return_dict cannot be set .*follows return_dict"):
        ViTConfig(use_return_dict=False)
    with pytest.raises(AttributeError):
        ViTConfig().use_return_dict = False


def test_from_pretrained_keywords(tmp_path):
    """As transformers' config loader: hub keywords (subfolder, force_download, loader-only ones) are taken,
    settings override, other keywords are unused (returned on request)."""
    ViTMSNConfig(my_key=1).save_pretrained(tmp_path / "sub")
    cfg, unused = ViTMSNConfig.from_pretrained(tmp_path, subfolder="sub", force_download=False,
                                               trust_remote_code=True, num_channels=1, my_key=2, other=3,
                                               return_unused_kwargs=True)
    ref, ref_unused = transformers.ViTMSNConfig.from_pretrained(tmp_path, subfolder="sub", num_channels=1,
                                                                my_key=2, other=3, return_unused_kwargs=True)
    assert (cfg.num_channels, cfg.my_key) == (ref.num_channels, ref.my_key) == (1, 2)
    assert unused == ref_unused == {"other": 3}
    assert ViTMSNConfig.from_pretrained(tmp_path / "sub", other=3).to_dict().get("other") is None


def test_num_labels_override():
    cfg = ViTMSNConfig.from_dict({"model_type": "vit_msn", "id2label": {"0": "a", "1": "b"}}, num_labels=5)
    assert cfg.num_labels == 5 and len(cfg.id2label) == 5


@pytest.mark.parametrize("kwargs,message", [
    ({"hidden_size": 100, "num_attention_heads": 12}, "divisible by num_attention_heads"),
    ({"image_size": 8}, "smaller than one patch"),
    ({"hidden_act": "prelu"}, "hidden_act='prelu' is not supported"),  # has weights of its own
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ({"problem_type": "ranking"}, "problem_type"),
    ({"attn_implementation": "flash"}, "attn_implementation"),
    ({"num_labels": 3, "id2label": {0: "a"}}, "disagrees"),
])
def test_impossible_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):  # from the config, or (heads) from the model built of it
        vitmsn.ViTMSNModel(ViTMSNConfig(**kwargs))


def test_config_set_up_step_by_step():
    """As in transformers, heads that do not divide the hidden size raise when a model is built, not when the
    config is made, so a config can be set up one attribute at a time; a config.json with them raises on
    loading."""
    cfg = vitmsn.ViTConfig(hidden_size=32)  # 12 heads by default
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        vitmsn.ViTModel(cfg)
    cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size = 2, 1, 64
    assert vitmsn.ViTModel(cfg)(torch.randn(1, 3, 224, 224)).last_hidden_state.shape == (1, 197, 32)


def test_config_json_whose_heads_do_not_divide_the_hidden_size(tmp_path):
    from vitmsn.checkpoints import CheckpointError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    with pytest.raises(CheckpointError, match="config.json of .*divisible by num_attention_heads"):
        vitmsn.ViTModel.from_pretrained(tmp_path)


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        config_from_dict({"model_type": "bert"})
    with pytest.raises(ValueError, match="expects 'vit_msn'"):
        ViTMSNConfig.from_dict({"model_type": "vit"})


@pytest.mark.parametrize("act", ["gelu", "relu", "selu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu",
                                 "silu", "swish", "tanh", "linear", "gelu_python", "gelu_accurate",
                                 "gelu_python_tanh", "gelu_10", "hardswish", "leaky_relu", "mish", "relu2", "relu6",
                                 "sigmoid", "laplace", "sqrtsoftplus"])
def test_activations_match_transformers(tmp_path, act):
    from transformers.activations import ACT2FN

    from tests.conftest import TINY

    if act not in ACT2FN:  # transformers documents "selu" but has no such activation: check ours by hand
        mlp = vitmsn.ViTMSNModel(ViTMSNConfig(**TINY, hidden_act=act)).blocks[0].mlp
        x = torch.randn(4, TINY["hidden_size"])
        expected = mlp.fc2(getattr(torch.nn.functional, act)(mlp.fc1(x)))
        torch.testing.assert_close(mlp(x), expected)
        return
    torch.manual_seed(0)
    ref = transformers.ViTMSNModel(transformers.ViTMSNConfig(**TINY, hidden_act=act)).eval()
    ref.save_pretrained(tmp_path)
    ours = vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=0)


def test_bad_pixel_values():
    from tests.conftest import TINY

    model = vitmsn.ViTMSNModel(ViTMSNConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="Expected 3 but got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"doesn't match model \(32\*32\).*interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="pixel_values"):
        model()
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="head_mask must have shape"):
        model(torch.randn(1, 3, 32, 32), head_mask=torch.ones(3))
    with pytest.raises(ValueError, match="use_mask_token=True"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 16, dtype=torch.bool))


def test_reset_classifier_keeps_the_config_consistent(tmp_path):
    from tests.conftest import TINY

    model = vitmsn.ViTMSNForImageClassification(ViTMSNConfig(**TINY))
    model.reset_classifier(3)
    assert model.classifier.out_features == model.config.num_labels == 3
    assert model.config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    model.reset_classifier(2, {0: "cat", 1: "dog"})
    assert (model.config.num_labels, model.config.label2id) == (2, {"cat": 0, "dog": 1})
    with pytest.raises(ValueError, match="num_labels=4 disagrees with id2label"):
        model.reset_classifier(4, {0: "cat", 1: "dog"})
    assert model.classifier.out_features == model.config.num_labels == 2  # unchanged
    model.save_pretrained(tmp_path)
    ref = transformers.ViTMSNForImageClassification.from_pretrained(tmp_path)
    assert ref.config.id2label == {0: "cat", 1: "dog"} and ref.classifier.out_features == 2
