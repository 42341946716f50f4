"""The building blocks of a Vision Transformer: patch embedding, attention, MLP and the block, written once.

Shapes in comments: B batch, N tokens (1 CLS + patches), D hidden size, H heads, hd = D / H head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> nn.Module:
    """transformers' activation names as modules ("gelu" is the exact erf form, "gelu_new" the tanh form)."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return _QuickGELU()
    table = {"relu": nn.ReLU, "selu": nn.SELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
             "linear": nn.Identity}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}")
    return table[name]()


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-dimensional tokens (a strided convolution)."""

    def __init__(self, num_channels: int, hidden_size: int, patch_size: tuple[int, int]):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, Himg, Wimg) -> (B, gh * gw, D), row-major over the patch grid
        if x.shape[1] != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the "
                f"configuration. Expected {self.num_channels} but got {x.shape[1]}."
            )
        ph, pw = self.patch_size
        if x.shape[2] < ph or x.shape[3] < pw:
            raise ValueError(f"image of size {x.shape[2]}x{x.shape[3]} is smaller than one patch ({ph}x{pw})")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The fast path is ``F.scaled_dot_product_attention``. The explicit path (softmax of q k^T) runs only when
    the attention probabilities are asked for, a head mask is given, or ``eager`` is set.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 eager: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.eager = eager
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        drop = self.attn_drop if self.training else 0.0
        weights = None
        if need_weights or head_mask is not None or self.eager:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            weights = F.dropout(weights, p=drop, training=self.training)
            if head_mask is not None:
                weights = weights * head_mask  # (1 or B, H, 1, 1) broadcast over the N x N map
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, H, N, hd)
        out = out.transpose(1, 2).reshape(B, N, D)
        return self.proj(out), (weights if need_weights else None)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, qkv_bias: bool = True, act: str = "gelu",
                 eps: float = 1e-6, drop: float = 0.0, attn_drop: float = 0.0, eager: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, eager=eager)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, act)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, N, D)
        y, weights = self.attn(self.norm1(x), head_mask=head_mask, need_weights=need_weights)
        x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


def init_weights(module: nn.Module, std: float) -> None:
    """transformers' ViT initialisation: truncated normal weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                          num_prefix: int = 1) -> torch.Tensor:
    """Resize position embeddings (1, prefix + gh*gw, D) to another patch grid, bicubic, align_corners=False."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = pos_embed.shape[-1]
    if grid.shape[1] != src_grid[0] * src_grid[1]:
        raise ValueError(f"position embeddings hold {grid.shape[1]} patches, not a {src_grid} grid")
    grid = grid.reshape(1, src_grid[0], src_grid[1], D).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=tuple(dst_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, D)
    return torch.cat([prefix, grid], dim=1)


def grid_of(num_patches: int) -> tuple[int, int]:
    """The square grid of a checkpoint's position embeddings (timm and the original MSN store squares)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} position embeddings do not form a square grid")
    return side, side
