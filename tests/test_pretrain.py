"""MSN pretraining: DDP equals one process, a killed run resumes exactly, export loads in transformers."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from tests.conftest import leave_worker
from vitmsn.msn.config import PretrainConfig, preset
from vitmsn.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Shapes(torch.utils.data.Dataset):
    """Small synthetic RGB images: a bright square on a dark background, at a random place and size."""

    def __init__(self, n: int = 32, size: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = np.zeros((n, size, size, 3), dtype=np.uint8)  # held in memory: batched views possible
        for img in self.images:
            img[:] = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            s = int(rng.integers(6, 16))
            y, x = rng.integers(0, size - s, 2)
            img[y: y + s, x: x + s] = rng.integers(150, 255, 3, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), 0


def tiny_config(out: Path, **kw) -> PretrainConfig:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8,
                rand_size=32, focal_size=16, focal_views=2, head_hidden_dim=32, head_output_dim=16,
                num_prototypes=10, batch_size=8, epochs=2, warmup_epochs=1, num_workers=0, out=str(out),
                tensorboard=False, log_every=1, patch_drop=0.25, mean=(0.5,) * 3, std=(0.5,) * 3)
    return PretrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------------- DDP


@pytest.fixture
def one_thread():
    """One torch thread in this process, as in each DDP worker (the same kernels on both sides of a
    comparison); the thread count is restored for the tests after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, kw: dict, dtype: torch.dtype = torch.float32) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)  # the weights' dtype (the views are cast to it)
    from vitmsn.msn.train import pretrain

    try:
        pretrain(tiny_config(Path(out), **kw), device="cpu", progress=False, dataset=Shapes())
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    leave_worker()


def _ddp_nan_on_rank_1(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1's loss becomes nan at its first step; each rank writes the error it stopped with."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vitmsn import distributed
    from vitmsn.msn import train

    build = train.build_criterion

    def criterion_with_nan_on_rank_1(cfg):
        crit = build(cfg)
        if rank != 1:
            return crit
        return lambda *a, **k: crit(*a, **k)._replace(ce=torch.tensor(float("nan")))

    train.build_criterion = criterion_with_nan_on_rank_1
    try:
        train.pretrain(tiny_config(Path(out), max_steps=3), device="cpu", progress=False, dataset=Shapes())
        outcome = "finished"
    except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
        outcome = type(e).__name__
    finally:
        distributed.shutdown()
    Path(out, f"rank{rank}.txt").write_text(outcome)
    leave_worker()


def test_ddp_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    """A loss that goes non-finite on one process stops all of them with the same error (none is left
    waiting in a collective for the one that stopped)."""
    mp.start_processes(_ddp_nan_on_rank_1, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes == ["NonFiniteLossError"] * 2


def _ddp_write_fails_on_rank_0(rank: int, world: int, port: int, out: str, what: str) -> None:
    """Process 0 cannot write its second checkpoint or log line (``what``: "save" or "log"; a full disk); each
    rank writes the error it stopped with."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vitmsn import distributed
    from vitmsn.msn import train

    calls = [0]
    owner, name = (train, "save_checkpoint") if what == "save" else (train.MetricLogger, "log")
    write = getattr(owner, name)

    def full_disk(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(f"cannot write the {what}: No space left on device")
        return write(*args, **kwargs)

    if rank == 0:  # (the other processes call the logger too, which writes nothing there)
        setattr(owner, name, full_disk)
    try:
        train.pretrain(tiny_config(Path(out), max_steps=3, checkpoint_every_steps=1), device="cpu", progress=False,
                       dataset=Shapes())
        outcome = "finished"
    except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
        outcome = f"{type(e).__name__}: {e}"
    finally:
        distributed.shutdown()
    Path(out, f"rank{rank}.txt").write_text(outcome)
    leave_worker()


@pytest.mark.parametrize("what", ["save", "log"])
def test_ddp_failed_write_stops_every_rank(tmp_path, what):
    """A checkpoint or log line that process 0 cannot write stops every process, each with an error that says
    so (none waits in the next all-reduce until its timeout)."""
    mp.start_processes(_ddp_write_fails_on_rank_0, args=(2, _free_port(), str(tmp_path), what), nprocs=2,
                       start_method="spawn")
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == f"OSError: cannot write the {what}: No space left on device"
    assert outcomes[1] == f"OSError: process 0 could not write to {tmp_path} (its error is in its output)"


def _ddp_signal_on_rank_1(rank: int, world: int, port: int, out: str, log_every: int) -> None:
    """Rank 1 gets a SIGTERM during its second step; each rank writes what it stopped with, and at which step."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vitmsn import distributed
    from vitmsn.msn import train
    from vitmsn.training import TrainingInterrupted

    step = train.train_step

    def signalled_step(state, *a, **k):
        res = step(state, *a, **k)
        if rank == 1 and state.step == 2:  # a SIGTERM to this process alone, during its second step
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    train.train_step = signalled_step
    try:
        train.pretrain(tiny_config(Path(out), log_every=log_every), device="cpu", progress=False, dataset=Shapes())
        outcome = "finished"
    except TrainingInterrupted as e:
        outcome = f"{type(e).__name__} {e}".split(";")[0]
    finally:
        distributed.shutdown()
    Path(out, f"rank{rank}.txt").write_text(outcome)
    leave_worker()


@pytest.mark.parametrize("log_every", [1, 100])
def test_ddp_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, log_every):
    """A SIGTERM to one process stops all of them at the same step, with a checkpoint of it: at once when that
    step is a logging step (its flags are read then), else one step later (StepChecks reads them late)."""
    mp.start_processes(_ddp_signal_on_rank_1, args=(2, _free_port(), str(tmp_path), log_every), nprocs=2,
                       start_method="spawn")
    stop = 2 if log_every == 1 else 3
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes == [f"TrainingInterrupted stopped at step {stop}"] * 2
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == stop


# A bias followed by BatchNorm has a gradient of exactly zero (BatchNorm removes any constant shift), so in
# fp32 AdamW turns its rounding noise into updates of +-lr; these tensors (and the BatchNorm running means
# that follow them) are not comparable between two ways of summing the same numbers.
ZERO_GRADIENT = {"encoder.norm.bias", "head.fc.fc1.bias", "head.fc.fc2.bias", "head.fc.bn1.running_mean",
                 "head.fc.bn2.running_mean"}


@pytest.fixture
def float64():
    """Weights made in float64 in this process (as the DDP workers are told to), restored afterwards."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("kw", [{"use_sinkhorn": True, "view_maker": "workers"},
                                {"use_sinkhorn": False, "mask_per_sample": True, "view_maker": "workers"},
                                {"use_sinkhorn": True, "view_maker": "batched"}])
def test_ddp_two_processes_equal_one(tmp_path, kw, one_thread, float64):
    """2 gloo processes with half the batch each = 1 process with the whole batch after 3 steps: losses, both
    encoders' weights, BatchNorm statistics and prototypes.

    In float64. In fp32 the two ways of summing a batch differ by rounding, which flips the sign of some
    near-zero gradient elements, and AdamW's first steps move every element by about the learning rate in
    its gradient's sign whatever its size: a few elements then differ by ~lr, more or fewer depending on the
    attention kernel. float64 leaves rounding far below AdamW's eps, so any real difference (a wrong share of
    the batch, mask, statistics or schedule, which moves elements by ~lr) stands out. The fp32 gradients
    are compared before AdamW by the next test."""
    from vitmsn.msn.train import pretrain

    kw = {**kw, "max_steps": 3}
    pretrain(tiny_config(tmp_path / "one", **kw), device="cpu", progress=False, dataset=Shapes())
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), kw, float64), nprocs=2,
                       start_method="spawn")
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert one["step"] == two["step"] == 3
    # Views made by workers are cast to float64 in the model (seen: weights within 3e-10, prototypes 4e-9,
    # losses 2e-9). BatchViews makes its views in fp32 whatever the weights' dtype, one process 8 at once,
    # each of two processes 4, and the rounding of its batched ops differs with that (seen: the first loss,
    # with equal weights, 6.5e-8 apart; weights within 1.3e-6 after 3 steps). Either bound is far below a
    # real difference, which moves elements by about the learning rate (AdamW updates of ~1e-3 per step).
    atol = 1e-5 if kw["view_maker"] == "batched" else 1e-8
    for part in ("online", "target"):
        assert one[part].keys() == two[part].keys()
        for k, v in one[part].items():
            assert v.dtype in (torch.float64, torch.int64), (k, v.dtype)
            torch.testing.assert_close(two[part][k], v, atol=atol, rtol=0, msg=lambda m, k=f"{part} {k}": f"{k}: {m}")
    torch.testing.assert_close(two["prototypes"], one["prototypes"], atol=10 * atol, rtol=0)
    loss = [np.loadtxt(tmp_path / r / "log.csv", delimiter=",", skiprows=1, usecols=3) for r in ("one", "two")]
    np.testing.assert_allclose(loss[1], loss[0], atol=atol, rtol=0)
    # and the weights did change
    assert (one["online"]["encoder.blocks.0.attn.qkv.weight"] != one["target"]["encoder.blocks.0.attn.qkv.weight"]).any()


def _save_first_gradients(path: str) -> None:
    """From now on in this process, the first gradient clipping of the pretraining step first saves the online
    network's gradients (the whole step's: after backward and DDP's all-reduce, before AdamW) to ``path``."""
    clip = torch.nn.utils.clip_grad_norm_

    def save_then_clip(params, *args, **kwargs):
        params = list(params)
        if not os.path.exists(path):
            torch.save([p.grad.clone() for p in params], path)
        return clip(params, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = save_then_clip


def _ddp_gradient_worker(rank: int, world: int, port: int, out: str, kw: dict) -> None:
    _save_first_gradients(str(Path(out) / f"grads{rank}.pt"))
    _ddp_worker(rank, world, port, str(Path(out) / "run"), kw)


@pytest.mark.parametrize("kw", [{"use_sinkhorn": True, "view_maker": "workers"},
                                {"mask_per_sample": True, "rand_views": 2, "view_maker": "workers"}])
def test_ddp_first_step_gradients_equal_one_process(tmp_path, kw, monkeypatch, one_thread):
    """The first step's gradients of 2 processes (each rank's, after the all-reduce) = those of 1 process with
    the whole batch, to rounding relative to each tensor's scale. Unlike the weights after several AdamW
    steps, this does not depend on which near-zero gradient elements rounding flips in sign (AdamW moves
    each by about the learning rate whatever its size), so it holds for any attention kernel."""
    from vitmsn.msn.train import pretrain

    kw = {**kw, "max_steps": 1}
    with monkeypatch.context() as m:
        m.setattr(torch.nn.utils, "clip_grad_norm_", torch.nn.utils.clip_grad_norm_)  # restored afterwards
        _save_first_gradients(str(tmp_path / "one.pt"))
        pretrain(tiny_config(tmp_path / "one", **kw), device="cpu", progress=False, dataset=Shapes())
    (tmp_path / "two").mkdir()
    mp.start_processes(_ddp_gradient_worker, args=(2, _free_port(), str(tmp_path / "two"), kw), nprocs=2,
                       start_method="spawn")
    from vitmsn.msn.train import build_state

    names = [n for n, _ in build_state(tiny_config(tmp_path / "names", **kw), torch.device("cpu")).online.named_parameters()]
    one = torch.load(tmp_path / "one.pt")
    ranks = [torch.load(tmp_path / "two" / f"grads{r}.pt") for r in range(2)]
    assert len(names) == len(one) == len(ranks[0]) == len(ranks[1]) > 10
    for name, g, g0, g1 in zip(names, one, *ranks, strict=True):
        assert torch.equal(g0, g1), name  # DDP: every rank holds the same gradient
        if name in ZERO_GRADIENT:  # zero up to rounding noise: no scale to compare against
            continue
        # seen: up to 5.5e-5 of the tensor's largest element (sums in another order, through the loss's
        # temperatures); a wrong share of the batch, mask or statistics moves whole elements
        assert (g0 - g).abs().max().item() <= 2e-4 * g.abs().max().item(), name


# ------------------------------------------------------------------------------------------------- resume


def write_idx(folder: Path, n: int = 48, seed: int = 0) -> Path:
    """Fashion-MNIST-format IDX files with n random 28x28 images (train and test)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes())
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitmsn", *args]


SMALL = ["--set", "hidden_size=32", "--set", "num_hidden_layers=2", "--set", "num_attention_heads=4",
         "--set", "intermediate_size=64", "--set", "head_hidden_dim=32", "--set", "head_output_dim=16",
         "--set", "num_prototypes=10", "--set", "batch_size=8", "--set", "num_workers=0", "--set", "focal_views=2",
         "--set", "tensorboard=false", "--set", "checkpoint_every_steps=1", "--set", "log_every=1",
         "--epochs", "3", "--no-progress"]


@pytest.mark.parametrize("view_maker", ["batched", "workers"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, view_maker):
    data = write_idx(tmp_path / "fm")
    small = [*SMALL, "--set", f"view_maker={view_maker}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cli("pretrain", "--preset", "fashion-mnist", "--data", str(data), "--out",
                              str(tmp_path / "full"), *small), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "killed"
    p = subprocess.Popen(cli("pretrain", "--preset", "fashion-mnist", "--data", str(data), "--out", str(run),
                             *small), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-epoch (6 steps per epoch, 18 in all)
        if latest.exists() and load_checkpoint(latest)["step"] >= 4:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = load_checkpoint(latest)["step"]
    assert 4 <= killed_at < 18, killed_at
    resumed = subprocess.run(cli("pretrain", "--resume", "--out", str(run), "--no-progress"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = load_checkpoint(latest)
    assert a["step"] == b["step"] == 18
    for part in ("online", "target"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after resume"
    assert torch.equal(a["prototypes"], b["prototypes"])
    steps = np.loadtxt(run / "log.csv", delimiter=",", skiprows=1, usecols=0)
    assert list(steps) == list(range(1, 19))  # the log has every step once

    # -- export the target encoder and load it with transformers
    out = tmp_path / "model"
    r = subprocess.run(cli("export", str(run), str(out)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    transformers = pytest.importorskip("transformers")
    ref = transformers.ViTMSNModel.from_pretrained(out).eval()
    from vitmsn import ViTMSNModel

    ours = ViTMSNModel.from_pretrained(out)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=0)
    enc = {k.removeprefix("encoder."): v for k, v in b["target"].items() if k.startswith("encoder.")}
    torch.testing.assert_close(ours.state_dict()["blocks.1.mlp.fc2.weight"], enc["blocks.1.mlp.fc2.weight"])
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["size"] == {"height": 28, "width": 28}


def test_resume_refuses_changed_settings(tmp_path):
    from vitmsn.msn.train import _check_run_folder, pretrain

    cfg = tiny_config(tmp_path / "r", max_steps=1)
    pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    changed = tiny_config(tmp_path / "r", max_steps=2, sharpen=0.5)
    with pytest.raises(ValueError, match=r"sharpen \(run: 0.25, now: 0.5\)"):
        pretrain(changed, resume=True, device="cpu", progress=False, dataset=Shapes())
    # the learning rate may change (the way out of a loss that became NaN)
    assert _check_run_folder(tiny_config(tmp_path / "r", max_steps=2, lr=1e-4), tmp_path / "r", True).lr == 1e-4
    # how the step runs may change: compile gives the same losses and checkpoints
    assert _check_run_folder(tiny_config(tmp_path / "r", max_steps=2, compile=True), tmp_path / "r", True).compile
    # the data may move, but not change its number of images (the steps per epoch and the schedules follow it)
    with pytest.raises(ValueError, match="trained on 32 images, the data now holds 48"):
        pretrain(tiny_config(tmp_path / "r", max_steps=2), resume=True, device="cpu", progress=False,
                 dataset=Shapes(n=48))
    pretrain(tiny_config(tmp_path / "r", max_steps=2), resume=True, device="cpu", progress=False,
             dataset=Shapes(seed=1))  # the same number of (other) images: a moved folder looks like this
    # a run of an earlier version that set drop_path (to no effect; a new run refuses it) still resumes and exports
    from vitmsn.checkpoints import atomic_torch_save
    from vitmsn.msn.train import export_encoder

    latest = tmp_path / "r" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    state["config"]["drop_path"] = 0.1
    atomic_torch_save(state, latest)  # (not torch.save over the file: the loaded tensors are mapped from it)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**saved, "drop_path": 0.1}))
    export_encoder(tmp_path / "r", tmp_path / "exported")
    with pytest.raises(ValueError, match="no stochastic depth"):
        pretrain(tiny_config(tmp_path / "new", drop_path=0.1), device="cpu", progress=False, dataset=Shapes())
    pretrain(tiny_config(tmp_path / "r", max_steps=3, drop_path=0.1), resume=True, device="cpu", progress=False,
             dataset=Shapes())


@pytest.mark.parametrize("log_every", [1, 100])  # 100: the flags are read one step late (StepChecks.push)
def test_nan_loss_stops_with_a_clear_message(tmp_path, log_every):
    from vitmsn.msn.train import pretrain
    from vitmsn.training import NonFiniteLossError

    class Bad(Shapes):
        def __getitem__(self, i):
            return Image.fromarray(np.full((32, 32, 3), 255, np.uint8)), 0

    cfg = tiny_config(tmp_path / "nan", max_steps=3, mean=(0.0,) * 3, std=(1e-30,) * 3,  # inf pixels
                      log_every=log_every)
    with pytest.raises(NonFiniteLossError, match="at step 0; no checkpoint was written before it: start the run "
                                                 "again with a lower"):
        pretrain(cfg, device="cpu", progress=False, dataset=Bad())


def _nan_at_call(monkeypatch, calls: set[int]) -> None:
    """pretrain's criterion gives a nan loss (and cross-entropy) at the given calls (0-based), its own values
    otherwise."""
    from vitmsn.msn import train

    build, count = train.build_criterion, [0]

    def criterion(cfg):
        crit = build(cfg)

        def call(*a, **k):
            out, count[0] = crit(*a, **k), count[0] + 1
            nan = float("nan")
            return out._replace(loss=out.loss * nan, ce=out.ce * nan) if count[0] - 1 in calls else out

        return call

    monkeypatch.setattr(train, "build_criterion", criterion)


def test_non_finite_step_changes_no_weight(monkeypatch):
    """A step whose loss is not finite leaves the online network's weights, the prototypes and AdamW's moments
    as they were (the fused kernel skips it); the next finite step changes them."""
    from vitmsn.msn import train

    cfg = tiny_config(Path("unused"), log_every=100)
    state = train.build_state(cfg, torch.device("cpu"))
    _nan_at_call(monkeypatch, {1})
    criterion, sched = train.build_criterion(cfg), train.schedules(cfg, 4)
    views = [torch.randn(8, 3, s, s) for s in (32, 32, 16, 16)]  # target, random anchor, 2 focal views
    keep = train.mask_for_step(cfg, 0, 8, 16, torch.device("cpu"))

    def snapshot():  # the weights (BatchNorm's running statistics move in the forward, as before any check)
        return {k: v.detach().clone()
                for k, v in [*state.online.named_parameters(), ("prototypes", state.prototypes.weight)]}

    assert not train.train_step(state, cfg, criterion, sched, views, keep).non_finite  # the moments exist now
    before, moments = snapshot(), copy_moments(state.optimizer)
    res = train.train_step(state, cfg, criterion, sched, views, keep)
    assert res.non_finite and not torch.isfinite(res.terms).all()
    for k, v in snapshot().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(copy_moments(state.optimizer), moments, strict=True):
        assert torch.equal(a, b)
    assert not train.train_step(state, cfg, criterion, sched, views, keep).non_finite
    assert not torch.equal(state.prototypes.weight, before["prototypes"])


def copy_moments(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t.clone() for st in optimizer.state.values() for t in st.values()]


class _NanGradient(torch.autograd.Function):
    """The identity whose backward gives nan: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("log_every", [1, 100])
def test_non_finite_gradient_with_a_finite_loss_stops_the_run(tmp_path, monkeypatch, log_every):
    """Gradients that became nan under a finite loss (clipping on, as by default): no update, and the run stops
    saying it was the gradient, before any checkpoint."""
    from vitmsn.msn import train
    from vitmsn.training import NonFiniteLossError

    build = train.build_criterion

    def criterion(cfg):
        crit = build(cfg)
        return lambda *a, **k: (lambda out: out._replace(loss=_NanGradient.apply(out.loss)))(crit(*a, **k))

    monkeypatch.setattr(train, "build_criterion", criterion)
    cfg = tiny_config(tmp_path / "g", max_steps=3, log_every=log_every)
    assert cfg.clip_grad > 0
    with pytest.raises(NonFiniteLossError, match=r"the gradient became non-finite at step 0 \(loss [0-9.]+\); no "
                                                 "checkpoint was written"):
        train.pretrain(cfg, device="cpu", progress=False, dataset=Shapes())


def test_nan_at_the_last_step_writes_no_checkpoint(tmp_path, monkeypatch):
    """Read late or not, a non-finite last step stops the run before the checkpoint it would have written."""
    from vitmsn.msn.train import pretrain
    from vitmsn.training import NonFiniteLossError

    _nan_at_call(monkeypatch, {1})
    cfg = tiny_config(tmp_path / "r", max_steps=2, log_every=100)
    with pytest.raises(NonFiniteLossError, match="the loss became nan at step 1; no checkpoint was written"):
        pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def test_bf16_autocast_steps(tmp_path):
    """bf16=True (meant for GPUs; CPU autocast here): the step runs in bf16, the weights and the optimizer
    stay float32, the loss is finite and close to the float32 run's first loss."""
    from vitmsn.msn.train import pretrain

    losses = {}
    for bf16 in (False, True):
        out = pretrain(tiny_config(tmp_path / str(bf16), max_steps=3, bf16=bf16), device="cpu", progress=False,
                       dataset=Shapes())
        losses[bf16] = np.loadtxt(out / "log.csv", delimiter=",", skiprows=1, usecols=3)
        state = load_checkpoint(out / "checkpoints" / "latest.pt")
        assert all(v.dtype == torch.float32 for k, v in state["online"].items() if v.is_floating_point())
    assert np.isfinite(losses[True]).all()
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=0.05)  # bf16 rounding, same weights
    assert not np.array_equal(losses[True], losses[False])  # autocast did change the arithmetic


def test_compiled_run_matches_eager(tmp_path):
    """compile=True: the online network and the target run through torch.compile (inductor), the losses
    are those of the eager run, and the checkpoints hold the plain modules' keys."""
    from vitmsn.msn.train import pretrain

    losses, keys = {}, {}
    for compiled in (False, True):
        out = pretrain(tiny_config(tmp_path / str(compiled), max_steps=3, compile=compiled), device="cpu",
                       progress=False, dataset=Shapes())
        losses[compiled] = np.loadtxt(out / "log.csv", delimiter=",", skiprows=1, usecols=3)
        keys[compiled] = sorted(load_checkpoint(out / "checkpoints" / "latest.pt")["online"])
    assert keys[True] == keys[False]
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=1e-5)  # the same weights and views
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)  # AdamW amplifies rounding differences


def test_compiled_ddp_run_matches_eager(tmp_path, one_thread):
    """compile=True with 2 processes (the DDP wrapper compiled, BatchNorm over the global batch): it trains,
    and its losses are those of the eager 2-process run. (Compiled, the global BatchNorm's in-place update
    of its running mean once changed a tensor the compiled backward had kept, and the first backward failed.)"""
    losses = {}
    for compiled in (False, True):
        kw = {"max_steps": 2, "compile": compiled, "view_maker": "workers"}
        mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / str(compiled)), kw), nprocs=2,
                           start_method="spawn")
        losses[compiled] = np.loadtxt(tmp_path / str(compiled) / "log.csv", delimiter=",", skiprows=1, usecols=3)
    assert losses[True].shape == (2,)
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=1e-5)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)


def test_compile_without_a_compiler_is_one_clear_error(tmp_path, monkeypatch):
    from vitmsn.msn import train

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(train.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="compile=true needs a C[+][+] compiler"):
        train.pretrain(tiny_config(tmp_path, max_steps=1, compile=True), device="cpu", progress=False,
                       dataset=Shapes())


def test_adamw_falls_back_without_a_fused_kernel(monkeypatch):
    """Without a fused kernel: the default AdamW, and a non-finite loss is caught at once (no device-side skip)."""
    from vitmsn.training import NonFiniteLossError, adamw, skip_if_non_finite

    real = torch.optim.AdamW

    def no_fused(*args, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kw)

    p = torch.nn.Parameter(torch.zeros(3))
    fused = adamw([{"params": [p]}], 1e-3, torch.device("cpu"))
    assert fused.defaults["fused"]
    assert skip_if_non_finite(fused, torch.tensor([float("nan"), 1.0]), 5) and fused.found_inf == 1
    assert not skip_if_non_finite(fused, torch.tensor([2.0, 1.0]), 6) and fused.found_inf == 0
    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    plain = adamw([{"params": [p]}], 1e-3, torch.device("cpu"))
    assert not plain.defaults.get("fused")
    assert not skip_if_non_finite(plain, torch.tensor(2.0), 6)
    with pytest.raises(NonFiniteLossError, match="the loss became inf at step 7"):
        skip_if_non_finite(plain, torch.tensor(float("inf")), 7)


@pytest.mark.parametrize("saved_fused", [False, True])
def test_optimizer_state_from_the_other_implementation(monkeypatch, saved_fused):
    """A checkpoint's optimizer state written by the other AdamW implementation (fused or not) loads into
    this one without taking over its implementation, and the next step runs (a finite loss, then a nan)."""
    from vitmsn.training import adamw, load_optimizer_state, skip_if_non_finite

    def make(fused: bool):
        p = torch.nn.Parameter(torch.ones(3))
        if not fused:
            real = torch.optim.AdamW
            monkeypatch.setattr(torch.optim, "AdamW", lambda *a, fused=None, **k: real(*a, **k))
        opt = adamw([{"params": [p], "lr_scale": 0.5}], 1e-2, torch.device("cpu"))
        monkeypatch.undo()
        return p, opt

    p, saver = make(saved_fused)
    p.grad = torch.ones(3)
    saver.step()
    q, opt = make(not saved_fused)
    load_optimizer_state(opt, saver.state_dict())
    assert all(bool(g.get("fused")) == (not saved_fused) for g in opt.param_groups)
    q.grad = torch.ones(3)
    skip_if_non_finite(opt, torch.tensor(1.0), 1)
    opt.step()
    assert torch.isfinite(q).all() and not torch.equal(q, torch.ones(3))
    if not saved_fused:  # now fused: a nan step is skipped on the device
        before = q.detach().clone()
        q.grad = torch.full((3,), float("nan"))
        assert skip_if_non_finite(opt, torch.tensor(float("nan")), 2)
        opt.step()
        assert torch.equal(q, before)


@pytest.mark.parametrize("name", ["vit-small/16", "vit-base/16", "vit-large/16", "vit-base/4", "vit-large/7",
                                  "fashion-mnist"])
def test_presets_build_and_train_one_step(name):
    """Every preset: a forward and backward pass of its networks gives every parameter a gradient."""
    from vitmsn.models.heads import Prototypes
    from vitmsn.msn.losses import MSNLoss
    from vitmsn.msn.model import MSNNetwork

    cfg = preset(name)
    small = cfg.with_overrides({"num_hidden_layers": 1}) if cfg.hidden_size > 128 else cfg
    net = MSNNetwork(small.encoder_config(), small.head_hidden_dim, small.head_output_dim)
    protos = Prototypes(small.num_prototypes, small.head_output_dim)
    rand = torch.randn(2, 3, small.rand_size, small.rand_size)
    focal = torch.randn(2 * small.focal_views, 3, small.focal_size, small.focal_size)
    keep = torch.arange(small.encoder_config().num_patches)[None, :8].expand(2, -1)
    z = net(rand, focal, keep_idx=keep)
    with torch.no_grad():
        t = net(rand)
    out = MSNLoss(1 + small.focal_views)(z, t, protos.weight)
    out.loss.backward()
    missing = [n for n, p in [*net.named_parameters(), ("prototypes", protos.weight)] if p.grad is None]
    assert not missing, missing


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    """A folder with a truncated JPEG, a zero-byte file and a text file named .png: skipped, counted, no crash."""
    from vitmsn.msn.train import pretrain

    folder = tmp_path / "images"
    folder.mkdir()
    shapes = Shapes(n=14)
    for i in range(len(shapes)):
        shapes[i][0].save(folder / f"good_{i:02d}.png")
    shapes[0][0].save(folder / "truncated.jpg")
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    from vitmsn.data.folder import ImageFolderDataset
    from vitmsn.training import GlobalBatchSampler

    # the draws of the 2 epochs (17 files, 16 drawn per epoch) that fall on a bad file
    samples = ImageFolderDataset(folder, labelled=False).paths
    sampler = GlobalBatchSampler(len(samples), 8, seed=0)
    expected = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected += sum(Path(samples[i]).stem in ("truncated", "empty", "notes") for i in sampler)
    assert expected >= 4  # each bad file drawn in at least one epoch (15 of 17 files are drawn in both)
    for workers in (0, 2):  # the same count whichever process met the bad files first
        cfg = tiny_config(tmp_path / f"run{workers}", dataset="folder", data=str(folder), batch_size=8, epochs=2,
                          max_steps=4, num_workers=workers)
        pretrain(cfg, device="cpu", progress=False)
        rows = (tmp_path / f"run{workers}" / "log.csv").read_text().splitlines()
        header, last = rows[0].split(","), rows[-1].split(",")
        assert int(last[header.index("skipped_images")]) == expected, workers


def test_bad_image_warnings_agree_with_the_final_count_when_max_steps_stops_the_run(tmp_path):
    """Workers load batches ahead of the step; a run stopped by max_steps warns only about the bad files of the
    batches it trained on, once each, and its last line counts those draws and those warnings."""
    folder = tmp_path / "images"
    folder.mkdir()
    shapes = Shapes(n=30)
    for i in range(len(shapes)):  # every 3rd file unreadable, each followed by a readable one
        if i % 3 == 1:
            (folder / f"{i:02d}.png").write_bytes(b"")
        else:
            shapes[i][0].save(folder / f"{i:02d}.png")
    from vitmsn.data.folder import ImageFolderDataset
    from vitmsn.training import GlobalBatchSampler

    paths = ImageFolderDataset(folder, labelled=False).paths
    sampler = GlobalBatchSampler(len(paths), 8, seed=0)
    sampler.set_epoch(0)
    order = list(sampler)
    first = {paths[i] for i in order[:8] if Path(paths[i]).stat().st_size == 0}
    later = {paths[i] for i in order[8:] if Path(paths[i]).stat().st_size == 0} - first
    assert first and later  # bad files in the one batch trained on, and others in the batches loaded ahead

    run = tmp_path / "run"
    done = subprocess.run(cli("pretrain", "--preset", "vit-small/16", "--data", str(folder), "--out", str(run),
                              *SMALL, "--set", "rand_size=32", "--set", "focal_size=16", "--set", "patch_size=8",
                              "--set", "seed=0", "--set", "num_workers=2", "--set", "max_steps=1"),
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line.rsplit("cannot load image ", 1)[1].split(": ")[0] for line in done.stderr.splitlines()
              if "skipping bad image" in line and "cannot load image" in line]
    assert sorted(warned) == sorted(first), done.stderr  # each once, none of the batches left unused
    rows = (run / "log.csv").read_text().splitlines()
    assert int(rows[-1].split(",")[rows[0].split(",").index("skipped_images")]) == len(first)
    assert (f"{len(first)} images drawn since the run started (or was resumed) were unreadable and replaced by "
            f"the next readable one: draws of the files named in the {len(first)} 'skipping bad image' "
            "warning(s) above") in done.stderr, done.stderr


def test_csv_and_tensorboard_logs(tmp_path):
    pytest.importorskip("tensorboard")
    from vitmsn.msn.train import pretrain

    pretrain(tiny_config(tmp_path / "tb", max_steps=2, tensorboard=True), device="cpu", progress=False,
             dataset=Shapes())
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    header = (tmp_path / "tb" / "log.csv").read_text().splitlines()[0].split(",")
    for column in ("loss", "ce", "me_max", "lr", "wd", "momentum", "images_per_s", "skipped_images"):
        assert column in header
    saved = json.loads((tmp_path / "tb" / "config.json").read_text())
    assert saved["num_prototypes"] == 10 and saved["max_steps"] == 2  # the resolved config


def test_devices_and_random_states_on_a_machine_without_gpu(monkeypatch):
    from vitmsn import distributed
    from vitmsn.training import rng_state, set_rng_state

    assert distributed.init_from_env("cpu") == torch.device("cpu")  # one process: no group joined
    assert not distributed.is_initialized()
    if not torch.cuda.is_available():
        assert distributed.resolve_device(None) == torch.device("cpu")
    state = rng_state(torch.device("cpu"))
    assert "cuda" not in state  # a GPU's generator is saved only for a GPU device
    drawn = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # an older checkpoint's list, one state per GPU
    set_rng_state(state, torch.device("cpu"))  # restores the CPU's generators, ignores the GPU's
    assert torch.equal(torch.rand(3), drawn)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a GPU without bfloat16
    with pytest.raises(ValueError, match="bf16 needs a GPU with bfloat16"):
        distributed.bf16_autocast(torch.device("cuda"), True)
    with distributed.bf16_autocast(torch.device("cpu"), True):  # bfloat16 autocast on the CPU
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_list_settings_shows_the_preset_with_its_changes(capsys):
    from vitmsn.cli import main

    assert main(["pretrain", "--preset", "vit-small/16", "--set", "epochs=3", "--list-settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("settings of preset vit-small/16 with --set")
    values = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert values["epochs"] == "3" and values["hidden_size"] == "384"


def test_bad_runs_and_checkpoints_are_one_clear_line_and_change_nothing(tmp_path, capsys):
    """Wrong devices, settings files, output folders and checkpoints: one error line each, nothing written."""
    from vitmsn.cli import main
    from vitmsn.models.hf import ViTMSNModel

    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    model = tmp_path / "model"
    ViTMSNModel(tiny_config(tmp_path).encoder_config()).save_pretrained(model)
    before = (model / "config.json").read_bytes()
    assert "no CUDA GPU" in error("pretrain", "--device", "cuda", "--out", str(tmp_path / "r"), "--no-progress") \
        or torch.cuda.is_available()
    assert "unknown device 'gpu'" in error("pretrain", "--device", "gpu", "--out", str(tmp_path / "r"))
    assert "not a pretraining run's" in error("pretrain", "--out", str(model), "--data", str(tmp_path / "no"))
    assert (model / "config.json").read_bytes() == before  # the model's files are untouched
    assert not (tmp_path / "r").exists()
    (tmp_path / "typo.json").write_text('{"bach_size": 3}')
    assert "did you mean batch_size" in error("pretrain", "--config", str(tmp_path / "typo.json"))
    assert "model config.json" in error("pretrain", "--config", str(model / "config.json"))
    assert "log_every must be an integer >= 1" in error("pretrain", "--set", "log_every=0")
    assert "rand_crop_scale must be two numbers" in error("pretrain", "--set", "rand_crop_scale=0.5")
    assert "epochs must be an integer >= 1" in error("pretrain", "--epochs", "0")
    assert "no stochastic depth" in error("pretrain", "--set", "drop_path=0.1")  # a setting that did nothing

    # a run, then: export into it / over a model; a fine-tuning-style checkpoint; a run of another shape
    run = tmp_path / "run"
    from vitmsn.msn.train import pretrain

    pretrain(tiny_config(run, max_steps=1), device="cpu", progress=False, dataset=Shapes())
    assert "training run's folder" in error("export", str(run), str(run))
    assert "not empty" in error("export", str(run), str(model))
    assert main(["export", str(run), str(model), "--overwrite"]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    pretrain(tiny_config(other, max_steps=1, hidden_size=48), device="cpu", progress=False, dataset=Shapes())
    (run / "checkpoints" / "latest.pt").write_bytes((other / "checkpoints" / "latest.pt").read_bytes())
    from vitmsn.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="latest.pt does not fit: size mismatch") as e:
        pretrain(tiny_config(run, max_steps=2), resume=True, device="cpu", progress=False, dataset=Shapes())
    assert "\n" not in str(e.value)
    torch.save({"step": 1, "model": {}, "optimizer": {}, "settings": {}}, run / "checkpoints" / "latest.pt")
    assert "is a fine-tuning checkpoint" in error("export", str(run), str(tmp_path / "m2"))


def test_step_masks_depend_on_seed_and_step_only(tmp_path):
    """The keep indices of a step are a function of (seed, step): the same for any device argument, other
    for another step; a device may be given by name."""
    from vitmsn.msn.train import mask_for_step

    cfg = tiny_config(tmp_path)
    a = mask_for_step(cfg, 3, 8, 16, torch.device("cpu"))
    assert a.shape == (8, 12) and torch.equal(a, mask_for_step(cfg, 3, 8, 16, "cpu"))
    assert not torch.equal(a, mask_for_step(cfg, 4, 8, 16, "cpu"))


def test_seeds_beyond_torchs_range_run(tmp_path):
    """A seed whose derived stream seeds (seed * 1_000_003 + ...) leave the range torch's generators take is
    folded into it; seeds inside it derive the same streams as before."""
    from vitmsn.msn.train import mask_for_step, pretrain
    from vitmsn.training import fit_seed

    assert fit_seed(12345) == 12345 and fit_seed(-5) == -5 and fit_seed(2**64 + 7) == 7
    cfg = tiny_config(tmp_path / "big", max_steps=1, seed=99_999_999_999_999)
    pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    assert mask_for_step(cfg, 3, 8, 16, "cpu").shape == (8, 12)


def test_step_masks_of_processes_are_the_single_process_rows(tmp_path, monkeypatch):
    """With a mask per sample and two random views, process p of W gets, for each view, the rows of its own
    images in the one-process mask of the global batch (laid out view by view): W processes = 1 process."""
    import vitmsn.distributed as dist
    from vitmsn.msn.train import mask_for_step

    cfg = dataclasses.replace(tiny_config(tmp_path), rand_views=2, mask_per_sample=True)
    R, W, b = 2, 2, 3
    whole = mask_for_step(cfg, 5, R * W * b, 16, "cpu")  # (R*W*b, K): one process, the global batch
    assert len({tuple(r) for r in whole.tolist()}) > 1  # masks per sample: the rows differ
    monkeypatch.setattr(dist, "world_size", lambda: W)
    for p in range(W):
        monkeypatch.setattr(dist, "rank", lambda p=p: p)
        mine = mask_for_step(cfg, 5, R * W * b, 16, "cpu")  # (R*b, K), view-major
        want = torch.cat([whole[r * W * b + p * b: r * W * b + (p + 1) * b] for r in range(R)])
        assert torch.equal(mine, want), p


def test_cli_image_folder_with_the_fashion_mnist_preset(tmp_path, capsys, monkeypatch):
    """Photos passed to the default (fashion-mnist) preset: one line saying what to do, and nothing is
    downloaded into the photo folder."""
    from vitmsn.cli import main
    from vitmsn.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "_download", lambda *a, **k: pytest.fail("tried to download"))
    (tmp_path / "photos" / "trip").mkdir(parents=True)
    Shapes(n=2)[0][0].save(tmp_path / "photos" / "trip" / "a.jpg")
    assert main(["pretrain", "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds image files" in err and "--set dataset=folder" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "photos").rglob("*")) == ["a.jpg", "trip"]


def test_cli_resume_of_a_folder_that_is_no_run(tmp_path, capsys):
    from vitmsn.cli import main

    (tmp_path / "other").mkdir()
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "other")]) == 2
    assert "is not a pretraining run folder" in capsys.readouterr().err
    assert main(["pretrain", "--resume"]) == 2
    assert "--resume needs --out RUN_DIR" in capsys.readouterr().err


def test_max_steps_stop_says_how_to_continue(tmp_path, caplog):
    from vitmsn.msn.train import pretrain

    cfg = tiny_config(tmp_path / "run", max_steps=2)
    with caplog.at_level("INFO", logger="vitmsn"):
        pretrain(cfg, device="cpu", progress=False, dataset=Shapes())
    assert "stopped at step 2 of" in caplog.text and "--resume --out" in caplog.text
    assert "--set max_steps=0" in caplog.text


def test_folder_with_held_out_images_pretrains_on_train_only(tmp_path, caplog):
    """The layout lowshot and finetune read (train/ beside val/): the held-out images must not be pretrained on."""
    import logging

    from vitmsn.msn.train import build_dataset

    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    cfg = PretrainConfig(dataset="folder", data=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="vitmsn"):
        dataset = build_dataset(cfg)
    assert len(dataset) == 6 and "pretraining on train/ only" in caplog.text
    (tmp_path / "val").rename(tmp_path / "other")  # no held-out folder: every image
    assert len(build_dataset(cfg)) == 10


def test_out_folder_of_the_users_files_is_refused(tmp_path):
    """pretrain and finetune never write their run into a non-empty folder that holds no run of theirs."""
    from vitmsn.eval.finetune import _check_run_folder as finetune_check
    from vitmsn.msn.train import _check_run_folder as pretrain_check

    (tmp_path / "log.csv").write_text("a,b\n")  # the user's own file
    with pytest.raises(FileExistsError, match="holds no pretraining run"):
        pretrain_check(PretrainConfig(), tmp_path, resume=False)
    with pytest.raises(FileExistsError, match="holds no fine-tuning run"):
        finetune_check(tmp_path, {}, resume=False)
    assert (tmp_path / "log.csv").read_text() == "a,b\n"
    empty = tmp_path / "new"
    empty.mkdir()
    assert pretrain_check(PretrainConfig(), empty, resume=False) is not None
    assert finetune_check(empty, {}, resume=False) is None


def test_data_fashion_mnist_names_the_data_set_as_in_lowshot(monkeypatch, tmp_path):
    """``--data fashion-mnist`` (what lowshot and finetune take) means the usual Fashion-MNIST files, not a
    folder of that name to download into."""
    from vitmsn.msn import train

    seen = {}
    monkeypatch.setattr("vitmsn.data.fashion_mnist.FashionMNIST",
                        lambda split, root=None: seen.setdefault("root", root) or [])
    monkeypatch.chdir(tmp_path)
    train.build_dataset(preset("fashion-mnist").with_overrides({"data": "fashion-mnist"}))
    assert seen == {"root": None}
