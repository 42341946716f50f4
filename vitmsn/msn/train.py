"""MSN pretraining (Assran et al., 2022, Sec. 3), on one process or many (``torchrun``), with exact resume.

One step, in the paper's order:
  Step 1  views -> anchor embeddings (masked random anchor + focal anchors) and target embeddings
  Step 2  loss: cross-entropy to sharpened targets + ME-MAX, backward, clip, AdamW step
  Step 3  momentum (EMA) update of the target encoder and head
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitmsn import distributed as dist
from vitmsn.models.heads import Prototypes
from vitmsn.models.layers import unpacked_weights
from vitmsn.msn.config import PretrainConfig
from vitmsn.msn.losses import MSNLoss, MSNLossOutput
from vitmsn.msn.masking import random_keep_indices
from vitmsn.msn.model import MSNNetwork
from vitmsn.msn.schedules import Schedule, ema_update, param_groups, set_lr, set_weight_decay
from vitmsn.training import (
    PRETRAIN_KEYS,
    GlobalBatchSampler,
    MetricLogger,
    NonFiniteLossError,
    SeededTransform,
    StepChecks,
    StopRequests,
    TrainingInterrupted,
    adamw,
    fit_seed,
    ignore_sigint,
    load_checkpoint,
    load_optimizer_state,
    load_weights_into,
    non_finite_advice,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    skip_if_non_finite,
)

logger = logging.getLogger("vitmsn")

LATEST = "latest.pt"
# settings that may differ between a run and its resumption (everything else must match)
_RESUMABLE_CHANGES = {"out", "num_workers", "log_every", "max_steps", "checkpoint_every", "checkpoint_every_steps",
                      "tensorboard", "data", "compile",
                      # the way out of a loss that became NaN: the schedules are recomputed from these
                      "lr", "start_lr", "final_lr", "bf16", "clip_grad", "tf32"}


# ----------------------------------------------------------------------------------------------- data


def build_dataset(cfg: PretrainConfig) -> Dataset:
    """Unlabelled images: an image folder (recursive, corrupt files skipped) or Fashion-MNIST."""
    if cfg.dataset == "fashion-mnist":
        from vitmsn.data.fashion_mnist import FashionMNIST, _find_split

        if cfg.data == "fashion-mnist" and not Path(cfg.data).exists():  # the name, as lowshot and finetune take it
            cfg = dataclasses.replace(cfg, data=None)

        if cfg.data is not None and _find_split(Path(cfg.data), "train", []) is None and _holds_images(cfg.data):
            # not a Fashion-MNIST folder: say so before anything is downloaded into the user's folder
            raise ValueError(
                f"{cfg.data} holds image files, but dataset=fashion-mnist (the fashion-mnist preset) reads "
                "Fashion-MNIST's IDX files: for your own images add --set dataset=folder, or take a preset "
                "made for them (e.g. --preset vit-small/16; see vitmsn pretrain --help)")
        return FashionMNIST("train", root=cfg.data)
    from vitmsn.data.folder import ImageFolderDataset, held_out_splits

    if cfg.data is None:
        raise ValueError("an image folder is needed: pass --data DIR (or choose the fashion-mnist preset)")
    root = Path(cfg.data)
    held_out = held_out_splits(root)
    if held_out:
        # the layout lowshot and finetune read: pretraining on the held-out images would leak them into the
        # evaluation of the encoder
        logger.warning("%s holds train/ and %s/: pretraining on train/ only, so that the held-out images stay "
                       "unseen by the encoder", root, "/ and ".join(held_out))
        root = root / "train"
    return ImageFolderDataset(root, labelled=False)


def _holds_images(folder: str | os.PathLike, look_at: int = 2000) -> bool:
    """Whether an image file is among the first ``look_at`` entries (files and folders) under ``folder``."""
    from vitmsn.data.folder import IMAGE_EXTENSIONS

    seen = 0
    for _, dirs, files in os.walk(folder):
        if any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in files):
            return True
        seen += len(files) + len(dirs) + 1
        if seen >= look_at:
            return False
    return False


def build_views(cfg: PretrainConfig):
    from vitmsn.msn.transforms import MSNViews, ViewConfig

    return MSNViews(ViewConfig(
        rand_size=cfg.rand_size, focal_size=cfg.focal_size, rand_views=cfg.rand_views,
        focal_views=cfg.focal_views, rand_crop_scale=tuple(cfg.rand_crop_scale),
        focal_crop_scale=tuple(cfg.focal_crop_scale), color_jitter_strength=cfg.color_jitter,
        blur_prob=cfg.blur_prob, mean=tuple(cfg.mean), std=tuple(cfg.std), num_channels=cfg.num_channels,
    ))


def in_memory_images(dataset: Dataset) -> torch.Tensor | None:
    """A data set's images as one uint8 (N, C, H, W) tensor, when it holds them so (Fashion-MNIST); else None."""
    arr = getattr(dataset, "images", None)
    if arr is None or getattr(arr, "dtype", None) not in (np.uint8, torch.uint8) or arr.ndim not in (3, 4):
        return None
    t = torch.as_tensor(arr)
    if t.ndim == 3:
        return t[:, None]  # (N, 1, H, W)
    if t.shape[-1] in (1, 3):  # (N, H, W, C)
        return t.permute(0, 3, 1, 2)
    return t if t.shape[1] in (1, 3) else None


class WorkerViews:
    """Batches of views made image by image in DataLoader workers: yields (views, replaced), ``replaced`` the
    reasons (``cannot load image PATH: ...``) of the batch's images whose file was unreadable and replaced by
    the next readable one (the workers do not warn: the training loop does, for the batches it trains on)."""

    def __init__(self, cfg: PretrainConfig, images: Dataset, sampler: GlobalBatchSampler, device: torch.device):
        self.sampler = sampler
        self.dataset = SeededTransform(images, build_views(cfg), seed=cfg.seed, report_skips=True)
        self.loader = DataLoader(self.dataset, batch_size=sampler.b, sampler=sampler, num_workers=cfg.num_workers,
                                 drop_last=True, pin_memory=device.type == "cuda",
                                 worker_init_fn=ignore_sigint if cfg.num_workers else None)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        for views, _, reasons in self.loader:
            yield views, [r for r in reasons if r]


GPU_RESIDENT_BYTES = 2 << 30  # in-memory data sets up to this size are moved to the GPU whole (Fashion-MNIST: 47 MB)


class BatchedViews:
    """Batches of views made a batch at a time on the training device (:mod:`vitmsn.msn.batch_views`), from
    images held in memory; the augmentations of a global batch depend on (seed, epoch, batch) only."""

    def __init__(self, cfg: PretrainConfig, images: torch.Tensor, sampler: GlobalBatchSampler, device: torch.device):
        from vitmsn.msn.batch_views import BatchViews

        if device.type == "cuda" and images.numel() * images.element_size() <= GPU_RESIDENT_BYTES:
            images = images.to(device)  # (N, C, H, W) uint8 on the GPU once: no copy from pageable memory per step
        self.images, self.sampler, self.device, self.seed = images, sampler, device, cfg.seed
        self.make_views = BatchViews(build_views(cfg).cfg)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __iter__(self):
        s, b = self.sampler, self.sampler.b
        order = torch.tensor(list(s), dtype=torch.int64)  # this process's rows of the remaining batches
        for i in range(len(order) // b):
            batch = s.start_batch + i
            g = torch.Generator().manual_seed(fit_seed((self.seed * 1_000_003 + s.epoch) * 1_000_033 + batch))
            rows = dist.to_device(order[i * b: (i + 1) * b], self.images.device)
            pixels = dist.to_device(self.images[rows], self.device)  # (b, C, H, W)
            # the draws of the whole global batch, this process's rows: W processes = 1 process
            views = self.make_views(pixels, g, offset=s.rank * b, total=b * s.world)
            yield views, []  # images in memory: none unreadable


def build_loader(cfg: PretrainConfig, images: Dataset, sampler: GlobalBatchSampler,
                 device: torch.device) -> WorkerViews | BatchedViews:
    """The view maker ``cfg.view_maker`` asks for (see :class:`PretrainConfig`)."""
    pixels = in_memory_images(images) if cfg.view_maker != "workers" else None
    if cfg.view_maker == "batched" and pixels is None:
        raise ValueError("view_maker=batched needs a data set held in memory as one uint8 array (such as "
                         "fashion-mnist); use view_maker=workers for image folders")
    if pixels is not None:
        return BatchedViews(cfg, pixels, sampler, device)
    return WorkerViews(cfg, images, sampler, device)


# ---------------------------------------------------------------------------------------------- state


@dataclasses.dataclass
class MSNState:
    """Everything a step changes; what a checkpoint holds."""

    online: MSNNetwork
    target: MSNNetwork
    prototypes: Prototypes
    optimizer: torch.optim.Optimizer
    step: int = 0
    #: images in the data set the run trains on (the steps per epoch, and so the schedules, follow from it)
    num_images: int | None = None

    def state_dict(self, cfg: PretrainConfig) -> dict[str, Any]:
        return {"step": self.step, "online": self.online.state_dict(), "target": self.target.state_dict(),
                "prototypes": self.prototypes.weight.detach(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(self.prototypes.weight.device), "config": cfg.to_dict(),
                "num_images": self.num_images}

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "the checkpoint") -> None:
        saved = state.get("num_images")  # (None in checkpoints from before it was kept)
        if saved is not None and self.num_images is not None and saved != self.num_images:
            raise ValueError(
                f"{source}: the run was trained on {saved} images, the data now holds {self.num_images}; the steps "
                "per epoch, the schedules and the place in the epoch follow from that number, so a run resumes "
                "only on the same images (in a folder that may have moved). To train on other images, start a "
                "new run (--init takes an exported encoder)")
        fix = "its run's config.json says which settings it was made with"
        load_weights_into(self.online, state["online"], source, fix)
        load_weights_into(self.target, state["target"], source, fix)
        with torch.no_grad():
            self.prototypes.weight.copy_(state["prototypes"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.step = int(state["step"])
        set_rng_state(state["rng"], self.prototypes.weight.device)


def build_state(cfg: PretrainConfig, device: torch.device, init: str | None = None) -> MSNState:
    online = MSNNetwork(cfg.encoder_config(), cfg.head_hidden_dim, cfg.head_output_dim, cfg.head_use_bn)
    prototypes = Prototypes(cfg.num_prototypes, cfg.head_output_dim, frozen=cfg.freeze_prototypes)
    if init is not None:
        _load_init(online, prototypes, init)
    online = dist.convert_sync_batchnorm(online).to(device)
    prototypes.to(device)
    target = copy.deepcopy(online)  # the EMA copy: encoder + head, no gradients
    for p in target.parameters():
        p.requires_grad_(False)
    named = [*online.named_parameters(), ("prototypes", prototypes.weight)]
    optimizer = adamw(param_groups(named, cfg.weight_decay), cfg.start_lr, device)
    return MSNState(online, target, prototypes, optimizer)


def _load_init(online: MSNNetwork, prototypes: Prototypes, init: str) -> None:
    """Start from released weights: an HF-format ViT-MSN directory, with the head and prototypes if kept."""
    from vitmsn.models.hf import ViTMSNModel

    encoder = ViTMSNModel.from_pretrained(init)
    if encoder.config.hidden_size != online.encoder.config.hidden_size or \
            len(encoder.blocks) != len(online.encoder.blocks) or encoder.patch_size != online.encoder.patch_size:
        have, want = encoder.config, online.encoder.config
        raise ValueError(
            f"{init} holds a ViT of another shape than the config asks for (hidden_size {have.hidden_size}, "
            f"{have.num_hidden_layers} layers, patch_size {have.patch_size}; the config: {want.hidden_size}, "
            f"{want.num_hidden_layers}, {want.patch_size}); set hidden_size, num_hidden_layers, "
            "num_attention_heads, intermediate_size and patch_size to match")
    load_weights_into(online.encoder, encoder.state_dict(), init,
                      "set the encoder settings (and rand_size: the position embeddings) to the model's")
    head_file = Path(init) / "msn_head.safetensors"
    if head_file.exists():
        from vitmsn.convert import load_msn_head

        head, protos = load_msn_head(init)
        load_weights_into(online.head, head.state_dict(), head_file,
                          "set head_hidden_dim / head_output_dim / head_use_bn to match it")
        if protos.shape != prototypes.weight.shape:
            raise ValueError(f"{init} has prototypes of shape {tuple(protos.shape)}, the config asks for "
                             f"{tuple(prototypes.weight.shape)}: set num_prototypes / head_output_dim to match")
        with torch.no_grad():
            prototypes.weight.copy_(protos)
        logger.info("initialised encoder, projection head and prototypes from %s", init)
    else:
        logger.info("initialised the encoder from %s (new projection head and prototypes)", init)


def schedules(cfg: PretrainConfig, steps_per_epoch: int) -> dict[str, Schedule]:
    total = steps_per_epoch * cfg.epochs
    return {
        "lr": Schedule("warmup_cosine", total, cfg.start_lr, cfg.final_lr, ref=cfg.lr,
                       warmup_steps=int(cfg.warmup_epochs * steps_per_epoch), stretch=cfg.schedule_stretch),
        "wd": Schedule("cosine", total, cfg.weight_decay, cfg.final_weight_decay, stretch=cfg.schedule_stretch),
        "ema": Schedule("linear", total, cfg.ema_start, cfg.ema_end, stretch=cfg.schedule_stretch),
    }


def mask_for_step(cfg: PretrainConfig, step: int, global_batch: int, num_patches: int,
                  device: torch.device) -> torch.Tensor:
    """This process's rows of the step's keep indices: a function of (seed, step) alone, ``global_batch`` rows
    laid out view by view (R random views of the W processes' b images each): W processes = 1 process."""
    g = torch.Generator().manual_seed(fit_seed(cfg.seed * 1_000_003 + step))
    keep = random_keep_indices(global_batch, num_patches, cfg.patch_drop, per_sample=cfg.mask_per_sample, generator=g)
    R, W = cfg.rand_views, dist.world_size()
    mine = keep.view(R, W, global_batch // (R * W), -1)[:, dist.rank()]  # (R, b, K)
    return dist.to_device(mine.reshape(-1, keep.shape[-1]), device)  # (R*b, K), view-major as the anchors


# ------------------------------------------------------------------------------------------- the loop


def build_criterion(cfg: PretrainConfig) -> MSNLoss:
    return MSNLoss(cfg.rand_views + cfg.focal_views, temperature=cfg.temperature, sharpen_T=cfg.sharpen,
                   me_max_weight=cfg.me_max_weight, entropy_weight=cfg.entropy_weight,
                   use_sinkhorn=cfg.use_sinkhorn, label_smoothing=cfg.label_smoothing)


def networks_to_call(state: MSNState, cfg: PretrainConfig,
                     online: torch.nn.Module | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The online network (``state.online`` or its DDP wrapper) and the target that ``train_step`` calls:
    compiled with ``torch.compile`` when ``cfg.compile`` (the state keeps the plain modules, so checkpoints
    and the EMA update are unchanged)."""
    online = state.online if online is None else online
    if not cfg.compile:
        return online, state.target
    check_compile_support(next(state.online.parameters()).device)
    return torch.compile(online), torch.compile(state.target)


def check_compile_support(device: torch.device) -> None:
    """torch.compile's default backend builds kernels (C++ on CPU, Triton on CUDA); say so before the first
    step rather than with a compiler's traceback in the middle of it."""
    if device.type == "cpu":
        try:  # the compilers inductor tries, in its order ($CXX, else g++)
            from torch._inductor import config

            candidates = [c for c in config.cpp.cxx if c]
        except (ImportError, AttributeError):  # pragma: no cover - other torch versions
            candidates = [os.environ.get("CXX", "g++")]
        if not any(map(shutil.which, candidates)):
            raise ValueError(f"compile=true needs a C++ compiler on CPU (torch.compile builds C++ kernels with "
                             f"{' or '.join(candidates)}): install g++ or point CXX to a compiler, or set "
                             "compile=false")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ValueError("compile=true needs Triton on CUDA (pip install triton), or set compile=false")


class StepResult(NamedTuple):
    """What :func:`train_step` returns."""

    out: MSNLossOutput  # this process's loss terms (``out.loss`` carries the graph until backward)
    terms: torch.Tensor  # (3,) loss, ce, entropy of the global batch (mean over processes), detached
    non_finite: torch.Tensor  # () bool: the loss (or the clipped gradient's norm) was NaN or inf: no update
    grad_norm: torch.Tensor  # before clipping (nan without clipping)
    lr: float
    wd: float
    momentum: float


def train_step(state: MSNState, cfg: PretrainConfig, criterion: MSNLoss, sched: dict[str, Schedule],
               views: list[torch.Tensor], keep_idx: torch.Tensor, *, online: torch.nn.Module | None = None,
               target: torch.nn.Module | None = None, amp: Any = None) -> StepResult:
    """One MSN step on a batch of views ``[target, rand_1..R, focal_1..F]`` (each (b, C, H, W), on the device).

    ``online`` and ``target`` are the networks to call (by default ``state.online`` and ``state.target``;
    a DDP wrapper, or what :func:`networks_to_call` returns).

    A loss of the global batch that is not finite changes no weight, on every process alike: the fused AdamW
    skips the update on the device (``found_inf``), without the host waiting for the device, and the result's
    ``non_finite`` says so (:func:`pretrain` raises :class:`NonFiniteLossError` once it reads it, see
    :class:`~vitmsn.training.StepChecks`); with another optimizer this raises it, before the update. The EMA
    target still moves towards the unchanged online network.
    """
    online = state.online if online is None else online
    target = state.target if target is None else target
    amp = amp if amp is not None else torch.autocast("cpu", enabled=False)
    step = state.step
    # -- schedules (lr and weight decay as the original's pre-incremented counters)
    lr, wd, momentum = sched["lr"](step + 1), sched["wd"](step + 1), sched["ema"](step)
    set_lr(state.optimizer, lr)
    set_weight_decay(state.optimizer, wd)

    # Step 1: views -> anchors (masked random views, focal views) and targets
    targets_in = views[0]  # (b, C, H, W)
    rand = torch.cat(views[1: 1 + cfg.rand_views])  # (R*b, C, H, W), view-major
    focal = torch.cat(views[1 + cfg.rand_views:]) if cfg.focal_views else rand[:0]  # (F*b, C, h, w)
    with amp:
        anchor_z = online(rand, focal, keep_idx=keep_idx)  # ((R+F)*b, d)
        with torch.no_grad(), unpacked_weights():  # the EMA changes the target's weights at every step
            target_z = target(targets_in)  # (b, d)

    # Step 2: MSN loss, backward, prototype gradients summed over processes, clip, step
    dtype = torch.promote_types(anchor_z.dtype, torch.float32)  # fp32 under bf16 autocast; fp64 stays
    out = criterion(anchor_z.to(dtype), target_z.to(dtype), state.prototypes.weight)
    # the terms of the global batch (each process computed those of its share): every process sees the same
    terms = dist.all_reduce_mean_(torch.stack([out.loss, out.ce, out.entropy]).detach())  # (3,)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if state.prototypes.weight.grad is not None:
        dist.all_reduce_sum_(state.prototypes.weight.grad)
    clip = cfg.clip_grad > 0
    grad_norm = torch.nn.utils.clip_grad_norm_(state.online.parameters(), cfg.clip_grad) if clip \
        else terms.new_full((), float("nan"))  # made on the device (new_tensor would copy from the host)
    # a non-finite loss (or, when clipped, gradient norm) changes no weight; (), the same on every process
    checked = torch.cat([terms, grad_norm.reshape(1).to(terms.dtype)]) if clip else terms
    non_finite = skip_if_non_finite(state.optimizer, checked, step)
    state.optimizer.step()

    # Step 3: momentum update of the target encoder and head
    ema_update(state.target, state.online, momentum)
    state.step += 1
    return StepResult(out, terms, non_finite, grad_norm, lr, wd, momentum)



def pretrain(cfg: PretrainConfig, *, resume: bool = False, init: str | None = None, device: str | None = None,
             progress: bool = True, dataset: Dataset | None = None, continue_with: str | None = None,
             at_max_steps: str | None = None) -> Path:
    """Pretrain with MSN; returns the run folder (config.json, log.csv, checkpoints/).

    ``dataset`` (optional) yields (PIL image, anything) pairs and replaces ``cfg.dataset`` / ``cfg.data``.

    For a command that runs the pretraining as a part of its job (``vitmsn quickstart``): ``continue_with`` is
    the command line that continues the run, which the line of a stop by a signal gives (default ``vitmsn
    pretrain --resume --out OUT``); ``at_max_steps`` what the log line of a stop at ``max_steps`` says after
    the step counts (default: continue with ``vitmsn pretrain --resume --out OUT --set max_steps=0``).
    """
    if cfg.drop_path and not resume:
        raise ValueError(f"drop_path={cfg.drop_path}: the encoder has no stochastic depth (the paper's presets use "
                         "0); only 0 is taken")
    dev = dist.init_from_env(device)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    cfg = _check_run_folder(cfg, out, resume)
    main = dist.is_main()
    seed_everything(cfg.seed)
    W = dist.world_size()
    if cfg.batch_size % W:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({W})")
    b = cfg.batch_size // W

    # -- data: the order depends on (seed, epoch), each augmentation on (seed, epoch, index or batch)
    images = dataset if dataset is not None else build_dataset(cfg)
    sampler = GlobalBatchSampler(len(images), b, seed=cfg.seed, rank=dist.rank(), world_size=W)
    loader = build_loader(cfg, images, sampler, dev)
    steps_per_epoch = sampler.batches_per_epoch
    run_steps = total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    sched = schedules(cfg, steps_per_epoch)

    # -- networks, prototypes, optimizer; the loss
    state = build_state(cfg, dev, init=None if resume else init)
    state.num_images = len(images)
    online, target = networks_to_call(state, cfg, _ddp(state.online) if W > 1 else state.online)
    criterion = build_criterion(cfg)
    if resume:
        state.load_state_dict(load_checkpoint(ckpt_dir / LATEST, PRETRAIN_KEYS), source=ckpt_dir / LATEST)
        logger.info("resumed %s at step %d", out, state.step)
    if main:  # written once the data, the networks and the checkpoint have all been checked
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
    log = MetricLogger(out, enabled=main, tensorboard=cfg.tensorboard)
    log.truncate_after(state.step)
    num_patches = cfg.encoder_config().num_patches
    amp = dist.bf16_autocast(dev, cfg.bf16)

    bar = tqdm(total=total_steps, initial=state.step, disable=not (progress and main), desc="pretrain",
               unit="step", dynamic_ncols=True)
    # skipped_here: this process's images trained on whose file was unreadable (replaced by the next readable
    # one); warned: the reasons it warned about, once each (the loader's workers load batches ahead: a stop at
    # max_steps may leave some unused, and their bad files unmentioned)
    t0, seen, skipped_here, warned = time.perf_counter(), 0, 0, set()
    log_error: OSError | None = None  # process 0's failed write of the log, until every process knows it
    saved_step = state.step if resume else -1  # the step latest.pt holds
    # SIGINT / SIGTERM: finish the step, save latest.pt as a mid-epoch checkpoint, raise TrainingInterrupted
    checks = StepChecks()
    # (many processes agree on the step to stop at through the flags of StepChecks, read one step late)
    when = "after this step" if W == 1 else "after the next step"
    with StopRequests(announce=main, when=when) as stop, dist.tf32_matmuls(dev, cfg.tf32):
        try:
            while state.step < total_steps:
                epoch, start_batch = divmod(state.step, steps_per_epoch)
                loader.set_epoch(epoch, start_batch)
                for views, replaced in stop.batches(loader, survive_dead_workers=W == 1):
                    step = state.step
                    views = [v.to(dev, non_blocking=True) for v in views]  # [target, rand_1..R, focal_1..F], (b, ...)
                    keep_idx = mask_for_step(cfg, step, cfg.rand_views * b * W, num_patches, dev)  # (R*b, K)
                    res = train_step(state, cfg, criterion, sched, views, keep_idx, online=online, target=target,
                                     amp=amp)
                    # the previous step's flags: a non-finite loss raises; any process's stop signal (many processes)
                    asked = checks.push(step, res.non_finite, res.terms[0], stop.signum or 0)

                    # -- logs, progress, checkpoints; the metrics are read from the device on logging steps only
                    seen += b * W
                    skipped_here += len(replaced)
                    for reason in replaced:
                        if reason not in warned:
                            warned.add(reason)
                            logger.warning("skipping bad image (using the next one instead): %s", reason)
                    bar.update(1)
                    if state.step % cfg.log_every == 0 or state.step == total_steps:
                        asked = max(asked, checks.flush())  # this step's flags, before its metrics are logged
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        # (with several processes, a log that process 0 could not write stops every one of them)
                        skipped, log_failed = _sum_over_processes([skipped_here, log_error is not None], dev)
                        if log_failed:
                            raise log_error or OSError(f"process 0 could not write to {out} (its error is in its "
                                                       "output)")
                        loss, ce, entropy, me_max, num_targets, max_target, grad_norm = torch.stack(
                            [*res.terms, res.out.me_max.detach(), res.out.num_unique_targets, res.out.max_target,
                             res.grad_norm.float()]).tolist()
                        try:
                            log.log(state.step, {
                                "epoch": epoch, "loss": loss, "ce": ce, "me_max": me_max, "entropy": entropy,
                                "num_targets": int(num_targets), "max_target": max_target, "lr": res.lr,
                                "wd": res.wd, "momentum": res.momentum, "grad_norm": grad_norm,
                                "images_per_s": rate, "skipped_images": skipped})
                        except OSError as e:  # (process 0's: the others learn it at the next log or checkpoint)
                            if W == 1:
                                raise
                            log_error = e
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{res.lr:.2e}", img_s=f"{rate:.0f}")
                    end_of_epoch = state.step % steps_per_epoch == 0
                    if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 or end_of_epoch \
                            or state.step == total_steps:
                        asked = max(asked, checks.flush())  # no checkpoint after a step whose loss was not finite
                        _save(state, cfg, ckpt_dir, numbered=end_of_epoch and (epoch + 1) % cfg.checkpoint_every == 0,
                              epoch=epoch + 1, error=log_error)
                        saved_step = state.step
                    if state.step >= total_steps:
                        break
                    # every process stops at the same step: one asked is all asked. One process reads its own
                    # flag; many read the flags of the step before, reduced over processes (one step later)
                    if (stop.signum or 0) if W == 1 else asked:
                        break
                asked = checks.flush()  # the last step's flags
                signum = max(asked, dist.max_over_processes(stop.signum or 0, dev)) if state.step < total_steps else 0
                if signum:
                    _stop(state, cfg, ckpt_dir, signum, saved_step, bar,
                          continue_with or f"vitmsn pretrain --resume --out {out}")
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}; " + non_finite_advice(
                ckpt_dir / LATEST, "a lower learning rate (--resume --set lr=...)",
                "a lower learning rate (the same command with --set lr=..., without --resume)")) from None
        finally:
            bar.close()
            log.close()
    skipped, num_warned = _sum_over_processes([skipped_here, len(warned)], dev)
    dist.barrier()
    if main:
        if skipped:
            logger.warning("%d images drawn since the run started (or was resumed) were unreadable and replaced by "
                           "the next readable one: draws of the files named in the %d 'skipping bad image' "
                           "warning(s) above, each drawn once an epoch", skipped, num_warned)
        if state.step < run_steps:
            logger.info("pretraining stopped at step %d of %d (max_steps=%d); %s", state.step, run_steps,
                        cfg.max_steps, at_max_steps or f"continue with: vitmsn pretrain --resume --out {out} "
                                                       "--set max_steps=0")
        else:
            logger.info("pretraining finished after %d steps; run folder %s", state.step, out)
    return out


def _stop(state: MSNState, cfg: PretrainConfig, ckpt_dir: Path, signum: int, saved_step: int, bar: Any,
          continue_with: str) -> None:
    """Stopped by a signal between two steps: write latest.pt as a mid-epoch checkpoint (rank 0, unless it
    already holds this step), then raise :class:`TrainingInterrupted` on every process with the line to print."""
    if state.step != saved_step:
        _save(state, cfg, ckpt_dir, numbered=False, epoch=0)
    dist.barrier()  # the checkpoint is complete before any process exits
    bar.close()
    raise TrainingInterrupted(f"stopped at step {state.step}; saved {ckpt_dir / LATEST}; continue with: "
                              f"{continue_with}", signum)


def _ddp(online: MSNNetwork) -> DistributedDataParallel:
    """The online network in DDP, without a broadcast of its buffers before every forward: the only ones,
    BatchNorm's running statistics, come from the global batch and are the same on every process already."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:  # newer torch
        return DistributedDataParallel(online, forward_sync_buffers=False)
    return DistributedDataParallel(online, broadcast_buffers=False)


def _sum_over_processes(counts: list[int], device: torch.device) -> list[int]:
    """Each count summed over processes, in one all-reduce (every process must call it)."""
    return dist.all_reduce_sum_(torch.tensor(counts, dtype=torch.int64).to(device)).tolist()


def _save(state: MSNState, cfg: PretrainConfig, ckpt_dir: Path, *, numbered: bool, epoch: int,
          error: Exception | None = None) -> None:
    """Process 0 writes the checkpoint; every process must call this: with several, they all learn whether
    process 0 failed to write it, or (``error``) to write the log since the last checkpoint (a full disk),
    and stop together, instead of the others waiting in the next all-reduce until its timeout."""
    if dist.is_main() and error is None:
        try:
            sd = state.state_dict(cfg)
            save_checkpoint(sd, ckpt_dir / LATEST)
            if numbered:
                save_checkpoint(sd, ckpt_dir / f"epoch-{epoch:04d}.pt")
        except Exception as e:  # noqa: BLE001 - raised below, once every process knows
            error = e
    if dist.world_size() > 1 and _sum_over_processes([error is not None], state.prototypes.weight.device)[0]:
        if error is None:
            raise OSError(f"process 0 could not write to {ckpt_dir.parent} (its error is in its output)")
    if error is not None:
        raise error


def _check_run_folder(cfg: PretrainConfig, out: Path, resume: bool) -> PretrainConfig:
    latest = out / "checkpoints" / LATEST
    if not resume:
        if latest.exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if (out / "config.json").exists():  # a run stopped before its first checkpoint may start again
            try:
                PretrainConfig.load(out / "config.json")
            except ValueError:
                raise FileExistsError(f"{out} holds a config.json that is not a pretraining run's (a model?); "
                                      "choose another --out") from None
        elif out.is_dir() and any(out.iterdir()):  # the user's files (the image folder, say): write nowhere near
            raise FileExistsError(f"{out} is not empty and holds no pretraining run; choose a new or empty --out")
        return cfg
    if not latest.exists():
        raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
    saved = json.loads((out / "config.json").read_text())
    if "view_maker" not in saved:  # a run from before batched views: its views were made in workers
        cfg = dataclasses.replace(cfg, view_maker="workers")
    now = cfg.to_dict()
    diff = {k for k in saved if k in now and saved[k] != now[k] and k not in _RESUMABLE_CHANGES}
    if diff:
        raise ValueError("the settings differ from the run being resumed: " + ", ".join(
            f"{k} (run: {saved[k]!r}, now: {now[k]!r})" for k in sorted(diff)))
    return cfg


# --------------------------------------------------------------------------------------------- export


def export_encoder(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str | Path | None = None,
                   which: str = "target", overwrite: bool = False) -> Path:
    """Write the target (EMA) encoder of a run as a transformers-format ViT-MSN directory (a new or empty one;
    with ``overwrite``, one that holds an earlier export)."""
    from vitmsn.checkpoints import prepare_model_dir
    from vitmsn.models.hf import ViTMSNModel

    run_dir = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / LATEST
    state = load_checkpoint(ckpt, PRETRAIN_KEYS)
    cfg = PretrainConfig().with_overrides(state["config"])
    model = ViTMSNModel(cfg.encoder_config())
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state[which].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}: encoder weights do not fit (missing {missing}, unexpected {unexpected})")
    out_dir = prepare_model_dir(out_dir, overwrite)
    model.save_pretrained(out_dir)
    from vitmsn.processing import ViTImageProcessor

    ViTImageProcessor(size={"height": cfg.rand_size, "width": cfg.rand_size}, image_mean=list(cfg.mean),
                      image_std=list(cfg.std)).save_pretrained(out_dir)
    (out_dir / "msn_pretrain.json").write_text(json.dumps({"run": str(run_dir), "checkpoint": str(ckpt),
                                                            "step": state["step"], "which": which}, indent=2))
    return out_dir


def steps_for(cfg: PretrainConfig, num_images: int) -> int:
    """Steps in a whole run over ``num_images`` images."""
    return (num_images // cfg.batch_size) * cfg.epochs

