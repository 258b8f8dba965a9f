"""The stored form of vectors: one row of codes per vector, in a FAISS file read through a memory map.

Every segment of an index keeps its vectors as codes: ``sq8`` (one byte per dimension, each
dimension's range learnt from the vectors), ``fp16`` (before there are enough vectors to learn
ranges) or ``fp32`` (the ``flat`` kind). They are what an exhaustive search compares a query with,
what an approximate search re-ranks its candidates with, and what a rebuild reads the vectors back
from. The file is ``faiss.write_index`` of an ``IndexScalarQuantizer`` (or ``IndexFlatIP``) whose
codes come last, so it is written a chunk at a time (no copy of all the codes in memory) and read
with ``IO_FLAG_MMAP_IFC`` (FAISS searches the mapped file without reading it whole).

Beside ``sq8`` codes, a *fine* file keeps 2 more bits per dimension of what the 8 bits rounded off
(10 bits per value in all; 128 bytes more per 512-d vector). An exhaustive search compares the
8-bit codes only; re-ranking reads the fine bits of its best few to order them as the float vectors
would: on crowded collections of 1-10 million vectors the 8-bit codes alone cap recall@10 near
0.96, with the fine bits near 0.99 (``benchmarks/rerank_codes.py``).
"""

from __future__ import annotations

import mmap
import os
import struct
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from clipsearch.files import fsync_path

Vectors = npt.NDArray[np.float32]
Codes = npt.NDArray[np.uint8]
#: Fine bits of ``sq8`` codes, packed four dimensions to a byte (None where a segment has none).
Fine = npt.NDArray[np.uint8]
#: A chunk of rows as written: their codes and, for ``sq8``, their fine bits.
Rows = tuple[Codes, "Fine | None"]

#: Steps each 8-bit step is cut into by the fine bits (2 bits).
FINE_STEPS = 4

#: Vectors needed before ``sq8`` ranges are learnt (fewer are stored as ``fp16``).
TRAIN_MIN = 64
#: Each learnt range is widened by this share of its span on both sides: wide while the ranges come
#: from few vectors (later ones often pass them), narrow once they come from many (the extremes of
#: 10,000 vectors move little with more: 3.9 standard deviations, 5.3 at 10 million). A narrower
#: range is a finer step: on crowded collections, recall@10 of an exhaustive search against float
#: vectors goes from 0.957 (25%) to 0.974 (5%) (benchmarks/scale.py's vectors, 100,000).
RANGE_MARGIN = 0.25
SETTLED_MARGIN = 0.05
SETTLED_COUNT = 10_000
#: Rows decoded at a time when codes are streamed (re-encoding, exact search over a segment).
CHUNK = 32768
#: Up to this many rows, ``CodesFile.rows`` reads each with ``pread`` instead of through the map:
#: re-ranking reads a few thousand scattered rows per query, and every page a map touches stays
#: counted in the process's memory (each with the pages the kernel maps around a fault), so after
#: 1,000 queries a server over 10 million vectors held 5 GB of a codes file it had barely used.
PREAD_ROWS = 8192


@dataclass(frozen=True)
class Codec:
    """How vectors become codes: ``sq8`` (with ``ranges``: minimums, then spans), ``fp16`` or ``fp32``."""

    kind: str
    dim: int
    ranges: tuple[float, ...] | None = None

    @property
    def code_size(self) -> int:
        return {"sq8": 1, "fp16": 2, "fp32": 4}[self.kind] * self.dim

    def index(self) -> object:
        """An empty FAISS index of this codec (inner product)."""
        import faiss

        if self.kind == "fp32":
            return faiss.IndexFlatIP(self.dim)
        qtype = faiss.ScalarQuantizer.QT_8bit if self.kind == "sq8" else faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexScalarQuantizer(self.dim, qtype, faiss.METRIC_INNER_PRODUCT)
        if self.ranges is not None:
            faiss.copy_array_to_vector(np.asarray(self.ranges, dtype=np.float32), index.sq.trained)
        index.is_trained = True
        return index

    def encode(self, vectors: Vectors) -> Codes:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if not len(vectors):
            return np.zeros((0, self.code_size), np.uint8)
        return self.index().sa_encode(vectors)  # type: ignore[attr-defined,no-any-return]

    def decode(self, codes: Codes) -> Vectors:
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.code_size)
        if not len(codes):
            return np.zeros((0, self.dim), np.float32)
        return self.index().sa_decode(codes)  # type: ignore[attr-defined,no-any-return]

    @property
    def refines(self) -> bool:
        """Whether this codec's codes have fine bits (``sq8`` only)."""
        return self.kind == "sq8"

    @property
    def fine_size(self) -> int:
        """Bytes of fine bits per vector (four dimensions to a byte)."""
        return -(-self.dim // 4)

    def refine(self, vectors: Vectors, codes: Codes) -> Fine:
        """The fine bits of ``vectors`` whose ``sq8`` codes are ``codes``: which quarter of its 8-bit
        step each value lies in (FAISS's 8-bit code is ``floor(255 t)`` of the value's place ``t``
        in its range, decoded as the middle of the step)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        low, high = self._bounds()
        span = np.where(high > low, high - low, np.float32(1.0))  # (a dimension that never varied)
        place = (vectors - low) / span * 255.0 - codes
        quarters = np.clip(np.floor(place * FINE_STEPS), 0, FINE_STEPS - 1).astype(np.uint8)
        return _pack(quarters, self.fine_size)

    def decode_fine(self, codes: Codes, fine: Fine | None) -> Vectors:
        """Vectors from ``sq8`` codes and their fine bits (the codes alone when ``fine`` is None)."""
        if fine is None or not self.refines:
            return self.decode(codes)
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.code_size)
        quarters = _unpack(fine, self.dim)
        low, high = self._bounds()
        steps = codes + (quarters + np.float32(0.5)) / np.float32(FINE_STEPS)
        return (low + (high - low) * (steps / np.float32(255.0))).astype(np.float32)

    def fits(self, vectors: Vectors) -> bool:
        """Whether every value lies inside this codec's ranges (always, for fp16 and fp32)."""
        if self.kind != "sq8" or not len(vectors):
            return True
        low, high = self._bounds()
        return bool((vectors.min(axis=0) >= low).all() and (vectors.max(axis=0) <= high).all())

    def _bounds(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        ranges = np.asarray(self.ranges, dtype=np.float32)
        return ranges[: self.dim], ranges[: self.dim] + ranges[self.dim :]


def _pack(quarters: npt.NDArray[np.uint8], size: int) -> Fine:
    """2-bit values (rows of ``dim``) packed four to a byte, the first in the low bits."""
    n, dim = quarters.shape
    padded = np.zeros((n, size * 4), np.uint8)
    padded[:, :dim] = quarters
    q = padded.reshape(n, size, 4)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).astype(np.uint8)


def _unpack(fine: Fine, dim: int) -> npt.NDArray[np.uint8]:
    fine = np.asarray(fine, dtype=np.uint8)
    shifts = np.array([0, 2, 4, 6], np.uint8)
    return ((fine[:, :, None] >> shifts) & 3).reshape(len(fine), -1)[:, :dim]


def learn(kind: str, dim: int, vectors: Vectors) -> Codec:
    """A codec for ``vectors``: ``sq8`` ranges learnt from them (``fp16`` while there are too few)."""
    if kind != "sq8":
        return Codec(kind, dim)
    if len(vectors) < TRAIN_MIN:
        return Codec("fp16", dim)
    return spanning(dim, vectors.min(axis=0), vectors.max(axis=0), len(vectors))


def spanning(dim: int, low: Vectors, high: Vectors, count: int) -> Codec:
    """The sq8 codec for values between ``low`` and ``high`` (per dimension) seen over ``count``
    vectors, with the margin that count calls for."""
    margin = (SETTLED_MARGIN if count >= SETTLED_COUNT else RANGE_MARGIN) * (high - low)
    return _ranged(dim, low - margin, high + margin)


def fit(codec: Codec, vectors: Vectors) -> Codec:
    """``codec`` if ``vectors`` fit it, else its ranges widened (by the margin) where they do not."""
    if codec.fits(vectors):
        return codec
    low, high = codec._bounds()
    small, large = vectors.min(axis=0), vectors.max(axis=0)
    new_low, new_high = np.minimum(low, small), np.maximum(high, large)
    margin = RANGE_MARGIN * (new_high - new_low)
    return _ranged(
        codec.dim,
        np.where(small < low, new_low - margin, low),
        np.where(large > high, new_high + margin, high),
    )


def union(codecs: list[Codec]) -> Codec | None:
    """The codec whose ranges hold every ``sq8`` codec given (None if none of them is sq8)."""
    ranged = [c for c in codecs if c.kind == "sq8"]
    if not ranged:
        return None
    if all(c == ranged[0] for c in ranged):
        return ranged[0]
    bounds = [c._bounds() for c in ranged]
    return _ranged(
        ranged[0].dim, np.min([b[0] for b in bounds], axis=0), np.max([b[1] for b in bounds], axis=0)
    )


def _ranged(dim: int, low: npt.NDArray[np.float32], high: npt.NDArray[np.float32]) -> Codec:
    ranges = np.concatenate([low, high - low]).astype(np.float32)
    return Codec("sq8", dim, tuple(float(v) for v in ranges))


def codec_of(index: object) -> Codec:
    """The codec of a FAISS codes index read from a file."""
    import faiss

    dim = int(index.d)  # type: ignore[attr-defined]
    if isinstance(index, faiss.IndexFlat):
        return Codec("fp32", dim)
    sq = index.sq  # type: ignore[attr-defined]
    if sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        return Codec("fp16", dim)
    return Codec("sq8", dim, tuple(float(v) for v in faiss.vector_to_array(sq.trained)))


# -- files ------------------------------------------------------------------------------------


def write_codes(
    path: Path, codec: Codec, chunks: Iterable[Rows], count: int, fine_path: Path | None = None
) -> None:
    """Write ``count`` rows of codes, given in chunks, as a FAISS index file: temp name, fsync, rename;
    with ``fine_path``, their fine bits too (every chunk must carry them), as a ``.npy`` file.

    The FAISS header of an empty index of the codec is written with the final row count, then the
    codes as they come: memory holds one chunk at a time.
    """
    import faiss

    header = bytearray(faiss.serialize_index(codec.index()).tobytes())
    if struct.unpack("<Q", header[-8:])[0] != 0:  # the empty codes vector ends the file
        raise RuntimeError("unexpected FAISS file layout")
    header[8:16] = struct.pack("<q", count)  # after the fourcc and the dimension: ntotal
    length = count * codec.dim if codec.kind == "fp32" else count * codec.code_size  # floats for IndexFlat
    tmp = path.with_name(path.name + ".tmp")
    fine_tmp = None if fine_path is None else fine_path.with_name(fine_path.name + ".tmp")
    written = 0
    try:
        with open(tmp, "wb") as out, open(fine_tmp or os.devnull, "wb") as fine_out:
            out.write(bytes(header[:-8]) + struct.pack("<Q", length))
            if fine_tmp is not None:
                np.lib.format.write_array_header_1_0(
                    fine_out, {"descr": "|u1", "fortran_order": False, "shape": (count, codec.fine_size)}
                )
            for chunk, fine in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.uint8).reshape(-1, codec.code_size)
                out.write(memoryview(chunk).cast("B"))  # no copy
                if fine_tmp is not None:
                    if fine is None:
                        raise ValueError(f"rows without fine bits for {fine_path}")
                    fine = np.ascontiguousarray(fine, dtype=np.uint8).reshape(len(chunk), codec.fine_size)
                    fine_out.write(memoryview(fine).cast("B"))
                written += len(chunk)
        if written != count:
            raise RuntimeError(f"{written} rows of codes written to {path}, {count} announced")
        fsync_path(tmp)
        if fine_tmp is not None and fine_path is not None:
            fsync_path(fine_tmp)
            os.replace(fine_tmp, fine_path)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a stop: no half-written file left (a kill leaves the sweep's)
        tmp.unlink(missing_ok=True)
        if fine_tmp is not None:
            fine_tmp.unlink(missing_ok=True)
        raise


class _Mapped:
    """Rows of a file, memory-mapped and read one by one with ``pread`` when few are wanted."""

    def __init__(self, path: Path, offset: int | None, count: int, size: int) -> None:
        self.path, self.count, self.size = path, count, size
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        if hasattr(mmap, "MADV_RANDOM"):  # re-ranking reads scattered rows: no read-ahead around each
            self._map.madvise(mmap.MADV_RANDOM)
        self.offset = len(self._map) - count * size if offset is None else offset
        if self.offset < 0 or self.offset + count * size > len(self._map):
            raise ValueError(f"{path} is shorter than {count} rows of {size} bytes")
        self.array: Codes = np.frombuffer(self._map, np.uint8, count * size, self.offset).reshape(count, size)

    def let_go(self, first: int, last: int) -> None:
        if not hasattr(mmap, "MADV_DONTNEED") or last < first:
            return
        start = (self.offset + first * self.size) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = self.offset + (last + 1) * self.size
        if stop > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def read(self, positions: npt.NDArray[np.int64]) -> Codes:
        if not len(positions):
            return self.array[positions]
        if len(positions) > PREAD_ROWS or not hasattr(os, "preadv"):  # many (or Windows): through the map
            out = self.array[positions]
            low, high = int(positions.min()), int(positions.max())
            if low >= 0 and high < self.count:  # (negative rows count from the end: left mapped)
                self.let_go(low, high)  # the pages touched would stay counted in the process
            return out
        outside = positions[(positions < -self.count) | (positions >= self.count)]
        if len(outside):
            raise IndexError(f"row {outside[0]} of {self.count} in {self.path}")
        size = self.size
        out = np.empty((len(positions), size), np.uint8)
        view = memoryview(out).cast("B")
        for i, row in enumerate((positions % self.count).tolist()):  # count > 0: every row is in range
            got = os.preadv(self._fd, [view[i * size : (i + 1) * size]], self.offset + row * size)
            if got != size:
                raise OSError(f"short read of row {row} in {self.path}: {got} of {size} bytes")
        return out


class CodesFile:
    """A codes file (and its fine bits, if any) opened read-only through a memory map: searched by
    FAISS, rows read by numpy."""

    def __init__(self, path: Path, fine_path: Path | None = None) -> None:
        """Open ``path``, and ``fine_path`` if it is given and exists (an index written before fine
        bits has none: its rows are the 8-bit codes alone)."""
        import faiss

        try:
            self.index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        except RuntimeError as exc:
            if not path.exists():
                raise FileNotFoundError(path) from exc
            raise
        self.path = path
        self.codec = codec_of(self.index)
        self.count = int(self.index.ntotal)
        self._codes = _Mapped(path, None, self.count, self.codec.code_size)
        self.codes: Codes = self._codes.array
        self._fine: _Mapped | None = None
        if fine_path is not None and self.codec.refines and fine_path.exists():
            fine = np.load(fine_path, mmap_mode="r")
            if fine.shape != (self.count, self.codec.fine_size) or fine.dtype != np.uint8:
                raise ValueError(f"{fine_path}: {fine.shape} fine bits for {self.count} rows of {path}")
            self._fine = _Mapped(fine_path, int(fine.offset), self.count, self.codec.fine_size)

    @property
    def refined(self) -> bool:
        """Whether the rows have fine bits."""
        return self._fine is not None

    def let_go(self, first: int, last: int) -> None:
        """Drop this process's pages of rows ``first..last`` (they stay in the page cache): a pass
        over every row of a large segment would otherwise count them all in its memory."""
        self._codes.let_go(first, last)
        if self._fine is not None:
            self._fine.let_go(first, last)

    def mapped(self, positions: npt.NDArray[np.int64]) -> Rows:
        """The codes and fine bits (None without) at ``positions``, through the map (a pass over many
        rows: :meth:`let_go` of them after)."""
        return self.codes[positions], (self._fine.array[positions] if self._fine is not None else None)

    def rows(self, positions: npt.NDArray[np.int64], *, fine: bool = True) -> Vectors:
        """The stored vectors at ``positions`` (decoded, with their fine bits unless ``fine`` is
        False); a few are read with ``pread`` (``PREAD_ROWS``)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        bits = self._fine.read(positions) if fine and self._fine is not None else None
        return self.codec.decode_fine(self._codes.read(positions), bits)

    def chunks(self, positions: npt.NDArray[np.int64] | None = None) -> Iterable[tuple[int, Vectors]]:
        """(start, vectors) of every row (or of ``positions``), ``CHUNK`` rows at a time."""
        total = self.count if positions is None else len(positions)
        for start in range(0, total, CHUNK):
            if positions is None:
                part = slice(start, start + CHUNK)
                first, last = start, min(total, start + CHUNK) - 1
            else:
                part = positions[start : start + CHUNK]  # type: ignore[assignment]
                first, last = int(part.min()), int(part.max())  # type: ignore[attr-defined]
            vectors = self.codec.decode_fine(*self.mapped(part))  # type: ignore[arg-type]
            self.let_go(first, last)
            yield start, vectors
