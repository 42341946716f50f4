"""Random patch dropping for MSN anchor views, expressed as index tensors of patches to KEEP.

MSN (Assran et al. 2022, Sec. 3, input masking) masks the anchor view by dropping a random subset
of its patch tokens before the transformer blocks, so the encoder only processes the kept tokens.
Masks are created outside the model as LongTensors of kept patch indices in ``[0, num_patches)``
(the class token is not counted: the model always keeps it and offsets patch indices by one).

Facts from the original implementation (``src/deit.py``, ``forward_features``):

* the number of kept patches is ``floor(num_patches * (1 - patch_drop))``;
* one random permutation is drawn per forward call and shared by every image of the batch (all
  random anchor views are concatenated into one forward, so they all share it); focal views are
  small crops and are never masked;
* the kept indices are not sorted there; sorting them does not change the encoder output because
  position embeddings are added before dropping and self-attention is permutation-equivariant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vitmsn.config import check_int

__all__ = ["keep_all", "num_kept_patches", "random_keep_indices"]


def num_kept_patches(num_patches: int, drop_ratio: float) -> int:
    """Number of patches kept: ``floor(num_patches * (1 - drop_ratio))`` exactly as the original.

    The product is evaluated in floating point like the original, so e.g. ``(196, 0.15) -> 166``.
    Raises ``ValueError`` if ``drop_ratio`` is not in ``[0, 1)`` or if nothing would be kept.
    """
    num_patches = check_int(num_patches, "num_patches", 1)
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    if drop_ratio == 0.0:
        return num_patches
    kept = int(math.floor(num_patches * (1.0 - drop_ratio)))
    if kept < 1:
        raise ValueError(f"drop_ratio={drop_ratio} keeps no patch out of {num_patches}")
    return kept


def keep_all(batch_size: int, num_patches: int, *, device: torch.device | str | None = None) -> Tensor:
    """Indices keeping every patch: (batch_size, num_patches) LongTensor with rows ``0..num_patches-1``."""
    if batch_size < 0 or num_patches < 1:
        raise ValueError(f"invalid batch_size={batch_size} / num_patches={num_patches}")
    return torch.arange(num_patches, device=device).unsqueeze(0).repeat(batch_size, 1)


def random_keep_indices(
    batch_size: int,
    num_patches: int,
    drop_ratio: float,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random subset of patch indices to keep for each image.

    Args:
        batch_size: B.
        num_patches: N, number of patch tokens (class token excluded).
        drop_ratio: fraction of patches dropped, in ``[0, 1)`` (0.15 for ViT-S/16 in MSN).
        per_sample: ``False`` (default, as the original) draws one permutation shared by the whole
            batch; ``True`` draws an independent subset for each sample.
        generator: optional ``torch.Generator`` for reproducibility; random numbers are drawn on
            the generator's device (CPU if no generator) and the result is moved to ``device``.
        device: device of the returned tensor (default: where the draws were made).

    Returns:
        (B, K) int64 tensor, K = ``floor(N * (1 - drop_ratio))`` (see :func:`num_kept_patches`),
        each row strictly increasing (sorted, unique). ``drop_ratio == 0`` keeps every patch.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    kept = num_kept_patches(num_patches, drop_ratio)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    if kept == num_patches:
        out = keep_all(batch_size, num_patches, device=draw_device)
    elif per_sample:
        noise = torch.rand(batch_size, num_patches, generator=generator, device=draw_device)  # (B, N)
        out = noise.argsort(dim=1)[:, :kept].sort(dim=1).values  # (B, K)
    else:
        perm = torch.randperm(num_patches, generator=generator, device=draw_device)[:kept]  # (K,)
        out = perm.sort().values.unsqueeze(0).repeat(batch_size, 1)  # (B, K)
    return out if device is None else out.to(device)
