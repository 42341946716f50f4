"""The building blocks of a Vision Transformer: patch embedding, attention, MLP and the block, written once.

Shapes in comments: B batch, N tokens (1 CLS + patches), D hidden size, H heads, hd = D / H head size.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def activation(name: str) -> nn.Module:
    """transformers' activation names as modules ("gelu" is the exact erf form, "gelu_new" the tanh form)."""
    if name in ("gelu", "gelu_python"):
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh"):
        return nn.GELU(approximate="tanh")
    table = {"relu": nn.ReLU, "selu": nn.SELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
             "linear": nn.Identity, "sigmoid": nn.Sigmoid, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU,
             "hardswish": nn.Hardswish, "mish": nn.Mish, "quick_gelu": _QuickGELU, "gelu_10": _ClippedGELU,
             "relu2": _SquaredReLU, "laplace": _Laplace, "sqrtsoftplus": _SqrtSoftplus}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}")
    return table[name]()


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ClippedGELU(nn.Module):  # "gelu_10"
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x).clamp(-10.0, 10.0)


class _SquaredReLU(nn.Module):  # "relu2"
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


class _Laplace(nn.Module):  # "laplace": the normal CDF at (x - 0.707107) / 0.282095
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))


class _SqrtSoftplus(nn.Module):  # "sqrtsoftplus"
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x).sqrt()


# --------------------------------------------------------------------------- the linear layers' fast path
#
# In CPU inference every ``nn.Linear`` of a block runs as one oneDNN matmul whose epilogue adds the bias
# (and applies the MLP's GELU) while the output tile is still in cache. ``F.linear`` instead copies the
# broadcast bias into the output, then lets MKL's sgemm accumulate into it, then GELU reads and writes the
# (B, N, 4D) activation once more. The weights are reordered once into oneDNN's blocked layout and kept
# beside the model (:class:`_PackedWeights`), and on large inputs a block sees at most ~1024 tokens at a
# time (whole images; see ``Block.forward``) so that the (tokens, 4D) MLP activation stays in cache. Same
# fp32 arithmetic, another summation order: outputs differ from ``F.linear`` by a few ulp (~1e-6 on ViT-B).
# bench/ab.py measures each part against the alternatives; docs/BENCHMARKS.md has the numbers.
#
# oneDNN's op has no autograd formula. The path above is taken only when no gradient is needed
# (``torch.no_grad`` / ``torch.inference_mode``, or no input requiring grad). In training, linear layers of
# at least TRAIN_MIN_FEATURES on both sides run as :class:`_TrainLinear` (oneDNN's forward and input
# gradient, MKL's weight gradient). Both only for fp32 CPU tensors, outside autocast and torch.compile /
# tracing (which do their own fusions). Anything else takes ``F.linear``.

try:
    _LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default
    _REORDER_WEIGHT = torch.ops.mkldnn._reorder_linear_weight.default
except (AttributeError, RuntimeError):  # a build of torch without oneDNN
    _LINEAR_POINTWISE = _REORDER_WEIGHT = None

#: tokens a block processes at once in CPU inference (whole images: at least one image per chunk), for
#: inputs of more than CHUNK_ABOVE tokens whose MLP activation (tokens x mlp hidden, fp32) is larger than
#: CHUNK_MIN_BYTES. bench/ab.py on two CPUs: chunks help at ViT batch 32 (6304 tokens) and cost 0.5-9 % at
#: batch 8 (1576 tokens); bench/parts.py (rows ``target``): they gain nothing beyond the spread on the
#: fashion-mnist preset's EMA target (2176 tokens, but a 4.4 MB activation, hidden size 128), so small
#: activations run whole.
CHUNK_TOKENS = 1024
CHUNK_ABOVE = 2 * CHUNK_TOKENS
CHUNK_MIN_BYTES = 16 << 20


#: optimizer steps taken in this process, by any optimizer (a global step hook counts them): fused optimizers
#: update the weights in place without advancing their version counters (torch 2.14's fused AdamW), so a
#: step of any optimizer makes every packed copy be remade at its next use
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class _PackedWeights:
    """oneDNN's blocked copy of each weight used in CPU inference, made on first use.

    Kept here rather than on the module because such tensors can be neither deep-copied nor saved. An entry
    is remade when the weight changes (an in-place update, which advances its version counter; any optimizer
    step; ``.to()``) and dropped when the weight is freed. A change through ``.data``, which bypasses the
    version counter, is not seen: call ``release_packed_weights()`` after one. Costs one more copy of the
    weights in memory; ``release_packed_weights()`` frees them all.
    """

    def __init__(self) -> None:
        # id(weight) -> (weak reference, version, data pointer, optimizer steps, packed copy) at packing time
        self._cache: dict[int, tuple[weakref.ref, int, int, int, torch.Tensor]] = {}

    def get(self, w: torch.Tensor) -> torch.Tensor:
        try:
            version = w._version
        except RuntimeError:  # an inference tensor has no version counter: no way to see it change
            return w
        entry = self._cache.get(id(w))
        key = (version, w.data_ptr(), _OPTIMIZER_STEPS[0])
        if entry is not None and entry[0]() is w and entry[1:4] == key:
            return entry[4]
        if entry is None or entry[0]() is not w:
            weakref.finalize(w, self._cache.pop, id(w), None)
        packed = _REORDER_WEIGHT(w.detach(), CHUNK_TOKENS)
        self._cache[id(w)] = (weakref.ref(w), *key, packed)
        return packed

    def clear(self) -> None:
        self._cache.clear()


_PACKED = _PackedWeights()


def release_packed_weights() -> None:
    """Free the oneDNN copies of the weights (they are made again on the next CPU inference)."""
    _PACKED.clear()

_FAST_CPU = os.environ.get("VITMSN_FAST_CPU", "1") != "0"
_PACK = True  # pre-pack weights for oneDNN (off while weights change between every two uses)

# torch >= 2.4 / 2.3 names, with the older ones as fallbacks
if hasattr(torch, "get_autocast_dtype"):
    def _cpu_autocast() -> bool:
        return torch.is_autocast_enabled("cpu")
else:  # pragma: no cover
    def _cpu_autocast() -> bool:
        return torch.is_autocast_cpu_enabled()
#: whether torch.compile (dynamo) is tracing the calling code (also read by vitmsn.distributed)
is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling
_is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None) or (lambda: False)


def set_fast_cpu_inference(enabled: bool) -> bool:
    """Turn the oneDNN paths of CPU inference and training on or off (env ``VITMSN_FAST_CPU=0`` starts with
    them off; off, every linear layer runs ``F.linear``).

    Returns the previous setting.
    """
    global _FAST_CPU
    previous, _FAST_CPU = _FAST_CPU, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_cpu_inference(enabled: bool) -> Iterator[None]:
    """``with fast_cpu_inference(False): ...`` runs the block with the plain ``F.linear`` path."""
    previous = set_fast_cpu_inference(enabled)
    try:
        yield
    finally:
        set_fast_cpu_inference(previous)


@contextlib.contextmanager
def unpacked_weights() -> Iterator[None]:
    """CPU inference with oneDNN reordering the weights on the fly instead of keeping packed copies.

    For weights that change between every two forwards, as MSN's EMA target encoder: packing them again
    at every step costs more than it saves (``bench/parts.py``, rows ``target``, measures both).
    """
    global _PACK
    previous, _PACK = _PACK, False
    try:
        yield
    finally:
        _PACK = previous


def _onednn_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's linear may run here at all: fp32 CPU tensors, eager mode (compile, export and tracing
    do their own fusions), no autocast."""
    return (
        _FAST_CPU
        and _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not _cpu_autocast()
        and not is_compiling()
        and not _is_exporting()
        and not torch.jit.is_tracing()
    )


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The inference path: no gradient needed."""
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) and _onednn_allowed(x, weight)


#: in training (with autograd) a linear layer runs its forward and input-gradient products through oneDNN when
#: both of its sizes are at least this (see :class:`_TrainLinear`)
TRAIN_MIN_FEATURES = 256
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _train_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # (the shape last: read under torch.jit.trace it would be recorded, differently with and without grad)
    return _onednn_allowed(x, weight) and not _functorch_active() and min(weight.shape) >= TRAIN_MIN_FEATURES


class _TrainLinear(torch.autograd.Function):
    """``F.linear`` for CPU training: the forward (bias in the epilogue) and the input's gradient as oneDNN
    matmuls, the weight's gradient as ``torch.mm`` (MKL's sgemm) and the bias's as a sum.

    On the AMD machine of ``bench/`` this ran ViT-S/16's training shapes (1336-2960 tokens, sizes 384 to
    1536) 1.07-1.18x as fast as ``F.linear``, forward + backward, and the fashion-mnist preset's 128-wide
    layers even (``bench/parts.py``, rows ``train linear``), hence :data:`TRAIN_MIN_FEATURES`; timed alone,
    oneDNN's products led MKL's sgemm in the forward and input gradient and trailed it in the weight
    gradient. Same fp32 arithmetic in another summation order (a few ulp). With ``create_graph`` the backward
    runs as differentiable torch ops, so higher derivatives work.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")  # (..., in) -> (..., out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # (..., out)
        grad_2d = grad.reshape(-1, grad.shape[-1])  # (T, out)
        need_x, need_w, need_b = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: a backward that autograd can differentiate again
            gx = grad.matmul(weight) if need_x else None
        else:
            gx = _LINEAR_POINTWISE(grad, weight.t(), None, "none", [], "") if need_x else None  # (..., in)
        gw = grad_2d.t().mm(x.reshape(-1, x.shape[-1])) if need_w else None  # (out, in)
        gb = grad_2d.sum(0) if need_b and ctx.has_bias else None  # (out,)
        return gx, gw, gb


def _onednn_activation(act: nn.Module | None) -> tuple[str, str] | None:
    """The oneDNN post-op (name, algorithm) computing ``act`` exactly, or None if it has none."""
    if act is None:
        return "none", ""
    if type(act) is nn.GELU:
        return "gelu", act.approximate  # "none": exact erf form; "tanh"
    if type(act) is nn.ReLU:
        return "relu", ""
    return None


def linear(x: torch.Tensor, layer: nn.Linear, act: nn.Module | None = None) -> torch.Tensor:
    """``act(layer(x))`` (x: (..., in) -> (..., out)); in CPU inference one fused oneDNN call, in CPU training
    oneDNN's products where they are faster (:class:`_TrainLinear`)."""
    if _use_onednn(x, layer.weight):
        w = _PACKED.get(layer.weight) if _PACK else layer.weight
        post = _onednn_activation(act)
        if post is not None:
            return _LINEAR_POINTWISE(x, w, layer.bias, post[0], [], post[1])
        return act(_LINEAR_POINTWISE(x, w, layer.bias, "none", [], ""))
    if torch.is_grad_enabled() and _train_onednn(x, layer.weight):
        y = _TrainLinear.apply(x, layer.weight, layer.bias)
    else:
        y = F.linear(x, layer.weight, layer.bias)
    return y if act is None else act(y)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-dimensional tokens.

    The weights are those of a strided convolution (``proj``, as every ViT checkpoint stores them); the
    computation is the same product written as a reshape and one matmul, on CPU about as fast as the
    convolution, forward and backward (``bench/parts.py``, rows ``patch``: faster on the fashion-mnist preset's
    7 x 7 patches and ViT-S/16 at 224 px; at 96 px the convolution was ahead in three runs of five, by 1-5
    percent). The outputs agree to ~2e-6. Like the convolution, it ignores the pixels of an incomplete last
    row or column of patches.
    """

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
        return F.linear(self.patchify(x), self.proj.weight.reshape(self.proj.out_channels, -1),
                        self.proj.bias)  # (B, P, D)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh * gw, C * ph * pw): each patch flattened in the convolution weight's order."""
        B, C, H, W = x.shape
        ph, pw = self.patch_size
        gh, gw = H // ph, W // pw
        if (H, W) != (gh * ph, gw * pw):
            x = x[:, :, : gh * ph, : gw * pw]
        return x.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * ph * pw)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The fast path is ``F.scaled_dot_product_attention``. The explicit path (softmax of q k^T) runs only when
    the attention probabilities are asked for, a head mask is given, or ``eager`` is set. With
    ``cls_only`` only the first token (CLS) asks the queries: the output is (B, 1, D), the keys and values
    are still those of every token.
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

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, need_weights: bool = False,
                cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        qkv = linear(x, self.qkv).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if cls_only:
            q = q[:, :, :1]  # (B, H, 1, hd)
        Nq = q.shape[2]
        drop = self.attn_drop if self.training else 0.0
        weights = None
        if need_weights or head_mask is not None or self.eager:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, Nq, N)
            weights = scores.softmax(dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
            weights = F.dropout(weights, p=drop, training=self.training)
            if head_mask is not None:
                weights = weights * head_mask  # (1 or B, H, 1, 1) broadcast over the Nq x N map
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, H, Nq, hd)
        out = out.transpose(1, 2).reshape(B, Nq, D)  # a view for SDPA's output, which is (B, Nq, H, hd) in memory
        return linear(out, self.proj), (weights if need_weights else None)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, D) -> (B, N, hidden) -> (B, N, D); the activation is fused into fc1 in CPU inference
        return linear(linear(x, self.fc1, self.act), self.fc2)


class Block(nn.Module):
    """Pre-norm transformer block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x))).

    ``cls_only=True`` computes the block's output for the CLS token alone, (B, 1, D): the same numbers as
    the first row of the full output (attention reads every token's keys and values; the projection, the
    residuals and the MLP work token by token), for a last block whose other outputs nobody reads. With
    dropout in training the random draws differ (same distribution, other numbers).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, qkv_bias: bool = True, act: str = "gelu",
                 eps: float = 1e-6, drop: float = 0.0, attn_drop: float = 0.0, eager: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, eager=eager)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, act)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, need_weights: bool = False,
                cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, N, D) -> (B, N, D), or (B, 1, D) with cls_only
        B, N, _ = x.shape
        # (the oneDNN test first: under torch.export / compile it is False and no guard on B is recorded)
        if (_use_onednn(x, self.mlp.fc1.weight) and head_mask is None and not need_weights and B > 1
                and B * N > CHUNK_ABOVE and B * N * self.mlp.fc1.out_features * x.element_size() > CHUNK_MIN_BYTES):
            # CPU inference on many tokens: whole images at a time, so that every activation stays in cache
            per = max(1, CHUNK_TOKENS // N)
            return torch.cat([self._forward(chunk, cls_only=cls_only)[0] for chunk in x.split(per)]), None
        return self._forward(x, head_mask, need_weights, cls_only)

    def _forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, need_weights: bool = False,
                 cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.norm1(x), head_mask=head_mask, need_weights=need_weights, cls_only=cls_only)
        x = (x[:, :1] if cls_only else x) + self.drop(y)
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
