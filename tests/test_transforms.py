"""MSN multi-view augmentation: counts, shapes, independence, grayscale, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from vitmsn.msn.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MSNViews,
    ViewConfig,
    blur_kernel_size,
    collate_views,
    split_views,
)


def noise_image(size=(40, 32), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


NO_AUG = dict(hflip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def test_paper_defaults():
    cfg = ViewConfig()
    assert (cfg.rand_size, cfg.focal_size, cfg.rand_views, cfg.focal_views) == (224, 96, 1, 10)
    assert cfg.rand_crop_scale == (0.3, 1.0) and cfg.focal_crop_scale == (0.05, 0.3)
    assert cfg.hflip_prob == 0.5 and cfg.color_jitter_strength == 0.5 and cfg.color_jitter_prob == 0.8
    assert cfg.grayscale_prob == 0.2 and cfg.blur_prob == 0.5 and cfg.effective_blur_sigma == (0.1, 2.0)
    assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD and cfg.num_channels == 3
    assert cfg.num_views == 12
    steps = MSNViews(cfg).compose(focal=True).transforms
    jitter = steps[3].transforms[0]
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4))
    assert jitter.hue == pytest.approx((-0.1, 0.1))
    blur = steps[5].transforms[0]  # focal views are blurred too, as in the original
    assert isinstance(blur, v2.GaussianBlur) and blur.kernel_size == (13, 13)


def test_default_views_shapes():
    views = MSNViews()(noise_image((64, 48)))
    assert len(views) == 12
    assert all(v.shape == (3, 224, 224) for v in views[:2])
    assert all(v.shape == (3, 96, 96) for v in views[2:])
    assert all(v.dtype == torch.float32 and type(v) is torch.Tensor for v in views)


def test_counts_and_order():
    cfg = ViewConfig(rand_size=20, focal_size=8, rand_views=2, focal_views=3)
    views = MSNViews(cfg)(noise_image())
    assert [tuple(v.shape) for v in views] == [(3, 20, 20)] * 3 + [(3, 8, 8)] * 3
    assert len(MSNViews(cfg.replace(focal_views=0))(noise_image())) == 3


def test_identity_normalisation():
    """No augmentation, full-image crop: output is exactly (x / 255 - mean) / std."""
    img = noise_image((16, 16))
    cfg = ViewConfig(
        rand_size=16,
        focal_size=16,
        rand_crop_scale=(1, 1),
        focal_crop_scale=(1, 1),
        crop_ratio=(1, 1),
        **NO_AUG,
    )
    views = MSNViews(cfg)(img)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    expected = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for v in views:
        torch.testing.assert_close(v, expected)


def test_target_and_anchors_independent():
    cfg = ViewConfig(rand_size=16, focal_size=8, rand_views=1, focal_views=4, **NO_AUG)
    t = MSNViews(cfg)
    img = noise_image((48, 48))
    differ = 0
    for _ in range(10):
        views = t(img)
        differ += not torch.equal(views[0], views[1])
        assert len({v.sum().item() for v in views[2:]}) > 1  # focal crops differ from each other
    assert differ >= 9  # crops are drawn independently


def test_reproducible_under_manual_seed():
    t = MSNViews(ViewConfig(rand_size=24, focal_size=10, focal_views=3))
    img = noise_image()
    torch.manual_seed(123)
    a = t(img)
    torch.manual_seed(123)
    b = t(img)
    torch.manual_seed(124)
    c = t(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_grayscale_config():
    cfg = ViewConfig.fashion_mnist()
    assert (cfg.rand_size, cfg.focal_size, cfg.num_channels, cfg.mean, cfg.std) == (
        28,
        12,
        1,
        (0.2860,),
        (0.3530,),
    )
    assert cfg.effective_blur_sigma == pytest.approx((0.0125, 0.25))  # scaled by 28 / 224
    t = MSNViews(cfg)
    for img in (noise_image((28, 28), "L"), noise_image((28, 28), "RGB")):
        views = t(img)
        assert len(views) == 12
        assert all(v.shape == (1, 28, 28) for v in views[:2]) and all(
            v.shape == (1, 12, 12) for v in views[2:]
        )
    steps = t.compose().transforms
    assert not any(isinstance(s, v2.RandomGrayscale) for s in steps)
    jitter = steps[3].transforms[0]
    assert jitter.saturation is None and jitter.hue is None and jitter.brightness is not None
    assert steps[4].transforms[0].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="mean/std"):
        ViewConfig(num_channels=1)  # ImageNet statistics have 3 values
    with pytest.raises(ValueError, match="num_channels"):
        ViewConfig(num_channels=2, mean=(0, 0), std=(1, 1))


def test_gray_image_three_channel_model():
    cfg = ViewConfig.fashion_mnist(num_channels=3, mean=(0.286,) * 3, std=(0.353,) * 3, focal_views=4)
    views = MSNViews(cfg)(noise_image((28, 28), "L"))
    assert len(views) == 6 and views[0].shape == (3, 28, 28) and views[-1].shape == (3, 12, 12)
    for v in views:
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])
    # colour images keep distinct channels
    colour = MSNViews(cfg)(noise_image((28, 28), "RGB"))
    assert any(not torch.equal(v[0], v[1]) for v in colour)


def test_tensor_input():
    t = MSNViews(ViewConfig(rand_size=12, focal_size=6, focal_views=2))
    x = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert [tuple(v.shape) for v in t(x)] == [(3, 12, 12)] * 2 + [(3, 6, 6)] * 2
    assert t(x[0])[0].shape == (3, 12, 12)
    with pytest.raises(ValueError):
        t(torch.zeros(4, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError):
        t(np.zeros((8, 8)))


def test_small_sizes_and_blur_kernel():
    assert blur_kernel_size(2.0, 224) == 13
    assert blur_kernel_size(2.0, 12) == 11  # clamped to the view
    assert blur_kernel_size(2.0, 96, kernel_size=23) == 23
    assert blur_kernel_size(0.25, 28) == 3
    assert blur_kernel_size(2.0, 2) == 1
    cfg = ViewConfig(rand_size=8, focal_size=3, blur_prob=1.0, blur_sigma=(0.1, 2.0), focal_views=3)
    for img in (noise_image((5, 7)), noise_image((300, 4))):
        views = MSNViews(cfg)(img)
        assert views[0].shape == (3, 8, 8) and views[-1].shape == (3, 3, 3)
        assert all(torch.isfinite(v).all() for v in views)
    assert ViewConfig(blur_sigma=(0.5, 1.0), rand_size=28).effective_blur_sigma == (0.5, 1.0)
    with pytest.raises(ValueError, match="odd"):
        ViewConfig(blur_kernel_size=4)


def test_compose_matches_shapes():
    cfg = ViewConfig(rand_size=16, focal_size=8)
    t = MSNViews(cfg)
    assert t.compose()(noise_image()).shape == (3, 16, 16)
    assert t.compose(focal=True)(noise_image()).shape == (3, 8, 8)


def test_collate_and_split():
    cfg = ViewConfig(rand_size=12, focal_size=6, rand_views=2, focal_views=3)
    t = MSNViews(cfg)
    batch = [(t(noise_image(seed=i)), i) for i in range(4)]
    views, labels = collate_views(batch)
    assert labels.tolist() == [0, 1, 2, 3] and labels.dtype == torch.int64
    assert len(views) == 6 and views[0].shape == (4, 3, 12, 12) and views[5].shape == (4, 3, 6, 6)
    assert torch.equal(views[2][1], batch[1][0][2])
    targets, rand, focal = t.split(views)
    assert targets.shape == (4, 3, 12, 12) and rand.shape == (8, 3, 12, 12) and focal.shape == (12, 3, 6, 6)
    # view-major: rows v*B .. v*B + B - 1 hold view v of every image
    assert torch.equal(rand[4:8], views[2]) and torch.equal(focal[8:12], views[5])
    assert torch.equal(targets, views[0])
    _, _, none = split_views(views[:3], rand_views=2)
    assert none is None
    _, empty, focal_only = split_views([views[0], *views[3:]], rand_views=0)
    assert empty.shape == (0, 3, 12, 12) and torch.equal(focal_only, focal)
    with pytest.raises(ValueError, match="same shape"):
        split_views(views, rand_views=1)  # wrong R: a random view would land among the focal ones
    with pytest.raises(ValueError):
        split_views(views[:2], rand_views=2)
    with pytest.raises(ValueError):
        collate_views([])


def test_thread_count_left_alone_by_default(monkeypatch):
    """The default makes no set_num_threads call (one slows SDPA process-wide); single_thread=True restores."""
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    img = noise_image((28, 28), "L")
    MSNViews(ViewConfig.fashion_mnist())(img)
    assert calls == []
    threads = torch.get_num_threads()
    t = MSNViews(ViewConfig.fashion_mnist(), single_thread=True)
    torch.manual_seed(0)
    one = t(img)
    assert torch.get_num_threads() == threads
    assert calls == ([1, threads] if threads > 1 else [])
    torch.manual_seed(0)  # the same views either way
    assert all(torch.equal(a, b) for a, b in zip(one, MSNViews(ViewConfig.fashion_mnist())(img), strict=True))
