"""MSN pretraining configuration: one typed dataclass, named presets, ``key=value`` overrides.

Defaults are those of the paper and its released code (Assran et al., 2022, Appendix; configs/pretrain).
Every field is written to ``config.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitmsn.config import ViTMSNConfig


@dataclass
class PretrainConfig:
    # -- encoder (a ViT; the random anchor and the target are at rand_size, focal anchors at focal_size)
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    patch_size: int = 16
    num_channels: int = 3
    # stochastic depth: not implemented (the paper presets use 0), so a new run takes only 0; runs of earlier
    # versions that set it (to no effect) still resume and export
    drop_path: float = 0.0
    # -- data
    dataset: str = "folder"  # "folder" (an image folder, recursive) or "fashion-mnist"
    data: str | None = None  # path of the folder / of the IDX files
    rand_size: int = 224
    focal_size: int = 96
    rand_views: int = 1
    focal_views: int = 10
    rand_crop_scale: tuple[float, float] = (0.3, 1.0)
    focal_crop_scale: tuple[float, float] = (0.05, 0.3)
    color_jitter: float = 0.5  # strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8
    blur_prob: float = 0.5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_workers: int = 4
    # "workers": each image augmented by torchvision in DataLoader workers (any data set); "batched": a whole
    # batch at once on the training device (vitmsn.msn.batch_views; needs images held in memory as one
    # uint8 array, as Fashion-MNIST); "auto": batched when the data set allows it
    view_maker: str = "auto"
    # -- masking (random anchor only; dropped tokens are never computed)
    patch_drop: float = 0.15
    mask_per_sample: bool = False  # False: one permutation per batch, as the original code
    # -- projection head and prototypes
    head_hidden_dim: int = 2048
    head_output_dim: int = 256
    head_use_bn: bool = True
    num_prototypes: int = 1024
    freeze_prototypes: bool = False
    # -- loss
    temperature: float = 0.1
    sharpen: float = 0.25  # target temperature T (effective 0.025)
    me_max_weight: float = 1.0
    entropy_weight: float = 0.0
    use_sinkhorn: bool = True
    label_smoothing: float = 0.0
    # -- optimisation
    epochs: int = 800
    batch_size: int = 1024  # global: split over the processes
    lr: float = 1e-3
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_epochs: float = 15
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    clip_grad: float = 3.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    schedule_stretch: float = 1.25  # schedules run over stretch x the run, as the original's ipe_scale
    bf16: bool = False  # autocast to bfloat16 (GPU); off by default on CPU
    # CUDA: fp32 matmuls as TensorFloat-32 while pretraining runs (Ampere or newer GPUs: several times the
    # speed, ~1e-3 relative precision); no effect on the CPU
    tf32: bool = True
    # torch.compile the online network and the target (opt-in): the first steps wait for the compilation
    # (a minute or more). On 2 CPU cores, bench/pretrain_step.py --compile measured it ~10 % faster on the
    # fashion-mnist preset and no faster on ViT-S/16 (slower in four runs of five); not measured on a GPU
    compile: bool = False
    seed: int = 0
    # -- logging and checkpoints
    out: str = "runs/msn"
    # epochs between numbered checkpoints, each with the optimizer's state ("latest" is written every epoch)
    checkpoint_every: int = 50
    checkpoint_every_steps: int = 0  # also refresh "latest" every N steps (0: only at epoch ends)
    log_every: int = 10
    max_steps: int = 0  # stop after this many steps in total (0: the whole run); for smoke tests
    tensorboard: bool = True
    preset: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` naming the setting, for any value no run can use."""
        at_least = {"patch_size": 1, "rand_size": 1, "focal_size": 1, "head_hidden_dim": 1, "head_output_dim": 1,
                    "num_prototypes": 1, "log_every": 1, "checkpoint_every": 1, "checkpoint_every_steps": 0,
                    "max_steps": 0, "num_workers": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        ranges = {"lr": (0.0, None, False), "start_lr": (0.0, None, True), "final_lr": (0.0, None, True),
                  "weight_decay": (0.0, None, True), "final_weight_decay": (0.0, None, True),
                  "clip_grad": (0.0, None, True), "warmup_epochs": (0.0, None, True), "temperature": (0.0, None, False),
                  "sharpen": (0.0, None, False), "me_max_weight": (0.0, None, True),
                  "entropy_weight": (0.0, None, True), "color_jitter": (0.0, None, True),
                  "blur_prob": (0.0, 1.0, True), "ema_start": (0.0, 1.0, True), "ema_end": (0.0, 1.0, True),
                  "label_smoothing": (0.0, 1.0, True), "drop_path": (0.0, 1.0, True)}
        for name, (low, high, low_ok) in ranges.items():
            value = float(getattr(self, name))
            if not (value >= low if low_ok else value > low) or (high is not None and value > high) \
                    or value != value:
                bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
                raise ValueError(f"{name} must be {bound}, got {getattr(self, name)!r}")
        for name in ("rand_crop_scale", "focal_crop_scale"):
            scale = getattr(self, name)
            if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise ValueError(f"{name} must be two numbers lo,hi with 0 < lo <= hi <= 1, got {scale!r}")
        if self.dataset not in ("folder", "fashion-mnist"):
            raise ValueError(f"dataset must be 'folder' or 'fashion-mnist', got {self.dataset!r}")
        if self.view_maker not in ("auto", "workers", "batched"):
            raise ValueError(f"view_maker must be 'auto', 'workers' or 'batched', got {self.view_maker!r}")
        if not 0.0 <= self.patch_drop < 1.0:
            raise ValueError(f"patch_drop must be in [0, 1), got {self.patch_drop}")
        for name in ("rand_size", "focal_size"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of patch_size={self.patch_size}")
        if self.rand_views < 1 or self.focal_views < 0:
            raise ValueError("need rand_views >= 1 and focal_views >= 0")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2 (BatchNorm needs two samples), got {self.batch_size!r}")
        if len(self.mean) != self.num_channels or len(self.std) != self.num_channels:
            raise ValueError(f"mean and std need {self.num_channels} values each (num_channels)")
        if self.schedule_stretch < 1.0:
            raise ValueError(f"schedule_stretch must be >= 1, got {self.schedule_stretch}")
        ViTMSNConfig(**self.encoder_kwargs()).validate()  # raises for impossible encoder shapes

    def encoder_kwargs(self) -> dict[str, Any]:
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                    patch_size=self.patch_size, image_size=self.rand_size, num_channels=self.num_channels)

    def encoder_config(self) -> ViTMSNConfig:
        return ViTMSNConfig(**self.encoder_kwargs())

    # -- I/O
    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | Path) -> None:
        from vitmsn.checkpoints import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PretrainConfig:
        """Settings from a JSON file (a run's config.json); any problem is one ``ValueError`` naming the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a JSON file of settings ({e})") from None
        if not isinstance(data, dict) or "model_type" in data:
            raise ValueError(f"{path} does not hold pretraining settings (a JSON object of setting: value"
                             f"{'; this is a model config.json' if isinstance(data, dict) else ''})")
        try:
            return cls().with_overrides(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def with_overrides(self, assignments: list[str] | dict[str, Any]) -> PretrainConfig:
        """Apply ``["lr=0.001", "focal_views=4"]`` (strings are parsed to the field's type)."""
        if isinstance(assignments, dict):
            items = list(assignments.items())
        else:
            items = []
            for a in assignments:
                if "=" not in a:
                    raise ValueError(f"--set expects key=value, got {a!r}")
                k, v = a.split("=", 1)
                items.append((k.strip(), v.strip()))
        names = {f.name for f in dataclasses.fields(self)}
        changes = {}
        for k, v in items:
            k = k.replace("-", "_")
            if k not in names:
                close = difflib.get_close_matches(k, names, n=3) or [n for n in names if k in n or n in k]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ValueError(f"unknown setting {k!r}{hint}; see `vitmsn pretrain --list-settings`")
            changes[k] = _coerce(type(self), k, v)
        return dataclasses.replace(self, **changes)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Parse a string (or JSON value) into the declared type of field ``name``."""
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp, origin = args[0], typing.get_origin(args[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [x for x in value.replace("(", "").replace(")", "").split(",") if x.strip()]
        try:
            return tuple(float(x) for x in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} expects numbers separated by commas, got {value!r}") from None
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name} expects true or false, got {value!r}")
        return bool(value)
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} expects an integer, got {value!r}")
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} expects {tp.__name__}, got {value!r}") from None


def _vit(hidden: int, depth: int, heads: int, patch: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                intermediate_size=4 * hidden, patch_size=patch)


# The paper's ImageNet presets (Appendix, Table 8 and the released configs) and a 2-core CPU preset.
PRESETS: dict[str, dict[str, Any]] = {
    "vit-small/16": {**_vit(384, 12, 6, 16), "patch_drop": 0.15, "epochs": 800, "batch_size": 1024},
    "vit-base/16": {**_vit(768, 12, 12, 16), "patch_drop": 0.3, "epochs": 600, "batch_size": 1024},
    "vit-large/16": {**_vit(1024, 24, 16, 16), "patch_drop": 0.5, "epochs": 600, "batch_size": 1024},
    "vit-base/4": {**_vit(768, 12, 12, 4), "patch_drop": 0.7, "epochs": 300, "batch_size": 1024},
    "vit-large/7": {**_vit(1024, 24, 16, 7), "patch_drop": 0.7, "epochs": 200, "batch_size": 1024,
                    "rand_size": 224, "focal_size": 98},
    # Fashion-MNIST on 2 CPU cores in about 10 minutes: 28x28 grayscale (as 3 equal channels, so that the
    # model takes the images any ViT processor makes), 7x7 patches (16 tokens: 2.6x the images/s of 4x4
    # patches, and more epochs in the budget were worth more than finer patches; docs/EVALUATION.md has the
    # runs these settings were chosen from), a small ViT, half the random anchor's patches dropped
    "fashion-mnist": {
        **_vit(128, 4, 4, 7), "dataset": "fashion-mnist", "rand_size": 28, "focal_size": 14,
        "focal_views": 2, "mean": (0.286,) * 3, "std": (0.353,) * 3, "patch_drop": 0.5, "epochs": 7, "batch_size": 128,
        "lr": 3e-3, "warmup_epochs": 0.2, "ema_start": 0.99, "ema_end": 0.999,
        "head_hidden_dim": 512, "head_output_dim": 128,
        # Sinkhorn balances the targets of a batch of 128 over 64 prototypes; without it (256 prototypes)
        # the sharpened targets of a batch fell on 4-5 prototypes in a measured run
        "num_prototypes": 64, "use_sinkhorn": True,
        "num_workers": 2, "schedule_stretch": 1.0, "checkpoint_every": 1, "out": "runs/fashion-mnist",
    },
}


def preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PretrainConfig(**{"out": f"runs/{name.replace('/', '-')}", **PRESETS[name]}, preset=name)


def describe_settings(cfg: PretrainConfig | None = None) -> str:
    """Every setting with its type and its value in ``cfg`` (default: the dataclass defaults), for
    ``--list-settings``."""
    hints = typing.get_type_hints(PretrainConfig)
    lines = []
    for f in dataclasses.fields(PretrainConfig):
        if cfg is not None:
            value = getattr(cfg, f.name)
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = hints[f.name]
        lines.append(f"  {f.name:<24} {getattr(tp, '__name__', str(tp)).replace('typing.', ''):<22} {value!r}")
    return "\n".join(lines)


