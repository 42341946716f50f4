"""Resolve files from a local directory or a Hugging Face Hub repository.

A single helper, :func:`resolve_file`, is shared by the image processor (``preprocessor_config.json``) and the
model loaders (``config.json``, weights). It honours ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` and the
``HF_HUB_CACHE`` / ``HF_HOME`` cache locations *at call time* (``huggingface_hub`` itself reads them once, at
import), so setting them after import works as expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LOADER_ONLY_KWARGS", "PushToHubMixin", "in_subfolder", "is_offline", "push_to_hub", "resolve_file"]

#: from_pretrained keywords of transformers that change nothing in vitmsn (PyTorch weights loaded on the CPU,
#: no remote code, proxies from the environment); the model and processor loaders accept and drop them, so
#: that code written for transformers runs unchanged and none of them is saved as a setting
LOADER_ONLY_KWARGS = frozenset({
    "trust_remote_code", "low_cpu_mem_usage", "_fast_init", "resume_download", "from_tf", "from_flax", "mirror",
    "_from_auto", "_from_pipeline", "proxies", "offload_state_dict", "user_agent", "code_revision",
    "_commit_hash", "config",
})

_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """Whether Hub access is disabled (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_subfolder(filename: str, subfolder: str | os.PathLike[str] | None) -> str:
    """``filename`` inside the folder ``subfolder`` of a directory or repository (as the ``subfolder``
    keyword of transformers' loaders); ``filename`` itself when ``subfolder`` is empty."""
    return f"{str(subfolder).strip('/')}/{filename}" if subfolder else filename


def _default_cache_dir() -> str | None:
    """Hub cache from the current environment, or ``None`` to let ``huggingface_hub`` decide."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _repo_in_cache(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> bool:
    """Whether any snapshot of the model repository ``repo_id`` is present in the Hub cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    snapshots = root / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def resolve_file(
    path_or_id: str | os.PathLike[str],
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    missing_ok: bool = False,
) -> Path | None:
    """Return the local path of ``filename`` inside a local directory or a Hub repository.

    Args:
        path_or_id: A local directory, or a Hub repo id such as ``"facebook/vit-msn-small"``.
        filename: File name relative to the directory / repository root.
        revision: Hub branch, tag or commit (ignored for local directories).
        cache_dir: Hub cache directory; defaults to ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``.
        token: Hub access token (``None`` uses the stored login, if any).
        local_files_only: Never contact the Hub, only use the cache (implied by offline mode).
        force_download: Download again even if the file is in the cache.
        missing_ok: If ``True``, return ``None`` instead of raising when the file is absent: from the local
            directory, from the Hub repo, or, when the Hub cannot be reached, from a repository that is
            otherwise present in the cache (as transformers does for optional files). If nothing of the
            repository is cached and the Hub cannot be reached, an ``OSError`` is raised even so.

    Raises:
        FileNotFoundError: The file does not exist and ``missing_ok`` is ``False``.
        OSError: The repository cannot be reached or found (e.g. offline and not cached); the message names
            the id and suggests passing a local directory.
    """
    local = Path(os.path.expanduser(os.fspath(path_or_id)))
    if local.is_dir():
        candidate = local / filename
        if candidate.is_file():
            return candidate
        if missing_ok:
            return None
        raise FileNotFoundError(f"No file named {filename!r} in local directory {str(local)!r}.")
    if local.is_file():
        raise NotADirectoryError(f"{str(local)!r} is a file; expected a local directory or a Hub repo id.")

    repo_id = os.fspath(path_or_id)
    import huggingface_hub
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise OSError(
            f"{repo_id!r} is neither an existing local directory nor a valid Hugging Face Hub repo id."
        ) from err

    if "/" not in repo_id and not _repo_in_cache(repo_id, cache_dir or _default_cache_dir()):
        # every ViT on the Hub is "org/name": a bare name is far more likely a mistyped local folder than a
        # legacy id, and asking the Hub for it would mean seconds of retries before the same answer
        raise FileNotFoundError(f"no local directory {repo_id!r} (and Hub ids have the form org/name, such as "
                                "facebook/vit-msn-small)")
    if cache_dir is None:
        cache_dir = _default_cache_dir()
    offline = is_offline() or local_files_only
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=offline,
                force_download=force_download,
            )
        )
    except hf_errors.LocalEntryNotFoundError as err:
        # Not in the cache and the Hub is unreachable (offline mode or network failure).
        cached = huggingface_hub.try_to_load_from_cache(
            repo_id, filename, cache_dir=cache_dir, revision=revision
        )
        if missing_ok and (cached is huggingface_hub._CACHED_NO_EXIST or _repo_in_cache(repo_id, cache_dir)):
            return None
        reason = (
            "offline mode is enabled (HF_HUB_OFFLINE or local_files_only)"
            if offline
            else "the Hub could not be reached"
        )
        raise OSError(
            f"Cannot load {filename!r} for {repo_id!r}: there is no local directory of that name, {reason}, and "
            "the file is not in the local cache. Check the path, or download the files while online first."
        ) from err
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as err:
        raise OSError(
            f"{repo_id!r} (revision {revision or 'main'!r}) was not found on the Hugging Face Hub and is not a "
            "local directory. Pass a local directory containing the files, or check the id / your access token."
        ) from err
    except hf_errors.EntryNotFoundError as err:
        if missing_ok:
            return None
        raise FileNotFoundError(f"Hub repository {repo_id!r} has no file named {filename!r}.") from err


def push_to_hub(save: Callable[[str], Any], repo_id: str, *, commit_message: str | None = None,
                private: bool | None = None, token: str | bool | None = None, revision: str | None = None,
                create_pr: bool = False) -> Any:
    """Upload what ``save(folder)`` writes into a temporary folder to the Hub repository ``repo_id`` (created
    if it does not exist), as transformers' ``push_to_hub``; returns ``huggingface_hub``'s commit info."""
    import tempfile

    from huggingface_hub import HfApi

    if is_offline():
        raise OSError(f"cannot push to {repo_id}: Hub access is disabled (HF_HUB_OFFLINE)")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id  # with namespace
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload with vitmsn", create_pr=create_pr)


class PushToHubMixin:
    """``push_to_hub`` and ``save_pretrained(..., push_to_hub=True)`` for a class with ``save_pretrained``."""

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
                    safe_serialization: bool = True, **kwargs: Any) -> Any:
        """Upload what ``save_pretrained`` writes to the Hub repository ``repo_id``, creating it if needed;
        returns huggingface_hub's commit info."""
        return push_to_hub(lambda folder: self.save_pretrained(folder, safe_serialization=safe_serialization),
                           repo_id, commit_message=commit_message, private=private, token=token,
                           revision=revision, create_pr=create_pr)

    def _push_saved(self, save_directory: str | os.PathLike[str], kwargs: dict[str, Any], **options: Any) -> None:
        """The push of ``save_pretrained(save_directory, push_to_hub=True, **kwargs)``: to ``repo_id`` (default
        the folder's name), with the push keywords among ``kwargs``."""
        push = {k: kwargs[k] for k in ("commit_message", "private", "token", "revision", "create_pr") if k in kwargs}
        self.push_to_hub(kwargs.get("repo_id", Path(save_directory).resolve().name), **push, **options)
