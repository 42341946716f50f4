"""Conversions: original MSN training checkpoints, timm ViTs and ONNX.

- :func:`convert_msn_checkpoint` reads a checkpoint written by the original MSN training code (a dict with
  ``target_encoder`` / ``encoder`` state dicts, ``prototypes``, ``opt``, ``epoch``, ...) and writes a
  transformers-format ViT-MSN directory; with ``keep_head=True`` also the projection head and prototypes
  (``msn_head.safetensors`` + ``msn_head.json``), which :func:`load_msn_head` reads back for
  ``vitmsn pretrain --init DIR``.
- :func:`to_timm` / :func:`from_timm` move weights between vitmsn and timm's ``VisionTransformer``. The
  parameter names are the same on both sides (and in the original MSN code); only the classifier is called
  ``head`` in timm and ``classifier`` here.
- :func:`export_onnx` writes the bare encoder (or a classifier) as an ONNX graph with a dynamic batch axis.

The architecture of a state dict is read from its tensor shapes (:func:`config_from_state_dict`); the number
of attention heads is the one thing shapes do not tell, so it comes from the table of known sizes
(:data:`ARCH_SIZES`) or from the caller. Key maps and strict loading are those of :mod:`vitmsn.checkpoints`.

Shapes: D hidden size, L layers, C channels, p patch size, P patches, K prototypes, d prototype size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from vitmsn.checkpoints import (
    CheckpointError,
    atomic_write,
    atomic_write_text,
    load_config_dict,
    load_pickle,
    load_state_dict_into,
    model_state_dict,
    prepare_model_dir,
)
from vitmsn.config import ViTConfig, ViTMSNConfig, check_tiling, pair
from vitmsn.models.heads import ProjectionHead

if TYPE_CHECKING:
    from vitmsn.models.hf import PreTrainedModel

logger = logging.getLogger("vitmsn")

# ------------------------------------------------------------------------------------------ architectures

#: ViT sizes of the original MSN code (and timm): name -> (hidden size, layers, attention heads).
ARCH_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
#: The architectures of the released MSN checkpoints.
MSN_ARCHS: tuple[str, ...] = ("vit-small/16", "vit-base/16", "vit-large/16", "vit-base/4", "vit-large/7")
# hidden size -> heads, for reading an architecture from shapes (every known size has 64-wide heads but huge)
_HEADS_BY_HIDDEN: dict[int, int] = {d: h for d, _, h in ARCH_SIZES.values()}
_ARCH_RE = re.compile(
    r"^(?:vit|deit)[-_/ ]?(tiny|small|base|large|huge)(?:[-_/ ]*(?:patch|p)?(\d+))?(?:[-_](\d+))?$"
)


class Arch(NamedTuple):
    """A named ViT architecture: ``vit-base/4`` is Arch("vit-base/4", 768, 12, 12, 4)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int


def parse_arch(name: str) -> Arch:
    """``"vit-small/16"``, ``"vit_base_patch4"``, ``"vit_large_patch7_224"``, ``"deit_base_p4"``, ``"deit_small"``
    (patch 16) -> :class:`Arch`. A trailing image size (``_224``) is ignored: it is read from the weights."""
    m = _ARCH_RE.match(name.strip().lower())
    if m is None:
        raise ValueError(
            f"unknown architecture {name!r}: expected vit-SIZE/PATCH with SIZE one of {', '.join(ARCH_SIZES)} "
            f"(e.g. {', '.join(MSN_ARCHS)}; timm-style vit_base_patch4 also works)"
        )
    size, patch = m.group(1), int(m.group(2) or 16)
    if patch <= 0:
        raise ValueError(f"architecture {name!r} has patch size 0")
    return Arch(f"vit-{size}/{patch}", *ARCH_SIZES[size], patch)


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def config_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    arch: str | None = None,
    num_attention_heads: int | None = None,
    layer_norm_eps: float = 1e-6,
    config_class: type[ViTConfig] = ViTMSNConfig,
    **config_kwargs: Any,
) -> ViTConfig:
    """The configuration of a backbone state dict in our (= timm's = original MSN) names, from shapes alone.

    Hidden size from ``cls_token`` (1, 1, D), channels and patch size from ``patch_embed.proj.weight``
    (D, C, p, p), depth from the ``blocks.N`` indices, MLP size from ``blocks.0.mlp.fc1.weight`` (4D, D), image
    size from the square grid of ``pos_embed`` (1, 1 + P, D) times the patch size. Heads: ``num_attention_heads``,
    else ``arch``'s, else the known size with this hidden size (384 -> 6, 768 -> 12, 1024 -> 16, ...).
    Tensors may live on the meta device. ``arch`` must agree with the shapes.
    """
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    if missing := [k for k in need if k not in state_dict]:
        raise CheckpointError(
            f"not a ViT state dict: missing {', '.join(missing)} "
            f"(it has {', '.join(list(state_dict)[:8])}{' ...' if len(state_dict) > 8 else ''})"
        )
    D = _shape(state_dict, "cls_token")[-1]
    pw_shape = _shape(state_dict, "patch_embed.proj.weight")  # (D, C, ph, pw)
    if len(pw_shape) != 4 or pw_shape[0] != D:
        raise CheckpointError(f"patch_embed.proj.weight has shape {pw_shape}, expected ({D}, C, p, p)")
    C, ph, pw = pw_shape[1], pw_shape[2], pw_shape[3]
    patch: int | tuple[int, int] = ph if ph == pw else (ph, pw)
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("not a ViT state dict: no blocks.N.* tensors")
    depth = max(layers) + 1
    fc1 = "blocks.0.mlp.fc1.weight"
    intermediate = _shape(state_dict, fc1)[0] if fc1 in state_dict else 4 * D
    n_pos = _shape(state_dict, "pos_embed")[1] - 1  # (1, 1 + P, D): one position for the CLS token
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        hint = (
            " (timm's no_embed_class models keep no CLS position; they are not supported)"
            if math.isqrt(n_pos + 1) ** 2 == n_pos + 1
            else ""
        )
        raise CheckpointError(f"pos_embed holds {n_pos} patch positions, not a square grid{hint}")
    image_size = side * ph if ph == pw else (side * ph, side * pw)
    heads = num_attention_heads
    if arch is not None:
        a = parse_arch(arch)
        got, want = (D, depth, ph), (a.hidden_size, a.num_hidden_layers, a.patch_size)
        if got != want or ph != pw:
            raise CheckpointError(
                f"the weights are not a {a.name}: hidden size {D}, {depth} layers, patch {patch} "
                f"(a {a.name} has hidden size {a.hidden_size}, {a.num_hidden_layers} layers, patch {a.patch_size})"
            )
        heads = heads or a.num_attention_heads
    if heads is None:
        heads = _HEADS_BY_HIDDEN.get(D)
        if heads is None:
            raise CheckpointError(
                f"hidden size {D} is not a known ViT size ({', '.join(f'{k} {v[0]}' for k, v in ARCH_SIZES.items())}); "
                "pass the number of attention heads (num_attention_heads=..., --num-heads)"
            )
    kwargs: dict[str, Any] = dict(
        hidden_size=D,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        image_size=image_size,
        patch_size=patch,
        num_channels=C,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=layer_norm_eps,
        hidden_act="gelu",
    )
    if "encoder_stride" in config_class.__dataclass_fields__:
        kwargs["encoder_stride"] = ph
    try:
        return config_class(**{**kwargs, **config_kwargs})
    except ValueError as e:
        raise CheckpointError(f"the weights give an impossible configuration: {e}") from None


# -------------------------------------------------------------------------------- original MSN checkpoints

MSN_HEAD_WEIGHTS = "msn_head.safetensors"
MSN_HEAD_CONFIG = "msn_head.json"
_HEAD_PREFIX = "fc."  # the projection head's keys in the original encoder state dict


def _strip_module(sd: dict[str, Any]) -> dict[str, Any]:
    """Drop DDP's ``module.`` prefix (one or nested) from every key."""
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_msn_checkpoint(
    checkpoint_path: str | os.PathLike, key: str = "target_encoder"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """An original MSN checkpoint -> (backbone state dict, projection head state dict, prototypes (K, d) or None).

    The file is read with ``torch.load(weights_only=True)``: a pickle that needs to run code is refused.
    ``module.`` prefixes are removed; the head's keys lose their ``fc.`` prefix (``fc1.weight``, ``bn1.*``, ...).
    A bare encoder state dict (no ``target_encoder`` / ``encoder`` level) is accepted too.
    """
    ckpt = load_pickle(checkpoint_path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{checkpoint_path} holds a {type(ckpt).__name__}, not an MSN checkpoint dict")
    if key in ckpt:
        sd = ckpt[key]
        if not _is_state_dict(sd):
            alt = [k for k in ("target_encoder", "encoder") if k != key and _is_state_dict(ckpt.get(k))]
            raise CheckpointError(
                f"{checkpoint_path}: {key!r} is {'empty' if not sd else type(sd).__name__}, "
                f"not a state dict" + (f"; try key={alt[0]!r}" if alt else "")
            )
        prototypes = ckpt.get("prototypes")
    elif _is_state_dict(ckpt) and any(k.removeprefix("module.") == "cls_token" for k in ckpt):
        logger.info("%s is a bare encoder state dict (no %r entry)", checkpoint_path, key)
        sd, prototypes = ckpt, None
    elif {"online", "target", "step", "config"} <= set(ckpt):
        raise CheckpointError(
            f"{checkpoint_path} is a vitmsn pretraining checkpoint, not an original MSN one: export its run "
            "with `vitmsn export RUN OUT` (vitmsn.msn.train.export_encoder)"
        )
    else:
        raise CheckpointError(
            f"{checkpoint_path} has no {key!r} entry; its top-level keys are: {', '.join(map(str, ckpt))}"
        )
    if prototypes is not None and not (isinstance(prototypes, torch.Tensor) and prototypes.ndim == 2):
        raise CheckpointError(
            f"{checkpoint_path}: 'prototypes' must be a (K, d) tensor, got {type(prototypes).__name__}"
            + (f" of shape {tuple(prototypes.shape)}" if isinstance(prototypes, torch.Tensor) else "")
        )
    sd = _strip_module(sd)
    backbone = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIX)}
    head = {k[len(_HEAD_PREFIX) :]: v for k, v in sd.items() if k.startswith(_HEAD_PREFIX)}
    return backbone, head, prototypes


def _projection_head(head_sd: dict[str, torch.Tensor], source: str) -> ProjectionHead:
    """The projection head of a state dict with ``fc1.*``, ``bn1.*``, ... keys, loaded strictly."""
    if "fc1.weight" not in head_sd or "fc3.weight" not in head_sd:
        raise CheckpointError(
            f"{source} has no projection head (fc.fc1.* ... fc.fc3.*)"
            + (f"; it has {', '.join(sorted(head_sd))}" if head_sd else "")
        )
    hidden_dim, in_dim = head_sd["fc1.weight"].shape  # (hidden, D)
    out_dim = head_sd["fc3.weight"].shape[0]  # (out, hidden)
    head = ProjectionHead(in_dim, hidden_dim, out_dim, use_bn="bn1.weight" in head_sd)
    expected = head.fc.state_dict()
    missing = sorted(set(expected) - set(head_sd))
    unexpected = sorted(set(head_sd) - set(expected))
    mismatched = [
        f"fc.{k}: checkpoint {tuple(head_sd[k].shape)}, head {tuple(v.shape)}"
        for k, v in expected.items()
        if k in head_sd and head_sd[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        lines = [
            f"{source}: the projection head does not fit ProjectionHead({in_dim}, {hidden_dim}, {out_dim}):"
        ]
        if missing:
            lines.append(f"  missing keys: {', '.join('fc.' + k for k in missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {', '.join('fc.' + k for k in unexpected)}")
        lines += [f"  shape mismatch for {m}" for m in mismatched]
        raise CheckpointError("\n".join(lines))
    head.fc.load_state_dict(head_sd, strict=True)
    return head


def save_msn_head(directory: str | os.PathLike, head: ProjectionHead, prototypes: torch.Tensor) -> Path:
    """Write ``msn_head.safetensors`` (``head.fc.*`` and ``prototypes`` (K, d)) and ``msn_head.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors["prototypes"] = prototypes.detach().cpu().contiguous()  # (K, d)
    meta = {
        "hidden_dim": head.fc.fc1.out_features,
        "output_dim": head.fc.fc3.out_features,
        "num_prototypes": int(prototypes.shape[0]),
        "use_bn": hasattr(head.fc, "bn1"),
    }
    atomic_write(directory / MSN_HEAD_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / MSN_HEAD_CONFIG, json.dumps(meta, indent=2) + "\n")
    return directory / MSN_HEAD_WEIGHTS


def load_msn_head(directory: str | os.PathLike) -> tuple[ProjectionHead, torch.Tensor]:
    """Read ``msn_head.safetensors`` / ``msn_head.json`` of a converted directory: (projection head, prototypes (K, d))."""
    from vitmsn.checkpoints import read_weights

    directory = Path(directory)
    path = directory / MSN_HEAD_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {MSN_HEAD_WEIGHTS} (convert with keep_head=True / --keep-head)"
        )
    tensors = read_weights(path)
    if "prototypes" not in tensors:
        raise CheckpointError(f"{path} has no 'prototypes' tensor")
    prototypes = tensors.pop("prototypes")
    other = sorted(k for k in tensors if not k.startswith("head.fc."))
    if other:
        raise CheckpointError(f"{path}: unexpected keys {', '.join(other)}")
    head = _projection_head({k[len("head.fc.") :]: v for k, v in tensors.items()}, str(path))
    meta_path = directory / MSN_HEAD_CONFIG
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        found = {
            "hidden_dim": head.fc.fc1.out_features,
            "output_dim": head.fc.fc3.out_features,
            "num_prototypes": int(prototypes.shape[0]),
            "use_bn": hasattr(head.fc, "bn1"),
        }
        if differ := {k: (meta[k], v) for k, v in found.items() if k in meta and meta[k] != v}:
            raise CheckpointError(
                f"{meta_path} disagrees with {path}: "
                + ", ".join(f"{k} {a} in the JSON, {b} in the weights" for k, (a, b) in differ.items())
            )
    if prototypes.shape[1] != head.fc.fc3.out_features:
        raise CheckpointError(
            f"{path}: prototypes {tuple(prototypes.shape)} do not match the head's output "
            f"size {head.fc.fc3.out_features}"
        )
    return head, prototypes


def msn_preprocessor(image_size: int | tuple[int, int] = 224):
    """MSN's evaluation preprocessing as a ViTImageProcessor: bilinear resize, 1/255, ImageNet mean/std.
    Saved without a backend of its own, so that each library loads its default (vitmsn and transformers 5:
    the torch backend; transformers 4.x: PIL) and a converted model gives the same numbers in vitmsn as in
    the transformers version a user has."""
    from vitmsn.processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ViTImageProcessor

    h, w = pair(image_size)
    return ViTImageProcessor(
        do_resize=True,
        size={"height": h, "width": w},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def convert_msn_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    arch: str | None = None,
    key: str = "target_encoder",
    keep_head: bool = False,
    image_size: int | None = None,
    num_attention_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a checkpoint of the original MSN training code into a transformers-format ViT-MSN directory
    (a new or empty one; with ``overwrite``, one that holds an earlier conversion, whose files are replaced).

    Args:
        checkpoint_path: the ``.pth.tar`` file (a dict with ``target_encoder``, ``encoder``, ``prototypes``, ...).
        out_dir: the directory to write: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``
            (and ``msn_head.safetensors`` / ``msn_head.json`` with ``keep_head``).
        arch: ``"vit-small/16"``, ``"vit-base/16"``, ``"vit-large/16"``, ``"vit-base/4"``, ``"vit-large/7"`` (or
            timm-style ``vit_base_patch4``); None reads the architecture from the tensor shapes. Given, it
            must agree with them.
        key: which encoder: ``"target_encoder"`` (the EMA encoder, which the paper evaluates) or ``"encoder"``.
        keep_head: also keep that encoder's projection head and the prototypes, for ``load_msn_head`` /
            ``vitmsn pretrain --init``.
        image_size: the model's input size. None: the size the position embeddings were trained for
            (224 for the released checkpoints). Another size resizes the position embeddings (bicubic, as
            ``interpolate_pos_encoding``).
        num_attention_heads: for a hidden size that is not one of :data:`ARCH_SIZES`.

    Returns the output directory. Raises :class:`CheckpointError` (naming the keys) when the weights do not fit.
    """
    from vitmsn.models.hf import ViTMSNModel
    from vitmsn.models.layers import interpolate_pos_embed

    source = f"{checkpoint_path} [{key}]"
    backbone, head_sd, prototypes = read_msn_checkpoint(checkpoint_path, key)
    config = config_from_state_dict(backbone, arch=arch, num_attention_heads=num_attention_heads)
    head = None
    if keep_head:  # check everything before writing anything
        head = _projection_head(head_sd, source)
        if prototypes is None:
            raise CheckpointError(f"{checkpoint_path} has no prototypes; convert without keep_head")
        if prototypes.shape[1] != head.fc.fc3.out_features:
            raise CheckpointError(
                f"{checkpoint_path}: prototypes {tuple(prototypes.shape)} do not match the head's "
                f"output size {head.fc.fc3.out_features}"
            )
    elif head_sd:
        logger.info("dropping the projection head (%d tensors); keep it with --keep-head (keep_head=True)",
                    len(head_sd))
    if image_size is not None and pair(image_size) != pair(config.image_size):
        new = config.copy(image_size=image_size)
        check_tiling(new.image_size, new.patch_size)
        logger.info("resizing position embeddings from %s to %s", config.image_size, image_size)
        backbone["pos_embed"] = interpolate_pos_embed(
            backbone["pos_embed"].float(), config.grid_size, new.grid_size
        )
        config = new
    model = ViTMSNModel(config)
    load_state_dict_into(model, backbone, source=source)
    out = prepare_model_dir(out_dir, overwrite)
    model.eval().save_pretrained(out)
    msn_preprocessor(config.image_size).save_pretrained(out)
    if head is not None:
        save_msn_head(out, head, prototypes)
    return out


# ------------------------------------------------------------------------------------------------- timm


def timm_create_args(
    model_or_config: nn.Module | ViTConfig, num_classes: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The ``timm.create_model`` name and keyword arguments of a timm ViT with this architecture.

    ``timm.create_model(name, pretrained=False, **kwargs)`` builds a model that ``to_timm(model)`` loads into
    strictly. ``num_classes``: None takes a classifier's ``num_labels``, and 0 (no head) for a bare encoder or
    a config.
    """
    from vitmsn.models.hf import _ImageClassifier

    if isinstance(model_or_config, ViTConfig):
        config, classes = model_or_config, 0
    else:
        config = model_or_config.config
        classes = config.num_labels if isinstance(model_or_config, _ImageClassifier) else 0
    if num_classes is not None:
        classes = num_classes
    size = next(
        (
            n
            for n, (d, _, h) in ARCH_SIZES.items()
            if (d, h) == (config.hidden_size, config.num_attention_heads)
        ),
        None,
    )
    p = pair(config.patch_size)
    name = f"vit_{size}_patch16_224" if size in ("tiny", "small", "base", "large") else "vit_base_patch16_224"
    kwargs: dict[str, Any] = dict(
        img_size=pair(config.image_size),
        patch_size=p[0] if p[0] == p[1] else p,
        in_chans=config.num_channels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
        num_classes=classes,
    )
    return name, kwargs


def to_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """A vitmsn model's weights as a timm ``VisionTransformer`` state dict.

    Keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + P, D), ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``,
    and ``head.weight`` (num_labels, D) / ``head.bias`` for a classifier. ViTModel's pooler and SimMIM's mask
    token and decoder have no place in timm and are left out (with a warning). timm's LayerNorms use
    eps 1e-6: a model with another ``layer_norm_eps`` gives slightly different numbers there.
    See :func:`timm_create_args` for the matching ``timm.create_model`` call.
    """
    config: ViTConfig = model.config
    if config.hidden_act != "gelu":
        raise ValueError(f"timm's ViT uses exact GELU; this model's hidden_act is {config.hidden_act!r}")
    if config.layer_norm_eps != 1e-6:
        logger.warning("layer_norm_eps is %g; timm's ViT LayerNorms use 1e-6", config.layer_norm_eps)
    sd, _ = model_state_dict(model)
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for k, v in sd.items():
        if k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = v.detach()
        elif k.startswith(("pooler.", "decoder.")) or k == "mask_token":
            dropped.append(k)
        else:
            out[k] = v.detach()
    if dropped:
        logger.warning("to_timm: timm's ViT has no place for %s; left out", ", ".join(dropped))
    return out


def from_timm(
    state_dict_or_model: dict[str, torch.Tensor] | nn.Module,
    config: ViTConfig | None = None,
    *,
    model_class: type[PreTrainedModel] | None = None,
    num_attention_heads: int | None = None,
) -> PreTrainedModel:
    """A vitmsn model (default ViTMSNModel) from a timm ViT or its state dict.

    The architecture is read from the shapes unless ``config`` is given (heads as in
    :func:`config_from_state_dict`; from a timm model object they are read from the model). timm's ``head``
    becomes the classifier of a classification ``model_class`` and is dropped for a bare encoder. Loading is
    strict: timm features vitmsn does not have (``fc_norm``, layer scale, register tokens, ...) are unexpected
    keys, a :class:`CheckpointError`.
    """
    from vitmsn.models.hf import ViTMSNModel, _ImageClassifier

    cls = model_class or ViTMSNModel
    eps = 1e-6
    if isinstance(state_dict_or_model, nn.Module):
        m = state_dict_or_model
        if (
            getattr(m, "no_embed_class", False)
            or getattr(m, "num_reg_tokens", 0)
            or getattr(m, "num_prefix_tokens", 1) != 1
        ):
            raise CheckpointError(
                "timm models without a CLS position embedding or with register tokens are not supported"
            )
        if issubclass(cls, _ImageClassifier) and getattr(m, "global_pool", "token") != "token":
            raise CheckpointError(
                f"the timm model pools with {m.global_pool!r}; vitmsn classifies the CLS token"
            )
        blocks = getattr(m, "blocks", None)
        if blocks is not None and len(blocks):
            act = getattr(getattr(blocks[0], "mlp", None), "act", None)
            if act is not None and not (type(act) is nn.GELU and act.approximate == "none"):
                raise CheckpointError(
                    f"the timm model's MLP activation is {act}; vitmsn's ViT uses exact GELU"
                )
            num_attention_heads = num_attention_heads or getattr(blocks[0].attn, "num_heads", None)
        eps = getattr(getattr(m, "norm", None), "eps", eps)
        sd = dict(m.state_dict())
    elif isinstance(state_dict_or_model, dict):
        sd = dict(state_dict_or_model)
    else:
        raise TypeError(
            f"from_timm takes a timm model or its state dict, got {type(state_dict_or_model).__name__}"
        )
    sd = _strip_module(sd)
    head = {k[len("head.") :]: sd.pop(k) for k in list(sd) if k.startswith("head.")}
    classifier = issubclass(cls, _ImageClassifier)
    if classifier:
        sd.update({"classifier." + k: v for k, v in head.items()})
    elif head:
        logger.info("from_timm: dropping timm's classifier head (%s has none)", cls.__name__)
    if config is None:
        extra: dict[str, Any] = {}
        if classifier:
            extra["num_labels"] = head["weight"].shape[0] if "weight" in head else 0
        config = config_from_state_dict(
            sd,
            num_attention_heads=num_attention_heads,
            layer_norm_eps=eps,
            config_class=cls.config_class,
            **extra,
        )
    model = cls(config)
    load_state_dict_into(model, sd, source="timm state dict")
    return model.eval()


# ------------------------------------------------------------------------------------------------- ONNX


def _load_model_dir(path: str | os.PathLike) -> PreTrainedModel:
    """A transformers-format directory (or Hub id) -> the vitmsn class named in its config.json."""
    from vitmsn.models.hf import model_class_for

    return model_class_for(load_config_dict(path), path).from_pretrained(path)


def _output_names(model: nn.Module) -> list[str]:
    from vitmsn.models.hf import ViTForMaskedImageModeling, ViTModel, _ImageClassifier

    if isinstance(model, _ImageClassifier):
        return ["logits"]
    if isinstance(model, ViTForMaskedImageModeling):
        return ["reconstruction"]
    if isinstance(model, ViTModel) and model.pooler is not None:
        return ["last_hidden_state", "pooler_output"]
    return ["last_hidden_state"]


class _OnnxWrapper(nn.Module):
    """pixel_values (B, C, H, W) -> the model's outputs as a tuple, for tracing."""

    def __init__(self, model: nn.Module, names: list[str], interpolate: bool):
        super().__init__()
        self.model, self.names, self.interpolate = model, names, interpolate

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(
            pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate, return_dict=True
        )
        return tuple(out[n] for n in self.names)


def _dynamo_available() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _export_dynamo(
    wrapper: nn.Module,
    example: torch.Tensor,
    out_path: Path,
    names: list[str],
    opset: int,
    dynamic_batch: bool,
) -> None:
    big = sum(t.numel() * t.element_size() for t in wrapper.state_dict().values()) > 1.5 * 2**30
    dyn = {"pixel_values": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    torch.onnx.export(
        wrapper,
        (example,),
        str(out_path),
        input_names=["pixel_values"],
        output_names=names,
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dyn,
        external_data=big,
        verbose=False,
    )


def _export_torchscript(
    wrapper: nn.Module,
    example: torch.Tensor,
    out_path: Path,
    names: list[str],
    opset: int,
    dynamic_batch: bool,
) -> None:
    axes = {n: {0: "batch"} for n in ["pixel_values", *names]} if dynamic_batch else None
    with warnings.catch_warnings():  # torch's deprecation notice; the shape checks traced as constants
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(out_path),
            input_names=["pixel_values"],
            output_names=names,
            opset_version=opset,
            dynamo=False,
            dynamic_axes=axes,
        )


#: The lowest opset a ViT exports to: attention is ``scaled_dot_product_attention``, which both exporters
#: write from opset 14 on (below, the TorchScript exporter fails on it or on ``expand``).
MIN_ONNX_OPSET = 14


def onnx_opset_range(exporter: str = "auto") -> tuple[int, int]:
    """The opsets (lowest, highest) ``exporter`` can write for a ViT with the installed torch / onnxscript."""
    from torch.onnx import _constants

    torchscript_max = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    if exporter == "torchscript" or (exporter == "auto" and not _dynamo_available()):
        return MIN_ONNX_OPSET, torchscript_max
    # the dynamo exporter writes opset 18 and converts it with onnxscript's version converter, whose range
    # ends before onnx's newest opset (asking for more silently writes 18)
    try:
        from onnxscript.version_converter import _version_converter as vc

        dynamo_max = int(vc.SUPPORTED_MAX_ONNX_OPSET)
    except (ImportError, AttributeError):
        dynamo_max = getattr(_constants, "ONNX_MAX_OPSET", 18)
    if exporter == "dynamo":
        return 17, dynamo_max
    return MIN_ONNX_OPSET, max(dynamo_max, torchscript_max)  # auto: TorchScript below 17, dynamo from 17


def _check_onnx_options(config: ViTConfig, opset: int, image_size: int | tuple[int, int] | None,
                        exporter: str) -> None:
    """Refuse an opset the exporter cannot write and an image size the patches do not tile, before exporting
    (a failed export would leave a traceback and may have replaced the output file)."""
    lo, hi = onnx_opset_range(exporter)
    if not lo <= opset <= hi:
        raise ValueError(f"opset {opset} is not one the {exporter} ONNX exporter writes for a ViT: choose "
                         f"{lo} to {hi}")
    if image_size is not None and pair(image_size) != pair(config.image_size):
        config.copy(image_size=image_size)  # a valid size
        check_tiling(image_size, config.patch_size)  # as convert msn --image-size: a multiple of the patch


def export_onnx(
    model_dir_or_model: str | os.PathLike | nn.Module,
    out_path: str | os.PathLike,
    *,
    opset: int = 17,
    image_size: int | tuple[int, int] | None = None,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    check: bool = True,
) -> Path:
    """Export a vitmsn model (or a model directory) to ONNX; input ``pixel_values`` (B, C, H, W) in the model's dtype.

    Outputs: ``last_hidden_state`` (B, 1 + P, D) for ViTMSNModel (plus ``pooler_output`` (B, D) for ViTModel
    with a pooler), ``logits`` (B, num_labels) for the classifiers, ``reconstruction`` for SimMIM. The batch axis
    is dynamic (``dynamic_batch``); the image size is fixed: ``config.image_size``, or ``image_size``, for which
    the position embeddings are resized inside the graph (``interpolate_pos_encoding`` at that one size).

    ``exporter``: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, needs onnxscript), ``"torchscript"`` (the
    legacy ``dynamo=False`` exporter, deprecated by torch) or ``"auto"``: dynamo when onnxscript is installed
    and ``opset >= 17``, the TorchScript exporter otherwise or if torch.export fails on the model (with a
    warning). The dynamo exporter cannot write opsets below 17 (a ``ValueError``).
    Attention stays SDPA: both exporters export it. With ``check``, ``onnx.checker`` verifies the file.
    Weights above 1.5 GiB go to an external data file beside the graph (dynamo exporter).
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if exporter == "dynamo" and opset < 17:
        raise ValueError(
            f"the dynamo exporter writes opset 17 and above, not {opset}; use exporter='torchscript' "
            "(--exporter torchscript)"
        )
    model = (
        model_dir_or_model
        if isinstance(model_dir_or_model, nn.Module)
        else _load_model_dir(model_dir_or_model)
    )
    config: ViTConfig = model.config
    _check_onnx_options(config, opset, image_size, exporter)
    size = pair(config.image_size if image_size is None else image_size)
    interpolate = size != pair(config.image_size)
    names = _output_names(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    p = next(model.parameters())
    # a dynamic batch is traced at 2 (torch.export specialises sizes 0 and 1); a static one at 1
    example = torch.randn(
        2 if dynamic_batch else 1, config.num_channels, *size, device=p.device, dtype=p.dtype
    )
    wrapper = _OnnxWrapper(model, names, interpolate).eval()
    was_training = model.training
    model.eval()
    # written in a folder of its own beside the output and moved into place once checked: a failed export
    # (a full disk, an exporter error) leaves nothing behind, and an older file at out_path stays as it was
    # (a symlink: the file it points to is replaced, as writing through it would)
    target = Path(os.path.realpath(out_path))
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        _export_onnx_to(wrapper, example, staging / target.name, names, opset, dynamic_batch, exporter, check)
        for part in sorted(staging.iterdir(), key=lambda f: f.name == target.name):  # external data first
            os.replace(part, target.parent / part.name)
    except OSError as err:
        raise OSError(f"cannot write {out_path}: {err.strerror or err}") from err
    finally:
        model.train(was_training)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return out_path


def _export_onnx_to(wrapper: nn.Module, example: torch.Tensor, out_path: Path, names: list[str], opset: int,
                    dynamic_batch: bool, exporter: str, check: bool) -> None:
    """Export ``wrapper`` to ``out_path`` with the exporter asked for, then check what was written."""
    from vitmsn.models.layers import fast_cpu_inference

    args = (wrapper, example, out_path, names, opset, dynamic_batch)
    with fast_cpu_inference(False), torch.no_grad():  # oneDNN's fused linear has no ONNX form
        if exporter == "dynamo" or (exporter == "auto" and opset >= 17 and _dynamo_available()):
            try:
                _export_dynamo(*args)
            except Exception as e:
                if exporter == "dynamo":
                    raise
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                logger.warning("the dynamo ONNX exporter failed (%s); using the TorchScript exporter", first)
                _export_torchscript(*args)
        else:
            _export_torchscript(*args)
    import onnx

    written = {o.domain: o.version for o in onnx.load(str(out_path), load_external_data=False).opset_import}
    if written.get("", written.get("ai.onnx")) != opset:
        raise ValueError(
            f"the {exporter} exporter wrote opset {written.get('', written.get('ai.onnx'))}, not "
            f"{opset}; the dynamo exporter writes opset 17 and above only (exporter='torchscript', on the "
            "command line --exporter torchscript, goes lower)"
        )
    if check:
        onnx.checker.check_model(str(out_path), full_check=True)


# ----------------------------------------------------------------------------------------------- the CLI


def cmd_convert_msn(args: Any) -> None:
    """``vitmsn convert msn CHECKPOINT OUT_DIR``."""
    out = convert_msn_checkpoint(
        args.checkpoint,
        args.out_dir,
        arch=args.arch,
        key=args.key,
        keep_head=args.keep_head,
        image_size=args.image_size,
        num_attention_heads=args.num_heads,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} (load it with ViTMSNModel.from_pretrained({str(out)!r}))")


def cmd_export_onnx(args: Any) -> None:
    """``vitmsn export-onnx --model DIR --out model.onnx``."""
    out = export_onnx(
        args.model,
        args.out,
        opset=args.opset,
        image_size=args.image_size,
        dynamic_batch=not args.static_batch,
        exporter=args.exporter,
    )
    print(f"wrote {out}")


def register(add: Any) -> None:
    """Add ``convert msn`` and ``export-onnx`` to the ``vitmsn`` command (see vitmsn.cli.COMMAND_MODULES)."""
    sp = add("convert", None, "convert checkpoints of other code into transformers-format directories")
    sub = sp.add_subparsers(dest="source", metavar="SOURCE", required=True)
    msn = sub.add_parser(
        "msn",
        help="a checkpoint of the original MSN training code (.pth.tar)",
        description="Convert an original MSN training checkpoint (target_encoder / encoder, "
        "prototypes, ...) into a ViT-MSN directory that vitmsn and transformers load.",
    )
    msn.set_defaults(func=cmd_convert_msn)
    msn.add_argument("checkpoint", help="the original checkpoint file")
    msn.add_argument("out_dir", help="output directory")
    msn.add_argument("--arch", help=f"{', '.join(MSN_ARCHS)} (default: read from the tensor shapes)")
    msn.add_argument(
        "--key",
        choices=("target_encoder", "encoder"),
        default="target_encoder",
        help="the EMA target encoder (default) or the online encoder",
    )
    msn.add_argument(
        "--keep-head",
        action="store_true",
        help="also write the projection head and prototypes (msn_head.safetensors), for pretrain --init",
    )
    msn.add_argument("--image-size", type=int, help="resize the position embeddings to this input size")
    msn.add_argument(
        "--num-heads", type=int, help="attention heads, for a hidden size that is not a known ViT's"
    )
    msn.add_argument("--overwrite", action="store_true",
                     help="replace the model in OUT_DIR (by default OUT_DIR must be new or empty)")

    sp = add("export-onnx", cmd_export_onnx, "export a model to ONNX (dynamic batch, fixed image size)")
    sp.add_argument("--model", required=True, help="model directory or Hub id")
    sp.add_argument("--out", required=True, help="the .onnx file to write")
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    sp.add_argument("--image-size", type=int, help="input size (default: the model's image_size)")
    sp.add_argument(
        "--static-batch", action="store_true", help="a fixed batch size of 1 instead of a dynamic batch axis"
    )
    sp.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "torchscript"),
        default="auto",
        help="torch.onnx exporter (default: dynamo when onnxscript is installed)",
    )
