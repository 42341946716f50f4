"""Batched views (vitmsn.msn.batch_views) against torchvision's per-image transforms."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from vitmsn.msn import batch_views as bv
from vitmsn.msn.transforms import ViewConfig


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(0))


FACTORS = torch.tensor([0.4, 1.0, 1.3, 0.8, 1.6, 0.0])


@pytest.mark.parametrize("ours, theirs", [(bv.adjust_brightness, TF.adjust_brightness),
                                          (bv.adjust_contrast, TF.adjust_contrast),
                                          (bv.adjust_saturation, TF.adjust_saturation)])
def test_colour_ops_match_torchvision_per_image(images, ours, theirs):
    ref = torch.stack([theirs(images[i], float(FACTORS[i])) for i in range(len(images))])
    torch.testing.assert_close(ours(images, FACTORS), ref, atol=1e-6, rtol=0)


def test_hue_matches_torchvision_per_image(images):
    shifts = torch.tensor([-0.5, -0.3, 0.0, 0.1, 0.25, 0.45])
    ref = torch.stack([TF.adjust_hue(images[i], float(shifts[i])) for i in range(len(images))])
    torch.testing.assert_close(bv.adjust_hue(images, shifts), ref, atol=1e-5, rtol=0)


def test_one_channel_colour_ops(images):
    gray = images[:, :1]
    torch.testing.assert_close(bv.adjust_contrast(gray, FACTORS),
                               torch.stack([TF.adjust_contrast(gray[i], float(FACTORS[i])) for i in range(6)]))
    assert bv.adjust_saturation(gray, FACTORS) is gray and bv.adjust_hue(gray, FACTORS) is gray


def test_blur_matches_torchvision_per_image(images):
    sigma = torch.tensor([0.5, 1.0, 0.0, 2.0, 1.5, 0.1])
    ref = torch.stack([TF.gaussian_blur(images[i], [7, 7], [float(sigma[i])] * 2) if sigma[i] > 0 else images[i]
                       for i in range(len(images))])
    torch.testing.assert_close(bv.gaussian_blur(images, sigma, 7), ref, atol=1e-6, rtol=0)


def test_resized_crop_is_bilinear_inside_the_box(images):
    boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0], [0.0, 0.0, 24.0, 20.0], [5.0, 1.0, 14.0, 14.0]])
    out = bv.resized_crops(images[:3], boxes, 28)
    for i, (x0, y0, w, h) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(images[i], y0, x0, h, w, [28, 28], antialias=True)
        # torchvision repeats the box's edge pixels, roi_align reads the pixels beyond it: compare inside
        torch.testing.assert_close(out[i, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-5, rtol=0)
    # the whole image at its own size is the image itself
    whole = bv.resized_crops(images, torch.tensor([[0.0, 0.0, 24.0, 20.0]] * 6), 20)
    assert whole.shape == (6, 3, 20, 20)
    square = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(bv.resized_crops(square, torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2), 16), square)


def test_shrinking_averages_samples():
    """A 2x shrink of a checkerboard is flat grey (torchvision's antialiased resize gives the same)."""
    board = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    x = board.float()[None, None]
    out = bv.resized_crops(x, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 8)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(1)
    n, scale, ratio = 20000, (0.3, 1.0), (3 / 4, 4 / 3)
    b = bv.crop_boxes(n, 28, 28, scale, ratio, g)
    x0, y0, w, h = b.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 28).all() and (y0 + h <= 28).all()
    assert (w >= 1).all() and (h >= 1).all()
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(28, scale=scale, ratio=ratio)
    ref = [rrc.make_params([torch.zeros(1, 28, 28)]) for _ in range(n)]
    ref_area = torch.tensor([p["height"] * p["width"] for p in ref], dtype=torch.float64)
    ref_left = torch.tensor([p["left"] for p in ref], dtype=torch.float64)
    for ours, theirs in (((w * h), ref_area), (x0, ref_left)):
        assert abs(ours.mean() - theirs.mean()) < 3 * theirs.std() / math.sqrt(n) * 1.5
    # nothing fits a 10x1 image at these scales and ratios: torchvision's central fallback
    wide = bv.crop_boxes(5, 1, 10, (0.5, 1.0), (1.0, 1.0), g)
    assert wide.tolist() == [[4.0, 0.0, 1.0, 1.0]] * 5


def _config(**kw) -> ViewConfig:
    return ViewConfig(rand_size=28, focal_size=12, focal_views=2, mean=(0.5,) * 3, std=(0.25,) * 3, **kw)


def test_views_shapes_determinism_and_normalisation():
    imgs = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    make = bv.BatchViews(_config())
    a = make(imgs, torch.Generator().manual_seed(3))
    b = make(imgs, torch.Generator().manual_seed(3))
    c = make(imgs, torch.Generator().manual_seed(4))
    assert [tuple(v.shape) for v in a] == [(8, 3, 28, 28)] * 2 + [(8, 3, 12, 12)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert all(v.dtype == torch.float32 for v in a)
    # no augmentation: the views are the normalised image, replicated to 3 channels
    plain = bv.BatchViews(_config(rand_crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0,
                                  color_jitter_strength=0.0, blur_prob=0.0))
    v = plain(imgs, torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(v, ((imgs.float() / 255 - 0.5) / 0.25).expand(-1, 3, -1, -1))


def test_slices_of_a_global_batch_equal_the_whole_batch():
    """Two processes with the same seed, each with half the batch, make the views of one process."""
    imgs = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    make = bv.BatchViews(ViewConfig(rand_size=16, focal_size=8, focal_views=1, grayscale_prob=0.5))
    whole = make(imgs, torch.Generator().manual_seed(5))
    halves = [make(imgs[r * 4:(r + 1) * 4], torch.Generator().manual_seed(5), offset=r * 4, total=8) for r in (0, 1)]
    for i, v in enumerate(whole):  # equal up to the rounding of hue's HSV round trip at a zero shift
        torch.testing.assert_close(torch.cat([halves[0][i], halves[1][i]]), v, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not fit"):
        make(imgs, torch.Generator(), offset=4, total=8)


def test_views_draw_every_augmentation():
    """Over a batch, the flips, jitter, grayscale and blur each change some views and leave others alone."""
    imgs = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    base = dict(rand_size=16, focal_size=8, focal_views=0, rand_crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                hflip_prob=0.0, color_jitter_strength=0.0, grayscale_prob=0.0, blur_prob=0.0)
    plain = bv.BatchViews(ViewConfig(**base))(imgs, torch.Generator().manual_seed(0))[0]
    for change in ({"hflip_prob": 0.5}, {"color_jitter_strength": 0.5}, {"grayscale_prob": 0.5},
                   {"blur_prob": 0.5, "blur_sigma": (1.0, 2.0)}):
        v = bv.BatchViews(ViewConfig(**{**base, **change}))(imgs, torch.Generator().manual_seed(0))[0]
        changed = (v - plain).flatten(1).abs().amax(1) > 1e-4
        assert 0 < int(changed.sum()) < 64, change


def test_bad_input():
    with pytest.raises(ValueError, match="uint8 images"):
        bv.BatchViews(_config())(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.Generator())
