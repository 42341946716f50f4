"""Conversions: original MSN checkpoints -> transformers-format directories, timm <-> vitmsn, ONNX export.

The original checkpoints are built here, in code, in the layout the original training code saves: a dict
with ``encoder`` / ``target_encoder`` state dicts (the projection head under ``fc.``; ``module.`` prefixed when
trained with DDP), ``prototypes`` (K, d), ``opt``, ``epoch`` and a few numbers.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import vitmsn
from vitmsn.checkpoints import CheckpointError
from vitmsn.config import ViTMSNConfig
from vitmsn.convert import (
    MSN_ARCHS,
    config_from_state_dict,
    convert_msn_checkpoint,
    export_onnx,
    from_timm,
    load_msn_head,
    parse_arch,
    timm_create_args,
    to_timm,
)
from vitmsn.models.heads import ProjectionHead
from vitmsn.models.vit import VisionTransformer

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
    num_channels=3,
    layer_norm_eps=1e-6,
)
HEAD = dict(hidden_dim=48, output_dim=16, num_prototypes=10)


def _perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * scale)


def _encoder_state(use_bn: bool = True) -> dict[str, torch.Tensor]:
    """An original-layout encoder state dict: backbone keys + the projection head under ``fc.``."""
    backbone = VisionTransformer(ViTMSNConfig(**SMALL))
    backbone.init_backbone_weights(zero_embeddings=False)
    head = ProjectionHead(SMALL["hidden_size"], HEAD["hidden_dim"], HEAD["output_dim"], use_bn=use_bn)
    _perturb(backbone)
    _perturb(head)
    if use_bn:
        with torch.no_grad():
            for bn in (head.fc.bn1, head.fc.bn2):
                bn.running_var.uniform_(0.5, 2.0)
                bn.num_batches_tracked.fill_(7)
    return {**backbone.state_dict(), **head.state_dict()}  # the head's keys are fc.fc1.weight, ... already


def make_msn_checkpoint(path, *, ddp: bool = True, use_bn: bool = True) -> dict:
    """Write an original-layout training checkpoint with torch.save; returns the dict."""
    prefix = "module." if ddp else ""
    encoder, target = _encoder_state(use_bn), _encoder_state(use_bn)
    ckpt = {
        "encoder": {prefix + k: v for k, v in encoder.items()},
        "target_encoder": {prefix + k: v for k, v in target.items()},
        "prototypes": torch.randn(HEAD["num_prototypes"], HEAD["output_dim"]),  # (K, d)
        "opt": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
            "param_groups": [{"lr": 1e-3, "weight_decay": 0.04, "params": [0]}],
        },
        "epoch": 3,
        "loss": 1.25,
        "batch_size": 8,
        "world_size": 2 if ddp else 1,
        "lr": 1e-3,
        "temperature": 0.1,
    }
    torch.save(ckpt, path)
    return ckpt


def reference_tokens(
    encoder_sd: dict[str, torch.Tensor], x: torch.Tensor, interpolate: bool = False
) -> torch.Tensor:
    """The original-layout weights run through our backbone: tokens (B, 1 + P, D) after the final norm."""
    sd = {
        k.removeprefix("module."): v
        for k, v in encoder_sd.items()
        if not k.removeprefix("module.").startswith("fc.")
    }
    vit = VisionTransformer(ViTMSNConfig(**SMALL)).eval()
    vit.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return vit.forward_features(x, interpolate_pos_encoding=interpolate).tokens


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


# --------------------------------------------------------------------------------- MSN checkpoints


@pytest.mark.parametrize("ddp", [True, False], ids=["ddp", "plain"])
@pytest.mark.parametrize("key", ["target_encoder", "encoder"])
def test_convert_loads_in_vitmsn_and_transformers(tmp_path, transformers, ddp, key):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar", ddp=ddp)
    out = convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", key=key, num_attention_heads=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    x = torch.randn(2, 3, 32, 32)
    ref = reference_tokens(ckpt[key], x)
    other = reference_tokens(ckpt["encoder" if key == "target_encoder" else "target_encoder"], x)
    assert not torch.allclose(ref, other, atol=1e-3)  # the two encoders differ: the right one was taken

    ours = vitmsn.ViTMSNModel.from_pretrained(out)
    assert ours.config.layer_norm_eps == 1e-6 and ours.config.intermediate_size == 128
    hf = transformers.ViTMSNModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, ref, atol=1e-5, rtol=0)


def test_bare_encoder_state_dict(tmp_path):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    torch.save(ckpt["encoder"], tmp_path / "bare.pth")
    out = convert_msn_checkpoint(tmp_path / "bare.pth", tmp_path / "out", num_attention_heads=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            vitmsn.ViTMSNModel.from_pretrained(out)(x).last_hidden_state,
            reference_tokens(ckpt["encoder"], x),
            atol=1e-5,
            rtol=0,
        )


def test_preprocessor_config(tmp_path):
    make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", num_attention_heads=2)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "ViTImageProcessor"
    assert pre["do_resize"] and pre["do_rescale"] and pre["do_normalize"]
    assert pre["size"] == {"height": 32, "width": 32} and pre["resample"] == 2
    assert pre["rescale_factor"] == pytest.approx(1 / 255)
    assert pre["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert pre["image_std"] == pytest.approx([0.229, 0.224, 0.225])


def test_image_size_resizes_position_embeddings(tmp_path):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = convert_msn_checkpoint(
        tmp_path / "ckpt.pth.tar", tmp_path / "out", image_size=48, num_attention_heads=2
    )
    model = vitmsn.ViTMSNModel.from_pretrained(out)
    assert model.config.image_size == 48 and model.pos_embed.shape == (1, 1 + 36, 32)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x).last_hidden_state, reference_tokens(ckpt["target_encoder"], x, True), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("use_bn", [True, False], ids=["bn", "no-bn"])
def test_keep_head_round_trip(tmp_path, use_bn):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar", use_bn=use_bn)
    out = convert_msn_checkpoint(
        tmp_path / "ckpt.pth.tar", tmp_path / "out", keep_head=True, num_attention_heads=2
    )
    meta = json.loads((out / "msn_head.json").read_text())
    assert meta == {**HEAD, "use_bn": use_bn}
    from safetensors.torch import load_file

    stored = load_file(out / "msn_head.safetensors")
    original = {k.removeprefix("module."): v for k, v in ckpt["target_encoder"].items()}
    assert set(stored) == {"prototypes"} | {"head." + k for k in original if k.startswith("fc.")}
    head, prototypes = load_msn_head(out)
    torch.testing.assert_close(prototypes, ckpt["prototypes"], atol=0, rtol=0)
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, original[k], atol=0, rtol=0)
    assert head.fc.bn1.num_batches_tracked.item() == 7 if use_bn else not hasattr(head.fc, "bn1")


def test_converting_again_replaces_only_with_overwrite(tmp_path):
    """A second conversion into the same folder is refused, or with overwrite leaves no stale head behind."""
    make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", keep_head=True, num_attention_heads=2)
    with pytest.raises(FileExistsError, match="not empty"):
        convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", out, num_attention_heads=2)
    (out / "processor_config.json").write_text('{"image_processor": {"size": {"height": 8, "width": 8}}}')
    convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", out, num_attention_heads=2, overwrite=True)
    assert not (out / "msn_head.safetensors").exists() and not (out / "msn_head.json").exists()
    assert not (out / "processor_config.json").exists()  # it would be read before the new preprocessor_config
    assert vitmsn.ViTMSNModel.from_pretrained(out).config.hidden_size == 32


def test_pretrain_init_takes_the_kept_head(tmp_path):
    """``vitmsn pretrain --init DIR`` starts from the converted encoder, head and prototypes."""
    from vitmsn.msn.config import PretrainConfig
    from vitmsn.msn.train import build_state

    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = convert_msn_checkpoint(
        tmp_path / "ckpt.pth.tar", tmp_path / "out", keep_head=True, num_attention_heads=2
    )
    cfg = PretrainConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        patch_size=8,
        rand_size=32,
        focal_size=16,
        head_hidden_dim=HEAD["hidden_dim"],
        head_output_dim=HEAD["output_dim"],
        num_prototypes=HEAD["num_prototypes"],
    )
    state = build_state(cfg, torch.device("cpu"), init=str(out))
    original = {k.removeprefix("module."): v for k, v in ckpt["target_encoder"].items()}
    for k, v in state.online.head.state_dict().items():
        torch.testing.assert_close(v, original[k], atol=0, rtol=0)
    for k, v in state.online.encoder.state_dict().items():
        torch.testing.assert_close(v, original[k], atol=0, rtol=0)
    torch.testing.assert_close(state.prototypes.weight.detach(), ckpt["prototypes"], atol=0, rtol=0)


def test_keep_head_needs_prototypes(tmp_path):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    del ckpt["prototypes"]
    torch.save(ckpt, tmp_path / "noproto.pth.tar")
    with pytest.raises(CheckpointError, match="no prototypes"):
        convert_msn_checkpoint(
            tmp_path / "noproto.pth.tar", tmp_path / "out", keep_head=True, num_attention_heads=2
        )
    assert not (tmp_path / "out").exists()
    convert_msn_checkpoint(
        tmp_path / "noproto.pth.tar", tmp_path / "out", num_attention_heads=2
    )  # without: fine


def _break(tmp_path, change) -> str:
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar", ddp=True)
    change(ckpt["target_encoder"])
    torch.save(ckpt, tmp_path / "bad.pth.tar")
    with pytest.raises(CheckpointError) as e:
        convert_msn_checkpoint(tmp_path / "bad.pth.tar", tmp_path / "out", num_attention_heads=2)
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_missing_key_is_named(tmp_path):
    msg = _break(tmp_path, lambda sd: sd.pop("module.blocks.1.mlp.fc2.bias"))
    assert "missing" in msg and "blocks.1.mlp.fc2.bias" in msg


def test_unexpected_key_is_named(tmp_path):
    msg = _break(tmp_path, lambda sd: sd.update({"module.blocks.0.attn.scaling_bias": torch.zeros(3)}))
    assert "unexpected" in msg and "blocks.0.attn.scaling_bias" in msg


def test_wrong_shape_is_named(tmp_path):
    msg = _break(tmp_path, lambda sd: sd.update({"module.blocks.1.attn.proj.weight": torch.zeros(32, 31)}))
    assert "shape mismatch for blocks.1.attn.proj.weight" in msg and "(32, 31)" in msg


def test_missing_encoder_entry_lists_the_keys(tmp_path):
    ckpt = make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    ckpt["target_encoder"] = None  # as the original code saves when it has no target encoder
    torch.save(ckpt, tmp_path / "none.pth.tar")
    with pytest.raises(CheckpointError, match="try key='encoder'"):
        convert_msn_checkpoint(tmp_path / "none.pth.tar", tmp_path / "out", num_attention_heads=2)
    with pytest.raises(CheckpointError, match="top-level keys are: encoder"):
        convert_msn_checkpoint(
            tmp_path / "none.pth.tar", tmp_path / "out", key="online", num_attention_heads=2
        )


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth.tar", "wb") as f:
        pickle.dump({"target_encoder": {"cls_token": _Evil()}, "epoch": 1}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        convert_msn_checkpoint(tmp_path / "evil.pth.tar", tmp_path / "out")
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- architectures


def _vit_shapes(D: int, depth: int, p: int, image: int = 224, C: int = 3) -> dict[str, torch.Tensor]:
    """The state-dict shapes of an original-code ViT, as meta tensors (no memory, never run)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 1 + (image // p) ** 2, D),
        "patch_embed.proj.weight": (D, C, p, p),
        "patch_embed.proj.bias": (D,),
        "norm.weight": (D,),
        "norm.bias": (D,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (D,),
                b + "norm1.bias": (D,),
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.qkv.bias": (3 * D,),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "norm2.weight": (D,),
                b + "norm2.bias": (D,),
                b + "mlp.fc1.weight": (4 * D, D),
                b + "mlp.fc1.bias": (4 * D,),
                b + "mlp.fc2.weight": (D, 4 * D),
                b + "mlp.fc2.bias": (D,),
            }
        )
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize(
    "name, D, depth, heads, p",
    [
        ("vit-small/16", 384, 12, 6, 16),
        ("vit-base/16", 768, 12, 12, 16),
        ("vit-large/16", 1024, 24, 16, 16),
        ("vit-base/4", 768, 12, 12, 4),
        ("vit-large/7", 1024, 24, 16, 7),
    ],
)
def test_arch_table_maps_the_released_archs(name, D, depth, heads, p):
    assert name in MSN_ARCHS
    sd = _vit_shapes(D, depth, p, image=224 // p * p)
    for arch in (None, name):
        c = config_from_state_dict(sd, arch=arch)
        assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.patch_size) == (
            D,
            depth,
            heads,
            p,
        )
        assert c.intermediate_size == 4 * D and c.layer_norm_eps == 1e-6 and c.image_size == 224 // p * p
        assert c.num_channels == 3 and c.qkv_bias and isinstance(c, ViTMSNConfig)
    assert parse_arch(name) == (name, D, depth, heads, p)


def test_arch_names():
    assert parse_arch("vit_base_patch4").name == "vit-base/4"
    assert parse_arch("vit_large_patch7_224").name == "vit-large/7"
    assert parse_arch("deit_small").name == "vit-small/16"
    assert parse_arch("deit_large_p7").name == "vit-large/7"
    assert parse_arch("ViT-Small/16").name == "vit-small/16"
    with pytest.raises(ValueError, match="unknown architecture"):
        parse_arch("resnet50")
    sd = _vit_shapes(384, 12, 16)
    with pytest.raises(CheckpointError, match="not a vit-base/16"):
        config_from_state_dict(sd, arch="vit-base/16")


def test_arch_inference_tiny_shapes():
    sd = {k.removeprefix("module."): v for k, v in _encoder_state().items() if not k.startswith("fc.")}
    c = config_from_state_dict(sd, num_attention_heads=2)
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.patch_size, c.image_size) == (
        32,
        2,
        128,
        8,
        32,
    )
    with pytest.raises(CheckpointError, match="num_attention_heads"):  # 32 is no known size: heads unknowable
        config_from_state_dict(sd)
    with pytest.raises(CheckpointError, match="not a square grid"):
        config_from_state_dict(
            {**sd, "pos_embed": torch.empty(1, 1 + 15, 32, device="meta")}, num_attention_heads=2
        )


# ---------------------------------------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def test_timm_parity_and_back(timm):
    ref = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=4
    ).eval()
    _perturb(ref, 0.02)
    x = torch.randn(2, 3, 64, 64)
    for source in (ref, ref.state_dict()):  # a timm model or its state dict (heads from the table: 192 -> 3)
        model = vitmsn.ViTMSNModel.from_timm(source)
        assert isinstance(model, vitmsn.ViTMSNModel)
        c = model.config
        assert (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.image_size,
            c.layer_norm_eps,
        ) == (192, 4, 3, 64, 1e-6)
        with torch.no_grad():
            torch.testing.assert_close(model(x).last_hidden_state, ref.forward_features(x), atol=1e-5, rtol=0)
    name, kwargs = timm_create_args(model)
    assert name == "vit_tiny_patch16_224" and kwargs["num_classes"] == 0
    back = timm.create_model(name, pretrained=False, **kwargs).eval()
    back.load_state_dict(vitmsn.to_timm(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x), ref.forward_features(x), atol=0, rtol=0)


def test_timm_classifier(timm):
    ref = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2
    ).eval()
    _perturb(ref, 0.02)
    model = vitmsn.ViTForImageClassification.from_timm(ref)
    assert model.config.num_labels == 5 and model.config.layer_norm_eps == 1e-6
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x), atol=1e-5, rtol=0)
    sd = to_timm(model)
    assert sd["head.weight"].shape == (5, 192)
    name, kwargs = timm_create_args(model)
    assert kwargs["num_classes"] == 5
    back = timm.create_model(name, pretrained=False, **kwargs).eval()
    back.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref(x), atol=0, rtol=0)
    bare = from_timm(sd)  # a bare encoder drops the head
    assert type(bare) is vitmsn.ViTMSNModel


def test_timm_unsupported_keys_are_named():
    sd = {k.removeprefix("module."): v for k, v in _encoder_state().items() if not k.startswith("fc.")}
    sd["fc_norm.weight"] = torch.ones(32)
    with pytest.raises(CheckpointError, match="fc_norm.weight"):
        from_timm(sd, num_attention_heads=2)


# ---------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _run(ort, path, x: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(y) for y in session.run(None, {"pixel_values": x.numpy()})]


def test_onnx_export_from_directory(tmp_path, ort):
    make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = convert_msn_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "model", num_attention_heads=2)
    path = export_onnx(
        out, tmp_path / "model.onnx"
    )  # "auto": the dynamo exporter, as onnxscript is installed
    model = vitmsn.ViTMSNModel.from_pretrained(out)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        (tokens,) = _run(ort, path, x)
        with torch.no_grad():
            torch.testing.assert_close(tokens, model(x).last_hidden_state, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls", ["ViTModel", "ViTMSNForImageClassification"])
def test_onnx_torchscript_exporter(tmp_path, ort, cls):
    config = (vitmsn.ViTConfig if cls == "ViTModel" else ViTMSNConfig)(**SMALL, num_labels=4)
    model = getattr(vitmsn, cls)(config).eval()
    _perturb(model)
    path = export_onnx(model, tmp_path / "m.onnx", exporter="torchscript")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(x)
        got = _run(ort, path, x)
        if cls == "ViTModel":
            torch.testing.assert_close(got[0], want.last_hidden_state, atol=1e-4, rtol=0)
            torch.testing.assert_close(got[1], want.pooler_output, atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(got[0], want.logits, atol=1e-4, rtol=0)


def test_onnx_at_another_image_size(tmp_path, ort):
    model = vitmsn.ViTMSNModel(ViTMSNConfig(**SMALL)).eval()
    _perturb(model)
    path = export_onnx(
        model, tmp_path / "m.onnx", image_size=48, exporter="dynamo"
    )  # no TorchScript fallback
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = model(x, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(_run(ort, path, x)[0], want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli(tmp_path, ort, capsys):
    from vitmsn.cli import main

    make_msn_checkpoint(tmp_path / "ckpt.pth.tar")
    out = tmp_path / "model"
    assert (
        main(
            [
                "convert",
                "msn",
                str(tmp_path / "ckpt.pth.tar"),
                str(out),
                "--key",
                "encoder",
                "--keep-head",
                "--num-heads",
                "2",
            ]
        )
        == 0
    )
    assert (out / "msn_head.safetensors").is_file()
    assert (
        main(
            [
                "export-onnx",
                "--model",
                str(out),
                "--out",
                str(tmp_path / "m.onnx"),
                "--exporter",
                "torchscript",
            ]
        )
        == 0
    )
    assert (tmp_path / "m.onnx").is_file()
    assert (
        main(["convert", "msn", str(tmp_path / "ckpt.pth.tar"), str(tmp_path / "x"), "--arch", "vit-base/16"])
        == 2
    )
    assert "not a vit-base/16" in capsys.readouterr().err


def test_onnx_auto_falls_back_to_torchscript(tmp_path, ort, monkeypatch, caplog):
    import vitmsn.convert as convert

    def fail(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this model")

    monkeypatch.setattr(convert, "_export_dynamo", fail)
    model = vitmsn.ViTMSNModel(ViTMSNConfig(**SMALL)).eval()
    with caplog.at_level("WARNING", logger="vitmsn"):
        path = export_onnx(model, tmp_path / "m.onnx")
    assert "using the TorchScript exporter" in caplog.text and "cannot trace" in caplog.text
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_run(ort, path, x)[0], model(x).last_hidden_state, atol=1e-4, rtol=0)
    with pytest.raises(RuntimeError, match="cannot trace"):
        export_onnx(model, tmp_path / "d.onnx", exporter="dynamo")


def test_failed_onnx_export_leaves_nothing(tmp_path, ort, monkeypatch):
    """An export that fails half-way (here a full disk) leaves neither a partial file nor its staging folder,
    keeps an older file as it was, and a second try needs no --overwrite."""
    import errno

    import vitmsn.convert as convert

    def half_written(wrapper, example, out_path, *args):
        Path(out_path).write_bytes(b"\x08\x07partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    model = vitmsn.ViTMSNModel(ViTMSNConfig(**SMALL)).eval()
    (tmp_path / "old.onnx").write_bytes(b"older")
    for exporter in ("dynamo", "torchscript"):
        monkeypatch.setattr(convert, f"_export_{exporter}", half_written)
    for name in ("new.onnx", "old.onnx"):
        with pytest.raises(OSError, match=f"cannot write .*{name}: No space left on device"):
            export_onnx(model, tmp_path / name, exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]
    assert (tmp_path / "old.onnx").read_bytes() == b"older"
    monkeypatch.undo()
    from vitmsn.cli import main

    model.save_pretrained(tmp_path / "m")
    assert main(["export-onnx", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "new.onnx"),
                 "--exporter", "torchscript"]) == 0
    assert _run(ort, tmp_path / "new.onnx", torch.randn(1, 3, 32, 32))[0].shape == (1, 17, 32)
    # through a symlink: the file it points to is written, the link stays
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "real.onnx").write_bytes(b"older")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "elsewhere" / "real.onnx")
    export_onnx(model, tmp_path / "link.onnx", exporter="torchscript")
    assert (tmp_path / "link.onnx").is_symlink()
    assert _run(ort, tmp_path / "elsewhere" / "real.onnx", torch.randn(1, 3, 32, 32))[0].shape == (1, 17, 32)


def test_onnx_opset_below_17(tmp_path, ort):
    import onnx

    model = vitmsn.ViTMSNModel(ViTMSNConfig(**SMALL)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", opset=14)  # "auto" takes the TorchScript exporter here
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 14
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_run(ort, path, x)[0], model(x).last_hidden_state, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="opset 17 and above"):
        export_onnx(model, tmp_path / "d.onnx", opset=14, exporter="dynamo")


def test_onnx_refuses_bad_opset_and_image_size(tmp_path, capsys):
    from vitmsn.cli import main
    from vitmsn.convert import onnx_opset_range

    model = vitmsn.ViTMSNModel(ViTMSNConfig(**SMALL)).eval()
    lo, hi = onnx_opset_range("auto")
    assert lo == 14 and hi >= 17
    assert onnx_opset_range("torchscript")[1] <= 20 and onnx_opset_range("dynamo")[0] == 17
    for opset in (5, lo - 1, hi + 1):
        with pytest.raises(ValueError, match=f"opset {opset} is not one .* choose {lo} to {hi}"):
            export_onnx(model, tmp_path / "m.onnx", opset=opset)
    ts_max = onnx_opset_range("torchscript")[1]
    with pytest.raises(ValueError, match=f"choose 14 to {ts_max}"):
        export_onnx(model, tmp_path / "m.onnx", opset=ts_max + 1, exporter="torchscript")
    patch = SMALL["patch_size"]
    with pytest.raises(ValueError, match=f"must be divisible by patch_size {patch}"):
        export_onnx(model, tmp_path / "m.onnx", image_size=2 * patch + 1)
    assert not (tmp_path / "m.onnx").exists()
    # the command line: one line, and an existing file is left as it was
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "old.onnx").write_bytes(b"the user's model")
    for extra, needle in ((["--opset", "5", "--overwrite"], "opset 5"),
                          (["--image-size", str(2 * patch + 1), "--overwrite"], "divisible"),
                          ([], "exists: pass --overwrite")):
        assert main(["export-onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "old.onnx"),
                     *extra]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert (tmp_path / "old.onnx").read_bytes() == b"the user's model"


def test_a_vitmsn_run_checkpoint_is_pointed_to_export(tmp_path):
    from vitmsn.checkpoints import CheckpointError
    from vitmsn.convert import read_msn_checkpoint

    torch.save({"step": 3, "online": {}, "target": {}, "prototypes": torch.zeros(4, 8), "config": {}},
               tmp_path / "latest.pt")
    with pytest.raises(CheckpointError, match="vitmsn pretraining checkpoint.*vitmsn export RUN OUT"):
        read_msn_checkpoint(tmp_path / "latest.pt")
