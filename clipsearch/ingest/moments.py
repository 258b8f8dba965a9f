"""A video's sampled frames -> moments: runs of consecutive frames whose embeddings stay close.

Pure numpy, fed in time order as the frames are encoded, so a video of any length holds only its
moments so far (at most ``max_moments`` vectors) and the moment being grown.

The rule: a frame joins the current moment while its cosine similarity to the moment's mean
direction (the normalised sum of its frames' vectors) is at least ``threshold``; else it starts the
next moment, which begins at that frame's time. Comparing with the mean, not the previous frame, keeps
a slow pan from drifting into one endless moment. A moment's vector is that mean direction. Past
``max_moments``, the two adjacent moments whose vectors are the most alike are merged, so a very long
or very fast-cut video keeps covering all its length with its most distinct moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: A frame joins the moment it follows while their cosine similarity is at least this (CLIP ViT-B-32:
#: frames of one shot score 0.9-0.99 to each other, frames of different shots mostly 0.5-0.85).
MOMENT_SIMILARITY = 0.9
#: Most moments a video keeps (see the module's docstring).
MAX_MOMENTS = 1000


@dataclass
class Moment:
    """A time span of a video and the sum of the vectors of its sampled frames."""

    start: float
    end: float
    total: npt.NDArray[np.float64]
    frames: int = 1

    @property
    def vector(self) -> npt.NDArray[np.float32]:
        """The moment's unit vector: the mean direction of its frames."""
        norm = float(np.linalg.norm(self.total))
        return (self.total / norm if norm > 0 else self.total).astype(np.float32)


class MomentMerger:
    """Grows moments from frames given in time order; :meth:`finish` returns them."""

    def __init__(self, *, threshold: float = MOMENT_SIMILARITY, max_moments: int = MAX_MOMENTS) -> None:
        if max_moments < 1:
            raise ValueError("a video keeps at least one moment")
        self.threshold = threshold
        self.max_moments = max_moments
        self.closed: list[Moment] = []
        self.current: Moment | None = None

    def add(self, time: float, vector: npt.NDArray[np.float32]) -> None:
        """One sampled frame (a unit vector) at ``time`` seconds, later than every frame before."""
        vector = np.asarray(vector, dtype=np.float64)
        current = self.current
        if current is not None and float(vector @ current.vector) >= self.threshold:
            current.total += vector
            current.frames += 1
            current.end = time
            return
        if current is not None:
            current.end = time
            self._close(current)
        self.current = Moment(time, time, vector.copy())

    def finish(self, end: float | None) -> list[Moment]:
        """The moments, in time order; the last one ends at ``end`` (the end of the video's last frame)."""
        if self.current is not None:
            self.current.end = max(self.current.end, end if end is not None else self.current.end)
            self._close(self.current)
            self.current = None
        return self.closed

    def _close(self, moment: Moment) -> None:
        self.closed.append(moment)
        while len(self.closed) > self.max_moments:
            self._merge_closest()

    def _merge_closest(self) -> None:
        vectors = np.stack([m.vector for m in self.closed])
        i = int(np.argmax(np.einsum("ij,ij->i", vectors[:-1], vectors[1:])))
        first, second = self.closed[i], self.closed.pop(i + 1)
        first.total = first.total + second.total
        first.frames += second.frames
        first.end = second.end


def representative(moments: list[Moment]) -> int:
    """The moment closest to the whole video's mean direction (weighted by duration): the video's
    main vector, which duplicates and "more like this" of the file compare."""
    vectors = np.stack([m.vector for m in moments]).astype(np.float64)
    weights = np.array([max(m.end - m.start, 1e-3) for m in moments])
    return int(np.argmax(vectors @ (weights @ vectors)))
