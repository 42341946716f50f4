"""Every on-disk format of a ViT and its key map, in one place.

In memory the backbone uses timm's / the original MSN code's names (``blocks.N.attn.qkv``). On disk,
transformers has used three layouts over the years, all of which load here:

- classic (transformers 4.x):  ``[vit.]encoder.layer.N.attention.attention.{query,key,value}``, ...
- current (transformers 5.x):  ``[vit.]layers.N.attention.{q_proj,k_proj,v_proj,o_proj}``, ``mlp.fc1/fc2``
- mixed (transformers 5.x ViTMSNForImageClassification): ``vit.embeddings.*`` next to bare ``encoder.layer.*``

Files are written in the classic layout, which both transformers 4.x and 5.x read without missing or
unexpected keys. Loading is strict: backbone weights must all be present with the right shapes; only the
heads (pooler, classifier, SimMIM decoder, mask token) may be missing (newly initialised, with a warning) or
left over (dropped, with a warning), as when a bare checkpoint is loaded into a classifier and back.
Pickled ``.bin`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

logger = logging.getLogger("vitmsn")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says why.

    Also a ``RuntimeError``: what transformers raises for weights whose shapes do not fit the model (without
    ``ignore_mismatched_sizes``), so code written for it catches this too."""


# ---------------------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process's umask: read from /proc on Linux (without changing it, so safe with other threads);
    elsewhere read by setting it and putting it straight back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError:
            raise
        except Exception as err:  # a writer that reports a failed write (a full disk) as something else
            _raise_if_disk_error(path, err)
            raise
        # mkstemp makes the file private (0600), and some writers (safetensors) set that mode again: give it a
        # plain file's mode, as the umask says
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _raise_if_disk_error(path: Path, err: Exception) -> None:
    """Raise ``OSError`` naming ``path`` for a writer's error that is a failed write underneath: torch.save's
    ("unexpected pos", "file write failed") and safetensors' ("No space left on device (os error 28)"); said
    to be a full disk when it is one."""
    import shutil

    text = str(err)
    if not any(sign in text for sign in ("os error", "unexpected pos", "write failed")):
        return  # not a failed write (a value that cannot be saved, ...): the writer's own error
    try:
        full = shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        full = False
    if full or "os error 28" in text:
        raise OSError(f"cannot write {path}: No space left on device") from err
    raise OSError(f"cannot write {path}: the write failed ({text.strip()})") from err


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# --------------------------------------------------------------------------------------------- key maps

# classic and current transformers names of one block's tensors -> ours. "q", "k", "v" parts are fused.
_BLOCK_KEYS: dict[str, str] = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.attention.query": "attn.qkv#q",
    "attention.attention.key": "attn.qkv#k",
    "attention.attention.value": "attn.qkv#v",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # transformers 5 names
    "attention.q_proj": "attn.qkv#q",
    "attention.k_proj": "attn.qkv#k",
    "attention.v_proj": "attn.qkv#v",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# the classic name of each of our block tensors, for writing
_BLOCK_KEYS_OUT: dict[str, str] = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.qkv#q": "attention.attention.query",
    "attn.qkv#k": "attention.attention.key",
    "attn.qkv#v": "attention.attention.value",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_EMBED_KEYS: dict[str, str] = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.mask_token": "mask_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# heads sit beside the backbone; they may be missing or left over when loading across classes
HEAD_PREFIXES = ("pooler.", "classifier.", "decoder.", "mask_token")
_INTERNAL_TOP = frozenset(_EMBED_KEYS.values())
_INTERNAL_BLOCK_RE = re.compile(r"^blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_BLOCK_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = ("q", "k", "v")


def hf_to_internal(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """transformers keys (any layout, any ``vit.`` / ``module.`` prefix) -> our backbone-relative keys.

    Keys that are already ours (the names timm and the original MSN code use too) pass through.

    Returns (state dict, keys that match no known name, whether the file had a ``vit.`` prefix).
    Head keys come back as ``pooler.*``, ``classifier.*``, ``decoder.*``.
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    prefixed = False
    for key, tensor in state_dict.items():
        k = key.removeprefix("module.")
        if k.startswith("vit."):
            k, prefixed = k[4:], True
        if k in _EMBED_KEYS:
            out[_EMBED_KEYS[k]] = tensor
        elif k in _INTERNAL_TOP or _INTERNAL_BLOCK_RE.match(k):  # already our (and timm's) names
            out[k] = tensor
        elif k.startswith(("pooler.dense.", "classifier.", "decoder.0.")):
            out[k] = tensor
        elif m := _BLOCK_RE.match(k):
            layer, name, kind = int(m.group(1)), m.group(2), m.group(3)
            ours = _BLOCK_KEYS.get(name)
            if ours is None:
                unknown.append(key)
            elif "#" in ours:
                parts.setdefault((layer, kind), {})[ours[-1]] = tensor
            else:
                out[f"blocks.{layer}.{ours}.{kind}"] = tensor
        else:
            unknown.append(key)
    for (layer, kind), qkv in parts.items():
        if set(qkv) == set(_QKV):
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv[p] for p in _QKV], dim=0)
        else:
            unknown.extend(f"layer {layer} attention {p} {kind} (its q/k/v siblings are missing)" for p in qkv)
    return out, unknown, prefixed


def internal_to_hf(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our backbone-relative keys -> transformers' classic layout, with ``prefix`` ("vit.") on the backbone."""
    out: dict[str, torch.Tensor] = {}
    embed_out = {v: k for k, v in _EMBED_KEYS.items()}
    for key, tensor in state_dict.items():
        if key in embed_out:
            out[prefix + embed_out[key]] = tensor
        elif key.startswith(("classifier.", "decoder.")):
            out[key] = tensor
        elif key.startswith("pooler."):
            out[prefix + key] = tensor
        elif m := re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key):
            layer, name, kind = m.groups()
            base = f"{prefix}encoder.layer.{layer}."
            if name == "attn.qkv":
                for part, chunk in zip(_QKV, tensor.chunk(3, dim=0), strict=True):
                    out[f"{base}{_BLOCK_KEYS_OUT['attn.qkv#' + part]}.{kind}"] = chunk.contiguous()
            else:
                out[f"{base}{_BLOCK_KEYS_OUT[name]}.{kind}"] = tensor
        else:
            raise KeyError(f"no transformers name for parameter {key!r}")
    return out


def backbone_prefix(model: torch.nn.Module) -> str:
    """The prefix of the backbone's names in ``model.state_dict()``, as in transformers: "vit." in a head model."""
    return "vit." if hasattr(model, "vit") else ""


def model_key(key: str, prefix: str) -> str:
    """A backbone-relative or head key (as :func:`hf_to_internal` gives them) as the model names it: a head
    model's classifier and decoder are top-level modules, everything else sits under ``prefix``."""
    return key if key.startswith(("classifier.", "decoder.")) else prefix + key


def model_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The model's tensors with backbone-relative keys, and the prefix transformers puts on the backbone."""
    prefix = backbone_prefix(model)
    return {k.removeprefix(prefix): v for k, v in model.state_dict().items()}, prefix


def _hf_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The tensors to save under transformers' names: the model's, or ``state_dict``'s (with the model's own
    names, as ``model.state_dict()`` or accelerate's ``get_state_dict`` give them, or transformers' names)."""
    own, prefix = model_state_dict(model)
    if state_dict is None:
        return internal_to_hf(own, prefix)
    relative = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    if set(relative) <= set(own):
        return internal_to_hf(relative, prefix)
    return dict(state_dict)


# ------------------------------------------------------------------------------------------ reading files


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _is_local(path_or_id: str) -> bool:
    """Anything that exists on disk, or cannot be a Hub id ("org/name"), is a local path."""
    return os.path.exists(path_or_id) or not _HUB_ID.match(path_or_id) or path_or_id.endswith(".json")


def _resolve(path_or_id: str | os.PathLike, filename: str, *, missing_ok: bool = False,
             **hub: Any) -> Path | None:
    """A file of a local directory, or of a Hub repository (downloaded into huggingface_hub's cache);
    ``subfolder`` (in ``hub``) is a folder of either."""
    from vitmsn.hub import in_subfolder

    filename = in_subfolder(filename, hub.pop("subfolder", None))
    s = os.path.expanduser(str(path_or_id))
    if os.path.isdir(s):
        p = Path(s) / filename
        if p.is_file():
            return p
        if missing_ok:
            return None
        raise FileNotFoundError(f"{s} has no {filename}")
    if _is_local(s):
        raise FileNotFoundError(f"no such directory: {s}")
    from vitmsn.hub import resolve_file

    return resolve_file(s, filename, missing_ok=missing_ok, **hub)


def load_config_dict(path_or_id: str | os.PathLike, **hub: Any) -> dict[str, Any]:
    path = _resolve(path_or_id, CONFIG, **hub)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def with_variant(filename: str, variant: str | None) -> str:
    """transformers' name of a weight file for a ``variant``: model.safetensors -> model.fp16.safetensors."""
    if not variant:
        return filename
    stem, ext = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_files(path_or_id: str | os.PathLike, use_safetensors: bool | None = None, variant: str | None = None,
                 **hub: Any) -> list[Path]:
    """The weight files of a checkpoint: safetensors first, then sharded, then pickled.

    ``use_safetensors``: True reads safetensors only, False pickles only (as transformers' argument);
    ``variant``: the files of that variant (``model.fp16.safetensors``, ...).
    """
    formats = [(with_variant(single, variant), with_variant(index, variant))
               for single, index in ((SAFE_WEIGHTS, SAFE_INDEX), (PT_WEIGHTS, PT_INDEX))]
    if use_safetensors is not None:
        formats = formats[:1] if use_safetensors else formats[1:]
    for single, index in formats:
        if (p := _resolve(path_or_id, single, missing_ok=True, **hub)) is not None:
            return [p]
        if (idx := _resolve(path_or_id, index, missing_ok=True, **hub)) is not None:
            try:
                shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{idx} is not a valid index file ({type(e).__name__}: {e})") from None
            if not all(isinstance(shard, str) for shard in shards):
                raise CheckpointError(f"{idx} is not a valid index file (its weight_map names no files)")
            return [_resolve(path_or_id, shard, **hub) for shard in shards]
    expected = " or ".join(name for pair in formats for name in pair)
    raise FileNotFoundError(f"{path_or_id} has no weights: expected {expected}")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One weight file -> tensors on the CPU. Pickles never run code (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: the safetensors file is damaged or truncated ({e})") from None
    weights = load_pickle(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} holds a {type(weights).__name__}, not a dict of tensors (a state dict)")
    return weights


def _globals_in_pickle(path: str | os.PathLike) -> str | None:
    """The code a pickle names (GLOBAL / STACK_GLOBAL opcodes), read without running it; None for a file that
    is no pickle at all (or names nothing)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is <name>/data.pkl in a zip
            with zipfile.ZipFile(path) as z:
                data = next((z.read(n) for n in z.namelist() if n.endswith("data.pkl")), b"")
        else:
            data = Path(path).read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - not a well-formed pickle: say so, rather than guess
        return None
    risky = [n for n in names if not n.startswith(("torch.", "collections.OrderedDict", "numpy."))]
    return ", ".join(dict.fromkeys(risky)) or None


def load_pickle(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; a file that would need to run code is refused. ``mmap``
    (for torch.save's zip files): tensors stay in the file until used, so that N processes resuming one run
    do not each hold a full copy in memory at once."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty")
    for attempt in range(3):
        inode = os.stat(path).st_ino
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
        except __import__("pickle").UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            code = found.group(1) if found else _globals_in_pickle(path)
            if code:  # a real pickle that names code to call (a class or function beyond plain tensors)
                raise CheckpointError(
                    f"refused to load {path}: loading it would run code ({code}), and vitmsn loads pickles only "
                    "with weights_only=True. If you trust the file, convert it to safetensors first."
                ) from None
            raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint (damaged, or another kind of "
                                  "file)") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            # a file replaced while it was read (a run's latest.pt, written atomically during training) is read
            # again: the mmap loader opens the path more than once
            if attempt < 2 and os.path.exists(path) and os.stat(path).st_ino != inode:
                continue
            raise CheckpointError(f"cannot read {path}: not a readable PyTorch checkpoint ({e})") from None
        except Exception:  # noqa: BLE001 - the weights-only unpickler on other bytes (text, CSV, ...): KeyError, ...
            raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint (damaged, or another kind of "
                                  "file)") from None
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------- loading a model


def load_state_dict_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *,
                         ignore_mismatched_sizes: bool = False, source: str = "checkpoint") -> dict[str, list]:
    """Load transformers-named (or our) tensors into ``model``; strict for the backbone, lenient for heads.

    Returns transformers' loading info, with the model's own parameter names: ``missing_keys`` (left as they
    were), ``unexpected_keys`` (dropped), ``mismatched_keys`` ((name, checkpoint shape, model shape), newly
    initialised with ``ignore_mismatched_sizes``) and ``error_msgs`` (always empty: errors raise).
    """
    internal, unknown, _ = hf_to_internal(state_dict)
    if not internal and not unknown:
        raise CheckpointError(f"{source} holds no tensors")
    expected, prefix = model_state_dict(model)
    missing = sorted(set(expected) - set(internal))
    unexpected = sorted(set(internal) - set(expected))
    mismatched = [(k, tuple(internal[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in internal and internal[k].shape != v.shape]
    head = lambda k: k.startswith(HEAD_PREFIXES)  # noqa: E731
    mismatched_heads = [m for m in mismatched if head(m[0])] if ignore_mismatched_sizes else []
    if ignore_mismatched_sizes:
        for k, *_ in mismatched_heads:
            internal.pop(k)  # left as initialised; reported as mismatched only, as transformers does
        mismatched = [m for m in mismatched if not head(m[0])]
    hard_missing = [k for k in missing if not head(k)]
    hard_unexpected = unknown + [k for k in unexpected if not head(k)]
    if hard_missing or hard_unexpected or mismatched:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        if hard_missing:
            lines.append(f"  missing keys ({len(hard_missing)}): {', '.join(hard_missing[:12])}"
                         + (" ..." if len(hard_missing) > 12 else ""))
        if hard_unexpected:
            lines.append(f"  unexpected keys ({len(hard_unexpected)}): {', '.join(hard_unexpected[:12])}"
                         + (" ..." if len(hard_unexpected) > 12 else ""))
        for k, got, want in mismatched[:12]:
            lines.append(f"  shape mismatch for {k}: checkpoint {got}, model {want}")
        if mismatched and any(head(k) for k, *_ in mismatched):
            lines.append("  (for a classifier with another number of labels pass ignore_mismatched_sizes=True)")
        raise CheckpointError("\n".join(lines))
    if missing or mismatched_heads:
        logger.warning("%s: newly initialised (not in %s, or of another shape there): %s", type(model).__name__,
                       source, ", ".join(sorted([*missing, *(k for k, *_ in mismatched_heads)])))
    if unexpected:
        logger.warning("%s: dropped weights it has no place for: %s", type(model).__name__, ", ".join(unexpected))
    name = lambda k: model_key(k, prefix)  # noqa: E731
    model.load_state_dict({name(k): v for k, v in internal.items() if k in expected}, strict=False)
    return {"missing_keys": [name(k) for k in missing],
            "unexpected_keys": [name(k) for k in unexpected],
            "mismatched_keys": [(name(k), got, want) for k, got, want in mismatched_heads],
            "error_msgs": []}


_HUB_KWARGS = ("revision", "cache_dir", "token", "subfolder", "force_download")


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take transformers' file-fetching keywords out of ``kwargs`` (changed in place): those that
    :func:`_resolve` uses are returned (``use_auth_token`` as ``token``, ``local_files_only`` when true), the
    loader-only ones that change nothing here (:data:`vitmsn.hub.LOADER_ONLY_KWARGS`) are dropped."""
    from vitmsn.hub import LOADER_ONLY_KWARGS

    auth = kwargs.pop("use_auth_token", None)  # transformers' old name of token
    if auth is not None and kwargs.get("token") is None:
        kwargs["token"] = auth
    hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if kwargs.get(k) is not None}
    if kwargs.pop("local_files_only", False):
        hub["local_files_only"] = True
    for k in (*_HUB_KWARGS, *LOADER_ONLY_KWARGS):
        kwargs.pop(k, None)
    return hub


def load_pretrained(cls: type, path_or_id: str | os.PathLike, *model_args: Any, config: Any = None,
                    dtype: torch.dtype | str | None = None, attn_implementation: str | None = None,
                    ignore_mismatched_sizes: bool = False, local_files_only: bool = False,
                    use_safetensors: bool | None = None, output_loading_info: bool = False,
                    **kwargs: Any) -> Any:
    """The body of ``from_pretrained``: config, model, weights, dtype, eval mode.

    Weights missing from the checkpoint (a new classifier, say) are initialised as transformers 5 does, drawing
    from torch's random generator as if nothing else had been initialised: after ``torch.manual_seed(s)`` a
    new classifier gets the same weights in both libraries.
    """
    from vitmsn.config import ViTConfig

    hub = pop_hub_kwargs(kwargs)
    if local_files_only:
        hub["local_files_only"] = True
    device_map = kwargs.pop("device_map", None)
    variant = kwargs.pop("variant", None)
    given_state_dict = kwargs.pop("state_dict", None)
    if path_or_id is None and (config is None or given_state_dict is None):
        raise ValueError("from_pretrained(None, ...) needs both config= and state_dict=")
    if isinstance(config, str | os.PathLike):  # a folder or Hub id of its own, as transformers takes it
        config = cls.config_class.from_pretrained(config, **hub)
    config_fields = set(cls.config_class.__dataclass_fields__)
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in config_fields}
    if config is None:
        data = load_config_dict(path_or_id, **hub)
        model_type = data.get("model_type")
        if model_type is None:
            raise CheckpointError(f"config.json of {path_or_id} has no model_type")
        from vitmsn.config import CONFIG_CLASSES

        if model_type not in CONFIG_CLASSES:
            raise CheckpointError(
                f"{path_or_id} is a {model_type!r} model; vitmsn reads 'vit' and 'vit_msn' checkpoints"
            )
        if model_type != cls.config_class.model_type:
            logger.warning("loading a %r checkpoint into %s", model_type, cls.__name__)
            data = {k: v for k, v in data.items() if k != "model_type"}
        saved_dtype = data.get("dtype") or data.get("torch_dtype")
        try:
            config = cls.config_class.from_dict(data, **overrides)
            config.validate()
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config.json of {path_or_id}: {e}") from None
    elif not isinstance(config, ViTConfig):
        raise TypeError(f"config must be a ViTConfig or ViTMSNConfig, got {type(config).__name__}")
    else:
        saved_dtype = None
        if overrides:
            config = config.copy(**overrides)
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
        config.validate()
    if given_state_dict is not None:
        state_dict: dict[str, torch.Tensor] = dict(given_state_dict)
        source = "the state_dict given"
    else:
        files = weight_files(path_or_id, use_safetensors=use_safetensors, variant=variant, **hub)
        state_dict = {}
        for f in files:
            state_dict.update(read_weights(f))
        source = str(files[0] if len(files) == 1 else files[0].parent)
    with torch.device("meta"):  # no random init of weights the checkpoint overwrites (seconds for ViT-L)
        model = cls(config, *model_args, **kwargs)
    model.to_empty(device="cpu")
    info = load_state_dict_into(model, state_dict, ignore_mismatched_sizes=ignore_mismatched_sizes, source=source)
    # only the weights the checkpoint lacks draw from torch's generator, as if nothing else had been initialised
    model.init_missing_weights(info["missing_keys"] + [k for k, *_ in info["mismatched_keys"]])
    if dtype == "auto":
        dtype = saved_dtype or next((t.dtype for t in state_dict.values() if t.is_floating_point()), None)
    if dtype is not None:
        model.to(_torch_dtype(dtype))
        model.config.dtype = _torch_dtype(dtype)
    if device_map not in (None, "cpu"):
        model.to(device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto"
                 else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    model.config._name_or_path = "" if path_or_id is None else str(path_or_id)  # not saved (model.name_or_path)
    return (model, info) if output_loading_info else model


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', 'auto')")
    return value


# what a model directory holds: the files written into one (and replaced, with overwrite=True)
MODEL_FILES = (CONFIG, SAFE_WEIGHTS, SAFE_INDEX, PT_WEIGHTS, PT_INDEX, "preprocessor_config.json",
               "processor_config.json",  # read before preprocessor_config.json: a stale one would win
               "msn_head.safetensors", "msn_head.json", "msn_pretrain.json")


def prepare_model_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """A directory to write a model into. One that holds anything is refused (nothing of the user's is
    replaced), unless ``overwrite``: then the model files an earlier write left are removed first (so that no
    stale file, such as another model's projection head, stays beside the new ones). A training run's folder
    is refused either way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; give a directory to write the model into")
    if path.is_dir() and any(path.iterdir()):
        if (path / "checkpoints").is_dir() or (path / "log.csv").exists():
            raise FileExistsError(f"{path} is a training run's folder; write the model into another directory")
        if not overwrite:
            raise FileExistsError(f"{path} is not empty; choose a new directory, or pass --overwrite to replace "
                                  "the model in it")
        for name in MODEL_FILES:
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike, safe_serialization: bool = True, *,
                    state_dict: dict[str, torch.Tensor] | None = None, max_shard_size: int | str = "50GB",
                    variant: str | None = None, is_main_process: bool = True) -> Path:
    """config.json + model.safetensors (or pytorch_model.bin) in transformers' classic layout, as transformers'
    ``save_pretrained``: weights above ``max_shard_size`` in shards with an index, ``variant`` in the file names,
    ``state_dict`` (the model's own, or transformers-named) instead of the model's tensors, nothing written where
    ``is_main_process`` is false. Each file is written atomically; files of an earlier save that the new one does
    not replace are removed after it."""
    from huggingface_hub import split_torch_state_dict_into_shards

    directory = Path(save_directory)
    if not is_main_process:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    config = model.config.copy(architectures=[type(model).__name__],
                               extra={**model.config.extra, "dtype": str(dtype).removeprefix("torch.")})
    hf = {k: v.detach().contiguous().cpu() for k, v in _hf_state_dict(model, state_dict).items()}
    single = with_variant(SAFE_WEIGHTS if safe_serialization else PT_WEIGHTS, variant)
    index_name = with_variant(SAFE_INDEX if safe_serialization else PT_INDEX, variant)
    stem, ext = single.rsplit(".", 1)
    split = split_torch_state_dict_into_shards(hf, filename_pattern=f"{stem}{{suffix}}.{ext}",
                                               max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        tensors = {n: hf[n] for n in names}
        if safe_serialization:
            atomic_write(directory / filename,
                         lambda tmp, part=tensors: save_safetensors(part, tmp, metadata={"format": "pt"}))
        else:
            atomic_torch_save(tensors, directory / filename)
    written = set(split.filename_to_tensors)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        atomic_write_text(directory / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.add(index_name)
    shard = re.compile(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.{re.escape(ext)}")
    for old in directory.iterdir():  # an earlier save's single file, index or shards, not overwritten now
        if old.name not in written and (old.name in (single, index_name) or shard.fullmatch(old.name)):
            old.unlink()
    config.save_pretrained(directory)
    model.config.architectures = config.architectures
    return directory
