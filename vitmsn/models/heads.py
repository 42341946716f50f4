"""Heads on top of the backbone: pooler, SimMIM decoder, MSN projection head and prototypes."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vitmsn.models.layers import activation


class Pooler(nn.Module):
    """transformers' ViT pooler: dense + activation (tanh) on the CLS token."""

    def __init__(self, hidden_size: int, out_size: int, act: str = "tanh"):
        super().__init__()
        self.dense = nn.Linear(hidden_size, out_size)
        self.act = activation(act)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(tokens[:, 0]))  # (B, N, D) -> (B, out)


def simmim_decoder(hidden_size: int, encoder_stride: int, num_channels: int) -> nn.Sequential:
    """SimMIM's decoder: a 1x1 conv to stride^2 * C channels, then PixelShuffle back to pixels."""
    return nn.Sequential(
        nn.Conv2d(hidden_size, encoder_stride**2 * num_channels, kernel_size=1),
        nn.PixelShuffle(encoder_stride),
    )


class ProjectionHead(nn.Module):
    """MSN's projection head (paper, Sec. 3 / Appendix): 3-layer MLP with BatchNorm and GELU.

    Linear(D -> hidden) -> BN -> GELU -> Linear(hidden -> hidden) -> BN -> GELU -> Linear(hidden -> out).
    Module names ``fc.{fc1,bn1,fc2,bn2,fc3}`` are those of the original training checkpoints.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256, use_bn: bool = True):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["fc1"] = nn.Linear(in_dim, hidden_dim)
        if use_bn:
            layers["bn1"] = nn.BatchNorm1d(hidden_dim)
        layers["gelu1"] = nn.GELU()
        layers["fc2"] = nn.Linear(hidden_dim, hidden_dim)
        if use_bn:
            layers["bn2"] = nn.BatchNorm1d(hidden_dim)
        layers["gelu2"] = nn.GELU()
        layers["fc3"] = nn.Linear(hidden_dim, out_dim)
        self.fc = nn.Sequential(layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # (B, D) -> (B, out_dim)


class Prototypes(nn.Module):
    """K learnable prototype vectors (K, d); normalised inside the loss, never weight-decayed."""

    def __init__(self, num_prototypes: int = 1024, dim: int = 256, frozen: bool = False):
        super().__init__()
        # as the original: uniform in [-1/sqrt(d), 1/sqrt(d)]
        bound = dim**-0.5
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim).uniform_(-bound, bound), requires_grad=not frozen)

    def forward(self) -> torch.Tensor:
        return self.weight
