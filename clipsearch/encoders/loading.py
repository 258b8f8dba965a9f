"""Load a model spec as an :class:`~clipsearch.encoders.encoder.Encoder`, in the foreground or in a thread.

The weights file is resolved first (:mod:`clipsearch.encoders.weights`), then the model is built
and its weights read; :class:`ModelLoader` does that in a background thread so that a sync can
decode images meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from clipsearch.encoders.encoder import Encoder
from clipsearch.encoders.facts import ModelFacts
from clipsearch.encoders.spec import (
    DEFAULT_MODEL,
    ModelSpec,
    Precision,
    RunPrecision,
    bundled_model,
    resolve_precision,
)
from clipsearch.encoders.weights import ResolvedWeights, hub_offline, resolve_weights
from clipsearch.errors import ModelUnavailableError

T = TypeVar("T")


def load_encoder(
    name: str | None = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    precision: Precision = "fp32",
) -> Encoder:
    """Load a CLIP model as an :class:`~clipsearch.encoders.encoder.Encoder`.

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
    precision: Precision = "fp32",
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
    precision: Precision,
    image_only: bool,
    on_built: Callable[[ModelFacts], None] | None,
) -> Encoder:
    import open_clip

    bundled = bundled_model(spec.name)
    if bundled is not None and bundled.prepare is not None:
        bundled.prepare()  # e.g. registers a custom image tower with timm
    weights = resolve_weights(spec)
    run_precision = resolve_precision(precision)

    def built(model: Any, preprocess: Any) -> ModelFacts:
        model.eval()  # open_clip returns models in train mode (batch-norm statistics would move)
        facts = ModelFacts.of(spec, weights.sha256, model, preprocess)
        if on_built is not None:
            on_built(facts)
        return facts

    try:
        with hub_offline():  # resolve_weights put everything in the cache; open_clip looks again
            loaded = _build_streaming(weights, run_precision, device, image_only=image_only, built=built)
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
            spec.label(),
            f"The weights file {weights.checkpoint} could not be loaded ({exc}). It may be truncated or "
            "belong to another architecture; delete it and download it again, or give the right file.",
        ) from exc
    return Encoder(model, preprocess, tokenizer, facts=facts, device=device, precision=run_precision)


class ModelLoader:
    """:func:`load_spec` in a background thread, so that a caller can work meanwhile.

    :meth:`facts` answers once the model is built (after the imports, about 3 s for ViT-B-32 on a
    2-core machine), :meth:`encoder` once its weights are in; either re-raises a loading error.
    """

    def __init__(self, spec: ModelSpec, *, precision: Precision = "fp32", image_only: bool = False) -> None:
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
    precision: RunPrecision,
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
