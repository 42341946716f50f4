"""Tests for vitmsn.msn.masking (random patch dropping as kept-index tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from vitmsn.msn.masking import keep_all, num_kept_patches, random_keep_indices


@pytest.mark.parametrize(
    ("num_patches", "ratio", "expected"),
    [(196, 0.15, 166), (196, 0.0, 196), (196, 0.7, 58), (49, 0.5, 24), (10, 0.3, 7), (1, 0.0, 1)],
)
def test_num_kept_matches_original_floor(num_patches, ratio, expected):
    assert num_kept_patches(num_patches, ratio) == expected
    if ratio > 0:  # same expression as the original: floor(N * (1 - ratio))
        assert expected == int(math.floor(num_patches * (1.0 - ratio)))


@pytest.mark.parametrize("per_sample", [False, True])
def test_shapes_sorted_unique(per_sample):
    g = torch.Generator().manual_seed(0)
    idx = random_keep_indices(8, 196, 0.15, per_sample=per_sample, generator=g)
    assert idx.shape == (8, 166)
    assert idx.dtype == torch.long
    assert (idx >= 0).all() and (idx < 196).all()
    assert (idx[:, 1:] > idx[:, :-1]).all()  # strictly increasing => sorted and unique


def test_shared_vs_per_sample():
    g = torch.Generator().manual_seed(1)
    shared = random_keep_indices(6, 64, 0.5, generator=g)  # default: one permutation for the batch
    assert (shared == shared[0]).all()
    per = random_keep_indices(6, 64, 0.5, per_sample=True, generator=g)
    assert len({tuple(r.tolist()) for r in per}) > 1


@pytest.mark.parametrize("per_sample", [False, True])
def test_determinism_with_generator(per_sample):
    a = random_keep_indices(4, 49, 0.3, per_sample=per_sample, generator=torch.Generator().manual_seed(7))
    b = random_keep_indices(4, 49, 0.3, per_sample=per_sample, generator=torch.Generator().manual_seed(7))
    c = random_keep_indices(4, 49, 0.3, per_sample=per_sample, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_randomness_covers_all_patches():
    g = torch.Generator().manual_seed(2)
    idx = random_keep_indices(200, 16, 0.5, per_sample=True, generator=g)
    counts = torch.bincount(idx.flatten(), minlength=16)
    assert (counts > 0).all()
    # each patch kept with probability 1/2: ~100 of 200 times
    assert counts.min() > 60 and counts.max() < 140


@pytest.mark.parametrize("per_sample", [False, True])
def test_zero_ratio_keeps_all(per_sample):
    idx = random_keep_indices(3, 20, 0.0, per_sample=per_sample)
    assert torch.equal(idx, torch.arange(20).expand(3, 20))
    assert torch.equal(keep_all(3, 20), idx)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_invalid_ratio_raises(ratio):
    with pytest.raises(ValueError):
        random_keep_indices(2, 196, ratio)


def test_invalid_sizes_raise():
    with pytest.raises(ValueError):
        random_keep_indices(2, 0, 0.1)
    with pytest.raises(ValueError):
        random_keep_indices(-1, 10, 0.1)
    with pytest.raises(ValueError):
        num_kept_patches(4, 0.9)  # floor(0.4) == 0 patches kept


def test_empty_batch_and_device():
    assert random_keep_indices(0, 10, 0.5).shape == (0, 5)
    assert random_keep_indices(2, 10, 0.5, device="cpu").device.type == "cpu"


def test_gather_with_indices():
    # typical use: gather the kept tokens (B, N, D) -> (B, K, D)
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    idx = random_keep_indices(2, 6, 0.5, per_sample=True, generator=torch.Generator().manual_seed(3))
    kept = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    for b in range(2):
        torch.testing.assert_close(kept[b], x[b, idx[b]])
