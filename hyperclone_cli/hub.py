"""Sources named by a Hugging Face hub id (`org/name`): found in the hub's local cache, or
downloaded into it (only config, weights and tokenizer files), then read like any directory.
A local path always wins over a hub id."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import HypercloneError

# a hub id: "name" or "org/name", letters, digits, '-', '_', '.'
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# weights, by preference: safetensors first, then PyTorch pickles (loaded weights_only)
_WEIGHTS = (
    re.compile(r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"),
    re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json"),
)
_OTHERS = re.compile(
    r"config\.json|generation_config\.json|tokenizer(_config)?\.json|tokenizer\.model"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt"
    r"|chat_template\.(json|jinja)|spiece\.model|sentencepiece\.bpe\.model"
)


def is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def resolve_source(src: str | Path, revision: str | None = None) -> Path:
    """The directory to read for `src`: the path itself when it exists (or does not look
    like a hub id), else the hub snapshot of `src` at `revision` (cached, or downloaded)."""
    path = Path(src)
    if path.exists() or not is_hub_id(str(src)):
        if revision is not None and path.exists():
            raise HypercloneError(
                f"--revision {revision}: {src} is a local directory; --revision applies to "
                "hub ids only (drop it, or move the directory out of the way)"
            )
        return path
    return _snapshot(str(src), revision)


def source_label(path: str | Path) -> str:
    """How to name a source in provenance: `org/name@commit` for a hub cache snapshot."""
    p = Path(path)
    repo = p.parent.parent.name
    if p.parent.name == "snapshots" and repo.startswith("models--"):
        return f"{repo.removeprefix('models--').replace('--', '/')}@{p.name}"
    return str(path)


def files_to_fetch(repo_files: list[str]) -> list[str]:
    """What a plan needs from a hub repository: config, tokenizer and generation files, and
    one format of weights (safetensors when there are any), top level only."""
    top = [f for f in repo_files if "/" not in f]
    for pattern in _WEIGHTS:
        weights = [f for f in top if pattern.fullmatch(f)]
        if weights:
            break
    return sorted(weights + [f for f in top if _OTHERS.fullmatch(f)])


def _complete(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return "config.json" in names and any(p.fullmatch(n) for p in _WEIGHTS for n in names)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision}" if revision else ""
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        if _complete(cached):
            return cached
    except LocalEntryNotFoundError:
        pass
    if is_offline_mode():
        raise HypercloneError(
            f"{repo_id}: no such directory, and not in the Hugging Face cache{at} (offline: "
            f"HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE, or run `{fetch}` where the hub "
            "can be reached, or give a local directory"
        )
    from huggingface_hub.utils import enable_progress_bars

    try:
        files = files_to_fetch(HfApi().list_repo_files(repo_id, revision=revision))
        if not files:
            raise HypercloneError(f"{repo_id}{at}: no config or weights found on the hub")
        enable_progress_bars()  # the download is the slow part: show it
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=files))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HypercloneError(
            f"{repo_id}: no such directory, and no model the hub lets us read under that id "
            f"({type(e).__name__}); check the spelling, or log in with `hf auth login`"
        ) from e
    except RevisionNotFoundError as e:
        raise HypercloneError(
            f"{repo_id}: no revision {revision} on the hub; check --revision"
        ) from e
    except Exception as e:
        if not isinstance(e, (HfHubHTTPError, LocalEntryNotFoundError, OSError)) and not (
            _network_error(e)
        ):
            raise
        raise HypercloneError(
            f"{repo_id}: no such directory, not in the Hugging Face cache{at}, and the hub "
            f"cannot be reached ({type(e).__name__}); run `{fetch}` where it can, or give a "
            "local directory"
        ) from e


def _network_error(e: BaseException) -> bool:
    """A connection or timeout error of the hub's HTTP client (httpx, or its fork httpx2,
    depending on the huggingface_hub version; requests' errors are OSErrors)."""
    return any(c.__name__ in ("TransportError", "NetworkError") for c in type(e).__mro__)
