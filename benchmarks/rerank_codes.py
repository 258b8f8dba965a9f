"""What caps recall@10 of the approximate store at 1M-10M (issue #16): the codes candidates are
re-ranked with, and how deep the re-ranking must go.

    python benchmarks/rerank_codes.py                          # 1M vectors: about 10 minutes, 6 GB
    python benchmarks/rerank_codes.py --count 200000 --skip-pq # a quick look

The vectors and the 200 queries are ``benchmarks/scale.py``'s (:class:`scale.Clustered`, the same
seeds), held in memory as float32 (2 GB at 1M); the truth is the exact top 10 by float inner product.

Part 1, re-ranking codes: every vector is encoded, then each query's top 10 is taken by exhaustive
scoring of the decoded vectors (the best any candidate list could do with those codes):

- ``sq8``: 8 bits per dimension over each dimension's learnt range widened by 5% (the index's codes
  once settled; ``clipsearch.store.codes``), 512 bytes at 512-d;
- ``sq8 residual``: the same of each vector's residual to its k-means cell (``--nlist`` cells), 512 bytes;
- ``sq8 + 2-bit``: ``sq8`` plus 2 bits per dimension of what ``sq8`` rounded off, 640 bytes;
- clipsearch's own ``sq8`` codes and fine bits (:mod:`clipsearch.store.codes`), 640 bytes, and how deep
  in the order of the 8-bit codes alone the true top 10 lie (re-ranking takes the best 40 of that
  order and orders them with the fine bits);
- ``fp16``: 1,024 bytes.

Part 2, candidates (``--skip-pq`` leaves it out): FAISS IVF-PQ indexes (PQ64, PQ128, OPQ64 + PQ64)
over the same vectors; each query's top R by PQ score, re-ranked with the float vectors, at a few
``nprobe`` and R: how many candidates each code needs for a recall.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import QUERIES, Clustered

MARGIN = 0.05


def sq8(values: np.ndarray, bits: int = 8) -> np.ndarray:
    """Values rounded to ``bits`` bits per dimension over each dimension's range (+5% each side)."""
    low, high = values.min(axis=0), values.max(axis=0)
    span = (high - low) * (1 + 2 * MARGIN)
    low = low - MARGIN * (high - low)
    levels = (1 << bits) - 1
    return low + np.clip(np.round((values - low) / span * levels), 0, levels) / levels * span


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    parser.add_argument("--nlist", type=int, default=512, help="cells of the IVF indexes and residuals")
    parser.add_argument("--skip-pq", action="store_true", help="part 1 only")
    args = parser.parse_args()

    import faiss

    t0 = time.perf_counter()
    gen = Clustered(args.count)
    chunk = 50_000
    vectors = np.concatenate(
        [gen.chunk(i, min(chunk, args.count - i * chunk)) for i in range((args.count + chunk - 1) // chunk)]
    )
    queries = gen.chunk(0, QUERIES, stream=1)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    print(f"{args.count:,} vectors and their exact top 10 in {time.perf_counter() - t0:.0f} s", flush=True)

    def recall(found: np.ndarray) -> float:
        hits = [len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]
        return float(np.mean(hits))

    def exhaustive(decoded: np.ndarray) -> float:
        return recall(np.argsort(-(queries @ decoded.T), axis=1)[:, :10])

    print("\nre-ranking codes: recall@10 of an exhaustive search of the decoded vectors")
    rounded = sq8(vectors)
    print(f"  sq8            512 B   {exhaustive(rounded):.4f}", flush=True)
    from clipsearch.store import codes

    codec = codes.spanning(vectors.shape[1], vectors.min(axis=0), vectors.max(axis=0), len(vectors))
    stored = codec.encode(vectors)
    coarse = codec.decode(stored)
    fine = codec.decode_fine(stored, codec.refine(vectors, stored))
    print(f"  clipsearch sq8 + fine bits (10-bit)  640 B   {exhaustive(fine):.4f}", flush=True)
    coarse_scores = queries @ coarse.T
    order = np.argsort(-coarse_scores, axis=1)
    ranks = np.argsort(order, axis=1)  # each vector's place in its query's 8-bit order
    deepest = np.take_along_axis(ranks, truth, axis=1)
    print(
        f"  where the true top 10 lie in the 8-bit order: deepest {int(deepest.max()) + 1}, "
        f"below 40: {int((deepest >= 40).sum())} of {deepest.size}",
        flush=True,
    )
    for depth in (20, 40, 80):
        best = order[:, :depth]
        rescored = np.einsum("qd,qkd->qk", queries, fine[best])
        top = np.take_along_axis(best, np.argsort(-rescored, axis=1)[:, :10], axis=1)
        print(f"  8-bit top {depth}, ordered by the fine bits: recall@10 {recall(top):.4f}", flush=True)
    del coarse, fine, coarse_scores, order, ranks
    remainder = vectors - rounded
    low, high = remainder.min(axis=0), remainder.max(axis=0)
    refined = rounded + low + np.round((remainder - low) / (high - low) * 3) / 3 * (high - low)
    print(f"  sq8 + 2-bit    640 B   {exhaustive(refined):.4f}", flush=True)
    del remainder, refined
    half = vectors.astype(np.float16).astype(np.float32)
    print(f"  fp16          1024 B   {exhaustive(half):.4f}", flush=True)
    del half
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), 40 * args.nlist), replace=False)]
    kmeans = faiss.Kmeans(vectors.shape[1], args.nlist, niter=10, spherical=True, seed=1)
    kmeans.train(sample)
    _, cells = kmeans.index.search(vectors, 1)
    centres = kmeans.centroids[cells[:, 0]]
    print(f"  sq8 residual   512 B   {exhaustive(centres + sq8(vectors - centres)):.4f}", flush=True)
    del centres, rounded
    if args.skip_pq:
        return

    print("\ncandidates: recall@10 after re-ranking the top R of IVF-PQ with the float vectors")
    for spec in (f"IVF{args.nlist},PQ64", f"IVF{args.nlist},PQ128", f"OPQ64,IVF{args.nlist},PQ64"):
        t0 = time.perf_counter()
        index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(vectors)
        print(f"  {spec} (built in {time.perf_counter() - t0:.0f} s)", flush=True)
        ivf = faiss.extract_index_ivf(index)
        for nprobe in (16, 32):
            ivf.nprobe = nprobe
            cells_line = []
            for depth in (160, 320, 640, 1280):
                t0 = time.perf_counter()
                _, found = index.search(queries, depth)
                per_query = 1000 * (time.perf_counter() - t0) / len(queries)
                pairs = zip(found, queries, strict=True)
                best = [row[np.argsort(-(vectors[row] @ q))[:10]] for row, q in pairs]
                cells_line.append(f"R {depth}: {recall(np.array(best)):.4f} ({per_query:.2f} ms)")
            print(f"    nprobe {nprobe:>3}  " + "  ".join(cells_line), flush=True)
        del index


if __name__ == "__main__":
    main()
