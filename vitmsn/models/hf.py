"""transformers-style model classes: the names, arguments and outputs a transformers user already knows.

Each class is a thin shell over :class:`~vitmsn.models.vit.VisionTransformer`. Checkpoint files are read
and written in transformers' layout by :mod:`vitmsn.checkpoints`; the names of parameters in memory are
this library's own (``load_state_dict`` takes transformers' names as well).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitmsn.checkpoints import CheckpointError
from vitmsn.config import ViTConfig, ViTMSNConfig, default_labels
from vitmsn.hub import PushToHubMixin
from vitmsn.models.heads import Pooler, simmim_decoder
from vitmsn.models.layers import init_weights
from vitmsn.models.vit import EncoderOutput, VisionTransformer

# ---------------------------------------------------------------------------------------------- outputs


class ModelOutput(OrderedDict):
    """Like transformers' ModelOutput: a dict of the fields that are not None, also read as attributes, and
    by integer index (which skips the None fields); a pytree node, so that DDP, ``torch.export`` and
    ``torch.utils._pytree`` see its tensors."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from torch.utils import _pytree

        _pytree.register_pytree_node(
            cls, lambda out: (list(out.values()), list(out.keys())),
            lambda values, keys: cls(**dict(zip(keys, values, strict=True))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )

    def __post_init__(self) -> None:
        first, *rest = fields(self)
        given = getattr(self, first.name)
        pairs = None
        if given is not None and not torch.is_tensor(given) and all(getattr(self, f.name) is None for f in rest):
            # rebuilt from its own items, as tools that map over outputs do: ``type(out)({k: v ...})`` (accelerate)
            # or ``type(out)((k, v) for ...)`` (DataParallel's gather)
            items = list(given.items() if isinstance(given, Mapping) else given) \
                if isinstance(given, Mapping | list | tuple) or hasattr(given, "__next__") else []
            if items and all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in items):
                pairs = items
        if pairs is None:
            return  # the dataclass __init__ set the fields, and __setattr__ made the ones not None items
        object.__setattr__(self, first.name, None)
        OrderedDict.__delitem__(self, first.name)
        for name, value in pairs:
            setattr(self, name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None and name in {f.name for f in fields(self)}:
            super().__setitem__(name, value)  # a field set later is an item too, at the end (as transformers)
        super().__setattr__(name, value)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"a {type(self).__name__} cannot be changed this way; set its fields instead")

    __delitem__ = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedImageModelingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------ base class


class PreTrainedModel(PushToHubMixin, nn.Module):
    """Loading, saving and the small conveniences of transformers' PreTrainedModel."""

    config_class: type[ViTConfig] = ViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    config: ViTConfig

    # -- the backbone every class is built around
    @property
    def backbone(self) -> VisionTransformer:
        return self if isinstance(self, VisionTransformer) else self.vit

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    @property
    def name_or_path(self) -> str:
        """What ``from_pretrained`` loaded this model from ("" for a model built here)."""
        return self.config.__dict__.get("_name_or_path", "")

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (transformers' ``embeddings.patch_embeddings``)."""
        return self.backbone.patch_embed

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def enable_input_require_grads(self) -> None:
        """Make the patch embedding's output require grad (for gradient checkpointing with frozen embeddings,
        as adapters do)."""
        self._input_grads_hook = self.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output.requires_grad_(True))

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_input_grads_hook", None)
        if hook is not None:
            hook.remove()

    # -- what transformers' generic code (pipelines, accelerate, Trainer) asks of a model
    _no_split_modules = ["Block"]  # accelerate's device_map keeps a transformer block on one device

    def get_output_embeddings(self) -> None:
        return None  # no tied output embeddings

    def tie_weights(self) -> None:
        """Nothing to tie."""

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def init_weights(self) -> None:
        """Initialise every weight afresh, as the constructor does."""
        self.post_init()

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        try:
            return self.get_parameter(target)
        except AttributeError:
            return self.get_buffer(target)

    def _check_config(self, config: ViTConfig) -> ViTConfig:
        if not isinstance(config, ViTConfig):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()  # also what a config set up step by step may still get wrong
        return config

    def post_init(self) -> None:
        """Initialise weights as transformers does."""
        self.backbone.init_backbone_weights(zero_embeddings=isinstance(self.config, ViTMSNConfig))
        std = self.config.initializer_range
        for name in ("pooler", "classifier", "decoder"):
            if getattr(self, name, None) is not None:
                getattr(self, name).apply(lambda m: init_weights(m, std))

    def init_missing_weights(self, names: list[str]) -> None:
        """Initialise the named parameters (a checkpoint lacked them) as transformers 5 does, module by
        module in ``nn.Module.apply``'s order: Linear and Conv2d weights from N(0, initializer_range) with zero
        biases, LayerNorms to ones and zeros, and the embeddings as :meth:`init_backbone_weights`."""
        wanted = set(names)
        if not wanted:
            return
        std = self.config.initializer_range
        zero_embeddings = isinstance(self.config, ViTMSNConfig)

        def visit(prefix: str, module: nn.Module) -> None:
            for child_name, child in module.named_children():
                visit(prefix + child_name + ".", child)
            own = {n: p for n, p in module.named_parameters(recurse=False) if prefix + n in wanted}
            with torch.no_grad():
                for n, p in own.items():
                    if isinstance(module, (nn.Linear, nn.Conv2d)) and n == "weight":
                        p.normal_(0.0, std)
                    elif isinstance(module, nn.LayerNorm) and n == "weight":
                        p.fill_(1.0)
                    elif n in ("cls_token", "pos_embed") and not zero_embeddings:
                        nn.init.trunc_normal_(p, mean=0.0, std=std)
                    else:  # biases, the mask token, MSN's embeddings
                        p.zero_()

        visit("", self)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters (``exclude_embeddings`` leaves out ``nn.Embedding`` weights, as transformers
        does: a ViT has none, its position embeddings are a plain parameter)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.backbone.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.backbone.set_grad_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.backbone.grad_checkpointing

    def set_attn_implementation(self, name: str) -> None:
        """Switch between "sdpa" and "eager" attention after loading."""
        self.config.attn_implementation = name
        self.config.validate()
        for block in self.backbone.blocks:
            block.attn.eager = name == "eager"

    # -- checkpoints
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                        config: ViTConfig | None = None, torch_dtype: torch.dtype | str | None = None,
                        dtype: torch.dtype | str | None = None, attn_implementation: str | None = None,
                        ignore_mismatched_sizes: bool = False, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, **kwargs: Any):
        """Load a transformers-format checkpoint from a directory or a Hub id (downloads when online).

        ``kwargs`` override config values (``num_labels=10``) or are passed to the constructor
        (``add_pooling_layer``, ``use_mask_token``).
        """
        from vitmsn.checkpoints import load_pretrained

        return load_pretrained(
            cls, pretrained_model_name_or_path, *model_args, config=config, dtype=dtype or torch_dtype,
            attn_implementation=attn_implementation, ignore_mismatched_sizes=ignore_mismatched_sizes,
            revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only, **kwargs,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, push_to_hub: bool = False,
                        max_shard_size: int | str = "50GB", variant: str | None = None,
                        safe_serialization: bool = True, **kwargs: Any) -> Path:
        """Write config.json and model.safetensors in transformers' layout (the arguments are transformers'):
        shards with an index above ``max_shard_size``, ``variant`` in the file names (``model.fp16.safetensors``),
        ``state_dict`` saved instead of the model's tensors, nothing written unless ``is_main_process``; with
        ``push_to_hub``, also upload them (to ``repo_id``, default the folder's name; ``token``, ``private``, ...)."""
        from vitmsn.checkpoints import save_pretrained

        path = save_pretrained(self, save_directory, safe_serialization=safe_serialization, state_dict=state_dict,
                               max_shard_size=max_shard_size, variant=variant, is_main_process=is_main_process)
        if push_to_hub and is_main_process:
            self._push_saved(save_directory, kwargs, safe_serialization=safe_serialization)
        return path

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also takes transformers' names for this class's tensors.

        A state dict of the transformers model of the same class (``model.state_dict()`` there, in transformers
        4.x's layout or 5.x's, or a weights file read with ``safetensors.torch.load_file``) loads as it would
        into that model, so code that moves weights with ``load_state_dict`` keeps working after the import
        changes. ``state_dict()`` itself gives this library's names; the missing and unexpected keys returned
        (and raised with ``strict``) are in those names too, apart from unexpected keys that have no
        counterpart here, which keep the caller's.
        """
        own = self.state_dict(keep_vars=True)
        if all(k in own for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        from vitmsn.checkpoints import backbone_prefix, hf_to_internal, model_key

        internal, unknown, _ = hf_to_internal(dict(state_dict))
        prefix = backbone_prefix(self)
        named = {model_key(k, prefix): v for k, v in internal.items()}
        result = super().load_state_dict(named, strict=False, assign=assign)  # size mismatches raise here
        result.unexpected_keys.extend(unknown)
        if strict and (result.missing_keys or result.unexpected_keys):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            for what, keys in (("Missing", result.missing_keys), ("Unexpected", result.unexpected_keys)):
                if keys:
                    lines.append(f"\t{what} key(s) in state_dict: {', '.join(repr(k) for k in keys)}.")
            raise RuntimeError("\n".join(lines))
        return result

    @classmethod
    def from_timm(cls, state_dict_or_model: dict[str, torch.Tensor] | nn.Module, config: ViTConfig | None = None,
                  **kwargs: Any):
        """This class from a timm ViT or its state dict; see :func:`vitmsn.convert.from_timm`."""
        from vitmsn.convert import from_timm

        return from_timm(state_dict_or_model, config, model_class=cls, **kwargs)

    # -- shared forward helpers
    def _flags(self, output_attentions: bool | None, output_hidden_states: bool | None,
               return_dict: bool | None) -> tuple[bool, bool, bool]:
        c = self.config
        return (c.output_attentions if output_attentions is None else bool(output_attentions),
                c.output_hidden_states if output_hidden_states is None else bool(output_hidden_states),
                c.return_dict if return_dict is None else bool(return_dict))

    def _encode(self, pixel_values: torch.Tensor | None, *, bool_masked_pos: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False, interpolate_pos_encoding: bool | None = None,
                keep_idx: torch.Tensor | None = None, cls_only: bool = False) -> EncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        return self.backbone.forward_features(
            pixel_values, keep_idx=keep_idx, bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=bool(interpolate_pos_encoding), head_mask=head_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, cls_only=cls_only,
        )


def _check_no_unused(kwargs: dict[str, Any]) -> None:
    mask = kwargs.pop("attention_mask", None)  # transformers 5 takes a (batch, tokens) key mask
    if mask is not None and not bool(torch.all(mask != 0)):
        raise ValueError("attention_mask must be all ones (or None): vitmsn's ViTs attend to every token; to "
                         "leave patches out, pass keep_idx to the backbone's forward_features")
    kwargs.pop("num_items_in_batch", None)  # transformers' Trainer passes it; only a classifier's loss reads it
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")


# --------------------------------------------------------------------------------------- bare encoders


class ViTMSNModel(VisionTransformer, PreTrainedModel):
    """The bare ViT-MSN encoder; outputs ``BaseModelOutput`` (as transformers' ViTMSNModel)."""

    config_class = ViTMSNConfig

    def __init__(self, config: ViTMSNConfig, use_mask_token: bool = False):
        super().__init__(self._check_config(config), use_mask_token=use_mask_token)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, bool_masked_pos: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool | None = None,
                return_dict: bool | None = None, *, keep_idx: torch.Tensor | None = None, **kwargs: Any):
        _check_no_unused(kwargs)
        attn, hidden, as_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        enc = self._encode(pixel_values, bool_masked_pos=bool_masked_pos, head_mask=head_mask,
                           output_attentions=attn, output_hidden_states=hidden,
                           interpolate_pos_encoding=interpolate_pos_encoding, keep_idx=keep_idx)
        out = BaseModelOutput(enc.tokens, enc.hidden_states, enc.attentions)
        return out if as_dict else out.to_tuple()


class ViTModel(VisionTransformer, PreTrainedModel):
    """The bare ViT encoder with an optional pooler; outputs ``BaseModelOutputWithPooling``."""

    config_class = ViTConfig

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(self._check_config(config), use_mask_token=use_mask_token)
        self.pooler = (Pooler(config.hidden_size, config.pooler_output_size, config.pooler_act)
                       if add_pooling_layer else None)
        self.post_init()

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pooler is None or pre_logits:
            return tokens[:, 0]
        return self.pooler(tokens)

    def forward(self, pixel_values: torch.Tensor | None = None, bool_masked_pos: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool | None = None,
                return_dict: bool | None = None, *, keep_idx: torch.Tensor | None = None, **kwargs: Any):
        _check_no_unused(kwargs)
        attn, hidden, as_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        enc = self._encode(pixel_values, bool_masked_pos=bool_masked_pos, head_mask=head_mask,
                           output_attentions=attn, output_hidden_states=hidden,
                           interpolate_pos_encoding=interpolate_pos_encoding, keep_idx=keep_idx)
        pooled = self.pooler(enc.tokens) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(enc.tokens, pooled, enc.hidden_states, enc.attentions)
        return out if as_dict else out.to_tuple()


# ------------------------------------------------------------------------------------------- classifiers


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: ViTConfig,
                        num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """transformers' rule: regression for one label, cross-entropy for integer labels, else BCE-with-logits.
    ``num_items_in_batch`` (from transformers' Trainer, for gradient accumulation) makes the cross-entropy a sum
    divided by it, as transformers 5 does."""
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif n > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    # float labels keep their precision (float64 -> a float64 loss)
    dtype = torch.promote_types(logits.dtype, labels.dtype) if labels.is_floating_point() else logits.dtype
    if config.problem_type == "regression":
        if n == 1:
            return F.mse_loss(logits.squeeze().to(dtype), labels.squeeze().to(dtype))
        return F.mse_loss(logits.to(dtype), labels.to(dtype))
    if config.problem_type == "single_label_classification":
        if num_items_in_batch is None:
            return F.cross_entropy(logits.view(-1, n), labels.view(-1))
        total = F.cross_entropy(logits.view(-1, n), labels.view(-1), reduction="sum")
        return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch)
                        else num_items_in_batch)
    return F.binary_cross_entropy_with_logits(logits.to(dtype), labels.to(dtype))


class _ImageClassifier(PreTrainedModel):
    """Backbone + linear classifier on the CLS token after the final LayerNorm."""

    def __init__(self, config: ViTConfig, backbone: VisionTransformer):
        super().__init__()
        self.config = self._check_config(config)
        self.num_labels = config.num_labels
        self.vit = backbone
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> EncoderOutput:
        return self.vit.forward_features(pixel_values, **kwargs)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        cls = tokens[:, 0]  # (B, D)
        return cls if pre_logits else self.classifier(cls)

    def reset_classifier(self, num_labels: int, id2label: dict[int, str] | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_labels`` outputs."""
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries")
        # the config's id2label setter also sets num_labels and label2id
        self.config.id2label = dict(id2label) if id2label is not None else default_labels(num_labels)
        self.num_labels = num_labels
        self.classifier = nn.Linear(self.config.hidden_size, num_labels) if num_labels > 0 else nn.Identity()
        self.classifier.apply(lambda m: init_weights(m, self.config.initializer_range))
        self.classifier.to(self.vit.pos_embed.device, self.vit.pos_embed.dtype)

    def forward(self, pixel_values: torch.Tensor | None = None, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any):
        num_items = kwargs.pop("num_items_in_batch", None)  # passed by transformers' Trainer
        _check_no_unused(kwargs)
        attn, hidden, as_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        # the classifier reads the CLS token only: unless per-layer outputs are asked for, the last block
        # is computed for it alone
        enc = self._encode(pixel_values, head_mask=head_mask, output_attentions=attn, output_hidden_states=hidden,
                           interpolate_pos_encoding=interpolate_pos_encoding, cls_only=not (attn or hidden))
        logits = self.forward_head(enc.tokens)
        loss = classification_loss(logits, labels, self.config, num_items) if labels is not None else None
        out = ImageClassifierOutput(loss, logits, enc.hidden_states, enc.attentions)
        return out if as_dict else out.to_tuple()


class ViTMSNForImageClassification(_ImageClassifier):
    """ViT-MSN with a linear classifier on the CLS token (as transformers' ViTMSNForImageClassification)."""

    config_class = ViTMSNConfig

    def __init__(self, config: ViTMSNConfig):
        super().__init__(config, ViTMSNModel(config))


class ViTForImageClassification(_ImageClassifier):
    """ViT with a linear classifier on the CLS token (as transformers' ViTForImageClassification)."""

    config_class = ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__(config, ViTModel(config, add_pooling_layer=False))


# ---------------------------------------------------------------------------------------------- SimMIM


class ViTForMaskedImageModeling(PreTrainedModel):
    """ViT with SimMIM's decoder (as transformers' ViTForMaskedImageModeling).

    Unlike transformers, the token grid is taken from the input, so non-square images and
    ``interpolate_pos_encoding`` at other sizes work.
    """

    config_class = ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = self._check_config(config)
        self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=True)
        self.decoder = simmim_decoder(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> EncoderOutput:
        return self.vit.forward_features(pixel_values, **kwargs)

    def forward_head(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (B, 1 + gh*gw, D) -> reconstructed pixels (B, C, gh*stride, gw*stride)."""
        x = tokens[:, 1:]
        B, P, D = x.shape
        x = x.transpose(1, 2).reshape(B, D, *grid)
        return self.decoder(x)

    def forward(self, pixel_values: torch.Tensor | None = None, bool_masked_pos: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any):
        _check_no_unused(kwargs)
        c = self.config
        if bool_masked_pos is not None and c.patch_size != c.encoder_stride:
            raise ValueError(
                "When `bool_masked_pos` is provided, `patch_size` must be equal to `encoder_stride` to ensure that "
                f"the reconstructed image has the same dimensions as the input. Got `patch_size` = {c.patch_size} "
                f"and `encoder_stride` = {c.encoder_stride}."
            )
        attn, hidden, as_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        enc = self._encode(pixel_values, bool_masked_pos=bool_masked_pos, head_mask=head_mask,
                           output_attentions=attn, output_hidden_states=hidden,
                           interpolate_pos_encoding=interpolate_pos_encoding)
        ph, pw = self.vit.patch_size
        grid = (pixel_values.shape[2] // ph, pixel_values.shape[3] // pw)
        reconstruction = self.forward_head(enc.tokens, grid)
        loss = None
        if bool_masked_pos is not None:
            # (B, gh, gw) -> pixel mask (B, 1, H, W); L1 on masked pixels, averaged as transformers does
            mask = bool_masked_pos.reshape(-1, *grid).repeat_interleave(ph, 1).repeat_interleave(pw, 2).unsqueeze(1)
            mask = mask.to(device=reconstruction.device, dtype=reconstruction.dtype)
            target = pixel_values[:, :, : reconstruction.shape[2], : reconstruction.shape[3]]
            l1 = F.l1_loss(target.to(reconstruction.dtype), reconstruction, reduction="none")
            loss = (l1 * mask).sum() / (mask.sum() + 1e-5) / c.num_channels
        out = MaskedImageModelingOutput(loss, reconstruction, enc.hidden_states, enc.attentions)
        return out if as_dict else out.to_tuple()


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    c.__name__: c for c in (ViTMSNModel, ViTMSNForImageClassification, ViTModel, ViTForImageClassification,
                            ViTForMaskedImageModeling)
}


def architecture_of(config: dict[str, Any]) -> str | None:
    """The class a config.json names: the first of its ``architectures`` (a list, or one name as a string),
    else None."""
    names = config.get("architectures")
    if isinstance(names, str):
        return names
    if isinstance(names, list | tuple) and names and isinstance(names[0], str):
        return names[0]
    if names not in (None, [], ()):
        raise CheckpointError(f"architectures must be a list of class names, got {names!r}")
    return None


def model_class_for(config: dict[str, Any], source: str | os.PathLike) -> type[PreTrainedModel]:
    """The vitmsn class of a config.json (``source``: where it came from, for the error): its architecture,
    else the bare model of its model_type."""
    default = "ViTMSNModel" if config.get("model_type") == "vit_msn" else "ViTModel"
    name = architecture_of(config) or default
    if name not in MODEL_CLASSES:
        raise CheckpointError(
            f"{source}: architecture {name!r} is not one vitmsn provides ({', '.join(MODEL_CLASSES)})"
        )
    return MODEL_CLASSES[name]
