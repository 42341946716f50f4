"""The oneDNN paths of CPU inference and training (vitmsn/models/layers.py) compute what the plain path computes.

Fused linear + bias + GELU, pre-packed weights and token chunks change only the summation order: outputs
stay within 1e-5 of transformers and of vitmsn's own plain ``F.linear`` path.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import vitmsn
from tests.conftest import hf_fc2_weight, save_hf
from vitmsn.models import layers

ATOL = 1e-5

# the oneDNN path exists in torch builds with oneDNN and is on unless VITMSN_FAST_CPU=0
pytestmark = pytest.mark.skipif(layers._LINEAR_POINTWISE is None or not layers._FAST_CPU,
                                reason="no oneDNN fast path in this torch build, or VITMSN_FAST_CPU=0")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # 64 px, 8 px patches: 65 tokens; 40 images are 2600 tokens, run in chunks of 15 images
    ref, path = save_hf(
        tmp_path_factory, "ViTMSNModel", "ViTMSNConfig", image_size=64, attn_implementation="eager"
    )
    return ref, path


def plain(model, x, **kw):
    with layers.fast_cpu_inference(False), torch.no_grad():
        return model(x, **kw)


def test_chunked_batch_matches_transformers_and_plain_path(pair, monkeypatch):
    ref, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(40, 3, 64, 64)
    assert 40 * 65 > layers.CHUNK_ABOVE
    calls = []
    block = ours.blocks[0]

    def counted(x, *args, **kwargs):
        calls.append(len(x))
        return type(block)._forward(block, x, *args, **kwargs)

    monkeypatch.setattr(block, "_forward", counted)
    with torch.inference_mode():
        ours(x)
        assert calls == [40]  # a tiny model's MLP activation is below CHUNK_MIN_BYTES: one call
        calls.clear()
        monkeypatch.setattr(layers, "CHUNK_MIN_BYTES", 0)
        fast = ours(x).last_hidden_state
        assert len(calls) > 1 and sum(calls) == 40  # run in chunks of whole images
        expected = ref(x).last_hidden_state
    torch.testing.assert_close(fast, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast, plain(ours, x).last_hidden_state, atol=ATOL, rtol=0)


def test_weights_changed_in_place_are_repacked(pair):
    _, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = ours(x).last_hidden_state
        for p in ours.parameters():
            p.mul_(1.5)
        after = ours(x).last_hidden_state
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain(ours, x).last_hidden_state, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_weights_changed_by_an_optimizer_are_repacked(pair, fused):
    """Training steps between two evaluations, as a Trainer runs them: the fused AdamW updates the weights
    without advancing their version counters, and the evaluation after it must still see the new weights."""
    _, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(2, 3, 64, 64)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2, fused=fused)
    with torch.no_grad():
        before = ours(x).last_hidden_state  # packs the weights
    ours(x).last_hidden_state.square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = ours(x).last_hidden_state
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain(ours, x).last_hidden_state, atol=ATOL, rtol=0)


def test_unpacked_weights(pair):
    """MSN's EMA target runs with weights reordered on the fly: same outputs, no packed copies made."""
    _, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(20, 3, 64, 64)
    layers.release_packed_weights()
    with torch.no_grad(), layers.unpacked_weights():
        out = ours(x).last_hidden_state
    assert not layers._PACKED._cache
    torch.testing.assert_close(out, plain(ours, x).last_hidden_state, atol=ATOL, rtol=0)
    with torch.no_grad():
        ours(x)
    assert id(ours.blocks[0].mlp.fc1.weight) in layers._PACKED._cache  # packing is back on afterwards


def test_model_can_be_copied_and_saved_after_inference(pair):
    _, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x).last_hidden_state
    twin = copy.deepcopy(ours)
    torch.save(ours, io.BytesIO())
    with torch.no_grad():
        torch.testing.assert_close(twin(x).last_hidden_state, out, atol=0, rtol=0)


def test_training_takes_the_autograd_path(pair):
    _, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path).train()
    x = torch.randn(20, 3, 64, 64)
    out = ours(x).last_hidden_state
    assert out.grad_fn is not None
    out.square().mean().backward()
    assert all(p.grad is not None for p in ours.blocks.parameters())
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), plain(ours, x).last_hidden_state, atol=ATOL, rtol=0)


def test_attentions_and_hidden_states_on_a_large_batch(pair):
    ref, path = pair
    ours = vitmsn.ViTMSNModel.from_pretrained(path)
    x = torch.randn(20, 3, 64, 64)
    with torch.no_grad():
        o = ours(x, output_attentions=True, output_hidden_states=True)
        r = ref(x, output_attentions=True, output_hidden_states=True)
    for mine, theirs in ((o.attentions, r.attentions), (o.hidden_states, r.hidden_states)):
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_other_dtypes_and_inference_tensors(pair):
    ref, path = pair
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x).last_hidden_state
    with torch.inference_mode():  # weights made in inference mode have no version counter: not packed
        ours = vitmsn.ViTMSNModel.from_pretrained(path)
        torch.testing.assert_close(ours(x).last_hidden_state, expected, atol=ATOL, rtol=0)
    ours = vitmsn.ViTMSNModel.from_pretrained(path).double()
    with torch.no_grad():
        torch.testing.assert_close(ours(x.double()).last_hidden_state.float(), expected, atol=ATOL, rtol=0)
    layers.release_packed_weights()


def test_classifier_on_a_large_batch_matches_transformers(tmp_path_factory):
    """The classifier computes the last block for the CLS token only, also in chunks (40 x 65 tokens)."""
    ref, path = save_hf(tmp_path_factory, "ViTMSNForImageClassification", "ViTMSNConfig", image_size=64,
                        num_labels=5, attn_implementation="eager")
    ours = vitmsn.ViTMSNForImageClassification.from_pretrained(path)
    x = torch.randn(40, 3, 64, 64)
    with torch.inference_mode():
        expected = ref(x).logits
        torch.testing.assert_close(ours(x).logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(plain(ours, x).logits, expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------ training: oneDNN's products


def test_training_linear_matches_f_linear_forward_backward_and_double_backward():
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 512)
    for shape, bias in (((4, 37, 384), True), ((50, 384), False)):
        if not bias:
            lin = torch.nn.Linear(384, 512, bias=False)
        x = torch.randn(*shape, requires_grad=True)
        y = layers.linear(x, lin)
        assert type(y.grad_fn).__name__ == "_TrainLinearBackward"
        g = torch.randn(*shape[:-1], 1024)[..., ::2]  # a non-contiguous upstream gradient
        wanted = (x, lin.weight) + ((lin.bias,) if bias else ())
        got = torch.autograd.grad(y, wanted, g)
        with layers.fast_cpu_inference(False):
            y_ref = layers.linear(x, lin)
            assert type(y_ref.grad_fn).__name__ != "_TrainLinearBackward"
            ref = torch.autograd.grad(y_ref, wanted, g)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    # create_graph: a second derivative through the layer, as with F.linear
    x = torch.randn(3, 384, requires_grad=True)
    (gx,) = torch.autograd.grad(layers.linear(x, lin).square().sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(gx.sum(), x)
    with layers.fast_cpu_inference(False):
        (gx_ref,) = torch.autograd.grad(layers.linear(x, lin).square().sum(), x, create_graph=True)
        (h_ref,) = torch.autograd.grad(gx_ref.sum(), x)
    torch.testing.assert_close(h, h_ref, atol=1e-4, rtol=1e-5)


def test_training_linear_only_where_it_applies():
    x = torch.randn(5, 384, requires_grad=True)
    big, small = torch.nn.Linear(384, 384), torch.nn.Linear(384, 128)
    name = lambda y: type(y.grad_fn).__name__  # noqa: E731
    assert name(layers.linear(x, big)) == "_TrainLinearBackward"
    assert name(layers.linear(x, small)) != "_TrainLinearBackward"  # a side under TRAIN_MIN_FEATURES
    assert name(layers.linear(x.double(), big.double())) != "_TrainLinearBackward"
    big.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layers.linear(x, big)
        assert y.dtype == torch.bfloat16 and name(y) != "_TrainLinearBackward"
    # functorch transforms take F.linear
    grads = torch.func.grad(lambda w: layers.linear(x, torch.nn.Linear(384, 384)).sum() * w)(torch.tensor(1.0))
    assert torch.isfinite(grads)


def test_training_step_of_a_wide_model_matches_transformers(tmp_path_factory, monkeypatch):
    """Forward and gradients of a ViT whose linear layers take the oneDNN training path, against transformers."""
    ref, path = save_hf(tmp_path_factory, "ViTMSNModel", "ViTMSNConfig", hidden_size=256, intermediate_size=512,
                        num_attention_heads=4, num_hidden_layers=2, attn_implementation="eager")
    ours = vitmsn.ViTMSNModel.from_pretrained(path).train()
    calls = []
    apply = layers._TrainLinear.apply
    monkeypatch.setattr(layers._TrainLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    x = torch.randn(6, 3, 32, 32)
    out = ours(x).last_hidden_state
    assert len(calls) == 2 * 4  # qkv, proj, fc1, fc2 of both blocks (256 x 768, 256, 512)
    expected = ref.train()(x).last_hidden_state
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    out.square().mean().backward()
    expected.square().mean().backward()
    theirs = {k: p.grad for k, p in ref.named_parameters()}
    torch.testing.assert_close(ours.blocks[1].mlp.fc2.weight.grad, theirs[hf_fc2_weight(theirs, 1)], atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(ours.patch_embed.proj.weight.grad, theirs["embeddings.patch_embeddings.projection.weight"],
                               atol=1e-5, rtol=1e-4)
