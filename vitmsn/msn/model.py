"""The networks of MSN: an encoder with a projection head (online), its EMA copy (target), and prototypes."""

from __future__ import annotations

import torch
from torch import nn

from vitmsn.config import ViTMSNConfig
from vitmsn.models.heads import ProjectionHead
from vitmsn.models.vit import VisionTransformer


class MSNNetwork(nn.Module):
    """ViT encoder + projection head on the CLS token after the final LayerNorm.

    ``forward`` takes every view group of a step at once (so DDP sees one forward per backward): the
    random anchor(s), masked by ``keep_idx``, and the focal anchors, whose position embeddings are
    interpolated to their smaller grid. The projection head runs per group, as in the original code,
    so BatchNorm statistics are those of one view size.
    """

    def __init__(self, config: ViTMSNConfig, head_hidden_dim: int = 2048, head_output_dim: int = 256,
                 use_bn: bool = True):
        super().__init__()
        self.encoder = VisionTransformer(config)
        self.encoder.init_backbone_weights(zero_embeddings=False)  # the original draws cls/pos ~ N(0, 0.02)
        self.head = ProjectionHead(config.hidden_size, head_hidden_dim, head_output_dim, use_bn=use_bn)

    def embed(self, images: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, out_dim); only the kept patch tokens are computed."""
        # MSN reads the CLS token only: the last block is computed for it alone, and so is the final
        # LayerNorm (it works token by token: on the CLS token alone it gives the same numbers)
        tokens = self.encoder.forward_features(images, keep_idx=keep_idx, interpolate_pos_encoding=True,
                                               normalize=False, cls_only=True).tokens  # (B, 1, D), before the norm
        return self.head(self.encoder.norm(tokens[:, 0]))

    def forward(self, *groups: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Groups of same-size views, each (n_i, C, H_i, W_i) -> (sum n_i, out_dim) in the same order.

        ``keep_idx`` (n_0, K) masks the first group only (the random anchors).
        """
        outs = [self.embed(g, keep_idx if i == 0 else None) for i, g in enumerate(groups) if g.numel()]
        return torch.cat(outs, dim=0)

