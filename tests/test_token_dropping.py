"""MSN's random masking drops tokens: the backbone computes only the kept ones, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from vitmsn.config import ViTMSNConfig
from vitmsn.models.layers import interpolate_pos_embed
from vitmsn.models.vit import VisionTransformer
from vitmsn.msn.masking import random_keep_indices


def backbone() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(ViTMSNConfig(**TINY)).eval()
    m.init_backbone_weights(zero_embeddings=False)
    return m


def reference(m: VisionTransformer, x: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """By hand: patchify, add position embeddings, gather the kept tokens, run the blocks, norm."""
    tokens = m.patch_embed(x) + pos[:, 1:]  # (B, P, D)
    kept = torch.stack([tokens[b, keep[b]] for b in range(len(x))])  # (B, K, D)
    h = torch.cat([(m.cls_token + pos[:, :1]).expand(len(x), -1, -1), kept], dim=1)
    for blk in m.blocks:
        h = h + blk.attn(blk.norm1(h))[0]
        h = h + blk.mlp(blk.norm2(h))
    return m.norm(h)


def test_keep_idx_equals_blocks_on_gathered_tokens():
    m = backbone()
    x = torch.randn(3, 3, 32, 32)
    for per_sample in (False, True):
        keep = random_keep_indices(3, 16, 0.5, per_sample=per_sample, generator=torch.Generator().manual_seed(1))
        assert keep.shape == (3, 8)
        with torch.no_grad():
            ours = m.forward_features(x, keep_idx=keep).tokens
        assert ours.shape == (3, 1 + 8, TINY["hidden_size"])
        torch.testing.assert_close(ours, reference(m, x, keep, m.pos_embed), atol=1e-6, rtol=0)


def test_keeping_all_tokens_is_the_plain_forward():
    m = backbone()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(x, keep_idx=keep).tokens, m.forward_features(x).tokens)


def test_focal_views_use_interpolated_position_embeddings():
    m = backbone()
    x = torch.randn(2, 3, 16, 16)  # a focal crop: a 2 x 2 grid instead of 4 x 4
    pos = interpolate_pos_embed(m.pos_embed, (4, 4), (2, 2))
    assert pos.shape == (1, 1 + 4, TINY["hidden_size"])
    with torch.no_grad():
        ours = m.forward_features(x, interpolate_pos_encoding=True).tokens
        torch.testing.assert_close(ours, reference(m, x, torch.arange(4).expand(2, -1), pos), atol=1e-6, rtol=0)


def test_dropped_tokens_get_no_gradient_and_cost_less():
    """Gradients flow only through kept patches: a dropped patch's pixels do not affect the output."""
    m = backbone()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    keep = torch.tensor([[0, 5, 10, 15]])
    m.forward_features(x, keep_idx=keep).tokens.sum().backward()
    grad = x.grad.abs().reshape(3, 4, 8, 4, 8).sum(dim=(0, 2, 4)).flatten()  # per patch
    assert (grad[keep[0]] > 0).all()
    dropped = torch.ones(16, dtype=torch.bool)
    dropped[keep[0]] = False
    assert (grad[dropped] == 0).all()


def test_patch_embedding_is_the_strided_convolution():
    """The reshape + matmul patch embedding computes the convolution its weights come from (incomplete
    last rows and columns of patches ignored, as the convolution does), forward and backward."""
    m = backbone()
    pe = m.patch_embed
    for shape in ((3, 3, 32, 32), (2, 3, 37, 45), (1, 3, 8, 16)):
        x = torch.randn(*shape, requires_grad=True)
        ours = pe(x)
        conv = pe.proj(x).flatten(2).transpose(1, 2)  # (B, P, D)
        torch.testing.assert_close(ours, conv, atol=1e-5, rtol=0)
        g = torch.randn_like(ours)
        (gx_ours, gw_ours), (gx_conv, gw_conv) = (torch.autograd.grad(y, (x, pe.proj.weight), g) for y in (ours, conv))
        torch.testing.assert_close(gx_ours, gx_conv, atol=1e-5, rtol=0)
        torch.testing.assert_close(gw_ours, gw_conv, atol=1e-4, rtol=1e-5)


def test_msn_embedding_normalises_only_the_cls_token():
    """MSNNetwork applies the final LayerNorm to the CLS token alone: the same as normalising every token."""
    from vitmsn.msn.model import MSNNetwork

    torch.manual_seed(0)
    net = MSNNetwork(ViTMSNConfig(**TINY), head_hidden_dim=32, head_output_dim=16).eval()
    x = torch.randn(3, 3, 32, 32)
    keep = random_keep_indices(3, 16, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net.head(net.encoder.forward_features(x, keep_idx=keep, interpolate_pos_encoding=True).tokens[:, 0])
        torch.testing.assert_close(net.embed(x, keep), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eager", [False, True])
def test_cls_only_last_block_is_the_first_row_forward_and_backward(eager):
    """``cls_only`` computes the last block for the CLS token alone: the same numbers and gradients as the
    first row of the full output, with kept tokens, focal sizes, head masks and either attention kernel."""
    m = backbone()
    for blk in m.blocks:
        blk.attn.eager = eager
    keep = random_keep_indices(3, 16, 0.5, generator=torch.Generator().manual_seed(2))
    cases = [dict(keep_idx=keep), dict(), dict(head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])),
             dict(interpolate_pos_encoding=True)]
    for kw in cases:
        size = 16 if "interpolate_pos_encoding" in kw else 32  # a focal view: a 2 x 2 grid
        x = torch.randn(3, 3, size, size, requires_grad=True)
        full = m.forward_features(x, **kw).tokens  # (B, 1 + K, D)
        only = m.forward_features(x, cls_only=True, **kw).tokens  # (B, 1, D)
        assert only.shape == (3, 1, TINY["hidden_size"])
        torch.testing.assert_close(only, full[:, :1], atol=1e-6, rtol=0)
        g = torch.randn_like(only)
        params = [x, *m.parameters()]
        for a, b in zip(torch.autograd.grad(full[:, :1], params, g, allow_unused=True),
                        torch.autograd.grad(only, params, g, allow_unused=True), strict=True):
            if a is None:  # the mask token of a model without one
                assert b is None
                continue
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)  # summation order only
    with pytest.raises(ValueError, match="cls_only"):
        m.forward_features(x, cls_only=True, output_hidden_states=True)
