"""Export the index's text tower to ONNX (see :mod:`clipsearch.encoders.onnx_text` for the files
and their use).

A sync calls this once per model weights and machine (``Index.sync``): the model is at hand there,
the cost lands on a command that is slow anyway, and searching stays read-only. The graph is written to
``.text-onnx-tmp-<pid>/`` in the cache, checked against torch, and renamed into place, so a reader
sees all of it or nothing; of two processes exporting the same model at once, the first rename wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.onnx_text import (
    MERGES_FILE,
    MODEL_FILE,
    SETTINGS_FILE,
    TMP_PREFIX,
    OnnxTextEncoder,
    TextOnnxSettings,
    onnx_dir,
    open_session,
    read_tokenizer,
    sweep_unfinished,
    unsupported_file,
    usable_settings,
)
from clipsearch.encoders.tokenizer import clip_tokenizer, is_plain_clip_tokenizer, same_tokens
from clipsearch.errors import ClipsearchError
from clipsearch.files import fsync_path

if TYPE_CHECKING:
    import torch

    from clipsearch.encoders.cache import ModelCache
    from clipsearch.encoders.encoder import Encoder

#: Lowest cosine between the graph's and torch's embeddings of :data:`PROBES` that is accepted.
MIN_COSINE = 0.9999

# Texts the export checks tokens and embeddings on: short, long (truncated), empty, non-ASCII,
# and batched together, so rows of different lengths share one padded batch.
PROBES = (
    "a red car",
    "",
    "A photo of a dog on the beach at sunset, with people and boats far away. " * 4,
    "Café &amp; crème brûlée 🍮 東京 123",
    "a small purple cross!!",
)


@dataclass(frozen=True)
class ExportOutcome:
    """What :func:`export_text_encoder` did: ``path`` is None when the model cannot be exported."""

    path: Path | None
    created: bool = False
    seconds: float = 0.0
    reason: str = ""


def export_text_encoder(
    cache: ModelCache, weights_sha256: str, dim: int, fp32_encoder: Callable[[], Encoder]
) -> ExportOutcome:
    """Export the text tower of the index's model into the cache, unless it is there already.

    Never raises for a model that cannot be exported (another tokenizer, unsupported layers, a
    graph that does not match torch): the outcome says why, a marker file remembers it, and
    searches keep using torch.

    Args:
        cache: the model cache to export into.
        weights_sha256, dim: the model's weights and embedding length (the export is keyed to them).
        fp32_encoder: returns the index's model in fp32; called only when an export is needed.
    """
    started = time.monotonic()
    folder = onnx_dir(cache, weights_sha256)
    unsupported = unsupported_file(folder)
    if usable_settings(folder, weights_sha256, dim) is not None:
        return ExportOutcome(folder)
    with contextlib.suppress(OSError):
        return ExportOutcome(None, reason=unsupported.read_text(encoding="utf-8").strip())
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return ExportOutcome(None, reason=f"cannot write the cache {folder.parent}: {exc.strerror or exc}")
    sweep_unfinished(folder.parent)
    tmp = folder.parent / f"{TMP_PREFIX}{os.getpid()}"
    try:
        reason = _export(weights_sha256, fp32_encoder(), tmp)
        if reason is None:
            _commit(tmp, folder, lambda: usable_settings(folder, weights_sha256, dim) is not None)
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


def _export(weights_sha256: str, encoder: Encoder, tmp: Path) -> str | None:
    """Write the checked graph and its settings into the new folder ``tmp``, or say why not."""
    if encoder.tokenizer is None:
        return "the model was loaded without its text tower"
    context_length = is_plain_clip_tokenizer(encoder.tokenizer)
    if context_length is None:
        return f"its tokenizer ({type(encoder.tokenizer).__name__}) is not CLIP's BPE"
    tokenizer = clip_tokenizer(context_length)
    if not same_tokens(encoder.tokenizer, tokenizer, PROBES):
        return "its tokenizer differs from CLIP's BPE on test texts"
    reason = "no graph"
    # The variable-length graph first (a short query computes a few tokens, not the whole context);
    # it re-states open_clip's encode_text, so the check against torch decides whether it is kept.
    for variable_length in (True, False) if _causal_text_tower(encoder.model) else (False,):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / MERGES_FILE).write_text(json.dumps(tokenizer.merges, ensure_ascii=False), encoding="utf-8")
        _export_graph(encoder.model, tokenizer(list(PROBES[:2])), tmp / MODEL_FILE, variable_length)
        saved = read_tokenizer(tmp, context_length)  # checked as the query path will read it
        onnx = OnnxTextEncoder(
            open_session(tmp / MODEL_FILE), saved, encoder.dim, variable_length=variable_length
        )
        cosine = _min_cosine(onnx, encoder)
        if cosine >= MIN_COSINE:
            files = {entry.name: entry.stat().st_size for entry in sorted(tmp.iterdir())}
            settings = TextOnnxSettings(
                weights_sha256,
                encoder.dim,
                context_length,
                tokenizer.vocab_sha256,
                files,
                variable_length,
            )
            text = json.dumps(asdict(settings), indent=2) + "\n"
            (tmp / SETTINGS_FILE).write_text(text, encoding="utf-8")
            return None
        reason = f"the exported graph does not match torch (cosine {cosine:.6f})"
    return reason


def _min_cosine(onnx: OnnxTextEncoder, encoder: Encoder) -> float:
    """Lowest cosine between the graph's and the torch model's embeddings of :data:`PROBES`."""
    mine = onnx.encode_texts(list(PROBES))
    theirs = encoder.encode_texts(list(PROBES))
    singly = np.concatenate([onnx.encode_texts([text]) for text in PROBES])
    if mine.shape != theirs.shape or singly.shape != theirs.shape or not np.isfinite(mine).all():
        return -1.0
    return float(min(np.sum(mine * theirs, axis=1).min(), np.sum(singly * theirs, axis=1).min()))


def _causal_text_tower(model: Any) -> bool:
    """Whether the text tower is open_clip's CLIP one with a causal mask, pooled at the end token.

    Then what the end token sees does not depend on the padding after it, and the graph can take
    token rows cut after the longest text's end token.
    """
    from open_clip.model import CLIP

    return (
        isinstance(model, CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def _text_tower(model: torch.nn.Module, variable_length: bool) -> torch.nn.Module:
    """The module to export: tokens -> unit embeddings, for full or cut token rows."""
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    class FullLength(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens, normalize=True)  # type: ignore[operator]

    class VariableLength(FullLength):
        """open_clip's CLIP.encode_text with the positions and the causal mask cut to the rows' length."""

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            m: Any = self.model
            n = tokens.shape[1]
            cast_dtype = m.transformer.get_cast_dtype()
            x = m.token_embedding(tokens).to(cast_dtype) + m.positional_embedding[:n].to(cast_dtype)
            x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
            x = m.ln_final(x)
            x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
            if m.text_projection is not None:
                x = (
                    m.text_projection(x)
                    if isinstance(m.text_projection, torch.nn.Linear)
                    else x @ m.text_projection
                )
            return F.normalize(x, dim=-1)

    return (VariableLength() if variable_length else FullLength()).eval()


def _export_graph(
    model: torch.nn.Module, example: npt.NDArray[np.int64], path: Path, variable_length: bool
) -> None:
    """torch.export the text tower into ONNX at ``path`` (+ ``.data``): any batch size, and any row
    length up to the context when ``variable_length``."""
    import warnings

    import torch

    axes = {0: torch.export.Dim("batch", min=1, max=65536)}
    if variable_length:  # the example is cut to its longest row too, so the length is not baked in
        example = example[:, : int(np.flatnonzero(example.any(axis=0))[-1]) + 1]
        axes[1] = torch.export.Dim("length", min=2, max=int(model.attn_mask.shape[0]))  # type: ignore[union-attr]
    # the exporter reports progress with print(): keep stdout for results
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _text_tower(model, variable_length),
            (torch.from_numpy(np.ascontiguousarray(example)),),
            str(path),
            input_names=["tokens"],
            output_names=["embeddings"],
            dynamic_shapes={"tokens": axes},
            dynamo=True,
            external_data=True,
            verbose=False,
        )


def _commit(tmp: Path, folder: Path, usable: Callable[[], bool]) -> None:
    """Make the finished files durable, then move the folder into place in one rename."""

    for entry in tmp.iterdir():
        with entry.open("rb") as fh:
            os.fsync(fh.fileno())
    fsync_path(tmp)
    if usable():  # another process finished the same export meanwhile: keep theirs
        return
    if folder.exists():  # a damaged or unusable older export
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not usable():
            raise
    fsync_path(folder.parent)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
