"""Checkpoint I/O: round trips with transformers, cross-class loading, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

import vitmsn
from tests.conftest import TINY, hf_fc2_weight, make_hf, save_hf
from vitmsn.checkpoints import CheckpointError

transformers = pytest.importorskip("transformers")


def tiny(cls=vitmsn.ViTMSNModel, cfg=vitmsn.ViTMSNConfig, **kw):
    torch.manual_seed(3)
    model = cls(cfg(**{**TINY, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


ROUND_TRIP = [
    (vitmsn.ViTMSNModel, vitmsn.ViTMSNConfig, {}),
    (vitmsn.ViTMSNForImageClassification, vitmsn.ViTMSNConfig, {"num_labels": 3}),
    (vitmsn.ViTModel, vitmsn.ViTConfig, {}),
    (vitmsn.ViTForImageClassification, vitmsn.ViTConfig, {"num_labels": 3}),
    (vitmsn.ViTForMaskedImageModeling, vitmsn.ViTConfig, {"encoder_stride": 8}),
]


def first(out):
    for name in ("logits", "reconstruction", "pooler_output", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(out)


@pytest.mark.parametrize("cls,cfg,kw", ROUND_TRIP, ids=[c[0].__name__ for c in ROUND_TRIP])
def test_round_trip_through_transformers(tmp_path, cls, cfg, kw):
    ours = tiny(cls, cfg, **kw)
    ours.save_pretrained(tmp_path / "ours")
    ref = getattr(transformers, cls.__name__).from_pretrained(tmp_path / "ours", output_loading_info=True)
    ref, info = ref
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(first(ref.eval()(x)), first(ours(x)), atol=1e-5, rtol=0)
    # and back: transformers' file loads into vitmsn with the same numbers
    ref.save_pretrained(tmp_path / "ref")
    back = cls.from_pretrained(tmp_path / "ref")
    with torch.no_grad():
        torch.testing.assert_close(first(back(x)), first(ours(x)), atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [cls.__name__]


@pytest.mark.parametrize("cls,cfg,kw", ROUND_TRIP, ids=[c[0].__name__ for c in ROUND_TRIP])
def test_load_state_dict_takes_transformers_state_dict(cls, cfg, kw):
    """Code that moves weights with load_state_dict keeps working: transformers' own state dict loads."""
    ref = make_hf(cls.__name__, cfg.__name__, **kw)
    ours = cls(cfg(**{**TINY, **kw})).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(first(ours(x)), first(ref(x)), atol=1e-5, rtol=0)
    # its own names still load as nn.Module loads them
    again = cls(cfg(**{**TINY, **kw})).eval()
    again.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(first(again(x)), first(ours(x)), atol=0, rtol=0)


def test_load_state_dict_with_transformers_names_is_strict_like_torch():
    ref = transformers.ViTMSNModel(transformers.ViTMSNConfig(**TINY))
    sd = ref.state_dict()
    extra = {**sd, "encoder.layer.0.surprise.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: 'encoder\.layer\.0\.surprise"):
        vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).load_state_dict(extra)
    result = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).load_state_dict(extra, strict=False)
    assert result.unexpected_keys == ["encoder.layer.0.surprise.weight"] and not result.missing_keys
    # a key missing (transformers 5's names here, 4.x's in test_transformers4.py): reported under ours
    fc2 = hf_fc2_weight(sd, 1)
    short = {k: v for k, v in sd.items() if k != fc2}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: 'blocks\.1\.mlp\.fc2\.weight'"):
        vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).load_state_dict(short)
    # a query without its key and value cannot become the fused projection
    lone = {k: v for k, v in sd.items() if not re.search(r"layers?\.0\.attention\.(attention\.key|k_proj)\.", k)}
    assert len(lone) == len(sd) - 2
    with pytest.raises(RuntimeError, match="siblings are missing"):
        vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).load_state_dict(lone)
    # a tensor of another shape raises whatever strict says, as in torch
    wide = {**sd, "layernorm.weight": torch.ones(33)}
    with pytest.raises(RuntimeError, match="size mismatch"):
        vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).load_state_dict(wide, strict=False)


def test_config_fields_survive(tmp_path):
    ours = tiny(vitmsn.ViTMSNForImageClassification, num_labels=2, id2label={0: "cat", 1: "dog"})
    ours.save_pretrained(tmp_path)
    ref = transformers.ViTMSNForImageClassification.from_pretrained(tmp_path)
    assert ref.config.id2label == {0: "cat", 1: "dog"}
    assert ref.config.layer_norm_eps == 1e-6
    again = vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path)
    assert again.config.id2label == {0: "cat", 1: "dog"} and again.config.label2id == {"cat": 0, "dog": 1}


def test_base_checkpoint_into_head_and_back(tmp_path, caplog):
    base = tiny(vitmsn.ViTMSNModel)
    base.save_pretrained(tmp_path / "base")
    clf = vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path / "base", num_labels=5)
    assert "classifier" in caplog.text  # newly initialised, and said so
    assert clf.config.num_labels == 5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.vit(x).last_hidden_state, base(x).last_hidden_state)
    clf.save_pretrained(tmp_path / "clf")
    base2 = vitmsn.ViTMSNModel.from_pretrained(tmp_path / "clf")  # the classifier is dropped
    with torch.no_grad():
        torch.testing.assert_close(base2(x).last_hidden_state, base(x).last_hidden_state)


def test_mixed_transformers5_layout_loads(tmp_path_factory):
    ref, path = save_hf(tmp_path_factory, "ViTMSNForImageClassification", "ViTMSNConfig")
    from safetensors.torch import load_file

    keys = load_file(path / "model.safetensors").keys()
    assert any(k.startswith("encoder.layer.") for k in keys) and any(k.startswith("vit.embeddings") for k in keys)
    ours = vitmsn.ViTMSNForImageClassification.from_pretrained(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, atol=1e-5, rtol=0)


def test_ignore_mismatched_sizes(tmp_path):
    tiny(vitmsn.ViTMSNForImageClassification, num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes"):
        vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path, num_labels=7)
    with pytest.raises(RuntimeError):  # what transformers raises: code written for it catches it too
        vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path, num_labels=7)
    m = vitmsn.ViTMSNForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert m.classifier.out_features == 7


def test_dtype_and_attn_implementation(tmp_path):
    tiny().save_pretrained(tmp_path)
    m = vitmsn.ViTMSNModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, attn_implementation="eager")
    assert m.dtype == torch.bfloat16 and m.config.attn_implementation == "eager"
    assert not m.training
    out = m(torch.randn(1, 3, 32, 32))
    assert out.last_hidden_state.dtype == torch.bfloat16


def test_num_parameters_matches_transformers(tmp_path):
    ours = tiny(vitmsn.ViTModel, vitmsn.ViTConfig)
    ours.save_pretrained(tmp_path)
    ref = transformers.ViTModel.from_pretrained(tmp_path)
    assert ours.num_parameters() == ref.num_parameters()


def test_gradient_checkpointing_same_gradients():
    m = tiny(vitmsn.ViTMSNForImageClassification).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    m(x, labels=y).loss.backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing_enable()
    assert m.is_gradient_checkpointing
    m(x, labels=y).loss.backward()
    for a, p in zip(g1, m.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


# ----------------------------------------------------------------------------------------- bad files


def test_missing_weight_file(tmp_path):
    tiny().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path / "nope")


def test_truncated_safetensors(tmp_path):
    tiny().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)


def test_shape_mismatched_checkpoint(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch for blocks\.0\.mlp\.fc1\.weight"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny().save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd.pop("encoder.layer.1.output.dense.weight")
    sd["encoder.layer.0.surprise.weight"] = torch.zeros(1)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    assert "missing keys (1): blocks.1.mlp.fc2.weight" in str(e.value)
    assert "unexpected keys (1): encoder.layer.0.surprise.weight" in str(e.value)


def test_unknown_model_type(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'bert'"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny().config.save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.cls_token": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_atomic_writes_follow_the_umask(tmp_path):
    import stat

    from vitmsn.checkpoints import atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert os.umask(0o027) == 0o027  # reading it left it as it was
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_random_bytes_are_not_called_an_unsafe_pickle(tmp_path):
    import stat

    vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).save_pretrained(tmp_path)
    mode = stat.S_IMODE((tmp_path / "config.json").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # atomic writes keep a plain file's permissions, not mkstemp's 0600
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(damaged") as e:
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    assert "run code" not in str(e.value) and "\n" not in str(e.value)
    for text in ("hello\n", "step,loss\n1,0.5\n"):  # text the weights-only unpickler fails on otherwise
        (tmp_path / "pytorch_model.bin").write_text(text)
        with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(damaged"):
            vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    # safetensors' writer sets 0600 again: the saved weights get the umask's mode too
    vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).save_pretrained(tmp_path / "again")
    assert stat.S_IMODE((tmp_path / "again" / "model.safetensors").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("error,reason", [
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 220672 vs 220560"), "the write failed"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "No space left"),
])
def test_failed_writes_are_one_oserror_and_leave_nothing(tmp_path, error, reason):
    """torch.save and safetensors report a full disk as their own errors: one OSError naming the file, and
    neither the file nor a temporary one is left (an older file at the path stays as it was)."""
    from vitmsn.checkpoints import atomic_write

    (tmp_path / "old.pt").write_text("old")

    def write(tmp):
        Path(tmp).write_text("half")
        raise error

    for name in ("new.pt", "old.pt"):
        with pytest.raises(OSError, match=f"cannot write .*{name}: {reason}"):
            atomic_write(tmp_path / name, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"] and (tmp_path / "old.pt").read_text() == "old"


def test_other_writer_errors_stay_themselves_on_a_full_disk(tmp_path, monkeypatch):
    """An error that is no failed write (an object that cannot be pickled) is not called a full disk, even
    when the disk is nearly full."""
    import threading

    from vitmsn.checkpoints import atomic_write

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(TypeError, match="cannot pickle"):
        atomic_write(tmp_path / "x.pkl", lambda tmp: pickle.dump(threading.Lock(), open(tmp, "wb")))
    assert list(tmp_path.iterdir()) == []


def test_index_file_that_is_not_an_object(tmp_path):
    vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    for text in ("[]", '{"weight_map": {"a": 1}}'):
        (tmp_path / "model.safetensors.index.json").write_text(text)
        with pytest.raises(CheckpointError, match="is not a valid index file"):
            vitmsn.ViTMSNModel.from_pretrained(tmp_path)


def test_offline_hub_id_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OSError) as e:
        vitmsn.ViTMSNModel.from_pretrained("facebook/vit-msn-small")
    assert "facebook/vit-msn-small" in str(e.value) and "local directory" in str(e.value)


def test_hub_id_from_cache(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout (what a download leaves behind)."""
    model = tiny()
    snap = tmp_path / "hub" / "models--someone--tiny-msn" / "snapshots" / ("a" * 40)
    model.save_pretrained(snap)
    (tmp_path / "hub" / "models--someone--tiny-msn" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-msn" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    loaded = vitmsn.ViTMSNModel.from_pretrained("someone/tiny-msn")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, model(x).last_hidden_state)


# -------------------------------------------------------------- from_pretrained as transformers' callers use it

HEADS = [("ViTMSNForImageClassification", "ViTMSNModel", "ViTMSNConfig", {}),
         ("ViTMSNForImageClassification", "ViTMSNModel", "ViTMSNConfig", {"num_labels": 5}),
         ("ViTForImageClassification", "ViTModel", "ViTConfig", {}),
         ("ViTForImageClassification", "ViTMSNModel", "ViTMSNConfig", {}),
         ("ViTModel", "ViTMSNModel", "ViTMSNConfig", {}),
         ("ViTForMaskedImageModeling", "ViTModel", "ViTConfig", {})]


@pytest.mark.parametrize("head,base,cfg,kw", HEADS, ids=[f"{h}<-{b}{'+' if k else ''}" for h, b, _, k in HEADS])
def test_new_head_after_a_seed_equals_transformers(tmp_path_factory, head, base, cfg, kw):
    """After torch.manual_seed, the weights a checkpoint lacks (a classifier, the pooler, the SimMIM decoder)
    are drawn as transformers draws them, so a seeded example prints what transformers prints."""
    import transformers

    _, path = save_hf(tmp_path_factory, base, cfg, init_kwargs={"add_pooling_layer": False} if base == "ViTModel"
                      else None)
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for lib in (transformers, vitmsn):
        torch.manual_seed(2)
        model = getattr(lib, head).from_pretrained(path, **kw).eval()
        with torch.no_grad():
            out = model(x)
        outs.append([out[k] for k in ("logits", "reconstruction", "pooler_output") if k in out])
    for ours, ref in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_loader_keywords_of_transformers(tmp_path_factory, tmp_path):
    import transformers

    _, path = save_hf(tmp_path_factory, "ViTMSNModel", "ViTMSNConfig")
    ours, info = vitmsn.ViTMSNForImageClassification.from_pretrained(path, output_loading_info=True)
    _, ref_info = transformers.ViTMSNForImageClassification.from_pretrained(path, output_loading_info=True)
    assert isinstance(ours, vitmsn.ViTMSNForImageClassification)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert sorted(info[key]) == sorted(ref_info[key]), key
    # keywords that change nothing here are accepted
    vitmsn.ViTMSNModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False, low_cpu_mem_usage=True,
                                       force_download=False, proxies=None, device_map="cpu")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        vitmsn.ViTMSNModel.from_pretrained(path, use_safetensors=False)  # only safetensors there
    shutil.copytree(path, tmp_path / "repo" / "sub")
    assert vitmsn.ViTMSNModel.from_pretrained(tmp_path / "repo", subfolder="sub").config.hidden_size == 32


def test_half_precision_checkpoint_dtype_auto(tmp_path):
    """save_pretrained records the weights' dtype; dtype="auto" loads in it, in both libraries."""
    import transformers

    vitmsn.ViTModel(vitmsn.ViTConfig(**TINY)).half().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float16"
    assert vitmsn.ViTModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    assert transformers.ViTModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    assert vitmsn.ViTModel.from_pretrained(tmp_path).dtype == torch.float32  # default, as transformers 4.x
    with pytest.raises(ValueError, match="not a torch dtype"):
        vitmsn.ViTModel.from_pretrained(tmp_path, dtype="float17")


def test_config_takes_keys_it_has_no_field_for(tmp_path):
    cfg = vitmsn.ViTConfig(**TINY, my_key=1, tie_word_embeddings=False, torch_dtype="float16")
    assert cfg.my_key == 1 and not cfg.tie_word_embeddings
    cfg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["my_key"] == 1
    assert vitmsn.ViTConfig.from_pretrained(tmp_path).my_key == 1
    with pytest.raises(AttributeError):
        cfg.no_such_key  # noqa: B018


def test_one_mask_for_every_image_and_attention_mask(tmp_path_factory):
    import transformers

    ref, path = save_hf(tmp_path_factory, "ViTForMaskedImageModeling", "ViTConfig", encoder_stride=8)
    ours = vitmsn.ViTForMaskedImageModeling.from_pretrained(path)
    x = torch.randn(3, 3, 32, 32)
    mask = torch.rand(1, 16) < 0.5  # (1, P): the same patches masked in every image
    with torch.no_grad():
        a, b = ours(x, bool_masked_pos=mask), ref(x, bool_masked_pos=mask)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)
    model = vitmsn.ViTModel(vitmsn.ViTConfig(**TINY)).eval()
    ones = torch.ones(3, 17)
    torch.testing.assert_close(model(x, attention_mask=ones).last_hidden_state, model(x).last_hidden_state)
    assert isinstance(transformers.ViTModel(transformers.ViTConfig(**TINY))(x, attention_mask=ones), dict)
    with pytest.raises(ValueError, match="attention_mask must be all ones"):
        model(x, attention_mask=ones.index_fill(1, torch.tensor([3]), 0))


def test_loading_info_of_a_resized_classifier_and_output_rebuilt_from_items(tmp_path_factory):
    import transformers

    _, path = save_hf(tmp_path_factory, "ViTMSNForImageClassification", "ViTMSNConfig", num_labels=3)
    kw = dict(num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    ours, info = vitmsn.ViTMSNForImageClassification.from_pretrained(path, **kw)
    _, ref = transformers.ViTMSNForImageClassification.from_pretrained(path, **kw)
    assert sorted(info["missing_keys"]) == sorted(ref["missing_keys"])
    assert sorted(k for k, *_ in info["mismatched_keys"]) == sorted(k for k, *_ in ref["mismatched_keys"])
    out = ours(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 4]))
    rebuilt = type(out)({k: v for k, v in out.items()})  # what tools mapping over dicts do
    assert rebuilt.logits is out.logits and rebuilt.loss is out.loss and list(rebuilt) == list(out)


class _FakeHub:
    """Stands in for huggingface_hub.HfApi (no network here): records the calls and the uploaded files."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def create_branch(self, repo_id, branch, exist_ok=False, repo_type=None):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, repo_type=None, revision=None, commit_message=None,
                      create_pr=False):
        import transformers

        files = sorted(p.name for p in Path(folder_path).iterdir())
        loaded = (transformers.ViTImageProcessor if files == ["preprocessor_config.json"]
                  else transformers.ViTMSNModel).from_pretrained(folder_path)  # what the Hub would serve
        self.calls.append(("upload_folder", repo_id, files, commit_message, self.token, type(loaded).__name__,
                           revision))
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub_uploads_what_transformers_loads(tmp_path, monkeypatch):
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    _FakeHub.calls = []
    model = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY))
    assert model.push_to_hub("me/tiny", commit_message="first", token="t") == "https://huggingface.co/me/tiny/commit/0"
    model.save_pretrained(tmp_path / "tiny-msn", push_to_hub=True, private=True, safe_serialization=False,
                          revision="dev")
    vitmsn.ViTImageProcessor(size=32).save_pretrained(tmp_path / "proc", push_to_hub=True, repo_id="me/proc")
    assert _FakeHub.calls == [
        ("create_repo", "me/tiny", None, True),
        ("upload_folder", "me/tiny", ["config.json", "model.safetensors"], "first", "t", "ViTMSNModel", None),
        ("create_repo", "tiny-msn", True, True),  # the Hub adds the user's namespace; the upload goes there
        ("create_branch", "me/tiny-msn", "dev"),
        ("upload_folder", "me/tiny-msn", ["config.json", "pytorch_model.bin"], "Upload with vitmsn", None,
         "ViTMSNModel", "dev"),  # what was saved locally
        ("create_repo", "me/proc", None, True),
        ("upload_folder", "me/proc", ["preprocessor_config.json"], "Upload with vitmsn", None, "ViTImageProcessor",
         None),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Hub access is disabled"):
        model.push_to_hub("me/tiny")


def test_transformers_model_conveniences(tmp_path_factory):
    import transformers

    _, path = save_hf(tmp_path_factory, "ViTMSNModel", "ViTMSNConfig")
    ours = vitmsn.ViTMSNForImageClassification.from_pretrained(path)
    ref = transformers.ViTMSNForImageClassification.from_pretrained(path)
    assert ours.name_or_path == ref.name_or_path == str(path)
    assert ours.base_model is ours.vit and ours.supports_gradient_checkpointing
    assert ours.get_memory_footprint() == ref.get_memory_footprint()
    emb = ours.get_input_embeddings()
    assert emb.proj.weight.shape == ref.get_input_embeddings().projection.weight.shape
    for p in ours.parameters():
        p.requires_grad_(False)
    ours.enable_input_require_grads()
    assert ours(torch.randn(1, 3, 32, 32)).logits.requires_grad  # through frozen weights, from the embedding
    ours.disable_input_require_grads()
    assert not ours(torch.randn(1, 3, 32, 32)).logits.requires_grad


@pytest.mark.parametrize("change,words", [
    ({"patch_size": None}, "patch_size must be an integer"),
    ({"image_size": 28.0}, "image_size must be an integer"),
    ({"image_size": "32"}, "image_size must be an integer"),  # not the pair (3, 2) of its characters
    ({"id2label": {"a": "x"}}, "id2label keys must be class indices"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers must be a positive integer"),
])
def test_bad_config_json_is_one_error_naming_the_file(tmp_path, change, words):
    model = vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY))
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CheckpointError, match=f"config.json of {tmp_path}: {words}"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"config.json of {tmp_path}: {words}"):
        vitmsn.ViTMSNConfig.from_pretrained(tmp_path)


def test_pickle_that_is_no_state_dict_or_empty(tmp_path):
    vitmsn.ViTMSNModel(vitmsn.ViTMSNConfig(**TINY)).save_pretrained(tmp_path, safe_serialization=False)
    torch.save([torch.zeros(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a dict of tensors"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        vitmsn.ViTMSNModel.from_pretrained(tmp_path)


def test_checkpoint_replaced_while_read_is_read_again(tmp_path, monkeypatch):
    """A run's latest.pt replaced (atomically) while another process reads it, as a polling reader meets it:
    the read that failed on the mix of the two files is done again, on the new one."""
    from vitmsn import checkpoints
    from vitmsn.training import load_checkpoint, save_checkpoint

    path = tmp_path / "latest.pt"
    save_checkpoint({"step": 1, "w": torch.zeros(3)}, path)
    real_load, calls = torch.load, []

    def load_while_replaced(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            save_checkpoint({"step": 2, "w": torch.ones(3)}, path)  # the writer's os.replace, mid-read
            raise RuntimeError("file is smaller than the required mapping size")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", load_while_replaced)
    assert load_checkpoint(path)["step"] == 2 and len(calls) == 2
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint \\(bad\\)"):
        load_checkpoint(path)  # damaged, not replaced: one read, one error
