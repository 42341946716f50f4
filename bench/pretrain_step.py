"""MSN pretraining step: images/s and peak memory, vitmsn against lightly's MSN parts on the same configuration.

One step is what ``vitmsn.msn.train.pretrain`` does per batch: the masked random anchor and the focal anchors
through the online encoder and projection head, the target view through the EMA copy (no gradient), the MSN
loss against the prototypes, backward, gradient clipping, AdamW, EMA update. Inputs are synthetic view
tensors made once before timing (random normal, the shapes the data pipeline would give), so data loading
and augmentation are excluded: only the model step is timed.

- vitmsn: ``train_step`` from vitmsn.msn.train, the step ``pretrain`` runs, with its ``build_state``,
  ``schedules`` and ``mask_for_step``.
- lightly: ``MaskedVisionTransformerTIMM`` around a timm ``VisionTransformer`` of the same shape
  (``dynamic_img_size=True`` so the focal views get interpolated position embeddings), ``MSNProjectionHead``,
  ``MSNLoss``, prototypes as a bias-free ``nn.Linear``, ``lightly.models.utils.random_token_mask`` for the
  kept tokens and ``update_momentum`` on a deep-copied target; the same AdamW parameter groups, lr, weight
  decay, clipping and momentum.

Configurations: the ``fashion-mnist`` preset (28 px random view, 2 focal views of 14 px, batch 128, ViT with
D=128, 4 blocks, patch 7) and ViT-S/16 (the ``vit-small/16`` preset: 224 px random view, 10 focal views of
96 px) with a small batch. Steps are timed interleaved (vitmsn, lightly, vitmsn, ...); images/s = batch /
median seconds per step. Peak memory: each implementation builds its model and runs a few steps in a fresh
subprocess; CPU: the peak resident set size (VmHWM, reset after the imports) minus the resident size after
the imports; CUDA: ``torch.cuda.max_memory_allocated``. Before timing, both sides are given the same weights
and run two steps on the same views and kept tokens; their losses and gradient norms are recorded
(``parity``).

Target (per configuration): vitmsn images/s >= 1.5 x lightly's, with no more peak memory.
GPU variants (CUDA only): the same under bf16 autocast. ``--compile`` adds vitmsn's step under
``torch.compile`` (the ``compile`` setting of pretraining) as a third row, on every device.

    python bench/pretrain_step.py [--quick] [--configs fashion-mnist,vit-small/16] [--batch 8] [--no-lightly]
                                  [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    cuda_available,
    machine_info,
    parser,
    setup_torch,
    summarize,
    target,
    time_interleaved,
    write_result,
)
from bench.matmul_peak import QUICK_SIZES, SIZES, measure_peak  # noqa: E402
from vitmsn.distributed import native_bf16  # noqa: E402

NAME = "pretrain_step"
TARGET_SPEEDUP = 1.5  # vitmsn images/s / lightly images/s
TARGET_MEMORY = 1.0  # vitmsn peak memory / lightly peak memory, at most
#: configuration -> vitmsn preset, CPU and GPU batch, steps per timed repeat, --quick overrides
CONFIGS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "preset": "fashion-mnist",
        "batch": 128,
        "gpu_batch": 128,
        "steps": 3,
        "quick": {"batch_size": 16},
    },
    "vit-small/16": {
        "preset": "vit-small/16",
        "batch": 8,
        "gpu_batch": 32,
        "steps": 1,
        "quick": {
            "num_hidden_layers": 1,
            "rand_size": 32,
            "focal_size": 16,
            "focal_views": 2,
            "head_hidden_dim": 256,
            "head_output_dim": 64,
            "num_prototypes": 128,
            "batch_size": 4,
        },
    },
}
#: the schedules (lr, weight decay, EMA momentum) are laid out as for a run of this many steps per epoch
STEPS_PER_EPOCH = 1000
MEMORY_PREFIX = "PRETRAIN_STEP_MEMORY "
LIGHTLY_PARTS = "MSNLoss, MSNProjectionHead, MaskedVisionTransformerTIMM, random_token_mask, update_momentum"


# ---------------------------------------------------------------------------------------- configuration


def pretrain_config(name: str, quick: bool, batch: int | None = None, device: str = "cpu"):
    """The vitmsn PretrainConfig of a benchmark configuration (preset, batch, --quick overrides)."""
    from vitmsn.msn.config import preset

    spec = CONFIGS[name]
    overrides: dict[str, Any] = {"batch_size": spec["gpu_batch" if device == "cuda" else "batch"]}
    if quick:
        overrides.update(spec["quick"])
    if batch:
        overrides["batch_size"] = batch
    # bf16 only on a GPU that computes in it natively (an older GPU times its fp32 step instead)
    overrides.update(num_workers=0, tensorboard=False, bf16=device == "cuda" and native_bf16())
    return preset(spec["preset"]).with_overrides(overrides)


def describe(cfg) -> dict[str, Any]:
    """The settings both implementations are built from (written to the result file)."""
    from vitmsn.msn.masking import num_kept_patches

    num_patches = (cfg.rand_size // cfg.patch_size) ** 2
    keys = (
        "hidden_size num_hidden_layers num_attention_heads intermediate_size patch_size num_channels "
        "rand_size focal_size rand_views focal_views patch_drop mask_per_sample head_hidden_dim head_output_dim "
        "head_use_bn num_prototypes temperature sharpen me_max_weight entropy_weight use_sinkhorn "
        "label_smoothing batch_size lr start_lr weight_decay clip_grad ema_start bf16 seed"
    ).split()
    out = {k: getattr(cfg, k) for k in keys}
    out.update(
        preset=cfg.preset,
        num_patches=num_patches,
        focal_num_patches=(cfg.focal_size // cfg.patch_size) ** 2,
        kept_patches=num_kept_patches(num_patches, cfg.patch_drop),
        sinkhorn_iterations=3 if cfg.use_sinkhorn else 0,
    )
    return out


def make_views(cfg, device, seed: int = 0) -> list:
    """Synthetic views as the loader yields them: [target, random anchor(s)..., focal anchors...]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, c = cfg.batch_size, cfg.num_channels
    sizes = [cfg.rand_size] * (1 + cfg.rand_views) + [cfg.focal_size] * cfg.focal_views
    return [torch.randn(b, c, s, s, generator=g).to(device) for s in sizes]


def _split(cfg, views):
    import torch

    targets_in = views[0]  # (b, C, H, W)
    rand = torch.cat(views[1 : 1 + cfg.rand_views])  # (R*b, C, H, W), view-major
    focal = torch.cat(views[1 + cfg.rand_views :]) if cfg.focal_views else rand[:0]  # (F*b, C, h, w)
    return targets_in, rand, focal


def step_flops(cfg) -> dict[str, int]:
    """Multiply-add FLOPs of one step (2 per MAC), as ``vit_flops`` counts them for inference.

    Forward: the random anchors on their kept tokens, the focal anchors, the target (no gradient), the
    projection head on every view and the prototype logits. The encoders' last block is counted for the
    CLS token only (keys and values of every token, everything else of the CLS token): MSN reads nothing
    else of it, vitmsn computes nothing else, lightly computes it for every token. So the count is the
    work the step needs, and "GFLOP/s" is that work per second on both sides. Backward: 2 x the forward of everything with a
    gradient (an upper bound by the patch embedding, whose input gradient is not needed). Element-wise work,
    softmax, LayerNorm, the loss's Sinkhorn and the optimizer are not counted.
    """
    from bench.inference import block_flops, cls_block_flops
    from vitmsn.msn.masking import num_kept_patches

    D, M, L, p, C = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.patch_size, cfg.num_channels
    h, o, K, b = cfg.head_hidden_dim, cfg.head_output_dim, cfg.num_prototypes, cfg.batch_size

    def encoder(images: int, size: int, tokens: int | None = None) -> int:
        P = (size // p) ** 2  # every patch is embedded; the blocks see the kept ones and the class token
        N = 1 + (P if tokens is None else tokens)
        return images * (2 * P * C * p * p * D + (L - 1) * block_flops(N, D, M) + cls_block_flops(N, D, M))

    def head(images: int) -> int:
        return images * 2 * (D * h + h * h + h * o + o * K)

    P = (cfg.rand_size // p) ** 2
    anchors = (encoder(cfg.rand_views * b, cfg.rand_size, num_kept_patches(P, cfg.patch_drop))
               + encoder(cfg.focal_views * b, cfg.focal_size) + head((cfg.rand_views + cfg.focal_views) * b))
    target = encoder(b, cfg.rand_size) + head(b)
    return {"anchors_forward": anchors, "target_forward": target, "total": 3 * anchors + target}


def count_params(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


# ---------------------------------------------------------------------------------------------- vitmsn


class VitmsnStep:
    """vitmsn's pretraining step, built from the pieces ``vitmsn.msn.train.pretrain`` uses, in its order."""

    def __init__(self, cfg, device):
        import torch

        from vitmsn.msn.train import build_criterion, build_state, networks_to_call, schedules

        self.cfg, self.device = cfg, torch.device(device)
        torch.manual_seed(cfg.seed)
        self.state = build_state(cfg, self.device)
        self.online, self.target = networks_to_call(self.state, cfg)  # torch.compile'd with cfg.compile
        self.criterion = build_criterion(cfg)
        self.sched = schedules(cfg, STEPS_PER_EPOCH)
        self.num_patches = cfg.encoder_config().num_patches
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def trainable_params(self) -> int:
        return count_params([*self.state.online.parameters(), self.state.prototypes.weight])

    def __call__(self, views, keep_idx=None):
        """One step (``vitmsn.msn.train.train_step``, what ``pretrain`` runs); returns (loss, grad norm)."""
        from vitmsn.msn.train import mask_for_step, train_step

        cfg, state = self.cfg, self.state
        if keep_idx is None:
            keep_idx = mask_for_step(cfg, state.step, cfg.rand_views * len(views[0]), self.num_patches,
                                     self.device)  # (R*b, K)
        res = train_step(state, cfg, self.criterion, self.sched, list(views), keep_idx, online=self.online,
                         target=self.target, amp=self.amp)
        return res.out.loss.detach(), res.grad_norm


# --------------------------------------------------------------------------------------------- lightly


def lightly_available() -> tuple[bool, str | None]:
    """Whether lightly's MSN parts import (and if not, why)."""
    try:
        from lightly.loss import MSNLoss  # noqa: F401
        from lightly.models import utils  # noqa: F401
        from lightly.models.modules import MaskedVisionTransformerTIMM  # noqa: F401
        from lightly.models.modules.heads import MSNProjectionHead  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return (
            False,
            f"skipped: lightly is not importable ({type(err).__name__}: {err}); pip install 'lightly>=1.5'",
        )
    return True, None


class LightlyStep:
    """The same step from lightly's MSN parts.

    As lightly's MSN example: masked forward through ``MaskedVisionTransformerTIMM`` with ``idx_keep``
    from ``random_token_mask``, ``MSNProjectionHead`` per view group, the target through deep copies,
    ``MSNLoss(anchors, targets, prototypes, target_sharpen_temperature)``, ``update_momentum``. Unlike the
    example (and to do the same work as vitmsn): focal views are not masked, the prototypes are passed
    with their gradient (the example passes ``.data``, so its prototypes never train), the gradient is
    clipped, and AdamW uses vitmsn's parameter groups (no decay on biases, norms, prototypes).

    ``init``: a :class:`VitmsnStep` whose online weights (encoder, head, prototypes) are copied in.
    """

    def __init__(self, cfg, device, init: VitmsnStep | None = None):
        import torch
        from lightly.loss import MSNLoss
        from lightly.models import utils
        from lightly.models.modules import MaskedVisionTransformerTIMM
        from lightly.models.modules.heads import MSNProjectionHead
        from timm.models.vision_transformer import VisionTransformer
        from torch import nn

        from vitmsn.msn.schedules import WD_SCHEDULE_KEY, param_groups
        from vitmsn.msn.train import schedules

        self.cfg, self.device, self.utils = cfg, torch.device(device), utils
        torch.manual_seed(cfg.seed)
        vit = VisionTransformer(
            img_size=cfg.rand_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.num_channels,
            num_classes=0,
            global_pool="token",
            class_token=True,
            embed_dim=cfg.hidden_size,
            depth=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),  # vitmsn's ViTMSNConfig.layer_norm_eps
            dynamic_img_size=True,  # focal views: position embeddings resampled to their grid
        )
        # learned position embeddings (vitmsn's, the paper's) instead of lightly's default fixed sin-cos;
        # resampling without antialias, the same bicubic interpolation as vitmsn's
        self.backbone = MaskedVisionTransformerTIMM(
            vit=vit, antialias=False, pos_embed_initialization="learn"
        )
        self.head = MSNProjectionHead(cfg.hidden_size, cfg.head_hidden_dim, cfg.head_output_dim)
        self.prototypes = nn.Linear(cfg.head_output_dim, cfg.num_prototypes, bias=False)
        if init is not None:
            copy_weights(init, self)
        self.backbone.to(self.device)
        self.head.to(self.device)
        self.prototypes.to(self.device)
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_head = copy.deepcopy(self.head)
        utils.deactivate_requires_grad(self.target_backbone)
        utils.deactivate_requires_grad(self.target_head)
        self.criterion = MSNLoss(
            temperature=cfg.temperature,
            sinkhorn_iterations=3 if cfg.use_sinkhorn else 0,
            regularization_weight=cfg.me_max_weight,
        )
        self.online_params = [*self.backbone.parameters(), *self.head.parameters()]
        named = [
            *(("backbone." + n, p) for n, p in self.backbone.named_parameters()),
            *(("head." + n, p) for n, p in self.head.named_parameters()),
            ("prototypes", self.prototypes.weight),
        ]
        self.optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.start_lr)
        sched = schedules(cfg, STEPS_PER_EPOCH)
        # constant for the benchmark: the values of vitmsn's first step
        self.lr, self.wd, self.momentum = sched["lr"](1), sched["wd"](1), sched["ema"](0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
            if group.get(WD_SCHEDULE_KEY, False):  # the decayed group, as vitmsn's set_weight_decay
                group["weight_decay"] = self.wd
        self.seq_len = (cfg.rand_size // cfg.patch_size) ** 2 + 1  # patches + class token
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def trainable_params(self) -> int:
        return count_params([*self.online_params, self.prototypes.weight])

    def kept_tokens(self) -> int:
        idx, _ = self.utils.random_token_mask(size=(1, self.seq_len), mask_ratio=self.cfg.patch_drop)
        return idx.shape[1]

    def __call__(self, views, idx_keep=None):
        import torch

        cfg, utils = self.cfg, self.utils
        targets_in, rand, focal = _split(cfg, views)
        if idx_keep is None:
            idx_keep, _ = utils.random_token_mask(
                size=(rand.shape[0], self.seq_len), mask_ratio=cfg.patch_drop, device=self.device
            )
        with self.amp:
            anchors = [self.head(self.backbone(images=rand, idx_keep=idx_keep))]
            if focal.numel():
                anchors.append(self.head(self.backbone(images=focal)))
            anchors_out = torch.cat(anchors, dim=0)
            with torch.no_grad():
                targets_out = self.target_head(self.target_backbone(images=targets_in))
        loss = self.criterion(
            anchors_out.float(),
            targets_out.float(),
            self.prototypes.weight,
            target_sharpen_temperature=cfg.sharpen,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.online_params, cfg.clip_grad)
        self.optimizer.step()
        utils.update_momentum(self.backbone, self.target_backbone, m=self.momentum)
        utils.update_momentum(self.head, self.target_head, m=self.momentum)
        return loss.detach(), grad_norm


def copy_weights(src: VitmsnStep, dst: LightlyStep) -> None:
    """vitmsn's online encoder, projection head and prototypes into lightly's modules.

    The encoders share timm's parameter names. lightly's head has no bias on the two linear layers followed
    by BatchNorm; in training mode BatchNorm removes any such bias (vitmsn's are zero at initialisation).
    """
    import torch

    online = src.state.online
    dst.backbone.vit.load_state_dict(online.encoder.state_dict(), strict=True)
    fc = online.head.fc
    layers = dst.head.layers  # Linear, BN, GELU, Linear, BN, GELU, Linear
    with torch.no_grad():
        layers[0].weight.copy_(fc.fc1.weight)
        layers[1].load_state_dict(fc.bn1.state_dict())
        layers[3].weight.copy_(fc.fc2.weight)
        layers[4].load_state_dict(fc.bn2.state_dict())
        layers[6].load_state_dict(fc.fc3.state_dict())
        dst.prototypes.weight.copy_(src.state.prototypes.weight)


def parity(cfg, device, vitmsn_step: VitmsnStep, lightly_step: LightlyStep, views) -> dict[str, Any]:
    """Two steps of each side from the same weights on the same views and kept tokens."""
    import torch

    from vitmsn.msn.train import mask_for_step

    _, rand, _ = _split(cfg, views)
    rows = []
    for i in range(2):
        keep = mask_for_step(
            cfg, i, rand.shape[0], (cfg.rand_size // cfg.patch_size) ** 2, torch.device(device)
        )
        idx_keep = torch.cat([torch.zeros_like(keep[:, :1]), keep + 1], dim=1)  # class token first
        lv, gv = vitmsn_step(views, keep_idx=keep)
        ll, gl = lightly_step(views, idx_keep=idx_keep)
        rows.append(
            {
                "step": i,
                "loss_vitmsn": lv.item(),
                "loss_lightly": ll.item(),
                "loss_abs_diff": abs(lv.item() - ll.item()),
                "grad_norm_vitmsn": gv.item(),
                "grad_norm_lightly": gl.item(),
                "grad_norm_rel_diff": abs(gv.item() - gl.item()) / max(abs(gv.item()), 1e-12),
            }
        )
    return {
        "what": "loss and gradient norm (before clipping) of both sides from the same weights, views and kept "
        "tokens; step 1 also checks that both optimizer steps and EMA updates did the same",
        "steps": rows,
    }


# ---------------------------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float | None:
    """A size field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MiB; None if absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: ``5`` to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: build one side, run a few steps, print its peak memory as JSON.

    CPU: the peak resident set size (VmHWM) after the model is built and the steps have run, minus the
    resident size after the imports (VmHWM is reset to it there). ``ru_maxrss`` is not used: Linux carries
    it over from the parent through fork and exec, so a child of a big parent starts with the parent's peak.
    """
    import torch

    setup_torch(args.threads)
    cfg = pretrain_config(args.child_config, args.quick, args.batch, args.child_device)
    # both sides import everything before the baseline (lazy imports would otherwise count as memory)
    import vitmsn.msn.train  # noqa: F401

    if lightly_available()[0]:
        import lightly.loss  # noqa: F401
        import lightly.models.modules  # noqa: F401
        import timm  # noqa: F401
    reset = _reset_peak_rss()
    baseline = _status_mb("VmRSS")
    if args.child_device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.child == "vitmsn-compile":
        cfg = cfg.with_overrides({"compile": True})
    step = (LightlyStep if args.child == "lightly" else VitmsnStep)(cfg, args.child_device)
    views = make_views(cfg, args.child_device)
    for _ in range(args.child_steps):
        step(views)
    if args.child_device == "cuda":
        torch.cuda.synchronize()
    out: dict[str, Any] = {"side": args.child, "steps": args.child_steps}
    if reset and baseline is not None:
        peak = _status_mb("VmHWM")
        out.update(
            method="VmHWM - VmRSS after imports",
            rss_baseline_mb=baseline,
            rss_peak_mb=peak,
            rss_increase_mb=peak - baseline,
        )
    else:  # no /proc: ru_maxrss, which may include the parent's peak (see above)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        out.update(
            method="ru_maxrss (no /proc; may include the parent's peak)",
            rss_peak_mb=peak,
            rss_increase_mb=peak,
        )
    if args.child_device == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(MEMORY_PREFIX + json.dumps(out), flush=True)


def measure_memory(args, config: str, side: str, device: str, threads: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--child-config",
        config,
        "--child-device",
        device,
        "--child-steps",
        str(2 if args.quick else 3),
        "--threads",
        str(threads),
    ]
    if args.quick:
        cmd.append("--quick")
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MEMORY_PREFIX):
            return json.loads(line[len(MEMORY_PREFIX) :])
    raise RuntimeError(
        f"memory subprocess for {side} / {config} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def peak_of(mem: dict[str, Any], device: str) -> float:
    return mem["cuda_max_allocated_mb"] if device == "cuda" else mem["rss_increase_mb"]


# ------------------------------------------------------------------------------------------------- run


def run_config(args, config: str, device: str, threads: int, use_lightly: bool,
               peak: float | None = None) -> dict[str, Any]:
    import torch

    cfg = pretrain_config(config, args.quick, args.batch, device)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = 1 if args.quick else 2
    steps = args.steps or (1 if args.quick else CONFIGS[config]["steps"])
    ours = VitmsnStep(cfg, device)
    views = make_views(cfg, device)
    info: dict[str, Any] = {"config": config, "device": device, "settings": describe(cfg), "repeats": repeats}
    info["steps_per_repeat"] = steps
    info["trainable_params"] = {"vitmsn": ours.trainable_params()}
    cases = {"vitmsn": ours}
    if args.compile:  # the same step with torch.compile (PretrainConfig.compile); compiled during warm-up
        cases["vitmsn-compile"] = VitmsnStep(cfg.with_overrides({"compile": True}), device)
        print(f"{config}: compiling vitmsn's step (torch.compile) ...", flush=True)
        cases["vitmsn-compile"](views)
    if use_lightly:
        theirs = LightlyStep(cfg, device, init=ours)
        info["trainable_params"]["lightly"] = theirs.trainable_params()
        info["kept_tokens"] = {
            "vitmsn": 1 + info["settings"]["kept_patches"],
            "lightly": theirs.kept_tokens(),
        }
        info["parity"] = parity(cfg, device, ours, theirs, views)
        cases["lightly"] = theirs

    def run(fn):
        def go():
            for _ in range(steps):
                fn(views)

        return go

    sync = torch.cuda.synchronize if device == "cuda" else None
    times = time_interleaved(
        {k: run(fn) for k, fn in cases.items()}, repeats=repeats, warmup=warmup, sync=sync
    )
    label = f"{config} ({device}{' bf16' if cfg.bf16 else ''}, batch {cfg.batch_size})"
    print(f"\n{label}: {steps} step(s) per repeat, {repeats} repeats, median")
    flops = step_flops(cfg)
    info["flops_per_step"] = flops
    rows = {}
    for side, ts in times.items():
        s = summarize([t / steps for t in ts])  # seconds per step
        rows[side] = {"side": side, **s, "images_per_s": cfg.batch_size / s["median_s"],
                      "gflops": flops["total"] / s["median_s"] / 1e9}
        if peak:
            rows[side]["peak_share"] = rows[side]["gflops"] / peak
    mem = {side: measure_memory(args, config, side, device, threads) for side in cases}
    for side, row in rows.items():
        row["peak_memory_mb"] = peak_of(mem[side], device)
        share = f" ({100 * row['peak_share']:.0f}% of the matmul peak)" if peak else ""
        print(
            f"  {side:14s} {row['images_per_s']:9.1f} img/s  {row['median_s'] * 1e3:9.1f} ms/step  "
            f"{row['gflops']:6.1f} GFLOP/s{share}  peak memory +{row['peak_memory_mb']:.0f} MiB"
        )
    info["rows"] = list(rows.values())
    info["memory"] = mem
    if use_lightly:
        info["speedup"] = rows["vitmsn"]["images_per_s"] / rows["lightly"]["images_per_s"]
        info["memory_ratio"] = rows["vitmsn"]["peak_memory_mb"] / max(rows["lightly"]["peak_memory_mb"], 1e-9)
        if peak:
            # the fastest any implementation of these FLOPs could be: all of them at the matmul peak
            info["speedup_bound"] = rows["lightly"]["median_s"] / (flops["total"] / (peak * 1e9))
            print(f"  at 100% of the matmul peak a step would be {info['speedup_bound']:.2f}x lightly's images/s")
        p = info["parity"]["steps"]
        print(
            f"  vitmsn / lightly: {info['speedup']:.3f}x images/s, {info['memory_ratio']:.3f}x peak memory; "
            f"parity: loss {p[0]['loss_vitmsn']:.6f} vs {p[0]['loss_lightly']:.6f}, "
            f"after one step {p[1]['loss_vitmsn']:.6f} vs {p[1]['loss_lightly']:.6f}"
        )
    return info


def targets_for(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for info in infos:
        if "speedup" not in info:
            continue
        where = f"{info['config']} {info['device']}{' bf16' if info['settings']['bf16'] else ''} b{info['settings']['batch_size']}"
        out.append(target(f"{where}: vitmsn / lightly images/s", info["speedup"], TARGET_SPEEDUP, unit="x"))
        out.append(
            target(
                f"{where}: vitmsn / lightly peak memory",
                info["memory_ratio"],
                TARGET_MEMORY,
                higher_is_better=False,
                unit="x",
            )
        )
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument(
        "--batch", type=int, default=None, help="images per step (default: 128 fashion-mnist, 8 ViT-S)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="steps per timed repeat (default: 3 fashion-mnist, 1 ViT-S)"
    )
    p.add_argument(
        "--no-lightly", action="store_true", help="time vitmsn alone even when lightly is installed"
    )
    p.add_argument("--compile", action="store_true",
                   help="also time vitmsn's step under torch.compile (the `compile` setting; minutes to compile)")
    # the memory subprocess (internal)
    p.add_argument("--child", choices=("vitmsn", "vitmsn-compile", "lightly"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--child-steps", type=int, default=3, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.child:
        memory_child(args)
        return {}
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    threads = setup_torch(args.threads)
    machine = machine_info()
    if args.no_lightly:
        use_lightly, why = False, "skipped: --no-lightly"
    else:
        use_lightly, why = lightly_available()
    if not use_lightly:
        print(f"lightly's side {why}")
    t0 = time.perf_counter()
    peak = measure_peak(QUICK_SIZES if args.quick else SIZES, repeats=2 if args.quick else 5)
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s with {threads} threads")
    cpu = [run_config(args, c, "cpu", threads, use_lightly, peak) for c in configs]
    use_gpu, gpu_why = cuda_available(args)
    gpu: dict[str, Any]
    if use_gpu:
        gpu = {"configs": [run_config(args, c, "cuda", threads, use_lightly) for c in configs]}
    else:
        gpu = {"skipped": gpu_why}
        print(f"GPU variants {gpu_why}")
    targets = targets_for(cpu + gpu.get("configs", []))
    for t in targets:
        print(
            f"target {t['name']}: {t['value']:.3f} vs {t['threshold']} -> {'met' if t['met'] else 'MISSED'} "
            f"({100 * t['margin']:+.1f}%)"
        )
    notes = [
        "Synthetic views (random normal tensors made once, in the loader's shapes): data loading and "
        "augmentation are not timed, only the model step (forward, loss, backward, clipping, AdamW, EMA).",
        "Memory: each side builds its model and runs a few steps in a fresh subprocess; CPU: peak resident "
        "set size (VmHWM, reset after the imports) minus the resident size after the imports, i.e. weights, "
        "optimizer state, activations and allocator overhead (ru_maxrss is not used: Linux carries the parent's "
        "peak over into a child); CUDA: torch.cuda.max_memory_allocated. About 100 MiB of the CPU increase "
        "is common to both sides whatever the model size (code pages of torch's kernels touched for the first "
        "time, allocator caches): --quick runs measure mostly that.",
        "lightly's side as its MSN example, except (for equal work): focal views unmasked (the example masks "
        "them too), prototypes trained (the example passes prototypes.data), gradient clipping, vitmsn's AdamW "
        "parameter groups, learned position embeddings (lightly's default is a fixed sin-cos table) resampled "
        "without antialias (vitmsn's bicubic interpolation). lightly's random_token_mask draws a subset per "
        "image, vitmsn one per batch (as the original MSN); both keep the same number of tokens. lightly's lr, "
        "weight decay and momentum stay at vitmsn's first-step values; vitmsn follows its schedules.",
    ]
    if use_lightly:
        notes.append(
            "parity (results.cpu.configs[*].parity): from the same weights, views and kept tokens both sides "
            "give the same loss and gradient norm at the first step (float32 rounding); after one AdamW step "
            "the losses still agree to ~1e-5, the gradient norms to ~1 % (Adam's first update is lr * sign(g), "
            "which turns rounding-level gradient differences into full-size steps). Trainable parameter counts "
            "differ only by vitmsn's two head biases before BatchNorm and lightly's unused mask token."
        )
    else:
        notes.append(f"lightly's side {why}: vitmsn was timed alone, so there are no targets.")
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "configs": configs,
            "presets": {c: CONFIGS[c]["preset"] for c in configs},
            "quick_overrides": {c: CONFIGS[c]["quick"] for c in configs} if args.quick else None,
            "threads": threads,
            "repeats": args.repeats or (2 if args.quick else 5),
            "steps_per_epoch_for_schedules": STEPS_PER_EPOCH,
            "lightly_parts": LIGHTLY_PARTS,
            "settings": {c["config"]: c["settings"] for c in cpu},
        },
        results={
            "lightly": {"used": use_lightly, **({"skipped": why} if not use_lightly else {})},
            "cpu": {"configs": cpu},
            "gpu": gpu,
            "seconds": time.perf_counter() - t0,
        },
        targets=targets,
        notes=notes,
    )
    return {"cpu": cpu, "gpu": gpu}


if __name__ == "__main__":
    main()
