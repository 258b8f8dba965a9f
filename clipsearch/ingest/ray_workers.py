"""What runs on the machines of a Ray cluster for :mod:`clipsearch.ingest.ray_engine`.

- :func:`probe_node`: the check each node passes before any work (can it see the photos?).
- :func:`prepare_files`: the decode stage, a Ray Data task over a block of files: read, hash, and
  (unless the content is indexed already) decode and preprocess each file with the local engine's
  own :func:`~clipsearch.ingest.decode.prepare`, side views included.
- :class:`EncodeFiles`: the encode stage, an actor holding one copy of the model (loaded from its
  spec on its own machine) that turns a batch's pixels into vectors.

Rows travel between them as columns of numpy arrays: ``path`` (the file system's bytes),
``size``, ``mtime_ns``, ``digest``, ``known``, ``reason``, ``detail``, ``width``, ``height``,
``taken`` (NaN: unknown), ``views`` (the side views' kinds, comma-joined), ``pixels`` (per file
``(k, H, W, 3)`` uint8, ``k`` = 1 + views, 0 when there is nothing to encode) and ``node``; the
actor replaces ``pixels`` with ``vectors`` (per file ``(k, dim)`` float32) and adds
``encoder_node`` and ``problem``. Ray is imported inside functions only: importing this module
never needs it.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ClipsearchError
from clipsearch.ingest.decode import DecodeJob
from clipsearch.ingest.scan import FileRecord

if TYPE_CHECKING:
    from clipsearch.encoders.encoder import Encoder
    from clipsearch.encoders.facts import ModelPreview
    from clipsearch.encoders.spec import ModelSpec

Batch = dict[str, npt.NDArray[Any]]

#: ``problem`` of an encoder whose model's preprocessing is not the preview the files were decoded with
STALE_PREVIEW = "stale-preview"


def node_label(hostname: str, node_id: str) -> str:
    """How a machine of the cluster is named in messages and reports: its host name and Ray node id."""
    return f"{hostname}/{node_id[:8]}"


def this_node() -> str:
    """The label of the node this code runs on."""
    import ray

    return node_label(socket.gethostname(), ray.get_runtime_context().get_node_id())


def digest_key(digest: str) -> int:
    """The 64-bit key of a content hash in the known set workers check (its first 16 hex digits)."""
    try:
        return int(digest[:16], 16)
    except ValueError:  # an imported content with a hash that is not hex
        return int.from_bytes(hashlib.blake2b(digest.encode(), digest_size=8).digest(), "big")


def known_keys(digests: Any) -> npt.NDArray[np.uint64]:
    """The sorted keys of ``digests`` (an iterable of content hashes)."""
    keys = np.fromiter((digest_key(d) for d in digests), dtype=np.uint64)
    keys.sort()
    return keys


def has_key(keys: npt.NDArray[np.uint64], digest: str) -> bool:
    """Whether ``digest``'s key is among ``keys`` (sorted). A key shared with another hash answers
    True: the driver checks the whole hash and sends such a file again."""
    key = np.uint64(digest_key(digest))
    i = int(np.searchsorted(keys, key))
    return i < len(keys) and keys[i] == key


def probe_node(roots: list[str], samples: list[tuple[bytes, int, int]]) -> dict[str, Any]:
    """What this node sees of the run's folders and of a few of its files (path, size, mtime_ns as
    the driver saw them): a list of (path, problem), empty when everything is there."""
    problems: list[tuple[str, str]] = []
    for root in roots:
        try:
            os.stat(root)
        except OSError as exc:
            problems.append((root, exc.strerror or str(exc)))
            continue
        if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
            problems.append((root, "permission denied (the folder cannot be listed)"))
    for raw, size, mtime_ns in samples:
        path = os.fsdecode(raw)
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append((path, exc.strerror or str(exc)))
            continue
        # a network file system may keep times to the microsecond or second only: the same file
        # has the same size, and a time within 2 s (FAT's step)
        if st.st_size != size or abs(st.st_mtime_ns - mtime_ns) > 2_000_000_000:
            problems.append(
                (path, "it has another size or time there than where the index is (not the same files)")
            )
    return {"node": this_node(), "problems": problems}


_known_cache: dict[str, npt.NDArray[np.uint64]] = {}


def _known(known: Any) -> npt.NDArray[np.uint64]:
    """The known-hash keys, fetched once per worker process from Ray's object store."""
    if isinstance(known, np.ndarray):
        return known
    import ray

    key = known.hex()
    if key not in _known_cache:
        _known_cache.clear()  # one run's set at a time
        _known_cache[key] = ray.get(known)
    return _known_cache[key]


def _clean(text: str) -> str:
    """Text that Arrow can carry (UTF-8): undecodable bytes of a file name become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8")


def prepare_files(batch: Batch, *, job: DecodeJob, known: Any) -> Batch:
    """Read, hash, decode and preprocess a block of files (a Ray Data task; see the module doc)."""
    keys = _known(known)
    n = len(batch["path"])
    digests, reasons, details, views = (np.full(n, "", dtype=object) for _ in range(4))
    known_flags = np.zeros(n, dtype=bool)
    widths, heights = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    taken = np.full(n, np.nan)
    pixels = np.empty(n, dtype=object)
    for i in range(n):
        record = FileRecord(os.fsdecode(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i]))
        prep, _ = job.decode((record, None), lambda d: has_key(keys, d))
        digests[i] = prep.digest or ""
        if prep.error is not None:
            reasons[i], details[i] = prep.error.reason, _clean(prep.error.detail)
        known_flags[i] = prep.error is None and prep.pixels is None
        widths[i], heights[i] = prep.width, prep.height
        taken[i] = math.nan if prep.taken is None else prep.taken
        views[i] = ",".join(kind for kind, _ in prep.views)
        if prep.pixels is None:
            pixels[i] = np.zeros((0, 1, 1, 3), dtype=np.uint8)
        else:
            pixels[i] = np.stack([prep.pixels, *(p for _, p in prep.views)])
    node = np.full(n, this_node(), dtype=object)
    return {
        "path": batch["path"],
        "size": batch["size"],
        "mtime_ns": batch["mtime_ns"],
        "digest": digests,
        "known": known_flags,
        "reason": reasons,
        "detail": details,
        "width": widths,
        "height": heights,
        "taken": taken,
        "views": views,
        "pixels": pixels,
        "node": node,
    }


class EncodeFiles:
    """A copy of the model on one machine of the cluster, encoding batches of prepared files.

    It loads the model from its spec (the weights from this machine's cache, or shared storage),
    and checks it is the index's (``weights_sha256``) and that its preprocessing is the one the
    files were decoded with (``preview``, None: decoded with the model's own). A problem is not
    raised but reported in every row's ``problem`` column: the driver stops the run with it
    (Ray would otherwise retry the actor and bury the message in its logs).
    """

    def __init__(
        self,
        spec: ModelSpec,
        precision: str,
        weights_sha256: str,
        preview: ModelPreview | None,
        batch_size: int,
        device: str,
    ) -> None:
        if "torch" not in sys.modules:
            # torch's threads sleep while they wait (read when it loads), instead of spinning on
            # the cores that this node's decoding tasks need (see SyncOptions.encode_threads)
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from clipsearch.encoders.facts import ModelPreview

        self.node = this_node()
        self.batch_size = batch_size
        self.problem = ""
        self.encoder: Encoder | None = None
        self.threads: int | None = None if device != "cpu" else _node_cpus()
        if device == "cuda":
            self.problem = _gpu_problem()
            if self.problem:
                return
        try:
            from clipsearch.encoders.loading import load_spec
            from clipsearch.encoders.spec import parse_precision

            encoder = load_spec(spec, device=device, precision=parse_precision(precision), image_only=True)
        except ClipsearchError as exc:
            self.problem = f"the model {spec.label()} cannot be loaded there: {exc}"
            return
        if preview is not None and ModelPreview.of(encoder.facts) != preview:
            # first: a new index made from that preview records its weights' hash too
            self.problem = STALE_PREVIEW
        elif encoder.weights_sha256 != weights_sha256:
            self.problem = (
                f"its weights of {spec.label()} (sha256 {encoder.weights_sha256[:12]}) are not the "
                f"index's (sha256 {weights_sha256[:12]}); give every machine the same weights file"
            )
        self.encoder = encoder

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["path"])
        pixels = batch.pop("pixels")
        vectors = np.empty(n, dtype=object)
        batch["encoder_node"] = np.full(n, self.node, dtype=object)
        batch["problem"] = np.full(n, self.problem, dtype=object)
        if self.problem or self.encoder is None:
            for i in range(n):
                vectors[i] = np.zeros((0, 1), dtype=np.float32)
            batch["vectors"] = vectors
            return batch
        counts = [len(p) for p in pixels]
        stacked = [p for p in pixels if len(p)]
        dim = self.encoder.dim
        encoded = self._encode(np.concatenate(stacked)) if stacked else np.zeros((0, dim), np.float32)
        start = 0
        for i, k in enumerate(counts):
            vectors[i] = encoded[start : start + k]
            start += k
        batch["vectors"] = vectors
        return batch

    def _encode(self, pixels: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Vectors of prepared pixels, ``batch_size`` at a time (uint8 normalised here, as locally)."""
        assert self.encoder is not None
        out = []
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            if chunk.dtype == np.uint8:
                assert self.encoder.pixel_transform is not None  # the only source of uint8 pixels
                chunk = self.encoder.pixel_transform.normalize(chunk)
            out.append(self.encoder.encode_pixels(chunk, threads=self.threads))
        return np.concatenate(out)


def _gpu_problem() -> str:
    """Why this actor cannot encode on the GPU Ray gave it ("" when it can)."""
    import ray
    import torch

    if torch.cuda.is_available():
        return ""
    ids = ", ".join(str(i) for i in ray.get_gpu_ids()) or "none"
    return (
        f"Ray gave the model a GPU there (GPU ids: {ids}), but torch there finds no CUDA device "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): install a CUDA build "
        "of torch and the NVIDIA driver on that machine, or start its Ray node with no GPUs"
    )


def _node_cpus() -> int:
    """The CPUs Ray counts on this node (torch threads for the encoder; they sleep while they wait,
    so that decoding tasks keep the cores, as in the local engine)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            cpus = int(node.get("Resources", {}).get("CPU", 0))
            if cpus > 0:
                return min(cpus, os.cpu_count() or cpus)
    return os.cpu_count() or 1
