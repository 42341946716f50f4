"""The ViT backbone: embeddings, position-embedding interpolation, token keeping, the encoder, final norm.

One interface for everything downstream (timm's): ``forward_features`` returns the normalised token
sequence, ``forward_head`` turns it into the output of the model's head. Parameter names follow timm and
the original MSN code (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.N``, ``norm``); the mapping to
transformers' names lives in :mod:`vitmsn.checkpoints`.

Shapes: B batch, C channels, (Himg, Wimg) image, (gh, gw) patch grid, P = gh*gw patches, K kept patches,
D hidden size, L layers, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from vitmsn.config import ViTConfig, pair
from vitmsn.models.layers import Block, PatchEmbed, init_weights, interpolate_pos_embed


@dataclass
class EncoderOutput:
    """What the encoder produced: final tokens, and optional per-layer states and attention maps."""

    tokens: torch.Tensor  # (B, 1 + K, D), after the final LayerNorm; (B, 1, D) with cls_only
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 entries, the last before the final norm
    attentions: tuple[torch.Tensor, ...] | None = None  # L entries of (B, H, 1 + K, 1 + K)


class VisionTransformer(nn.Module):
    """A plain pre-norm ViT with a CLS token and learned position embeddings."""

    def __init__(self, config: ViTConfig, use_mask_token: bool = False):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.patch_size = pair(config.patch_size)
        self.grid_size = config.grid_size
        self.patch_embed = PatchEmbed(config.num_channels, D, self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if use_mask_token else None
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob) if config.hidden_dropout_prob > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(D, config.num_attention_heads, config.intermediate_size, qkv_bias=config.qkv_bias,
                  act=config.hidden_act, eps=config.layer_norm_eps, drop=config.hidden_dropout_prob,
                  attn_drop=config.attention_probs_dropout_prob, eager=config.attn_implementation == "eager")
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.grad_checkpointing = False

    # ------------------------------------------------------------------ init
    def init_backbone_weights(self, zero_embeddings: bool) -> None:
        """transformers' init: MSN zeroes cls and position embeddings, ViT draws them from a truncated normal."""
        std = self.config.initializer_range
        self.apply(lambda m: init_weights(m, std))
        for p in (self.cls_token, self.pos_embed):
            if zero_embeddings:
                nn.init.zeros_(p)
            else:
                nn.init.trunc_normal_(p, mean=0.0, std=std)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "mask_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # ------------------------------------------------------------ embeddings
    def pos_embed_for(self, height: int, width: int, interpolate: bool) -> torch.Tensor:
        """Position embeddings (1, 1 + gh*gw, D) for an image of height x width pixels."""
        ph, pw = self.patch_size
        grid = (height // ph, width // pw)
        if not interpolate:
            ih, iw = pair(self.config.image_size)
            if (height, width) != (ih, iw):
                raise ValueError(
                    f"Input image size ({height}*{width}) doesn't match model ({ih}*{iw}). "
                    "Resize the image, or pass interpolate_pos_encoding=True to resize the position embeddings."
                )
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, self.grid_size, grid)

    def embed(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
              keep_idx: torch.Tensor | None = None, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Pixels -> tokens (B, 1 + K, D) with CLS and position embeddings added.

        ``bool_masked_pos`` (B, P) replaces masked patches by the mask token (SimMIM); ``keep_idx`` (B, K)
        keeps only those patch tokens, *after* position embeddings are added, so that the dropped tokens are
        never computed (MSN's random masking).
        """
        if pixel_values.ndim != 4:
            raise ValueError("pixel_values must have shape (batch, channels, height, width), got "
                             f"{tuple(pixel_values.shape)}")
        B, _, height, width = pixel_values.shape
        pixel_values = pixel_values.to(self.patch_embed.proj.weight.dtype)
        x = self.patch_embed(pixel_values)  # (B, P, D)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with use_mask_token=True")
            if bool_masked_pos.ndim != 2 or bool_masked_pos.shape[0] not in (1, B) \
                    or bool_masked_pos.shape[1] != x.shape[1]:
                raise ValueError(f"bool_masked_pos must have shape {tuple(x.shape[:2])} (or (1, {x.shape[1]}) for "
                                 f"every image), got {tuple(bool_masked_pos.shape)}")
            w = bool_masked_pos.unsqueeze(-1).to(device=x.device, dtype=x.dtype)  # (B or 1, P, 1)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        pos = self.pos_embed_for(height, width, bool(interpolate_pos_encoding))  # (1, 1 + P, D)
        x = x + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(B, -1, -1)
        if keep_idx is not None:
            # keep_idx: (B, K) indices into the P patch tokens
            x = torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, D)
        return self.pos_drop(torch.cat([cls, x], dim=1))

    # --------------------------------------------------------------- encoder
    def forward_features(self, pixel_values: torch.Tensor, *, keep_idx: torch.Tensor | None = None,
                         bool_masked_pos: torch.Tensor | None = None, interpolate_pos_encoding: bool = False,
                         head_mask: torch.Tensor | None = None, output_attentions: bool = False,
                         output_hidden_states: bool = False, normalize: bool = True,
                         cls_only: bool = False) -> EncoderOutput:
        """Run the encoder; ``tokens`` are after the final LayerNorm unless ``normalize=False``.

        ``cls_only=True`` is for callers that read only the CLS token (classification, features, MSN): the
        last block is computed for the CLS token alone and ``tokens`` is (B, 1, D), the same numbers as
        ``tokens[:, :1]`` without it. It cannot be combined with per-layer outputs.
        """
        if cls_only and (output_hidden_states or output_attentions):
            raise ValueError("cls_only=True gives the CLS token only; it cannot return hidden states or attentions")
        x = self.embed(pixel_values, bool_masked_pos, keep_idx, interpolate_pos_encoding)
        head_masks = self._expand_head_mask(head_mask, x.dtype)
        hidden: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                hidden.append(x)
            hm = None if head_masks is None else head_masks[i]
            only = cls_only and i == last
            if checkpoint:
                x, w = torch.utils.checkpoint.checkpoint(block, x, hm, output_attentions, only, use_reentrant=False)
            else:
                x, w = block(x, hm, output_attentions, only)
            if output_attentions:
                attentions.append(w)
        if output_hidden_states:
            hidden.append(x)
        return EncoderOutput(
            tokens=self.norm(x) if normalize else x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The CLS token (B, D): the image representation of a bare backbone."""
        return tokens[:, 0]

    def forward(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None,
                interpolate_pos_encoding: bool = True) -> torch.Tensor:
        """CLS features (B, D) after the final norm; interpolates position embeddings for other sizes."""
        out = self.forward_features(pixel_values, keep_idx=keep_idx, interpolate_pos_encoding=interpolate_pos_encoding,
                                    cls_only=True)
        return self.forward_head(out.tokens)

    def _expand_head_mask(self, head_mask: torch.Tensor | None, dtype: torch.dtype) -> list | None:
        """(H,), (L, H) or (L, B or 1, H, 1, 1) -> per layer (B or 1, H, 1, 1), as transformers 4.x; 1 keeps a
        head, 0 masks it."""
        if head_mask is None:
            return None
        L, H = len(self.blocks), self.config.num_attention_heads
        head_mask = torch.as_tensor(head_mask)
        hint = ("(a classifier's second positional argument is head_mask, as in transformers 4.x; pass labels "
                "by keyword: model(pixel_values, labels=labels))")
        if head_mask.dim() == 1:
            head_mask = head_mask.unsqueeze(0).expand(L, -1)
        if head_mask.dim() == 2:
            head_mask = head_mask[:, None, :, None, None]
        if head_mask.dim() != 5 or head_mask.shape[0] != L or head_mask.shape[2] != H or head_mask.shape[3:] != (1, 1):
            raise ValueError(f"head_mask must have shape ({H},), ({L}, {H}) or ({L}, batch, {H}, 1, 1), got "
                             f"{tuple(head_mask.shape)} {hint}")
        if not head_mask.is_floating_point() and not bool(((head_mask == 0) | (head_mask == 1)).all()):
            raise ValueError(f"head_mask holds values other than 0 and 1, as labels do {hint}")
        head_mask = head_mask.to(dtype=dtype, device=self.pos_embed.device)
        return list(head_mask.unbind(0))  # L x (B or 1, H, 1, 1)
