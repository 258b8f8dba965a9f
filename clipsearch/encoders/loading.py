"""Load a model spec as an :class:`~clipsearch.encoders.encoder.Encoder`, in the foreground or in a thread.

The weights file is resolved first (:mod:`clipsearch.encoders.weights`), then the model is built
and its weights read; :class:`ModelLoader` does that in a background thread so that a sync can
decode images meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from clipsearch.encoders.device import resolve_device
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
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees a GPU, else the CPU).
        precision: ``fp32``, ``bf16`` (half the memory, about twice as fast on CPUs with AVX-512
            BF16; cosine >= 0.999 to fp32 embeddings), ``fp16`` (on a GPU) or ``auto`` (fp16 on a
            GPU, bf16 where the CPU supports it, else fp32).

    Raises:
        UsageError: unknown model name or tag.
        ModelUnavailableError: weights missing and not downloadable; the message says how to fix it.
        DeviceUnavailableError: ``cuda`` asked for where torch cannot use a GPU.
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
    device = resolve_device(device)
    run_precision = resolve_precision(precision, device)
    weights = resolve_weights(spec)

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

    def __init__(
        self,
        spec: ModelSpec,
        *,
        precision: Precision = "fp32",
        image_only: bool = False,
        device: str = "cpu",
    ) -> None:
        import threading

        self._facts: ModelFacts | None = None
        self._encoder: Encoder | None = None
        self._error: BaseException | None = None
        self._built = threading.Event()
        self._done = threading.Event()

        def run() -> None:
            try:
                self._encoder = load_spec(
                    spec, precision=precision, image_only=image_only, on_built=built, device=device
                )
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


def _safetensors_header(fh: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    """(offset of the tensor data, name -> {dtype, shape, data_offsets}) of an open safetensors file.

    The format is an 8-byte little-endian header length and a JSON header. It is read here rather
    than through ``safetensors.safe_open`` because that memory-maps the file: every page the load
    touches then counts in the process's memory until the file is closed (ViT-B-32 in bf16: peak
    1245 instead of 953 MB for the image tower, 1606 instead of 1087 MB for the whole model).
    """
    size = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _build_streaming(
    weights: ResolvedWeights,
    precision: RunPrecision,
    device: str,
    *,
    image_only: bool,
    built: Callable[[Any, Any], ModelFacts],
) -> tuple[Any, Any, ModelFacts] | None:
    """Build the model on the ``meta`` device, then read the weights in, one tensor at a time.

    open_clip's own path builds a float32 model, initialises it randomly, reads the whole checkpoint
    beside it and converts afterwards: three copies of the weights at the peak (about 1.9 GB for
    ViT-B-32 in bf16) and ~0.9 s of random numbers that the checkpoint overwrites. Here the model is
    built without memory (``torch.device("meta")``, which only affects this thread), cast to its final
    dtype for free, and every tensor is read with plain file reads, converted and assigned
    (``load_state_dict(assign=True)``): the peak is the model plus one tensor. An image-only load
    leaves the text tower's parameters on ``meta`` (no memory; using them fails loudly). It applies
    to open_clip-format safetensors files whose tensors match the model exactly, and to models whose
    unsaved buffers it can rebuild; for anything else it returns None and the caller uses
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
        data_start, header = _safetensors_header(fh)
        if any(info["dtype"] not in dtypes for info in header.values()):
            return None
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if data_start + end > os.fstat(fh.fileno()).st_size:  # found now, not after the build
            raise ValueError(f"{weights.checkpoint} is truncated")
        # open_clip warns through the root logger that no weights were loaded: true, they come next
        quiet = _DropMessage("No pretrained weights loaded")
        logging.getLogger().addFilter(quiet)
        try:
            with torch.device("meta"):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    weights.open_clip_name,
                    pretrained=weights.open_clip_pretrained,  # for the tag's preprocessing
                    load_weights=False,
                    device="meta",
                )
        finally:
            logging.getLogger().removeFilter(quiet)
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32))
        targets = model.state_dict()
        if set(header) != set(targets) or any(
            tuple(info["shape"]) != tuple(targets[key].shape) for key, info in header.items()
        ):
            return None
        facts = built(model, preprocess)
        keys = [k for k in header if not image_only or k.startswith("visual.")] or list(header)
        state = {}
        for key in keys:
            info = header[key]
            start, stop = info["data_offsets"]
            fh.seek(data_start + start)
            buffer = bytearray(stop - start)
            if fh.readinto(buffer) != len(buffer):
                raise ValueError(f"{weights.checkpoint} is truncated (tensor {key})")
            tensor = torch.frombuffer(buffer, dtype=dtypes[info["dtype"]]) if buffer else torch.empty(0)
            state[key] = tensor.reshape(info["shape"]).to(targets[key].dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if not _rebuild_unsaved_buffers(model, image_only=image_only):
        return None
    if device != "cpu":  # an image-only load leaves the text tower on meta, which cannot be moved
        (model.visual if image_only else model).to(device)
    return model, preprocess, facts


def _rebuild_unsaved_buffers(model: Any, *, image_only: bool) -> bool:
    """Give real values to the buffers a checkpoint does not hold (still on ``meta``); False where one
    cannot be rebuilt. The only kind open_clip's models have is the text tower's causal ``attn_mask``
    (square, ``-inf`` above the diagonal: ``open_clip.transformer.TextTransformer.build_causal_mask``)."""
    import torch

    for name, module in model.named_modules():
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is None or not buffer.is_meta:
                continue
            if image_only and not f"{name}.{buffer_name}".lstrip(".").startswith("visual."):
                continue  # the text tower is not loaded
            if buffer_name != "attn_mask" or buffer.dim() != 2 or buffer.shape[0] != buffer.shape[1]:
                return False
            mask = torch.full(tuple(buffer.shape), float("-inf"), dtype=buffer.dtype).triu_(1)
            setattr(module, buffer_name, mask)
    return True


def _drop_text_tower(model: Any) -> None:
    """Free every parameter outside the image tower (``visual.``), for an image-only model that
    open_clip's loader filled whole. They become empty tensors, so a text encode fails loudly. A
    model without a ``visual`` tower is left whole."""
    import torch

    params = list(model.named_parameters())
    if not any(name.startswith("visual.") for name, _ in params):
        return
    for name, param in params:
        if not name.startswith("visual."):
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
