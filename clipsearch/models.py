"""Resolve a model spec (open_clip name + pretrained tag | local weights | bundled model) to an Encoder.

Weights are always obtained through open_clip's own mechanism (which caches downloads in the
Hugging Face cache). We resolve the checkpoint file *before* building the model so that a missing
file becomes one clear :class:`ModelUnavailableError` instead of open_clip silently falling back to
random weights (it does that for ``hf-hub:`` names whose weights cannot be fetched).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clipsearch.errors import ModelUnavailableError, UsageError

if TYPE_CHECKING:
    from clipsearch.encoder import Encoder
    from clipsearch.pixels import PixelTransform

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

#: Models that ship inside the package, loaded as open_clip ``local-dir:`` folders.
BUNDLED_MODELS = {"shapes": Path(__file__).parent / "shapes" / "model"}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, exactly as an index records it.

    Args:
        name: an open_clip model name (``ViT-B-32``), ``hf-hub:org/repo``, ``local-dir:/path`` or a
            bundled model name (``shapes``).
        pretrained: an open_clip pretrained tag, a path to a weights file, or ``""`` where the name
            carries its own weights (``hf-hub:``, ``local-dir:``, bundled).
    """

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED

    @classmethod
    def parse(cls, name: str | None, pretrained: str | None) -> ModelSpec:
        """Normalise CLI/API input: default tag only for plain names, absolute weights paths."""
        name = (name or DEFAULT_MODEL).strip()
        if not name:
            raise UsageError("The model name is empty. Use e.g. --model ViT-B-32 or --model shapes.")
        if name in BUNDLED_MODELS or name.startswith(("hf-hub:", "local-dir:")):
            if pretrained:
                raise UsageError(
                    f"--pretrained cannot be combined with --model {name}: "
                    "that model carries its own weights."
                )
            return cls(name, "")
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL else ""
        if pretrained and _looks_like_path(pretrained):
            pretrained = os.path.abspath(os.path.expanduser(pretrained))  # keep symlink names
        if not pretrained:
            raise UsageError(
                f"Model {name} needs weights: pass --pretrained TAG (one of: {_tags_hint(name)}) "
                "or --pretrained /path/to/weights.safetensors."
            )
        return cls(name, pretrained)

    def label(self) -> str:
        """Human-readable form, e.g. ``ViT-B-32 (laion2b_s34b_b79k)``."""
        return f"{self.name} ({self.pretrained})" if self.pretrained else self.name


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of a spec live on this machine, and what open_clip should be called with."""

    open_clip_name: str
    open_clip_pretrained: str | None
    checkpoint: Path
    sha256: str


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or value.startswith((".", "~"))
        or Path(value).suffix in {".safetensors", ".bin", ".pt", ".pth", ".npz"}
    )


def _tags_hint(name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return ", ".join(tags) if tags else "none known to open_clip"


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _unavailable(spec: ModelSpec, tried: str, error: BaseException, how: list[str]) -> ModelUnavailableError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lines = [
        f"Cannot load the weights of model {spec.label()}.",
        f"Tried: {tried}",
        f"  in the Hugging Face cache {_hf_cache_dir()} (set HF_HUB_CACHE to use another cache folder);",
        f"  it failed with: {reason}",
        "The weights are not cached here and the model hub could not be reached. To fix it, either:",
        *[f"  - {h}" for h in how],
        "  - or try the bundled offline model: --model shapes",
    ]
    return ModelUnavailableError("\n".join(lines))


def _hf_how(repo: str, filename: str, name: str) -> list[str]:
    return [
        "connect to the internet once and re-run (the weights are then cached for offline use), or",
        f"on a machine with internet, download {filename} from https://huggingface.co/{repo} and pass it "
        f"with: --model {name} --pretrained /path/to/{filename}, or",
        f"copy a Hugging Face cache that holds {repo} to this machine and point HF_HUB_CACHE at it",
    ]


@contextmanager
def _hub_offline() -> Iterator[None]:
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
        with _hub_offline():
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

    if spec.name in BUNDLED_MODELS:
        return _resolve_local_dir(spec, BUNDLED_MODELS[spec.name])
    if spec.name.startswith("local-dir:"):
        return _resolve_local_dir(spec, Path(spec.name[len("local-dir:") :]).expanduser())
    if spec.name.startswith("hf-hub:"):
        return _resolve_hf_hub(spec)
    if spec.name not in open_clip.list_models():
        raise UsageError(
            f"Unknown model {spec.name!r}. Known open_clip models include: "
            f"{', '.join(m for m in open_clip.list_models() if m.startswith(spec.name[:3]))[:400] or '-'}; "
            "see `python -c 'import open_clip; print(open_clip.list_models())'`, or use hf-hub:org/repo, "
            "local-dir:/path, or the bundled model 'shapes'."
        )
    if _looks_like_path(spec.pretrained) or Path(spec.pretrained).is_file():
        path = Path(spec.pretrained)
        if not path.is_file():
            raise ModelUnavailableError(
                f"Weights file {path} for model {spec.name} does not exist. Pass an existing file with "
                "--pretrained /path/to/weights.safetensors, or an open_clip tag "
                f"({_tags_hint(spec.name)})."
            )
        return ResolvedWeights(spec.name, str(path), path, _file_sha256(path))
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if not cfg:
        raise UsageError(
            f"Unknown pretrained tag {spec.pretrained!r} for model {spec.name}. "
            f"Known tags: {_tags_hint(spec.name)}; or pass a weights file path."
        )
    return _resolve_tag(spec, cfg)


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
        raise _unavailable(spec, where, exc, _hf_how(repo, "open_clip_model.safetensors", spec.name)) from exc
    if not checkpoint:
        raise ModelUnavailableError(f"open_clip knows no download location for {spec.label()}.")
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
        raise _unavailable(spec, where, exc, _hf_how(repo, "open_clip_model.safetensors", spec.name)) from exc
    path = Path(checkpoint)
    return ResolvedWeights(spec.name, None, path, _file_sha256(path))


def _resolve_local_dir(spec: ModelSpec, folder: Path) -> ResolvedWeights:
    from open_clip.factory import _find_checkpoint_in_dir

    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ModelUnavailableError(
            f"Model {spec.name}: no open_clip_config.json in {folder}. A local model folder needs "
            "open_clip_config.json (model_cfg + preprocess_cfg) and a weights file such as "
            "open_clip_model.safetensors."
        )
    checkpoint = _find_checkpoint_in_dir(folder)
    if checkpoint is None:
        raise ModelUnavailableError(
            f"Model {spec.name}: {folder} holds a config but no weights (*.safetensors, *.bin, *.pth)."
        )
    path = Path(checkpoint)
    return ResolvedWeights(f"local-dir:{folder.resolve()}", None, path, _file_sha256(path))


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX), else ``fp32``."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise UsageError(f"--precision {precision!r}: choose fp32, bf16 or auto.")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"


def load_encoder(
    name: str | None = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> Encoder:
    """Load a CLIP model as an :class:`~clipsearch.encoder.Encoder`.

    Args:
        name: open_clip model name, ``hf-hub:org/repo``, ``local-dir:/path``, or ``shapes``.
        pretrained: open_clip pretrained tag or weights file (defaults to ``laion2b_s34b_b79k``
            for ViT-B-32).
        device: torch device string.
        precision: ``fp32``, ``bf16`` (half the memory, about twice as fast on CPUs with AVX-512
            BF16; cosine >= 0.999 to fp32 embeddings) or ``auto`` (bf16 where the CPU supports it).

    Raises:
        UsageError: unknown model name or tag.
        ModelUnavailableError: weights missing and not downloadable; the message says how to fix it.
    """
    return load_spec(ModelSpec.parse(name, pretrained), device=device, precision=precision)


def load_spec(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    image_only: bool = False,
    on_built: Callable[[ModelFacts], None] | None = None,
) -> Encoder:
    """Build the encoder for an already-normalised spec (e.g. one read from an index).

    Args:
        image_only: leave the text tower's weights unread and free its memory (what indexing
            needs: for ViT-B-32 a third less memory and reading); ``encode_texts`` then refuses.
        on_built: called with the model's :class:`ModelFacts` as soon as it is built, before its
            weights are read (a caller can start decoding images meanwhile).
    """
    with _gc_paused():
        return _load_spec(spec, device=device, precision=precision, image_only=image_only, on_built=on_built)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    Importing torch, torchvision, timm and open_clip creates millions of objects, and Python's
    collector keeps walking them all as they appear: 1.2-2.5 s of a 3.8-6.4 s import here.
    """
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_spec(
    spec: ModelSpec,
    *,
    device: str,
    precision: str,
    image_only: bool,
    on_built: Callable[[ModelFacts], None] | None,
) -> Encoder:
    import open_clip

    import clipsearch.shapes.tower  # noqa: F401  (registers the bundled shapes model's timm image tower)
    from clipsearch.encoder import Encoder

    weights = resolve_weights(spec)
    precision = resolve_precision(precision)

    def built(model: Any, preprocess: Any) -> ModelFacts:
        model.eval()  # open_clip returns models in train mode (batch-norm statistics would move)
        facts = ModelFacts.of(spec, weights.sha256, model, preprocess)
        if on_built is not None:
            on_built(facts)
        return facts

    try:
        with _hub_offline():  # resolve_weights put everything in the cache; open_clip looks again
            loaded = _build_streaming(weights, precision, device, image_only=image_only, built=built)
            if loaded is None:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    weights.open_clip_name, pretrained=weights.open_clip_pretrained, device=device
                )
                facts = built(model, preprocess)
                if image_only:
                    _drop_text_tower(model)
            else:
                model, preprocess, facts = loaded
            tokenizer = None if image_only else open_clip.get_tokenizer(weights.open_clip_name)
    except Exception as exc:  # open_clip/torch raise many types for a bad checkpoint
        raise ModelUnavailableError(
            f"Model {spec.label()}: the weights file {weights.checkpoint} could not be loaded ({exc}). "
            "It may be truncated or belong to another architecture; delete it and download it again, "
            "or pass the right file with --pretrained."
        ) from exc
    return Encoder(model, preprocess, tokenizer, facts=facts, device=device, precision=precision)


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model as soon as it is built, before its weights are read."""

    spec: ModelSpec
    weights_sha256: str
    dim: int  # length of the embeddings
    image_size: tuple[int, int]  # (height, width) the image tower takes
    preprocess: Callable[[Any], Any]  # open_clip's own eval transform (PIL image -> tensor)
    pixel_transform: PixelTransform | None  # the same in numpy, where open_clip's config allows

    @classmethod
    def of(cls, spec: ModelSpec, weights_sha256: str, model: Any, preprocess: Any) -> ModelFacts:
        import open_clip
        import torch

        from clipsearch.pixels import pixel_transform_for

        size = model.visual.image_size
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        dtype = next(model.visual.parameters()).dtype
        with torch.inference_mode():  # the embedding's length, whatever the weights hold yet
            dim = int(model.encode_image(torch.zeros(1, 3, height, width, dtype=dtype)).shape[-1])
        return cls(
            spec,
            weights_sha256,
            dim,
            (height, width),
            preprocess,
            pixel_transform_for(open_clip.get_model_preprocess_cfg(model)),
        )


@dataclass(frozen=True)
class ModelPreview:
    """What a sync needs of a model before it is built: what a new index records, and the numpy
    preprocessing that decoding needs. Kept per machine from the model's last build, so a sync can
    start decoding at once instead of after the seconds torch takes to import; the sync checks it
    against the built model before it commits anything (``ingest``)."""

    weights_sha256: str
    dim: int
    image_size: tuple[int, int]
    pixel_transform: PixelTransform

    @classmethod
    def of(cls, facts: ModelFacts) -> ModelPreview | None:
        """The preview of a built model, or None where its preprocessing needs torch."""
        if facts.pixel_transform is None:
            return None
        return cls(facts.weights_sha256, facts.dim, facts.image_size, facts.pixel_transform)


def _preview_file(spec: ModelSpec) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    from clipsearch.cache import user_cache_dir

    try:
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip_version = "?"
    key = json.dumps([spec.name, spec.pretrained, open_clip_version])
    return user_cache_dir() / "models" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def cached_preview(spec: ModelSpec) -> ModelPreview | None:
    """The preview kept for this model on this machine, if any (reads one small file; no torch)."""
    from clipsearch.pixels import PixelTransform

    try:
        data = json.loads(_preview_file(spec).read_text())
        transform = {k: tuple(v) if isinstance(v, list) else v for k, v in data["pixel_transform"].items()}
        return ModelPreview(
            str(data["weights_sha256"]),
            int(data["dim"]),
            (int(data["image_size"][0]), int(data["image_size"][1])),
            PixelTransform(**transform),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # none yet, or unreadable
        return None


def remember_preview(spec: ModelSpec, preview: ModelPreview | None) -> None:
    """Keep ``preview`` for the next sync of this model, or forget a wrong one (None); best effort."""
    from dataclasses import asdict

    path = _preview_file(spec)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if preview is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(preview)))
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache only costs the next sync a few seconds
        tmp.unlink(missing_ok=True)


class ModelLoader:
    """:func:`load_spec` in a background thread, so that a caller can work meanwhile.

    :meth:`facts` answers once the model is built (after the imports, about 3 s for ViT-B-32 on a
    2-core machine), :meth:`encoder` once its weights are in; either re-raises a loading error.
    """

    def __init__(self, spec: ModelSpec, *, precision: str = "fp32", image_only: bool = False) -> None:
        import threading

        self._facts: ModelFacts | None = None
        self._encoder: Encoder | None = None
        self._error: BaseException | None = None
        self._built = threading.Event()
        self._done = threading.Event()

        def run() -> None:
            try:
                self._encoder = load_spec(spec, precision=precision, image_only=image_only, on_built=built)
                _release_free_memory()  # the read buffers sit in this thread's own malloc arena
            except BaseException as exc:  # handed to the thread that waits for the model
                self._error = exc
            finally:
                self._built.set()
                self._done.set()

        def built(facts: ModelFacts) -> None:
            self._facts = facts
            self._built.set()

        # not a daemon: torch aborts the process (std::terminate) if the interpreter exits while a
        # thread is inside it, so an exit (Ctrl-C while loading) waits for the load to end instead
        threading.Thread(target=run, name="clipsearch-model-load").start()

    def facts(self) -> ModelFacts:
        """The built model's facts; waits for them."""
        self._built.wait()
        return self._or_error(self._facts)

    def encoder(self) -> Encoder:
        """The loaded encoder; waits for it."""
        self._done.wait()
        return self._or_error(self._encoder)

    def _or_error(self, value: T | None) -> T:
        """``value``, or the loading error where the load ended without it."""
        if value is None:
            assert self._error is not None
            raise self._error
        return value


def _release_free_memory() -> None:
    """Give memory that malloc holds free back to the system (glibc's ``malloc_trim``; else nothing).

    Freed blocks in a thread's arena are not reused by other threads, so the ~40 MB of file
    buffers a model load leaves there would count in the process's memory until it exits.
    """
    import contextlib
    import ctypes

    with contextlib.suppress(AttributeError, OSError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


class _DropMessage(logging.Filter):
    """Drop log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _build_streaming(
    weights: ResolvedWeights,
    precision: str,
    device: str,
    *,
    image_only: bool,
    built: Callable[[Any, Any], ModelFacts],
) -> tuple[Any, Any, ModelFacts] | None:
    """Build the model directly in its final dtype and read the weights in one tensor at a time.

    open_clip's own path builds a float32 model, initialises it randomly, reads the whole
    checkpoint beside it and converts afterwards: three copies of the weights at the peak (about
    1.9 GB for ViT-B-32 in bf16) and ~0.9 s of random numbers that the checkpoint overwrites. This
    path skips the initialisation (every tensor is then read from the checkpoint, which is checked
    to hold exactly the model's tensors) and holds the model plus one tensor, read with plain file
    reads (a memory-mapped checkpoint would count every page it touched in the process's memory).
    It applies to open_clip-format safetensors files whose tensors match the model exactly; for
    anything else (other formats, renamed or resized tensors) it returns None and the caller uses
    open_clip's loader, which knows the conversions.
    """
    import open_clip
    import torch

    if weights.checkpoint.suffix != ".safetensors":
        return None
    dtypes = {
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F64": torch.float64,
        "I64": torch.int64,
        "I32": torch.int32,
        "BOOL": torch.bool,
    }
    with weights.checkpoint.open("rb") as fh:
        header_size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_size))
        header.pop("__metadata__", None)
        if any(info["dtype"] not in dtypes for info in header.values()):
            return None
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if 8 + header_size + end > os.fstat(fh.fileno()).st_size:  # found now, not after the build
            raise ValueError(f"{weights.checkpoint} is truncated")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16 if precision == "bf16" else torch.float32)
        quiet = _DropMessage("No pretrained weights loaded")  # true here, but the weights come next
        logging.getLogger().addFilter(quiet)
        try:
            with _no_random_init():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    weights.open_clip_name,
                    pretrained=weights.open_clip_pretrained,  # for the tag's preprocessing
                    load_weights=False,
                    device=device,
                )
        finally:
            torch.set_default_dtype(previous)
            logging.getLogger().removeFilter(quiet)
        targets = model.state_dict()  # tensors sharing storage with the parameters and buffers
        if set(header) != set(targets) or any(
            tuple(info["shape"]) != tuple(targets[key].shape) for key, info in header.items()
        ):
            return None
        facts = built(model, preprocess)
        keys = [k for k in header if not image_only or k.startswith("visual.")] or list(header)
        with torch.no_grad():
            for key in keys:
                info = header[key]
                start, end = info["data_offsets"]
                if end == start:
                    continue
                fh.seek(8 + header_size + start)
                buffer = bytearray(end - start)
                if fh.readinto(buffer) != len(buffer):
                    raise ValueError(f"{weights.checkpoint} is truncated (tensor {key})")
                tensor = torch.frombuffer(buffer, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
                targets[key].copy_(tensor)
    if len(keys) < len(header):
        _drop_text_tower(model)
    return model, preprocess, facts


@contextmanager
def _no_random_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s functions leave tensors as they are while a model is built.

    Only for a model whose every weight is then read from a checkpoint: random initialisation
    costs ~0.9 s for ViT-B-32 and writes memory (the text tower of an image-only encoder) that
    would otherwise never be touched. Most modules call these functions through the
    ``torch.nn.init`` module; some import them by name (``nn.MultiheadAttention``: 24 random
    ``in_proj`` matrices, 0.13 s, for ViT-B-32). Both are replaced, and restored on exit.
    """
    import torch.nn.init as init

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    originals = {
        getattr(init, name)
        for name in dir(init)
        if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))
    }
    namespaces = [init] + [m for n, m in list(sys.modules.items()) if n.startswith("torch.nn.modules.")]
    saved = [
        (namespace, name, value)
        for namespace in namespaces
        for name, value in list(vars(namespace).items())
        if name.endswith("_") and callable(value) and value in originals
    ]
    try:
        for namespace, name, _ in saved:
            setattr(namespace, name, keep)
        yield
    finally:
        for namespace, name, value in saved:
            setattr(namespace, name, value)


def _drop_text_tower(model: Any) -> None:
    """Free every parameter outside the image tower (``visual.``), which the checkpoint did not fill.

    They become empty tensors, so a text encode fails loudly instead of computing on weights that
    were never read. A model without a ``visual`` tower is left whole.
    """
    import torch

    params = list(model.named_parameters())
    if not any(name.startswith("visual.") for name, _ in params):
        return
    for name, param in params:
        if not name.startswith("visual."):
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
