"""The index's text tower as an ONNX graph, so a cold text query needs neither torch nor open_clip.

A sync exports it once per model weights and machine (see :mod:`clipsearch.encoders.onnx_export`)
into the model cache (:class:`~clipsearch.encoders.cache.ModelCache`: ``$CLIPSEARCH_CACHE`` for the
CLI, else e.g. ``~/.cache/clipsearch``), shared by every index of that model, like downloaded weights::

    text-onnx-<first 16 hex digits of the weights' sha256>/
        model.onnx, model.onnx.data   tokens (n, length) int64 -> unit float32 rows (n, dim)
        bpe_merges.json               the tokenizer's vocabulary (open_clip's, as a JSON list)
        text_encoder.json             weights sha256, dim, tokenizer, context length, vocab sha256,
                                      file sizes, whether the graph takes shorter token rows

A search uses it only when its settings name the index's own weights and a tokenizer that
:mod:`clipsearch.encoders.tokenizer` reproduces, and its files have the sizes recorded; anything else (no
folder, another model, a Hugging Face tokenizer, a damaged file) means the torch model, as before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.tokenizer import KIND, ClipTokenizer

if TYPE_CHECKING:
    from clipsearch.encoders.cache import ModelCache

FORMAT = 1
DIR_PREFIX = "text-onnx-"
TMP_PREFIX = ".text-onnx-tmp-"
SETTINGS_FILE = "text_encoder.json"
MODEL_FILE = "model.onnx"
#: the tokenizer's BPE merges as a JSON list: loads in a third of the time of open_clip's gzip file
MERGES_FILE = "bpe_merges.json"


class TextEncoder(Protocol):
    """Anything that turns texts into unit vectors: the torch :class:`Encoder` or the ONNX one."""

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class TextOnnxSettings:
    """What ``text_encoder.json`` records; the query path checks it before using the graph."""

    weights_sha256: str
    dim: int
    context_length: int
    #: sha256 of the open_clip vocabulary file the merges were read from
    vocab_sha256: str
    #: name -> size in bytes of each file of the graph: a truncated or replaced file is not used
    files: dict[str, int]
    #: the graph takes token rows cut after the longest text's end token (much less to compute)
    variable_length: bool
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
        if not isinstance(settings.files, dict) or not {MODEL_FILE, MERGES_FILE} <= set(settings.files):
            raise TypeError("files must name the graph's files and their sizes")
        return settings


def onnx_dir(cache: ModelCache, weights_sha256: str) -> Path:
    """Where the text encoder for these weights lives (shared by every index of the model)."""
    return cache.text_onnx / f"{DIR_PREFIX}{weights_sha256[:16]}"


def unsupported_file(folder: Path) -> Path:
    """Written instead of ``folder`` when the model cannot be exported; holds the reason."""
    return folder.with_name(folder.name + ".unsupported")


def usable_settings(folder: Path, weights_sha256: str, dim: int) -> TextOnnxSettings | None:
    """The settings of the text encoder in ``folder`` if it is complete and made for these weights."""
    try:
        settings = TextOnnxSettings.read(folder / SETTINGS_FILE)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    ok = (
        settings.format == FORMAT
        and settings.tokenizer == KIND
        and settings.weights_sha256 == weights_sha256
        and settings.dim == dim
        and settings.model_file == MODEL_FILE
        and all(_size(folder / name) == size for name, size in settings.files.items())
    )
    return settings if ok else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def export_pending(cache: ModelCache, weights_sha256: str, dim: int) -> bool:
    """Whether the model lacks a usable text encoder and no earlier export found it unsupported
    (cheap: reads one small file)."""
    folder = onnx_dir(cache, weights_sha256)
    return usable_settings(folder, weights_sha256, dim) is None and not unsupported_file(folder).is_file()


class OnnxTextEncoder:
    """Texts -> unit float32 rows ``(n, dim)`` with onnxruntime and the torch-free tokenizer."""

    def __init__(self, session: Any, tokenizer: ClipTokenizer, dim: int, *, variable_length: bool) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.dim = dim
        self.variable_length = variable_length
        self._input = session.get_inputs()[0].name

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts, truncated to the model's context length, as the torch model would."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            if self.variable_length:  # the padding after the last end token changes nothing
                tokens = tokens[:, : int(np.flatnonzero(tokens.any(axis=0))[-1]) + 1]
            out.append(np.asarray(self.session.run(None, {self._input: tokens})[0], dtype=np.float32))
        return np.concatenate(out)


def open_session(path: Path) -> Any:
    """An onnxruntime CPU session made for a short query: quick to create, quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: nothing on the user's terminal
    # Pre-packing re-lays every weight matrix for faster matmuls: most of the load time (0.15 s of
    # 0.2 s for ViT-B-32), and more than it saves on a query or two.
    options.add_session_config_entry("session.disable_prepacking", "1")
    # Idle worker threads sleep instead of spinning: a spinning thread steals the core the query
    # runs on whenever the machine is busy.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_text_encoder(cache: ModelCache, weights_sha256: str, dim: int) -> OnnxTextEncoder | None:
    """The ONNX text encoder of these weights, or None (absent, unreadable): then use torch."""
    folder = onnx_dir(cache, weights_sha256)
    settings = usable_settings(folder, weights_sha256, dim)
    if settings is None:
        return None
    try:
        tokenizer = read_tokenizer(folder, settings.context_length)
        session = open_session(folder / MODEL_FILE)
    except Exception:  # a damaged file or a missing runtime: fall back to torch
        return None
    return OnnxTextEncoder(session, tokenizer, settings.dim, variable_length=settings.variable_length)


def read_tokenizer(folder: Path, context_length: int) -> ClipTokenizer:
    """The tokenizer saved beside the graph. Raises OSError or ValueError for a bad file."""
    return ClipTokenizer(context_length, json.loads((folder / MERGES_FILE).read_text(encoding="utf-8")))


def sweep_unfinished(root: Path) -> None:
    """Remove exports left half-written by a process that died (their temporary folder names its pid)."""
    for entry in root.glob(f"{TMP_PREFIX}*"):
        pid = entry.name[len(TMP_PREFIX) :]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
