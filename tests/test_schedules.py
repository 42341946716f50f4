"""Tests for vitmsn.msn.schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from vitmsn.msn.schedules import (
    WD_SCHEDULE_KEY,
    Schedule,
    cosine,
    ema_update,
    linear,
    param_groups,
    set_lr,
    set_weight_decay,
    warmup_cosine,
)

# --------------------------------------------------------------------------------------------------
# Independent reference of the original stateful schedulers (counter incremented before use).
# --------------------------------------------------------------------------------------------------


def ref_lr_values(n, warmup, start, ref, final, t_max):
    out, step = [], 0
    t_max = t_max - warmup
    for _ in range(n):
        step += 1
        if step < warmup:
            out.append(start + step / max(1, warmup) * (ref - start))
        else:
            prog = (step - warmup) / max(1, t_max)
            out.append(max(final, final + (ref - final) * 0.5 * (1 + math.cos(math.pi * prog))))
    return out


def ref_wd_values(n, ref, final, t_max):
    out = []
    for step in range(1, n + 1):
        v = final + (ref - final) * 0.5 * (1 + math.cos(math.pi * step / t_max))
        out.append(max(final, v) if final <= ref else min(final, v))
    return out


def test_warmup_cosine_endpoints_and_pieces():
    kw = dict(total_steps=100, warmup_steps=10, start_value=2e-4, ref_value=1e-3, final_value=1e-6)
    assert warmup_cosine(0, **kw) == pytest.approx(2e-4)
    assert warmup_cosine(5, **kw) == pytest.approx(6e-4)
    assert warmup_cosine(10, **kw) == pytest.approx(1e-3)
    assert warmup_cosine(100, **kw) == pytest.approx(1e-6)
    assert warmup_cosine(55, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    vals = [warmup_cosine(s, **kw) for s in range(101)]
    assert all(a < b for a, b in zip(vals[:10], vals[1:11], strict=True))  # increasing warm-up
    assert all(a > b for a, b in zip(vals[10:100], vals[11:101], strict=True))  # decreasing cosine
    assert warmup_cosine(1000, **kw) == pytest.approx(1e-6)  # clamped past the horizon
    # no warm-up: starts at the reference value
    assert warmup_cosine(0, 100, 0, 0.0, 1.0, 0.0) == 1.0


def test_warmup_cosine_matches_original_with_stretch():
    ipe, epochs, warmup_ep = 7, 6, 2
    total = ipe * epochs
    ref = ref_lr_values(total, warmup_ep * ipe, 2e-4, 1e-3, 1e-6, int(1.25 * epochs * ipe))
    # the original evaluates at step i + 1 for 0-based iteration i
    ours = [
        warmup_cosine(i + 1, total, warmup_ep * ipe, 2e-4, 1e-3, 1e-6, stretch=1.25) for i in range(total)
    ]
    assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    # stretched: the last value of the run is above the final value
    assert ours[-1] > 1e-6 * 10
    # p at the last step = (42 - 14) / (52 - 14)
    p = (total - 14) / (int(1.25 * total) - 14)
    assert ours[-1] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * p)))


def test_cosine_weight_decay_matches_original_and_stretch():
    total = 40
    ref = ref_wd_values(total, 0.04, 0.4, int(1.25 * total))
    ours = [cosine(i + 1, total, 0.04, 0.4, stretch=1.25) for i in range(total)]
    assert ours == pytest.approx(ref, rel=1e-12)
    assert cosine(0, total, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(total, total, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(total, total, 0.04, 0.4, stretch=1.25) < 0.4  # not reached with stretch
    assert cosine(50, total, 0.04, 0.4, stretch=1.25) == pytest.approx(0.4)
    vals = [cosine(s, total, 0.04, 0.4) for s in range(total + 1)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))
    assert cosine(10_000, total, 0.04, 0.4) == pytest.approx(0.4)


def test_linear_momentum_matches_original_generator():
    ipe, epochs = 5, 4
    total = ipe * epochs
    inc = (1.0 - 0.996) / (ipe * epochs * 1.25)
    gen = [0.996 + inc * i for i in range(int(ipe * epochs * 1.25) + 1)]
    ours = [linear(i, total, 0.996, 1.0, stretch=1.25) for i in range(len(gen))]
    assert ours == gen  # bit-identical
    assert linear(0, total, 0.996, 1.0) == 0.996
    assert linear(total, total, 0.996, 1.0) == 1.0
    assert linear(total - 1, total, 0.996, 1.0, stretch=1.25) < 1.0
    assert linear(10 * total, total, 0.996, 1.0, stretch=1.25) == 1.0
    # decreasing direction works too (e.g. a sharpening temperature schedule)
    assert linear(5, 10, 0.5, 0.25) == pytest.approx(0.375)


@pytest.mark.parametrize(
    "call",
    [
        lambda: linear(-1, 10, 0.0, 1.0),
        lambda: cosine(0, 0, 0.0, 1.0),
        lambda: warmup_cosine(0, 10, -1, 0.0, 1.0, 0.0),
        lambda: linear(0, 10, 0.0, 1.0, stretch=0.0),
        lambda: Schedule("nope", 10, 0.0, 1.0),  # type: ignore[arg-type]
        lambda: Schedule("warmup_cosine", 10, 0.0, 1.0),
    ],
)
def test_schedule_validation(call):
    with pytest.raises(ValueError):
        call()


def test_schedule_dataclass_roundtrip():
    s = Schedule(
        "warmup_cosine", total_steps=100, start=2e-4, final=1e-6, ref=1e-3, warmup_steps=10, stretch=1.25
    )
    assert s(37) == warmup_cosine(37, 100, 10, 2e-4, 1e-3, 1e-6, stretch=1.25)
    d = json.loads(json.dumps(s.to_dict()))
    s2 = Schedule.from_dict(d)
    assert s2 == s and s2(37) == s(37)
    assert Schedule("cosine", 40, 0.04, 0.4, stretch=1.25)(3) == cosine(3, 40, 0.04, 0.4, stretch=1.25)
    assert Schedule("linear", 40, 0.996, 1.0, stretch=1.25)(3) == linear(3, 40, 0.996, 1.0, stretch=1.25)
    assert Schedule("constant", 40, 0.25, 0.25)(39) == 0.25


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------


def test_ema_update_math():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    for p in target.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    # momentum 1 leaves the target, momentum 0 copies the online network
    snap = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    for s, t in zip(snap, target.parameters(), strict=True):
        assert torch.equal(s, t)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, o.detach())


def test_ema_update_no_grad_and_validation():
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    ema_update(target, online, 0.5)  # target params require grad: must still work (no_grad inside)
    assert all(p.grad_fn is None for p in target.parameters())
    with pytest.raises(ValueError):
        ema_update(target, online, 1.5)
    with pytest.raises(ValueError):
        ema_update(nn.Linear(2, 3), online, 0.5)
    with pytest.raises(ValueError):
        ema_update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), online, 0.5)


# --------------------------------------------------------------------------------------------------
# Param groups
# --------------------------------------------------------------------------------------------------


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split():
    model = _Toy()
    prototypes = nn.Parameter(torch.randn(8, 4))
    named = [*model.named_parameters(), ("prototypes", prototypes)]
    groups = param_groups(named, 0.04)
    decay, no_decay = groups
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert decay[WD_SCHEDULE_KEY] is True and decay["weight_decay"] == 0.04
    assert no_decay[WD_SCHEDULE_KEY] is False and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([model.cls_token, model.fc.weight])
    assert ids(no_decay["params"]) == ids([model.fc.bias, model.norm.weight, model.norm.bias, prototypes])
    # module input, custom predicate
    groups = param_groups(model, 0.1, no_decay=lambda n, p: n.startswith("norm"))
    assert ids(groups[0]["params"]) == ids([model.cls_token, model.fc.weight, model.fc.bias])
    # optimizer integration: only flagged groups follow the schedule
    opt = torch.optim.AdamW(param_groups(named, 0.04), lr=1e-3)
    set_weight_decay(opt, 0.3)
    set_lr(opt, 5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-4]


def test_param_groups_drops_empty_groups():
    groups = param_groups([("b.bias", nn.Parameter(torch.zeros(3)))], 0.04)
    assert len(groups) == 1 and groups[0][WD_SCHEDULE_KEY] is False
