"""Find a model's weights on this machine, downloading them through open_clip's own mechanism if needed.

Weights come through open_clip (which caches downloads in the Hugging Face cache). The checkpoint
file is resolved *before* the model is built, so that a missing file becomes one clear
:class:`ModelUnavailableError` instead of open_clip silently falling back to random weights (it
does that for ``hf-hub:`` names whose weights cannot be fetched).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipsearch.encoders.spec import ModelSpec, bundled_model, check_model_name, looks_like_path
from clipsearch.errors import ModelUnavailableError, UsageError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of a spec live on this machine, and what open_clip should be called with."""

    open_clip_name: str
    open_clip_pretrained: str | None
    checkpoint: Path
    sha256: str


def _tags_hint(name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return ", ".join(tags) if tags else "none known to open_clip"


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _unavailable(
    spec: ModelSpec, tried: str, error: BaseException, repo: str, filename: str
) -> ModelUnavailableError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelUnavailableError(
        spec.label(),
        f"Tried: {tried}\n"
        f"  in the Hugging Face cache {_hf_cache_dir()} (set HF_HUB_CACHE to use another cache folder);\n"
        f"  it failed with: {reason}\n"
        "The weights are not cached here and the model hub could not be reached.",
        repo=repo,
        filename=filename,
    )


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its cache only (no network round trip) inside the block."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode, no route), or None; answers within seconds."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so nothing is downloaded"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return None


def _download(fetch: Callable[[], str]) -> str:
    """Run an open_clip download function: from the cache if it is there, else from the hub."""
    try:
        with hub_offline():
            return fetch()
    except Exception as cached_error:
        reason = _hub_unreachable()
        if reason is not None:
            raise ConnectionError(f"not in the cache, and {reason}") from cached_error
    return fetch()


def _file_sha256(path: Path) -> str:
    """SHA-256 of a weights file; free for Hugging Face cache blobs, which are named by it."""
    real = path.resolve()
    if _SHA256.match(real.name) and real.parent.name == "blobs":
        return real.name
    digest = hashlib.sha256()
    with real.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(spec: ModelSpec) -> ResolvedWeights:
    """Find (downloading through open_clip if needed) the checkpoint file for ``spec``."""
    import open_clip

    bundled = bundled_model(spec.name)
    if bundled is not None:
        return _resolve_local_dir(spec, bundled.folder)
    if spec.name.startswith("local-dir:"):
        return _resolve_local_dir(spec, Path(spec.name[len("local-dir:") :]).expanduser())
    if spec.name.startswith("hf-hub:"):
        return _resolve_hf_hub(spec)
    check_model_name(spec.name)
    if looks_like_path(spec.pretrained) or Path(spec.pretrained).is_file():
        path = Path(spec.pretrained)
        if not path.is_file():
            raise ModelUnavailableError(
                spec.label(),
                f"The weights file {path} does not exist. Give an existing weights file, or one of "
                f"open_clip's tags for {spec.name} ({_tags_hint(spec.name)}).",
            )
        return ResolvedWeights(spec.name, str(path), path, _file_sha256(path))
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if not cfg:
        raise UnknownPretrainedError(spec.name, spec.pretrained, _tags_hint(spec.name))
    return _resolve_tag(spec, cfg)


class UnknownPretrainedError(UsageError):
    """A pretrained tag open_clip does not know for this model."""

    def __init__(self, model: str, pretrained: str, known: str) -> None:
        super().__init__(
            f"Unknown pretrained tag {pretrained!r} for model {model}. Known tags: {known}; "
            "or give a weights file path."
        )
        self.model = model
        self.pretrained = pretrained


def _resolve_tag(spec: ModelSpec, cfg: dict[str, object]) -> ResolvedWeights:
    from open_clip.pretrained import download_pretrained

    hub = str(cfg.get("hf_hub", ""))
    repo, filename = os.path.split(hub)
    fallback = filename or "open_clip_pytorch_model.bin"
    where = f"Hugging Face repo {repo} (open_clip_model.safetensors, then {fallback})"
    if not hub:
        where = f"URL {cfg.get('url', '?')}"
    try:
        checkpoint = _download(lambda: download_pretrained(cfg))
    except Exception as exc:  # the hub client raises many types for "offline / not found"
        raise _unavailable(spec, where, exc, repo, "open_clip_model.safetensors") from exc
    if not checkpoint:
        raise ModelUnavailableError(spec.label(), "open_clip knows no download location for it.")
    path = Path(checkpoint)
    return ResolvedWeights(spec.name, spec.pretrained, path, _file_sha256(path))


def _resolve_hf_hub(spec: ModelSpec) -> ResolvedWeights:
    from open_clip.pretrained import download_pretrained_from_hf

    repo = spec.name[len("hf-hub:") :]
    try:
        _download(lambda: download_pretrained_from_hf(repo, filename="open_clip_config.json"))
        checkpoint = _download(lambda: download_pretrained_from_hf(repo))
    except Exception as exc:
        where = f"Hugging Face repo {repo} (open_clip_config.json, open_clip_model.safetensors)"
        raise _unavailable(spec, where, exc, repo, "open_clip_model.safetensors") from exc
    path = Path(checkpoint)
    return ResolvedWeights(spec.name, None, path, _file_sha256(path))


def _resolve_local_dir(spec: ModelSpec, folder: Path) -> ResolvedWeights:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ModelUnavailableError(
            spec.label(),
            f"No open_clip_config.json in {folder}. A local model folder needs open_clip_config.json "
            "(model_cfg + preprocess_cfg) and a weights file such as open_clip_model.safetensors.",
        )
    path = checkpoint_in(folder)
    if path is None:
        raise ModelUnavailableError(
            spec.label(), f"{folder} holds a config but no weights (*.safetensors, *.bin, *.pth)."
        )
    return ResolvedWeights(f"local-dir:{folder.resolve()}", None, path, _file_sha256(path))


#: The file names open_clip prefers in a ``local-dir:`` folder, best first (``open_clip.factory``).
_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def checkpoint_in(folder: Path) -> Path | None:
    """The weights file open_clip loads from a ``local-dir:`` folder: a preferred name, else the first
    ``*.safetensors``, then ``*.bin``, then ``*.pth`` (the same choice open_clip makes)."""
    for name in _PREFERRED:
        if (folder / name).is_file():
            return folder / name
    for suffix in (".safetensors", ".bin", ".pth"):
        found = sorted(folder.glob(f"*{suffix}"))
        if found:
            return found[0]
    return None
