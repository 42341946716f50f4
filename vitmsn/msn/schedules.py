"""Step-indexed schedules, EMA update and AdamW parameter groups (pre-training and fine-tuning).

Every schedule is a pure function of an integer ``step`` so an exact resume only needs the step
counter. Facts from the original MSN code (``src/utils.py``, ``src/msn_train.py``) that these
functions reproduce:

* learning rate: linear warm-up from ``start_lr`` to ``ref_lr`` over ``warmup_steps`` then a half
  cosine to ``final_lr`` (``WarmupCosineSchedule``); weight decay: half cosine from 0.04 to 0.4 with
  no warm-up (``CosineWDSchedule``); EMA momentum 0.996 -> 1.0 and sharpening temperature: linear.
* ``stretch``: every schedule is laid out over ``1.25 x`` the real number of steps
  (``T_max = int(1.25 * epochs * iterations_per_epoch)`` for the cosine schedules, increment
  ``(final - start) / (iterations_per_epoch * epochs * 1.25)`` for the linear ones), so the values at
  the end of the run do NOT reach ``final``. Warm-up length is not stretched.
* step offsets: the original cosine schedulers increment their counter *before* computing the value,
  so 0-based iteration ``i`` uses ``warmup_cosine(i + 1, ...)`` / ``cosine(i + 1, ...)``; the linear
  momentum/sharpening generators yield their first value at iteration 0, i.e. ``linear(i, ...)``.
  The functions below take the step as given; the training loop chooses the offset.

Beyond the stretched horizon the progress is clamped to 1 (the value stays at ``final``), whereas the
original cosine would rise again; the original never evaluates past it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "WD_SCHEDULE_KEY",
    "Schedule",
    "cosine",
    "default_no_decay",
    "ema_update",
    "linear",
    "param_groups",
    "set_lr",
    "set_weight_decay",
    "warmup_cosine",
]


def _check_common(step: int, total_steps: int, stretch: float) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not stretch > 0:
        raise ValueError(f"stretch must be > 0, got {stretch}")


def _clamp_toward(value: float, start: float, final: float) -> float:
    """Keep ``value`` on the ``start`` side of ``final`` (guards against rounding past ``final``)."""
    return max(final, value) if final <= start else min(final, value)


def _half_cosine(progress: float, start: float, final: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    value = final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return _clamp_toward(value, start, final)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    start_value: float,
    ref_value: float,
    final_value: float,
    *,
    stretch: float = 1.0,
) -> float:
    """Linear warm-up ``start_value -> ref_value`` then half cosine ``ref_value -> final_value``.

    With ``T = int(stretch * total_steps)``:

    * ``step < warmup_steps``: ``start + step / warmup_steps * (ref - start)``;
    * otherwise: ``final + (ref - final) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup_steps) / max(1, T - warmup_steps)`` clamped to ``[0, 1]``.

    ``warmup_cosine(0, ...) == start_value`` (``ref_value`` if ``warmup_steps == 0``) and
    ``warmup_cosine(warmup_steps, ...) == ref_value``. MSN ViT-S/16: lr 2e-4 -> 1e-3 over 15 epochs,
    -> 1e-6, ``stretch=1.25``.
    """
    _check_common(step, total_steps, stretch)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        progress = step / max(1, warmup_steps)
        return start_value + progress * (ref_value - start_value)
    horizon = int(stretch * total_steps)
    progress = (step - warmup_steps) / max(1, horizon - warmup_steps)
    return _half_cosine(progress, ref_value, final_value)


def cosine(step: int, total_steps: int, start: float, final: float, *, stretch: float = 1.0) -> float:
    """Half cosine ``start -> final`` over ``T = int(stretch * total_steps)`` steps (no warm-up).

    ``final + (start - final) * (1 + cos(pi * min(step / T, 1))) / 2``; MSN weight decay uses
    ``start=0.04, final=0.4, stretch=1.25``.
    """
    _check_common(step, total_steps, stretch)
    horizon = max(1, int(stretch * total_steps))
    return _half_cosine(step / horizon, start, final)


def linear(step: int, total_steps: int, start: float, final: float, *, stretch: float = 1.0) -> float:
    """Linear ``start -> final``: ``start + (final - start) / (stretch * total_steps) * step``.

    The horizon is not truncated to an integer (as the original); the value is clamped at ``final``
    past it. MSN EMA momentum uses ``start=0.996, final=1.0, stretch=1.25``.
    """
    _check_common(step, total_steps, stretch)
    horizon = stretch * total_steps
    if step >= horizon:
        return final
    return _clamp_toward(start + ((final - start) / horizon) * step, start, final)


ScheduleKind = Literal["warmup_cosine", "cosine", "linear", "constant"]


@dataclass(frozen=True)
class Schedule:
    """A serialisable schedule evaluated with ``schedule(step)``.

    ``kind``: ``"warmup_cosine"`` (uses ``start -> ref`` over ``warmup_steps`` then ``-> final``),
    ``"cosine"`` / ``"linear"`` (``start -> final``) or ``"constant"`` (always ``start``).
    """

    kind: ScheduleKind
    total_steps: int
    start: float
    final: float
    ref: float | None = None
    warmup_steps: int = 0
    stretch: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("warmup_cosine", "cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if self.kind == "warmup_cosine" and self.ref is None:
            raise ValueError("warmup_cosine schedule needs `ref`")
        if self.total_steps < 1 or self.warmup_steps < 0 or not self.stretch > 0:
            raise ValueError(f"invalid schedule {self}")

    def __call__(self, step: int) -> float:
        if self.kind == "warmup_cosine":
            assert self.ref is not None
            return warmup_cosine(
                step,
                self.total_steps,
                self.warmup_steps,
                self.start,
                self.ref,
                self.final,
                stretch=self.stretch,
            )
        if self.kind == "cosine":
            return cosine(step, self.total_steps, self.start, self.final, stretch=self.stretch)
        if self.kind == "linear":
            return linear(step, self.total_steps, self.start, self.final, stretch=self.stretch)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# EMA target encoder
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place ``theta_target <- m * theta_target + (1 - m) * theta_online`` for every parameter.

    Parameters are paired in ``parameters()`` order (as the original; buffers are not touched), so a
    ``DistributedDataParallel`` wrapper on either side is fine. ``momentum`` must be in [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameters but online has {len(o_params)}")
    for i, (t, o) in enumerate(zip(t_params, o_params, strict=True)):
        if t.shape != o.shape:
            raise ValueError(f"parameter {i}: target shape {tuple(t.shape)} != online shape {tuple(o.shape)}")
    if not t_params or momentum == 1.0:
        return
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)


# --------------------------------------------------------------------------------------------------
# AdamW parameter groups
# --------------------------------------------------------------------------------------------------

WD_SCHEDULE_KEY = "apply_wd_schedule"
"""Param-group flag: ``True`` for groups whose weight decay follows the schedule."""


def default_no_decay(name: str, param: Tensor) -> bool:
    """No weight decay for biases, 0/1-D tensors (norm weights) and prototypes."""
    return param.ndim <= 1 or name.endswith(".bias") or "prototypes" in name


def param_groups(
    model_or_named_params: nn.Module | Iterable[tuple[str, Tensor]],
    weight_decay: float,
    *,
    no_decay: Callable[[str, Tensor], bool] = default_no_decay,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Args:
        model_or_named_params: a module or ``(name, parameter)`` pairs (e.g. the encoder's
            ``named_parameters()`` plus ``("prototypes", prototypes)``). Parameters with
            ``requires_grad=False`` are skipped, and duplicates are kept once.
        weight_decay: initial weight decay of the decayed group.
        no_decay: predicate selecting parameters without weight decay.

    Returns:
        Non-empty groups among ``{"params": [...], "weight_decay": weight_decay, WD_SCHEDULE_KEY: True}``
        and ``{"params": [...], "weight_decay": 0.0, WD_SCHEDULE_KEY: False}``.
    """
    named = (
        model_or_named_params.named_parameters()
        if isinstance(model_or_named_params, nn.Module)
        else model_or_named_params
    )
    decay: list[Tensor] = []
    skip: list[Tensor] = []
    seen: set[int] = set()
    for name, param in named:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (skip if no_decay(name, param) else decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), WD_SCHEDULE_KEY: True})
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0, WD_SCHEDULE_KEY: False})
    return groups


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set ``weight_decay`` on the groups flagged with ``WD_SCHEDULE_KEY`` (others keep theirs)."""
    for group in optimizer.param_groups:
        if group.get(WD_SCHEDULE_KEY, False):
            group["weight_decay"] = value


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set ``lr`` on every param group (the original schedules all groups, prototypes included)."""
    for group in optimizer.param_groups:
        group["lr"] = value
