"""Typed model configurations that read and write transformers' ``config.json``.

``ViTConfig`` and ``ViTMSNConfig`` take the same arguments, with the same defaults, as the classes of the
same name in ``transformers``; a ``config.json`` written by one library loads in the other. They are plain
dataclasses: every field is typed, impossible values raise ``ValueError`` when the object is built, and
keys of a ``config.json`` that this library does not use are kept (in ``extra``) so that they survive a
load-and-save round trip.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger("vitmsn")

#: Activation names accepted by ``hidden_act`` / ``pooler_act`` (transformers' names).
ACTIVATIONS = ("gelu", "relu", "selu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "silu",
               "swish", "tanh", "linear", "gelu_python", "gelu_accurate", "gelu_python_tanh", "gelu_10",
               "hardswish", "leaky_relu", "mish", "relu2", "relu6", "sigmoid", "laplace", "sqrtsoftplus")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Keys that transformers writes into every config.json and that carry no meaning for the model here.
_IGNORED_KEYS = frozenset({"transformers_version", "_name_or_path", "_commit_hash", "use_cache", "model_type",
                           "vitmsn_version"})
#: the flags a config.json holds only where they differ from these defaults (as transformers writes it)
_FLAG_DEFAULTS = {"output_attentions": False, "output_hidden_states": False, "return_dict": True}


def pair(x: int | tuple[int, int] | list[int], name: str = "size") -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(224, 192)`` stays as it is (height, width)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(x):
        return (x, x)
    if not isinstance(x, list | tuple) or len(x) != 2 or not all(is_int(v) for v in x):
        raise ValueError(f"{name} must be an integer or a [height, width] pair of integers, got {x!r}")
    return (x[0], x[1])


def check_int(value: Any, name: str, low: int) -> int:
    """``value`` as an ``int``: a Python or numpy integer (not a bool) of at least ``low``; anything else is a
    ``ValueError`` naming it (``name``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_tiling(image_size: int | tuple[int, int] | list[int], patch_size: int | tuple[int, int] | list[int]) -> None:
    """Raise ``ValueError`` unless the patches tile the image exactly: for sizes chosen for a conversion or an
    export, where pixels that no patch covers would be resized for nothing."""
    (ih, iw), (ph, pw) = pair(image_size, "image_size"), pair(patch_size, "patch_size")
    if ih % ph or iw % pw:
        raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")


def _json_value(value: Any) -> Any:
    """A torch dtype (``config.dtype = torch.float16``, as transformers code sets) as its name, as transformers
    writes it; anything else unchanged."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    return value


def default_labels(n: int) -> dict[int, str]:
    """transformers' label names for ``n`` classes: ``{0: "LABEL_0", ...}``."""
    return {i: f"LABEL_{i}" for i in range(n)}


#: what each read-only property of a config follows (for the error when one is passed as a keyword)
_DERIVED_FROM = {"use_return_dict": "return_dict", "grid_size": "image_size // patch_size",
                 "num_patches": "the number of patches at image_size"}


def _keeps_unknown_keywords(cls: type) -> type:
    """Let the dataclass constructor take keywords it has no field for, as transformers' configs do: they
    go to ``extra`` (written back to config.json) and read as attributes (``config.my_key``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = {f.name for f in dataclasses.fields(cls)}
        if "_attn_implementation" in kwargs:  # transformers' name
            kwargs.setdefault("attn_implementation", kwargs.pop("_attn_implementation"))
        if "torch_dtype" in kwargs:  # transformers 4's name of dtype
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        unknown = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        read_only = sorted(k for k in unknown if isinstance(getattr(cls, k, None), property)
                           and getattr(cls, k).fset is None)
        if read_only:  # transformers raises too (its setattr meets a property without a setter)
            derived = "; ".join(f"{k} follows {_DERIVED_FROM.get(k, 'other settings')}" for k in read_only)
            raise ValueError(f"{cls.__name__}: {', '.join(read_only)} cannot be set ({derived})")
        if unknown:
            kwargs["extra"] = {**(kwargs.get("extra") or {}),
                               **{k: v for k, v in unknown.items() if k not in _IGNORED_KEYS}}
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_keeps_unknown_keywords
@dataclass
class ViTConfig:
    """Configuration of a ViT (``model_type`` "vit"); same arguments and defaults as transformers'."""

    model_type: ClassVar[str] = "vit"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    encoder_stride: int = 16
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    # -- shared with every transformers config
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    attn_implementation: str = "sdpa"
    #: keys read from a config.json that this library does not use; written back unchanged
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.extra = dict(self.extra)  # its own (``copy`` / ``dataclasses.replace`` pass the original's)
        if self.pooler_output_size is None and hasattr(self, "pooler_output_size"):
            self.pooler_output_size = self.hidden_size
        self._init_labels()
        # as transformers: values that cannot be right raise here, values that only disagree with each other
        # (hidden_size and num_attention_heads) when a model is built, so a config can be set up step by step
        self.validate(consistency=False)
        self._built = True

    # ------------------------------------------------------------------ labels
    def _init_labels(self) -> None:
        if self.id2label is not None:
            if not isinstance(self.id2label, dict):
                raise ValueError(f"id2label must map class indices to names, got {self.id2label!r}")
            try:
                self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"id2label keys must be class indices (0, 1, ...), got {list(self.id2label)[:5]}")\
                    from None
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                raise ValueError(
                    f"num_labels={self.num_labels} disagrees with id2label, which has {len(self.id2label)} entries"
                )
            self.num_labels = len(self.id2label)
        else:
            n = 2 if self.num_labels is None else int(self.num_labels)
            if n < 0:
                raise ValueError(f"num_labels must be >= 0, got {n}")
            self.num_labels = n
            self.id2label = default_labels(n)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}

    # -------------------------------------------------------------- validation
    def validate(self, consistency: bool = True) -> None:
        """Raise ``ValueError`` for values no model can be built from (``consistency=False``: only those that are
        wrong on their own, not the hidden size that the heads do not divide)."""
        ints = {"hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads, "intermediate_size": self.intermediate_size,
                "num_channels": self.num_channels}
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("layer_norm_eps", "initializer_range", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if consistency and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        # an image_size the patches do not tile is allowed, as in transformers: the patch embedding leaves out
        # the pixels of an incomplete last row and column of patches
        (ih, iw), (ph, pw) = pair(self.image_size, "image_size"), pair(self.patch_size, "patch_size")
        if min(ih, iw, ph, pw) <= 0:
            raise ValueError(f"image_size and patch_size must be positive, got {self.image_size}, {self.patch_size}")
        if ih < ph or iw < pw:
            raise ValueError(f"image_size {self.image_size} is smaller than one patch ({self.patch_size})")
        for name in ("hidden_act", "pooler_act"):
            act = getattr(self, name, None)
            if act is not None and act not in ACTIVATIONS:
                raise ValueError(f"{name}={act!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={self.attn_implementation!r}; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if getattr(self, "encoder_stride", 1) <= 0:
            raise ValueError(f"encoder_stride must be positive, got {self.encoder_stride}")

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields: look in ``extra``
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # a public name that is neither a field nor a class attribute lives in ``extra``, so that it is saved
        # (as transformers saves every attribute set on a config)
        if name == "_attn_implementation":  # transformers' name
            name = "attn_implementation"
        built = self.__dict__.get("_built", False)  # after __post_init__: the labels are consistent
        if built and name == "attn_implementation" and value not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={value!r}; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if (built and name == "num_labels" and value is not None and self.id2label is not None
                and int(value) != len(self.id2label)):
            # as transformers: another number of labels means new default names (the id2label branch below
            # sets num_labels and label2id)
            self.id2label = default_labels(int(value))
        elif built and name == "id2label" and value is not None:
            value = {int(k): str(v) for k, v in value.items()}
            object.__setattr__(self, "id2label", value)
            object.__setattr__(self, "num_labels", len(value))
            object.__setattr__(self, "label2id", {v: k for k, v in value.items()})
        elif name.startswith("_") or name in self.__dataclass_fields__ or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value

    def __copy__(self) -> ViTConfig:  # a copy has its own ``extra`` (attribute writes go there)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__["extra"] = dict(self.extra)
        return new

    def __delattr__(self, name: str) -> None:
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra and name not in self.__dataclass_fields__:
            del extra[name]
        else:
            object.__delattr__(self, name)

    # --------------------------------------------------------- derived values
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns) at ``image_size``."""
        (ih, iw), (ph, pw) = pair(self.image_size), pair(self.patch_size)
        return ih // ph, iw // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def use_return_dict(self) -> bool:  # transformers' name
        return self.return_dict

    @property
    def _attn_implementation(self) -> str:  # transformers' name
        return self.attn_implementation

    @property
    def dtype(self) -> Any:
        """The weights' torch dtype (saved as its name), or None; ``torch_dtype`` is transformers 4's name."""
        value = self.extra.get("dtype")
        if isinstance(value, str):
            import torch

            value = getattr(torch, value.removeprefix("torch."), value)
        return value

    @dtype.setter
    def dtype(self, value: Any) -> None:
        if value is None:
            self.extra.pop("dtype", None)
        else:
            self.extra["dtype"] = value

    torch_dtype = dtype

    @property
    def name_or_path(self) -> str:
        """Where ``from_pretrained`` read this config from ("" for one built here)."""
        return self.__dict__.get("_name_or_path", "")

    # what transformers' generic code asks of any config
    is_encoder_decoder: ClassVar[bool] = False
    chunk_size_feed_forward: ClassVar[int] = 0

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> ViTConfig:
        return self

    # ------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        """The config.json dictionary, in transformers' format (string keys in ``id2label``)."""
        out: dict[str, Any] = {k: _json_value(v) for k, v in self.extra.items()}
        dtype = out.pop("dtype", None)  # transformers 5's name; config.json keeps torch_dtype, which both read
        if dtype is not None:
            out.setdefault("torch_dtype", dtype)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "attn_implementation") or getattr(self, f.name) == _FLAG_DEFAULTS.get(f.name, ...):
                continue
            value = copy.deepcopy(getattr(self, f.name))
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type
        if out.get("architectures") is None:
            out.pop("architectures")
        out.setdefault("torch_dtype", "float32")
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the settings every transformers config has (labels, problem type, flags)
        where they keep their defaults, as transformers' ``to_diff_dict``."""
        default = type(self)().to_dict()
        generic = {"num_labels", "id2label", "label2id", "problem_type", "architectures", *_FLAG_DEFAULTS}
        return {k: v for k, v in self.to_dict().items() if k not in generic or default.get(k, ...) != v}

    def to_json_string(self, use_diff: bool = True) -> str:
        """JSON of :meth:`to_diff_dict` (``use_diff``, as transformers) or of every value (what
        ``save_pretrained`` writes)."""
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(json_file_path).write_text(self.to_json_string(use_diff), encoding="utf-8")

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set each key of ``config_dict`` as an attribute (keys without a field are kept in ``extra``)."""
        for key, value in config_dict.items():
            setattr(self, key, value)
        self.validate()

    def update_from_string(self, update_str: str) -> None:
        """Update from ``"hidden_size=384,qkv_bias=false"``: each value is read as the type of the current one."""
        changes: dict[str, Any] = {}
        for item in filter(None, update_str.split(",")):
            key, sep, text = item.partition("=")
            if not sep or not hasattr(self, key):
                raise ValueError(f"update_from_string: {item!r} is not key=value of an existing setting")
            old = getattr(self, key)
            if isinstance(old, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"update_from_string: {key} takes true or false, got {text!r}")
                changes[key] = text.lower() in ("true", "1")
            elif isinstance(old, int | float):
                try:
                    changes[key] = type(old)(text)
                except ValueError:
                    raise ValueError(f"update_from_string: {key} takes a {type(old).__name__}, got {text!r}") from None
            elif isinstance(old, str):
                changes[key] = text
            else:
                raise ValueError(f"update_from_string: {key} ({type(old).__name__}) cannot be set from a string")
        self.update(changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> ViTConfig:
        """Build from a config.json dictionary; unknown keys are kept in ``extra`` (with a warning)."""
        data = {**data, **overrides}
        model_type = data.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"config has model_type={model_type!r}, but {cls.__name__} expects {cls.model_type!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        if "_attn_implementation" in data and "attn_implementation" not in known:
            known["attn_implementation"] = data["_attn_implementation"]
        extra = {k: v for k, v in data.items() if k not in names and k not in _IGNORED_KEYS
                 and k not in ("_attn_implementation", "torch_dtype", "dtype")}
        extra.update(data.get("extra") or {})
        saved_dtype = data.get("dtype", data.get("torch_dtype"))
        if saved_dtype is not None:
            extra["dtype"] = saved_dtype
        if extra:
            logger.debug("%s keeps config keys it does not use: %s", cls.__name__, ", ".join(sorted(extra)))
        for key in ("image_size", "patch_size"):
            if isinstance(known.get(key), list):
                known[key] = tuple(known[key])
        if known.get("id2label") is not None and known.get("num_labels") is not None:
            if len(known["id2label"]) != known["num_labels"]:  # an override of num_labels wins, as in transformers
                if "num_labels" in overrides:
                    known.pop("id2label")
                    known.pop("label2id", None)
                else:
                    known.pop("num_labels")
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ViTConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        from vitmsn.checkpoints import atomic_write_text

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        atomic_write_text(path, self.to_json_string(use_diff=False))
        return path

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, return_unused_kwargs: bool = False,
                        **kwargs: Any) -> ViTConfig | tuple[ViTConfig, dict[str, Any]]:
        """Read ``config.json`` from a local directory or a Hub repository id (as transformers: ``revision``,
        ``cache_dir``, ``token``, ``subfolder``, ``force_download``, ``local_files_only``).

        Other keywords that name a setting (a field, or a key of the file) override it; the rest are unused,
        and returned with the config when ``return_unused_kwargs`` is true.
        """
        from vitmsn.checkpoints import load_config_dict, pop_hub_kwargs

        hub = pop_hub_kwargs(kwargs)
        data = load_config_dict(path_or_id, **hub)
        if data.get("model_type") in CONFIG_CLASSES and data["model_type"] != cls.model_type:
            logger.warning("reading a %r config into %s (%s)", data["model_type"], cls.__name__, path_or_id)
            data = {k: v for k, v in data.items() if k != "model_type"}
        known = set(cls.__dataclass_fields__) | set(data) | {"_attn_implementation"}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
        try:
            config = cls.from_dict(data, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.json of {path_or_id}: {e}") from None
        config._name_or_path = str(path_or_id)  # not saved
        return (config, kwargs) if return_unused_kwargs else config

    def copy(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)


@_keeps_unknown_keywords
@dataclass
class ViTMSNConfig(ViTConfig):
    """Configuration of a ViT trained with MSN (``model_type`` "vit_msn"); as transformers' ViTMSNConfig."""

    model_type: ClassVar[str] = "vit_msn"

    layer_norm_eps: float = 1e-6

    # transformers' ViTMSNConfig has no pooler or SimMIM decoder settings
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("encoder_stride", "pooler_output_size", "pooler_act"):
            if key not in self.extra:
                out.pop(key, None)
        return out


CONFIG_CLASSES: dict[str, type[ViTConfig]] = {"vit": ViTConfig, "vit_msn": ViTMSNConfig}


def config_from_dict(data: dict[str, Any], **overrides: Any) -> ViTConfig:
    """Pick the config class from ``model_type``; an unknown model_type is a clear error."""
    model_type = data.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"unsupported model_type {model_type!r}: vitmsn reads 'vit' and 'vit_msn' configs"
        )
    return CONFIG_CLASSES[model_type].from_dict(data, **overrides)
