"""The index's text tower as an ONNX graph, so a cold text query needs neither torch nor open_clip.

``clipsearch index`` exports it once per model weights (the model is at hand there, and the cost
lands on a command that is slow anyway; searching stays read-only). It lives in the index folder::

    text-onnx-<first 16 hex digits of the weights' sha256>/
        model.onnx, model.onnx.data   tokens (n, context) int64 -> unit float32 rows (n, dim)
        text_encoder.json             weights sha256, dim, tokenizer kind, context length, vocab sha256

The folder is written under a temporary name and renamed into place, so a reader sees all of it
or nothing. A search uses it only when its settings name the index's own weights and a tokenizer
that :mod:`clipsearch.tokenizer` reproduces; anything else (no folder, another model, a
Hugging Face tokenizer, a failed export) means the torch model, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ClipsearchError
from clipsearch.tokenizer import KIND, ClipTokenizer, clip_tokenizer, is_plain_clip_tokenizer, same_tokens

if TYPE_CHECKING:
    from clipsearch.catalog import IndexMeta
    from clipsearch.encoder import Encoder

FORMAT = 1
DIR_PREFIX = "text-onnx-"
_TMP_PREFIX = ".text-onnx-tmp-"
SETTINGS_FILE = "text_encoder.json"
MODEL_FILE = "model.onnx"
#: Lowest cosine between the exported graph's and torch's embeddings accepted at export time.
MIN_COSINE = 0.9999

# Texts the export checks tokens and embeddings on: short, long (truncated), empty, non-ASCII.
PROBES = (
    "a red car",
    "",
    "A photo of a dog on the beach at sunset, with people and boats far away. " * 4,
    "Café &amp; crème brûlée 🍮 東京 123",
    "a small purple cross",
)


class TextEncoder(Protocol):
    """Anything that turns texts into unit vectors: the torch :class:`Encoder` or the ONNX one."""

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class TextOnnxSettings:
    """What ``text_encoder.json`` records; the query path checks it before using the graph."""

    weights_sha256: str
    dim: int
    context_length: int
    vocab_sha256: str
    #: name -> size in bytes of each file of the graph: a truncated or replaced file is not used
    files: dict[str, int]
    tokenizer: str = KIND
    model_file: str = MODEL_FILE
    format: int = FORMAT

    @classmethod
    def read(cls, path: Path) -> TextOnnxSettings:
        """Raises OSError, ValueError, TypeError or KeyError for a missing or malformed file."""
        data = json.loads(path.read_text(encoding="utf-8"))
        settings = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        if not isinstance(settings.context_length, int) or not isinstance(settings.dim, int):
            raise TypeError("context_length and dim must be integers")
        if not isinstance(settings.files, dict) or MODEL_FILE not in settings.files:
            raise TypeError("files must name the graph's files and their sizes")
        return settings


def onnx_dir(index_path: Path, weights_sha256: str) -> Path:
    """Where the text encoder for these weights lives inside the index folder."""
    return index_path / f"{DIR_PREFIX}{weights_sha256[:16]}"


def _usable_settings(folder: Path, meta: IndexMeta) -> TextOnnxSettings | None:
    try:
        settings = TextOnnxSettings.read(folder / SETTINGS_FILE)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    ok = (
        settings.format == FORMAT
        and settings.tokenizer == KIND
        and settings.weights_sha256 == meta.weights_sha256
        and settings.dim == meta.dim
        and settings.model_file == MODEL_FILE
        and all(_size(folder / name) == size for name, size in settings.files.items())
    )
    return settings if ok else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


class OnnxTextEncoder:
    """Texts -> unit float32 rows ``(n, dim)`` with onnxruntime and the torch-free tokenizer."""

    def __init__(self, session: Any, tokenizer: ClipTokenizer, dim: int) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.dim = dim
        self._input = session.get_inputs()[0].name

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts, truncated to the model's context length, as the torch model would."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            out.append(np.asarray(self.session.run(None, {self._input: tokens})[0], dtype=np.float32))
        return np.concatenate(out)


def load_text_encoder(index_path: Path, meta: IndexMeta) -> OnnxTextEncoder | None:
    """The index's ONNX text encoder, or None (absent, for other weights, unreadable): then use torch."""
    folder = onnx_dir(index_path, meta.weights_sha256)
    settings = _usable_settings(folder, meta)
    if settings is None:
        return None
    try:
        tokenizer = clip_tokenizer(settings.context_length)
        if tokenizer.vocab_sha256 != settings.vocab_sha256:
            return None  # open_clip's vocabulary changed since the export
        session = _session(folder / MODEL_FILE)
    except Exception:  # a damaged file or a missing runtime: fall back to torch
        return None
    return OnnxTextEncoder(session, tokenizer, settings.dim)


def _session(path: Path) -> Any:
    """An onnxruntime CPU session made for one short query: quick to create, quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: nothing on the user's terminal
    # Pre-packing re-lays every weight matrix for faster matmuls: most of the load time (0.15 s of
    # 0.2 s for ViT-B-32) and more than it saves on a query or two.
    options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ExportOutcome:
    """What :func:`export_text_encoder` did: ``path`` is None when the model cannot be exported."""

    path: Path | None
    created: bool = False
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _unsupported_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".unsupported")


def export_pending(index_path: Path, meta: IndexMeta) -> bool:
    """Whether :func:`export_text_encoder` would export: no usable graph, and no earlier export found
    the model unsupported (cheap: reads one small file)."""
    folder = onnx_dir(index_path, meta.weights_sha256)
    return _usable_settings(folder, meta) is None and not _unsupported_file(folder).is_file()


def export_text_encoder(
    index_path: Path, meta: IndexMeta, fp32_encoder: Callable[[], Encoder]
) -> ExportOutcome:
    """Export the text tower of the index's model into the index folder, unless it is there already.

    Call it holding the index's writer lock. Never raises for a model that cannot be exported
    (other tokenizer, unsupported layers, graph not matching torch): the outcome says why, and
    searches keep using torch.

    Args:
        index_path: the index folder.
        meta: the index's metadata (the export is keyed to ``meta.weights_sha256``).
        fp32_encoder: returns the index's model in fp32; called only when an export is needed.
    """
    started = time.monotonic()
    folder = onnx_dir(index_path, meta.weights_sha256)
    unsupported = _unsupported_file(folder)
    _sweep(index_path, keep={folder.name, unsupported.name})
    if _usable_settings(folder, meta) is not None:
        return ExportOutcome(folder)
    with contextlib.suppress(OSError):
        return ExportOutcome(None, reason=unsupported.read_text(encoding="utf-8").strip())
    tmp = index_path / f"{_TMP_PREFIX}{os.getpid()}"
    try:
        reason = _export(meta, fp32_encoder(), tmp)
        if reason is None:
            _commit(tmp, folder)
            return ExportOutcome(folder, created=True, seconds=round(time.monotonic() - started, 3))
    except (ClipsearchError, OSError) as exc:  # weights gone or changed, disk full: try again next time
        return ExportOutcome(None, reason=_first_line(exc))
    except Exception as exc:  # torch.export / onnxscript raise anything on unsupported layers
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):  # remembered, so a later re-index does not load the model for it
        unsupported.write_text(reason + "\n", encoding="utf-8")
    return ExportOutcome(None, reason=reason)


def _export(meta: IndexMeta, encoder: Encoder, tmp: Path) -> str | None:
    """Write the graph and its settings into the new folder ``tmp``; or say why the model cannot be."""
    context_length = is_plain_clip_tokenizer(encoder.tokenizer)
    if context_length is None:
        return f"its tokenizer ({type(encoder.tokenizer).__name__}) is not CLIP's BPE"
    tokenizer = clip_tokenizer(context_length)
    if not same_tokens(encoder.tokenizer, tokenizer, PROBES):
        return "its tokenizer differs from CLIP's BPE on test texts"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _export_graph(encoder, tokenizer(list(PROBES[:2])), tmp / MODEL_FILE)
    cosine = _check_graph(encoder, tokenizer, tmp / MODEL_FILE)
    if cosine < MIN_COSINE:
        return f"the exported graph does not match torch (cosine {cosine:.6f})"
    files = {entry.name: entry.stat().st_size for entry in sorted(tmp.iterdir())}
    settings = TextOnnxSettings(
        meta.weights_sha256, encoder.dim, context_length, tokenizer.vocab_sha256, files
    )
    (tmp / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _export_graph(encoder: Encoder, example: npt.NDArray[np.int64], path: Path) -> None:
    """torch.export the text tower (unit rows, any batch size) into ONNX at ``path`` (+ ``.data``)."""
    import warnings

    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens, normalize=True)  # type: ignore[operator]

    batch = torch.export.Dim("batch", min=1, max=65536)
    # the exporter reports progress with print(): keep stdout for results
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TextTower(encoder.model).eval(),
            (torch.from_numpy(example),),
            str(path),
            input_names=["tokens"],
            output_names=["embeddings"],
            dynamic_shapes={"tokens": {0: batch}},
            dynamo=True,
            external_data=True,
            verbose=False,
        )


def _check_graph(encoder: Encoder, tokenizer: ClipTokenizer, path: Path) -> float:
    """Lowest cosine between the graph's and the torch model's embeddings of :data:`PROBES`."""
    mine = OnnxTextEncoder(_session(path), tokenizer, encoder.dim).encode_texts(list(PROBES))
    theirs = encoder.encode_texts(list(PROBES))
    if mine.shape != theirs.shape or not np.isfinite(mine).all():
        return -1.0
    return float(np.min(np.sum(mine * theirs, axis=1)))


def _commit(tmp: Path, folder: Path) -> None:
    """Make the finished files durable, then move the folder into place in one rename."""
    from clipsearch.vectors import fsync_path

    for entry in tmp.iterdir():
        with entry.open("rb") as fh:
            os.fsync(fh.fileno())
    fsync_path(tmp)
    if folder.exists():  # left by an older, unusable export: we hold the writer lock
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    fsync_path(folder.parent)


def _sweep(index_path: Path, keep: set[str]) -> None:
    """Remove text encoders of other weights and half-written exports (the caller holds the lock)."""
    for entry in [*index_path.glob(f"{DIR_PREFIX}*"), *index_path.glob(f"{_TMP_PREFIX}*")]:
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def remove_text_encoders(index_path: Path) -> None:
    """Delete every exported text encoder of the index (for ``--rebuild``)."""
    _sweep(index_path, keep=set())
