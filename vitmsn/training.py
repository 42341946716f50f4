"""Pieces shared by pretraining and fine-tuning: data order, seeding, run checkpoints, logs.

Exact resume rests on three facts: (1) the data order of an epoch is a function of (seed, epoch); (2) the
augmentation of an image is a function of (seed, epoch, index), whatever worker draws it; (3) everything
else that changes (weights, optimizer, step, RNG states) is in the checkpoint, written atomically.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from vitmsn.checkpoints import CheckpointError, atomic_torch_save, load_pickle

logger = logging.getLogger("vitmsn")


# ------------------------------------------------------------------------------------------- data order


class GlobalBatchSampler(Sampler[int]):
    """Shuffled indices, cut into global batches; each process takes its slice of every global batch.

    With W processes and per-process batch b, process r sees rows [r*b, (r+1)*b) of each global batch of
    W*b, so W processes together see exactly the batches one process sees with batch W*b. The order
    depends on (seed, epoch) only; ``set_epoch(epoch, start_batch)`` resumes in the middle of an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"{num_samples} images are fewer than one global batch of {batch_size * world_size}; "
                "lower batch_size"
            )
        self.n, self.b, self.seed, self.rank, self.world, self.shuffle = (
            num_samples, batch_size, seed, rank, world_size, shuffle)
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.b * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(fit_seed(self.seed * 1_000_003 + self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        G = self.b * self.world
        for i in range(self.start_batch, self.batches_per_epoch):
            yield from order[i * G + self.rank * self.b: i * G + (self.rank + 1) * self.b].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.b


class SeededTransform(Dataset):
    """Applies ``transform`` with the RNGs seeded from (seed, epoch, index): augmentations that do not
    depend on which worker draws them, nor on where a run was resumed."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0, report_skips: bool = False):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0
        # report_skips: the base data set does not warn about an unreadable file; each item also says why its
        # file was replaced by the next readable one ("cannot load image PATH: ..."), or is "" when it was not,
        # for the training loop to warn about the images it trains on (not about batches its DataLoader's
        # workers loaded ahead and a stop at max_steps left unused)
        self.report_skips = report_skips

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        # image folders replace unreadable files and say so
        quiet = getattr(self.base, "load_item_quietly", None) if self.report_skips else None
        load_item = getattr(self.base, "load_item", None)
        if quiet is not None:
            image, label, reason = quiet(index)
        elif load_item is not None:
            image, label, replaced = load_item(index)
            reason = f"cannot load image {index} of the data set" if replaced else None
        else:
            (image, label), reason = self.base[index], None
        s = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        torch.manual_seed(fit_seed(s))
        random.seed(s)
        if self.report_skips:
            return self.transform(image), label, reason or ""
        return self.transform(image), label


def fit_seed(value: int) -> int:
    """A seed derived from a run's seed and counters, folded into the range torch's generators take (-2**63
    to 2**64 - 1) when it is outside: the same seed as before for every value inside it."""
    return value if -(1 << 63) <= value < (1 << 64) else value % (1 << 64)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(fit_seed(seed))


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The random generators' states: Python's, torch's CPU generator and, for a CUDA ``device``, its own."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved; a saved CUDA state goes to ``device`` (if it is a GPU)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a training checkpoint atomically (a killed writer leaves the previous file intact)."""
    return atomic_torch_save(state, path)


PRETRAIN_KEYS = ("online", "target", "prototypes", "optimizer", "config")
FINETUNE_KEYS = ("model", "optimizer", "settings")


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; ``keys``: what this kind of run's checkpoints
    hold (``PRETRAIN_KEYS`` or ``FINETUNE_KEYS``), so that another kind is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_pickle(path, mmap=True)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a vitmsn training checkpoint")
    missing = [k for k in keys if k not in state]
    if missing:
        kind = next((name for name, ks in (("an MSN pretraining", PRETRAIN_KEYS), ("a fine-tuning", FINETUNE_KEYS))
                     if all(k in state for k in ks)), "another kind of")
        raise CheckpointError(f"{path} is {kind} checkpoint, not one of this kind of run (it has no "
                              f"{', '.join(missing)})")
    return state


def load_weights_into(module: torch.nn.Module, weights: dict[str, Any], source: str | Path, fix: str) -> None:
    """``module.load_state_dict(weights)``, strict; a mismatch is one error naming ``source`` and saying
    what to change (``fix``)."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise CheckpointError(f"{source} does not fit: {first.rstrip('.')}; {fix}") from None


# ------------------------------------------------------------------------------------------------ logs


class MetricLogger:
    """CSV (always) and TensorBoard (when installed and enabled) logs of scalar metrics."""

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = out_dir / "log.csv"
        self.tb = None
        self._fields: list[str] | None = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="") as f:
                self._fields = next(csv.reader(f), None)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                logger.info("tensorboard is not installed: writing log.csv only (pip install tensorboard)")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        if self._fields is None:
            self._fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._fields])
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step (they will be logged again)."""
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------- stopping early


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM between two steps, after writing the checkpoint that
    ``--resume`` continues from; ``str()`` is the one line to print, ``exit_code`` 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM). A ``KeyboardInterrupt``, so that code catching Ctrl-C still does."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.message, self.signum = message, int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


class StopRequests:
    """While a training loop runs: SIGINT and SIGTERM set ``signum`` instead of stopping the process, so
    that the loop can finish its step, save and stop (a second Ctrl-C stops at once, with KeyboardInterrupt).

    A context manager; handlers are installed in the main thread only (signals can only be handled there),
    a signal that was ignored (``nohup``, background jobs of a non-interactive shell) stays ignored, and the
    previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True, when: str = "after this step"):
        self.signum: int | None = None
        self.announce = announce
        self.when = when  # in the announcement: when the loop stops
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN or previous is None:  # ignored, or set outside Python: leave it
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def batches(self, loader: Iterable[Any], *, survive_dead_workers: bool = True) -> Iterator[Any]:
        """``loader``'s batches; once a stop was asked, DataLoader workers killed by the same signal (a SIGTERM to
        the whole process group) end the iteration as if the epoch were over, so that the loop can save between
        two steps (``survive_dead_workers=False``: their error is raised, as under DDP, where the processes
        would no longer agree on the step)."""
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError:
                if self.signum is None or not survive_dead_workers:
                    raise
                return
            yield batch

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # asked twice: stop now, without a checkpoint
                raise KeyboardInterrupt
            return
        self.signum = signum
        if self.announce:  # os.write: safe whatever the interrupted code was doing (tqdm, logging)
            again = " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{signal.Signals(signum).name}: stopping {self.when} to save a checkpoint{again}\n"
                     .encode())


def ignore_sigint(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore Ctrl-C (which a terminal sends to the whole process
    group), so that they go on feeding the main process while it finishes its step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def adamw(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over every tensor) where torch has it: about a third of the
    default's time per step on the fashion-mnist preset (CPU; ``bench/parts.py``, rows ``adamw``); the same
    update up to rounding, and it can skip a step on the device (:func:`skip_if_non_finite`). torch < 2.4 has
    no fused kernel for the CPU: the default (foreach) implementation then."""
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation: the saved parameter
    groups carry the saving optimizer's ``fused`` / ``foreach`` (a checkpoint written where the fused kernel
    was missing, or before it was used), which would otherwise replace this one's, and a fused optimizer
    needs its step counts as float32 on the parameters' device."""
    optimizer.load_state_dict(state)
    fused = optimizer.defaults.get("fused")
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
    if fused:
        for p, st in optimizer.state.items():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def non_finite_message(loss: float, step: int) -> str:
    """What broke down at ``step``: the loss, or (with a finite loss) the gradient."""
    if math.isfinite(loss):
        return f"the gradient became non-finite at step {step} (loss {loss})"
    return f"the loss became {loss} at step {step}"


def skip_if_non_finite(optimizer: torch.optim.Optimizer, checked: torch.Tensor, step: int) -> torch.Tensor:
    """Whether ``checked`` (the step's loss first, then its other terms and the gradient norm, when clipped) is
    not all finite, as a () bool on its device; if so, the next ``optimizer.step()`` changes nothing. A fused
    optimizer skips that step on the device (``found_inf``, as under a gradient scaler), without the host
    waiting for the device: the caller reads the flag later (:class:`StepChecks`). Any other optimizer is
    checked here, at once, raising :class:`NonFiniteLossError`."""
    checked = checked.detach().flatten()
    non_finite = ~torch.isfinite(checked).all()
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = non_finite.float()  # the fused kernel leaves weights and moments as they are
    elif bool(non_finite):  # on a GPU this waits for the device
        raise NonFiniteLossError(non_finite_message(checked[0].item(), step))
    return non_finite


class StepChecks:
    """The checks of a training step that need the device's numbers, read by the host one step late, so that
    it never waits for the device in the middle of the loop: whether the loss was finite and, with many
    processes, whether any of them was asked to stop (a signal).

    :meth:`push` queues a step's flags (reduced over processes on the device, then copied to pinned host memory
    behind the step's work) and reads those of the step before, done by then or nearly; :meth:`flush` reads
    the last one pushed at once (on logging and checkpoint steps, where the host waits for the device anyway).
    A loss that was not finite raises :class:`NonFiniteLossError` (its step changed no weight: the optimizer
    skipped it on the device). On the CPU the flags are ready when pushed; reading them late keeps one path.
    """

    def __init__(self) -> None:
        self._pending: tuple[int, torch.Tensor, Any] | None = None  # (step, host flags, CUDA event)

    def push(self, step: int, non_finite: torch.Tensor, loss: torch.Tensor, signum: int) -> int:
        """Queue ``step``'s flags (``non_finite``, ``loss``: 0-dim device tensors, the same on every process;
        ``signum``: this process's stop signal or 0); return the largest signal of the step before (0: none)."""
        from vitmsn import distributed as dist

        flags = dist.all_reduce_max_(torch.stack([non_finite.float(), loss.detach().float(),
                                                  torch.full((), float(signum), device=loss.device)]))  # (3,)
        event = None
        if flags.device.type == "cuda":
            host = torch.empty(3, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(flags.device))  # the stream the copy was queued on
            flags = host
        previous, self._pending = self._pending, (step, flags, event)
        return self._read(previous)

    def flush(self) -> int:
        """Read the flags pushed last (waiting for the device); return their signal (0: none)."""
        pending, self._pending = self._pending, None
        return self._read(pending)

    @staticmethod
    def _read(pending: tuple[int, torch.Tensor, Any] | None) -> int:
        if pending is None:
            return 0
        step, flags, event = pending
        if event is not None:
            event.synchronize()
        non_finite, loss, signum = flags.tolist()
        if non_finite:
            raise NonFiniteLossError(non_finite_message(loss, step))
        return int(signum)


def non_finite_advice(checkpoint: Path, resume_lower_lr: str, restart_lower_lr: str) -> str:
    """What to do after a non-finite loss, given the run's latest checkpoint (which may not exist yet):
    resume from it with a lower learning rate, or, with no checkpoint, start the run again with one."""
    if Path(checkpoint).exists():
        return (f"the last checkpoint is {checkpoint}: resume from it with {resume_lower_lr} (or bf16 off); "
                "if the loss breaks down again at once, the weights were already damaged there: start again")
    return f"no checkpoint was written before it: start the run again with {restart_lower_lr} (or bf16 off)"
