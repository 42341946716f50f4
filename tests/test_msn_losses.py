"""Tests for vitmsn.msn.losses (MSN objective)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import leave_worker
from vitmsn.msn.losses import (
    MSNLoss,
    global_mean,
    me_max_regularizer,
    mean_entropy,
    msn_loss,
    msn_loss_from_targets,
    msn_targets,
    prototype_logits,
    sharpen,
    sharpen_logits,
    sinkhorn,
    smoothed_log_probs,
)

DT = torch.float64


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------------
# Independent naive reference of the original computation (float64, written from its description):
# predictions = softmax(cos / tau) @ smoothed one-hot prototype labels; targets = p**(1/T) renormalised,
# optionally Sinkhorn-balanced (normalise total, then alternately rows to 1/K and columns to 1/B, finally
# x B); ce = mean_n sum_k log(p ** -t); me-max = -sum log(pbar ** -pbar) + log K; ent = mean sum log(p ** -p).
# --------------------------------------------------------------------------------------------------


def ref_sinkhorn(t: torch.Tensor, iters: int) -> torch.Tensor:
    q = t.T.clone()  # (K, B)
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        for i in range(k):
            q[i] = q[i] / q[i].sum() / k
        for j in range(b):
            q[:, j] = q[:, j] / q[:, j].sum() / b
    return (q * b).T


def ref_msn(anchor, target, protos, views, tau=0.1, T=0.25, smoothing=0.0, use_sinkhorn=False, iters=3):
    k = protos.shape[0]
    labels = torch.full((k, k), smoothing / k, dtype=anchor.dtype)
    for i in range(k):
        labels[i, i] = 1.0 - smoothing + smoothing / k

    def snn(x, p):
        xn = x / x.norm(dim=1, keepdim=True)
        pn = p / p.norm(dim=1, keepdim=True)
        return torch.softmax(xn @ pn.T / tau, dim=1) @ labels

    probs = snn(anchor, protos)
    with torch.no_grad():
        t = snn(target, protos) ** (1.0 / T)
        t = t / t.sum(dim=1, keepdim=True)
        if use_sinkhorn:
            t = ref_sinkhorn(t, iters)
        t_rep = torch.cat([t for _ in range(views)], dim=0)
    ce = torch.mean(torch.sum(torch.log(probs ** (-t_rep)), dim=1))
    avg = probs.mean(dim=0)
    rloss = -torch.sum(torch.log(avg ** (-avg))) + math.log(k)
    ent = torch.mean(torch.sum(torch.log(probs ** (-probs)), dim=1))
    return ce, rloss, ent, t


def rand_inputs(views=3, batch=4, k=5, d=6, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(views * batch, d, generator=g, dtype=dtype)
    t = torch.randn(batch, d, generator=g, dtype=dtype)
    p = torch.randn(k, d, generator=g, dtype=dtype)
    return a, t, p


# --------------------------------------------------------------------------------------------------
# Hand-computed examples
# --------------------------------------------------------------------------------------------------


def test_prototype_logits_hand():
    z = torch.tensor([[1.0, 1.0], [0.0, -2.0]], dtype=DT)
    q = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=DT)
    out = prototype_logits(z, q, 0.1)
    r = 1 / math.sqrt(2) / 0.1
    expected = torch.tensor([[r, r], [0.0, -10.0]], dtype=DT)
    torch.testing.assert_close(out, expected)


def test_loss_terms_hand_computed_k2():
    # tau = 1, T = 0.5, prototypes e1, e2. Anchor b=0 is e1 (logits [1, 0]), anchor b=1 is e2.
    # Target b=0 is e2 (logits [0, 1]), target b=1 is e1.
    # p_0 = [s(1), s(-1)], p_1 = [s(-1), s(1)] with s = sigmoid.
    # targets: [s(-1), s(1)]^2 renormalised = softmax([0, 2]) = [s(-2), s(2)] (and mirrored for b=1).
    # ce = -(s(-2) log s(1) + s(2) log s(-1)) for both samples.
    # p_bar = [1/2, 1/2] -> me_max = 0. entropy = -(s(1) log s(1) + s(-1) log s(-1)).
    protos = torch.eye(2, dtype=DT)
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=DT)
    out = msn_loss(
        anchors, targets, protos, num_anchor_views=1, temperature=1.0, sharpen_T=0.5, entropy_weight=0.5
    )
    ce = -(sig(-2) * math.log(sig(1)) + sig(2) * math.log(sig(-1)))
    ent = -(sig(1) * math.log(sig(1)) + sig(-1) * math.log(sig(-1)))
    assert out.ce.item() == pytest.approx(ce, abs=1e-12)
    assert out.me_max.item() == pytest.approx(0.0, abs=1e-12)
    assert out.entropy.item() == pytest.approx(ent, abs=1e-12)
    assert out.loss.item() == pytest.approx(ce + 0.5 * ent, abs=1e-12)
    torch.testing.assert_close(out.targets, torch.tensor([[sig(-2), sig(2)], [sig(2), sig(-2)]], dtype=DT))
    assert out.num_unique_targets == 2
    assert out.max_target.item() == pytest.approx(sig(2))
    assert out.min_target.item() == pytest.approx(sig(-2))


def test_me_max_hand_computed_k2():
    # Both anchors equal e1 (scaled, to exercise the normalisation): p_bar = [s(1), s(-1)],
    # me_max = log 2 + s(1) log s(1) + s(-1) log s(-1).
    protos = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=DT)
    anchors = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=DT)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT)
    out = msn_loss(anchors, targets, protos, num_anchor_views=1, temperature=1.0, me_max_weight=2.0)
    me = math.log(2) + sig(1) * math.log(sig(1)) + sig(-1) * math.log(sig(-1))
    assert out.me_max.item() == pytest.approx(me, abs=1e-12)
    assert out.loss.item() == pytest.approx(out.ce.item() + 2.0 * me, abs=1e-12)
    assert out.num_unique_targets == 1


def test_k3_hand_computed_cross_entropy_with_label_smoothing():
    # K = 3, tau = 1, anchor logits [1, 0, 0]: p = [e, 1, 1] / (e + 2). Smoothing s = 0.3:
    # p_s = 0.7 p + 0.1. Target = anchor, T = 1 => target = p_s, ce = H(p_s) = -sum p_s log p_s.
    protos = torch.eye(3, dtype=DT)
    z = torch.tensor([[1.0, 0.0, 0.0]], dtype=DT)
    out = msn_loss(z, z, protos, num_anchor_views=1, temperature=1.0, sharpen_T=1.0, label_smoothing=0.3)
    e = math.e
    p = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    ps = [0.7 * x + 0.1 for x in p]
    h = -sum(x * math.log(x) for x in ps)
    assert out.ce.item() == pytest.approx(h, abs=1e-12)
    assert out.entropy.item() == pytest.approx(h, abs=1e-12)
    assert out.me_max.item() == pytest.approx(math.log(3) - h, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Against the naive reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("use_sinkhorn", [False, True])
@pytest.mark.parametrize("T", [0.25, 1.0])
def test_matches_reference(smoothing, use_sinkhorn, T):
    a, t, p = rand_inputs()
    a_ref, p_ref = a.clone().requires_grad_(), p.clone().requires_grad_()
    a_new, p_new = a.clone().requires_grad_(), p.clone().requires_grad_()
    ce_r, me_r, ent_r, t_r = ref_msn(a_ref, t, p_ref, 3, T=T, smoothing=smoothing, use_sinkhorn=use_sinkhorn)
    out = msn_loss(
        a_new,
        t,
        p_new,
        num_anchor_views=3,
        sharpen_T=T,
        label_smoothing=smoothing,
        use_sinkhorn=use_sinkhorn,
        me_max_weight=0.7,
        entropy_weight=0.3,
    )
    torch.testing.assert_close(out.targets, t_r)
    torch.testing.assert_close(out.ce, ce_r)
    torch.testing.assert_close(out.me_max, me_r)
    torch.testing.assert_close(out.entropy, ent_r)
    (ce_r + 0.7 * me_r + 0.3 * ent_r).backward()
    out.loss.backward()
    torch.testing.assert_close(a_new.grad, a_ref.grad)
    torch.testing.assert_close(p_new.grad, p_ref.grad)


@pytest.mark.parametrize("sinkhorn_iters", [0, 3])
@pytest.mark.parametrize("T", [0.25, 0.5])
def test_terms_match_lightly(sinkhorn_iters, T):
    """Term by term against a second MSN implementation (lightly's MSNLoss): the cross-entropy to the
    sharpened (and Sinkhorn-balanced) targets, ME-MAX, and their sum with its gradients."""
    lightly_msn = pytest.importorskip("lightly.loss.msn_loss")
    a, t, p = rand_inputs(views=4, batch=6, k=7, d=5, seed=3)
    ref = lightly_msn.MSNLoss(temperature=0.1, sinkhorn_iterations=sinkhorn_iters, regularization_weight=0.0)
    ce_ref = ref(a, t, p, target_sharpen_temperature=T)
    anchor_probs = lightly_msn.prototype_probabilities(
        torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(p, dim=1), 0.1)
    me_ref = ref.regularization_loss(anchor_probs.mean(0))
    out = msn_loss(a, t, p, num_anchor_views=4, temperature=0.1, sharpen_T=T, me_max_weight=1.0,
                   use_sinkhorn=sinkhorn_iters > 0, sinkhorn_iters=max(sinkhorn_iters, 1))
    torch.testing.assert_close(out.ce, ce_ref)
    torch.testing.assert_close(out.me_max, me_ref)
    # the total and its gradients (lightly's default regularization weight 1 = our me_max_weight 1)
    a1, p1 = a.clone().requires_grad_(), p.clone().requires_grad_()
    a2, p2 = a.clone().requires_grad_(), p.clone().requires_grad_()
    lightly_msn.MSNLoss(temperature=0.1, sinkhorn_iterations=sinkhorn_iters)(
        a1, t, p1, target_sharpen_temperature=T).backward()
    msn_loss(a2, t, p2, num_anchor_views=4, sharpen_T=T, use_sinkhorn=sinkhorn_iters > 0,
             sinkhorn_iters=max(sinkhorn_iters, 1)).loss.backward()
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(p2.grad, p1.grad)


def test_float32_stable_where_naive_form_fails():
    # Very confident predictions underflow in float32; the log-softmax form stays finite.
    protos = torch.eye(4)
    anchors = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    targets = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = msn_loss(anchors, targets, protos, num_anchor_views=1, temperature=0.001)
    assert torch.isfinite(out.loss)
    # expected: target one-hot on k=2 for anchor at k=0 -> -log p_2 = 1000 + log(1 + 3 e^-1000) ~ 1000
    assert out.ce.item() == pytest.approx(1000.0, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def test_sharpen_identities():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g, dtype=DT) * 3
    probs = torch.softmax(logits, dim=1)
    for T in (0.1, 0.25, 0.5, 1.0):
        expected = probs ** (1 / T) / (probs ** (1 / T)).sum(dim=1, keepdim=True)
        torch.testing.assert_close(sharpen(probs, T), expected)
        torch.testing.assert_close(sharpen_logits(logits, T), expected)
        torch.testing.assert_close(sharpen_logits(torch.log_softmax(logits, 1), T), expected)
    torch.testing.assert_close(sharpen(probs, 1.0), probs)
    # sharpening lowers the entropy and keeps the argmax
    sharp = sharpen(probs, 0.25)
    assert (sharp.argmax(1) == probs.argmax(1)).all()
    assert mean_entropy(sharp.log()) < mean_entropy(probs.log())


def test_smoothed_log_probs_matches_label_matrix():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, generator=g, dtype=DT)
    s, k = 0.2, 6
    labels = torch.full((k, k), s / k, dtype=DT)
    labels.fill_diagonal_(1 - s + s / k)
    torch.testing.assert_close(smoothed_log_probs(logits, s).exp(), torch.softmax(logits, 1) @ labels)
    torch.testing.assert_close(smoothed_log_probs(logits, 0.0), torch.log_softmax(logits, 1))


def test_me_max_nonnegative_and_zero_for_uniform():
    assert me_max_regularizer(torch.full((8,), 1 / 8, dtype=DT)).item() == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        p_bar = torch.softmax(torch.randn(8, generator=g, dtype=DT) * 2, 0)
        assert me_max_regularizer(p_bar).item() >= 0
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=DT)
    assert me_max_regularizer(one_hot).item() == pytest.approx(math.log(4))


def test_sinkhorn_marginals_and_reference():
    g = torch.Generator().manual_seed(4)
    b, k = 12, 4
    probs = sharpen_logits(torch.randn(b, k, generator=g, dtype=DT) * 3, 0.25)
    for iters in (0, 1, 3):
        out = sinkhorn(probs, iters)
        torch.testing.assert_close(out, ref_sinkhorn(probs, iters))
        # every sample (row) is a distribution
        torch.testing.assert_close(out.sum(1), torch.ones(b, dtype=DT))
    torch.testing.assert_close(sinkhorn(probs, 0), probs)  # row-stochastic input is left unchanged
    # many iterations: each prototype receives B / K samples' worth of mass
    out = sinkhorn(probs, 200)
    torch.testing.assert_close(out.sum(0), torch.full((k,), b / k, dtype=DT))
    torch.testing.assert_close(out.sum(1), torch.ones(b, dtype=DT))
    with pytest.raises(ValueError):
        sinkhorn(probs, -1)


def test_sinkhorn_uses_given_reduction():
    # Emulate worker 0 of 2 whose peer holds `other`: reduce_mean(x) = (x + x_peer) / 2, with x_peer
    # computed from the same statistics on the peer. Use a symmetric split (peer == self) so that
    # the peer's statistics equal ours: the result must equal single-process Sinkhorn on [x; x].
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(5, 3, generator=g, dtype=DT), 1)
    out = sinkhorn(probs, 3, all_reduce_mean=lambda x: x)  # == identical peer
    full = sinkhorn(torch.cat([probs, probs]), 3)
    torch.testing.assert_close(out, full[:5])


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


def test_gradcheck_anchor_and_prototypes():
    a, t, p = rand_inputs(views=2, batch=3, k=4, d=5, seed=6)
    kw = dict(temperature=0.5, label_smoothing=0.1, me_max_weight=0.8, entropy_weight=0.3)
    targets = msn_targets(t, p, temperature=0.5, label_smoothing=0.1, use_sinkhorn=True)

    def f(anchor, protos):
        out = msn_loss_from_targets(anchor, protos, targets, num_anchor_views=2, **kw)
        return out.ce, out.me_max, out.entropy, out.loss

    assert torch.autograd.gradcheck(f, (a.clone().requires_grad_(), p.clone().requires_grad_()))

    # msn_loss w.r.t. anchor_z (targets do not depend on anchors) ...
    def g(anchor):
        return msn_loss(anchor, t, p, num_anchor_views=2, use_sinkhorn=True, **kw).loss

    assert torch.autograd.gradcheck(g, (a.clone().requires_grad_(),))

    # ... and its prototype gradient is the one with the targets held fixed
    p1 = p.clone().requires_grad_()
    msn_loss(a, t, p1, num_anchor_views=2, use_sinkhorn=True, **kw).loss.backward()
    p2 = p.clone().requires_grad_()
    f(a, p2)[-1].backward()
    torch.testing.assert_close(p1.grad, p2.grad)


def test_targets_carry_no_gradient():
    a, t, p = rand_inputs(seed=7)
    a.requires_grad_()
    t.requires_grad_()
    p.requires_grad_()
    out = msn_loss(a, t, p, num_anchor_views=3, use_sinkhorn=True)
    assert not out.targets.requires_grad
    assert out.targets.grad_fn is None
    out.loss.backward()
    assert t.grad is None
    assert a.grad is not None and p.grad is not None


# --------------------------------------------------------------------------------------------------
# View-major pairing
# --------------------------------------------------------------------------------------------------


def test_view_major_pairing():
    views, batch = 3, 4
    a, t, p = rand_inputs(views=views, batch=batch, seed=8)
    base = msn_loss(a, t, p, num_anchor_views=views)

    # explicit: anchor row v*B + b is compared with target row b
    log_p = torch.log_softmax(prototype_logits(a, p, 0.1), 1)
    ce = -sum((base.targets[b] * log_p[v * batch + b]).sum() for v in range(views) for b in range(batch))
    torch.testing.assert_close(base.ce, ce / (views * batch))

    # permuting whole view blocks changes nothing
    blocks = a.view(views, batch, -1)
    swapped = blocks[[2, 0, 1]].reshape(views * batch, -1)
    torch.testing.assert_close(msn_loss(swapped, t, p, num_anchor_views=views).loss, base.loss)

    # consistent permutation of images in every view and in the targets changes nothing
    perm = torch.tensor([2, 0, 3, 1])
    both = blocks[:, perm].reshape(views * batch, -1)
    torch.testing.assert_close(msn_loss(both, t[perm], p, num_anchor_views=views).loss, base.loss)

    # permuting images in one view only breaks the pairing: ce changes, me_max/entropy do not
    one = blocks.clone()
    one[1] = one[1][perm]
    out = msn_loss(one.reshape(views * batch, -1), t, p, num_anchor_views=views)
    assert not torch.allclose(out.ce, base.ce)
    torch.testing.assert_close(out.me_max, base.me_max)
    torch.testing.assert_close(out.entropy, base.entropy)

    # image-major layout is not what the loss expects
    image_major = blocks.transpose(0, 1).reshape(views * batch, -1)
    assert not torch.allclose(msn_loss(image_major, t, p, num_anchor_views=views).ce, base.ce)


# --------------------------------------------------------------------------------------------------
# Module / validation
# --------------------------------------------------------------------------------------------------


def test_module_matches_function_and_overrides_T():
    a, t, p = rand_inputs(seed=9)
    crit = MSNLoss(
        3, temperature=0.2, sharpen_T=0.3, me_max_weight=0.5, use_sinkhorn=True, label_smoothing=0.05
    )
    kw = dict(num_anchor_views=3, temperature=0.2, me_max_weight=0.5, use_sinkhorn=True, label_smoothing=0.05)
    torch.testing.assert_close(crit(a, t, p).loss, msn_loss(a, t, p, sharpen_T=0.3, **kw).loss)
    torch.testing.assert_close(crit(a, t, p, sharpen_T=0.5).loss, msn_loss(a, t, p, sharpen_T=0.5, **kw).loss)
    assert "sharpen_T=0.3" in repr(crit)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.0),
        dict(temperature=-1.0),
        dict(sharpen_T=0.0),
        dict(sharpen_T=1.5),
        dict(me_max_weight=-0.1),
        dict(entropy_weight=-1.0),
        dict(sinkhorn_iters=-1),
        dict(label_smoothing=1.0),
        dict(label_smoothing=-0.1),
    ],
)
def test_validation_errors(kwargs):
    with pytest.raises(ValueError):
        MSNLoss(2, **kwargs)
    a, t, p = rand_inputs(views=2)
    with pytest.raises(ValueError):
        msn_loss(a, t, p, num_anchor_views=2, **kwargs)


def test_shape_errors():
    a, t, p = rand_inputs(views=2, batch=4)
    with pytest.raises(ValueError):
        MSNLoss(0)
    with pytest.raises(ValueError):
        msn_loss(a, t, p, num_anchor_views=3)  # 8 rows != 3 * 4
    with pytest.raises(ValueError):
        msn_loss(a, t[:, :3], p, num_anchor_views=2)  # d mismatch
    with pytest.raises(ValueError):
        msn_loss_from_targets(a, p, torch.ones(4, 2, dtype=DT) / 2, num_anchor_views=2)  # K mismatch


def test_global_mean_identity_single_process():
    x = torch.randn(5, dtype=DT, requires_grad=True)
    y = global_mean(x)
    torch.testing.assert_close(y, x)
    (y * torch.arange(5.0, dtype=DT)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(5.0, dtype=DT))
    # a custom reduction is used in forward only; backward stays the identity
    x.grad = None
    y = global_mean(x, lambda v: v * 0 + 1)
    torch.testing.assert_close(y, torch.ones(5, dtype=DT))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(5, dtype=DT))


# --------------------------------------------------------------------------------------------------
# DDP semantics with 2 gloo workers
# --------------------------------------------------------------------------------------------------

_DDP_KW = dict(
    temperature=0.2,
    sharpen_T=0.25,
    me_max_weight=1.0,
    entropy_weight=0.5,
    use_sinkhorn=True,
    label_smoothing=0.1,
)


def _ddp_worker(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        views, batch, k, d = 2, 6, 5, 4
        a, t, p = rand_inputs(views=views, batch=batch, k=k, d=d, seed=11)
        # full-batch, single-process computation with the independent naive reference
        a_full, p_full = a.clone().requires_grad_(), p.clone().requires_grad_()
        ce_f, me_f, ent_f, t_f = ref_msn(
            a_full, t, p_full, views, tau=0.2, T=0.25, smoothing=0.1, use_sinkhorn=True, iters=3
        )
        loss_f = ce_f + 1.0 * me_f + 0.5 * ent_f
        loss_f.backward()

        # this worker's shard: images [lo, hi) of every view (view-major kept locally)
        local = batch // world_size
        lo, hi = rank * local, (rank + 1) * local
        rows = torch.cat([torch.arange(v * batch + lo, v * batch + hi) for v in range(views)])
        a_loc = a[rows].clone().requires_grad_()
        p_loc = p.clone().requires_grad_()
        out = msn_loss(
            a_loc, t[lo:hi], p_loc, num_anchor_views=views, **_DDP_KW
        )  # default: torch.distributed
        out.loss.backward()

        def avg(x: torch.Tensor) -> torch.Tensor:
            x = x.detach().clone()
            dist.all_reduce(x)
            return x / world_size

        # targets: the local rows of the global Sinkhorn
        torch.testing.assert_close(out.targets, t_f[lo:hi])
        # me_max is global on every worker; ce/entropy/loss are local means whose average is global
        torch.testing.assert_close(out.me_max, me_f)
        torch.testing.assert_close(avg(out.ce), ce_f)
        torch.testing.assert_close(avg(out.entropy), ent_f)
        torch.testing.assert_close(avg(out.loss), loss_f)
        # gradients: averaging over workers (what DDP does) gives the full-batch gradient
        torch.testing.assert_close(avg(p_loc.grad), p_full.grad)
        torch.testing.assert_close(a_loc.grad / world_size, a_full.grad[rows])
    finally:
        dist.destroy_process_group()
    leave_worker()


def test_ddp_all_reduce_semantics():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "pg")
        mp.spawn(_ddp_worker, args=(2, init_file), nprocs=2, join=True)
