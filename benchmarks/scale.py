"""Large collections: build an index of N synthetic photos through the import path, then measure it.

    python benchmarks/scale.py --count 100000 --keep /tmp/scale-100k --json
    python benchmarks/scale.py --count 1000000 --keep /data/scale-1m --baselines --noop-files --json
    python benchmarks/scale.py --count 10000000 --keep /data/scale-10m --serve-queries 1000 --json

``--keep DIR`` is a real index folder (``clipsearch search "a red car" --index DIR`` and ``clipsearch
info --index DIR`` open it). The build is resumable: each batch is committed like a sync's, and a
run with the same ``--keep`` and ``--count`` carries on from the last batch committed (or, once the
build is complete, only measures). Progress goes to stderr; the figures to stdout, the last line
one JSON object (with ``--json``).

The vectors (:class:`Clustered`): CLIP embeddings are neither isotropic nor evenly spread: they
share a common direction (the "cone": two unrelated photos score about 0.3-0.5), their variance is
concentrated in few directions, and they form topics of very different sizes. Each vector here is

    normalise(mean + centre[c] + 0.6 * noise)

with ``mean`` one fixed direction (length 0.8); ``c`` one of ``max(256, N // 1000)`` topics, drawn with
Zipf-like weights (topic r has weight 1 / (1 + r)^0.7); ``centre[c]`` and ``noise`` Gaussian with a
power-law spectrum (the j-th of 512 random orthogonal directions has standard deviation
proportional to j^-0.5; the noise keeps the 64 largest and spreads the rest evenly, so it costs 64
multiply-adds per dimension). Mean cosine between two vectors 0.33; a vector's nearest neighbour
0.89, its 10th 0.88 at 100k (so top-10 lists are crowded: a hard case for approximate search).
Chunk ``i`` comes from ``numpy.random.default_rng([seed, stream, i])``: the same for every run.

Files: vector ``i`` is ``ROOT/part-<i % 10>/<i // 10000>/<i>.jpg``; ``--in ROOT/part-3`` keeps 10%
of the index (the filtered recall). Queries: 200 more vectors of the same distribution (stream 1),
searched one at a time through ``Index.search_vectors`` (k = 10); exact answers are computed while
the vectors are generated (float32 brute force over all of them).

Memory: vectors are generated, imported and scored a batch at a time (``--batch``); nothing holds
all of them. Time on 2 cores shared with other jobs (load 6-13): 100k about 1 minute, 1M about 15
minutes, 10M 76 minutes, most of it the rewrite into ``ivfpq`` at the end (see the README's "Large
collections").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: FAISS's threads sleep while they wait

import numpy as np

ROOT_DIR = Path(__file__).resolve().parent.parent
DIM = 512
QUERIES = 200
FILTER_PART = 3
TEXTS = ("a red car", "a dog on a beach", "mountains at sunset", "a birthday cake", "a city at night")


class Clustered:
    """Synthetic clustered, anisotropic unit vectors (see the module docstring), a chunk at a time."""

    RANK = 64

    def __init__(self, count: int, dim: int = DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.seed, self.dim = seed, dim
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = (1.0 + np.arange(dim)) ** -0.5
        spectrum /= np.sqrt((spectrum**2).sum())
        mix = (basis * spectrum).astype(np.float32)
        self.top = np.ascontiguousarray(mix[:, : self.RANK].T)
        self.rest = float(np.sqrt((spectrum[self.RANK :] ** 2).sum() / dim))
        mean = rng.standard_normal(dim)
        self.mean = (0.8 * mean / np.linalg.norm(mean)).astype(np.float32)
        self.topics = max(256, count // 1000)
        self.centres = rng.standard_normal((self.topics, dim)).astype(np.float32) @ mix.T
        weights = 1.0 / (1 + np.arange(self.topics)) ** 0.7
        self.weights = weights / weights.sum()

    def chunk(self, index: int, size: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, index])
        topic = rng.choice(self.topics, size, p=self.weights)
        x = rng.standard_normal((size, self.RANK), dtype=np.float32) @ self.top
        x += rng.standard_normal((size, self.dim), dtype=np.float32) * self.rest
        x *= 0.6
        x += self.mean
        x += self.centres[topic]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def file_path(root: Path, i: int) -> str:
    return f"{root}/part-{i % 10}/{i // 10000:04d}/{i:08d}.jpg"


def row_of(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".")[0])


# -- exact answers, kept while the vectors are generated -----------------------------------------


class Truth:
    """Running exact top-10 of the queries, over every vector and over the filtered 10%."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        n = len(queries)
        self.all = (np.full((n, 0), -np.inf, np.float32), np.zeros((n, 0), np.int64))
        self.part = self.all
        self.rows = 0

    def add(self, start: int, vectors: np.ndarray) -> None:
        scores = self.queries @ vectors.T
        rows = np.arange(start, start + len(vectors))
        self.all = _keep(self.all, scores, rows)
        mask = rows % 10 == FILTER_PART
        self.part = _keep(self.part, scores[:, mask], rows[mask])
        self.rows = start + len(vectors)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            all_s=self.all[0],
            all_i=self.all[1],
            part_s=self.part[0],
            part_i=self.part[1],
            rows=self.rows,
        )
        os.replace(tmp, path)

    def load(self, path: Path) -> bool:
        if not path.is_file():
            return False
        data = np.load(path)
        self.all, self.part = (data["all_s"], data["all_i"]), (data["part_s"], data["part_i"])
        self.rows = int(data["rows"])
        return True


def _keep(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, rows: np.ndarray, k: int = 10):
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, labels = np.take_along_axis(scores, part, axis=1), rows[part]
    else:
        labels = np.broadcast_to(rows, scores.shape)
    s = np.concatenate([best[0], scores], axis=1)
    i = np.concatenate([best[1], labels], axis=1)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, axis=1), np.take_along_axis(i, top, axis=1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


# -- the build ------------------------------------------------------------------------------------


def model_env(cache: Path) -> dict[str, str]:
    """Environment for this run and its subprocesses: random ViT-B-32 weights in a kept HF cache."""
    hf = cache / "hf"
    if not (hf / ".complete").exists():
        say(f"writing random ViT-B-32 weights into {hf} (once) ...")
        sys.path.insert(0, str(ROOT_DIR / "benchmarks"))
        from _common import add_random_vit_b_32

        hf.mkdir(parents=True, exist_ok=True)
        add_random_vit_b_32(hf)
        (hf / ".complete").touch()
    return {"HF_HUB_CACHE": str(hf), "HF_HUB_OFFLINE": "1"}


def build(args: argparse.Namespace, index_dir: Path, files_root: Path, state: Path) -> dict[str, Any]:
    """Import ``args.count`` vectors (resuming after the last committed batch), then reorganise."""
    from clipsearch.api import Index
    from clipsearch.ingest.importer import ImportItem
    from clipsearch.ingest.scan import FileRecord

    gen = Clustered(args.count, seed=args.seed)
    truth = Truth(gen.chunk(0, QUERIES, stream=1))
    truth_file = state / "truth.npz"
    if not (index_dir / "catalog.sqlite").exists():  # made in another process: this one never loads the model
        make = (
            "import sys; from clipsearch.api import Index; from clipsearch.encoders.spec import ModelSpec; "
            "Index.open_for_write(sys.argv[1], spec=ModelSpec('ViT-B-32', 'laion2b_s34b_b79k'), "
            "coverage='none').close()"
        )
        subprocess.run([sys.executable, "-c", make, str(index_dir)], check=True)
    with Index.open_for_write(index_dir) as idx:
        done = idx.catalog.counts()["contents"]
        if done and not (truth.load(truth_file) and truth.rows == done):
            say(f"recomputing the exact answers for the {done:,} vectors imported before ...")
            truth = Truth(truth.queries)
            for start in range(0, done, args.batch):
                truth.add(start, gen.chunk(start // args.batch, min(args.batch, done - start)))
        idx.set_store(None, args.memory_budget)
        sha = idx.meta.weights_sha256
        started = time.monotonic()
        stamps: list[tuple[float, int]] = [(started, done)]
        spent = {"generate": 0.0, "generate_cpu": 0.0}  # the benchmark's own work, not the import's

        def batches():
            for start in range(done, args.count, args.batch):
                t0, c0 = time.perf_counter(), time.process_time()
                vectors = gen.chunk(start // args.batch, min(args.batch, args.count - start))
                truth.add(start, vectors)
                items = []
                for i, vector in enumerate(vectors, start):
                    path = file_path(files_root, i)
                    size, mtime = (
                        _stat(path) if args.noop_files else (1000 + i % 5000, 1_700_000_000_000_000_000 + i)
                    )
                    items.append(
                        ImportItem(
                            FileRecord(path, size, mtime), f"{args.seed:08x}{i:024x}", vector, 640, 480
                        )
                    )
                spent["generate"] += time.perf_counter() - t0
                spent["generate_cpu"] += time.process_time() - c0
                yield items
                t0, c0 = time.perf_counter(), time.process_time()
                truth.save(truth_file)
                spent["generate"] += time.perf_counter() - t0
                spent["generate_cpu"] += time.process_time() - c0
                now, rows = time.monotonic(), start + len(vectors)
                stamps.append((now, rows))
                rate = (rows - stamps[max(0, len(stamps) - 6)][1]) / max(
                    1e-9, now - stamps[max(0, len(stamps) - 6)][0]
                )
                left = (args.count - rows) / max(rate, 1e-9)
                say(f"  imported {rows:,} / {args.count:,} ({rate:,.0f}/s, {left / 60:.1f} min left)")

        if args.noop_files:
            make_files(files_root, done, args.count)
            stamps[0] = (time.monotonic(), done)  # the import's rate, not the files'
        say(f"importing {args.count - done:,} vectors in batches of {args.batch:,} into {index_dir} ...")
        t0, c0 = time.monotonic(), time.process_time()
        report = idx.import_vectors(batches(), weights_sha256=sha, roots=[files_root], progress=_Notes())
        import_s, import_cpu_s = time.monotonic() - t0, time.process_time() - c0
    return {
        "import_s": round(import_s, 1),
        "import_cpu_s": round(import_cpu_s, 1),
        "generate_s": round(spent["generate"], 1),
        "generate_cpu_s": round(spent["generate_cpu"], 1),
        "reorganized": report.reorganized,
        "truth": truth,
    }


class _Notes:
    """The import's progress: only its notes (the batches are reported by the generator)."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...

    def note(self, message: str) -> None:
        say("  " + message)


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def make_files(root: Path, start: int, stop: int) -> None:
    """Empty files for rows ``start:stop`` (a no-op re-index stats them; it never opens them)."""
    if start >= stop:
        return
    say(f"creating {stop - start:,} empty files under {root} (for the no-op re-index) ...")
    for i in range(start, stop):
        path = Path(file_path(root, i))
        if i < 10 or i % 10000 < 10:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


# -- measurements -----------------------------------------------------------------------------------


def measure_search(index_dir: Path, truth: Truth, files_root: Path) -> dict[str, Any]:
    from clipsearch.api import Index
    from clipsearch.query.filters import Filters

    with Index.open(index_dir) as idx:
        idx.search_vectors(truth.queries[0], 10)  # opens the files
        times, cpu, found = [], [], []
        for query in truth.queries:
            t0, c0 = time.perf_counter(), time.process_time()
            hits = idx.search_vectors(query, 10)[0]
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            found.append([row_of(h.path) for h in hits])
        where = Filters(folder=f"{files_root}/part-{FILTER_PART}")
        filtered, filtered_times = [], []
        for query in truth.queries:
            t0 = time.perf_counter()
            hits = idx.search_vectors(query, 10, filters=where)[0]
            filtered_times.append(time.perf_counter() - t0)
            filtered.append([row_of(h.path) for h in hits])
    return {
        "warm_ms_p50": round(1000 * float(np.median(times)), 2),
        "warm_ms_p99": round(1000 * float(np.percentile(times, 99)), 2),
        "warm_cpu_ms_p50": round(1000 * float(np.median(cpu)), 2),
        "recall_at_10": round(recall(found, truth.all[1]), 4),
        "filtered_ms_p50": round(1000 * float(np.median(filtered_times)), 2),
        "filtered_recall_at_10": round(recall(filtered, truth.part[1]), 4),
        "filtered_full": all(len(f) == 10 for f in filtered),
    }


def clipsearch(
    *args: str, env: dict[str, str], timeout: float = 3600
) -> tuple[float, subprocess.CompletedProcess]:
    exe = Path(sys.executable).with_name("clipsearch")
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, done


def measure_cold(index_dir: Path, env: dict[str, str]) -> tuple[float, float]:
    """Median wall and CPU time (user + system, all threads) of ``clipsearch search TEXT`` in a new
    process (page cache warm: a new process, not a cold disk); the first run is not counted."""
    sys.path.insert(0, str(ROOT_DIR / "benchmarks"))
    from _common import children_cpu

    seconds, cpus = [], []
    for text in TEXTS:
        cpu_before = children_cpu()
        elapsed, done = clipsearch("search", text, "--index", str(index_dir), env=env)
        cpu = children_cpu() - cpu_before
        if done.returncode != 0:
            raise RuntimeError(f"clipsearch search failed: {done.stderr}")
        seconds.append(elapsed)
        cpus.append(cpu)
    return round(statistics.median(seconds[1:]), 3), round(statistics.median(cpus[1:]), 3)


def measure_checkpoint(index_dir: Path, args: argparse.Namespace, files_root: Path) -> float:
    """Seconds to import (commit and checkpoint) 20,000 more vectors; they are forgotten after."""
    from clipsearch.api import Index
    from clipsearch.ingest.importer import ImportItem
    from clipsearch.ingest.scan import FileRecord

    extra = files_root.with_name(files_root.name + "-extra")
    vectors = Clustered(args.count, seed=args.seed).chunk(0, 20_000, stream=2)
    items = [
        ImportItem(FileRecord(f"{extra}/{i:08d}.jpg", 1, i), f"extra{args.seed:08x}{i:019x}", v, 640, 480)
        for i, v in enumerate(vectors)
    ]
    with Index.open_for_write(index_dir) as idx:
        t0 = time.perf_counter()
        idx.import_vectors([items], weights_sha256=idx.meta.weights_sha256, roots=[extra])
        seconds = time.perf_counter() - t0
        idx.forget(extra)
    return round(seconds, 2)


def measure_serve(index_dir: Path, env: dict[str, str], queries: int) -> float:
    """RSS (MB, process tree) of ``clipsearch serve`` after ``queries`` text searches."""
    sys.path.insert(0, str(ROOT_DIR / "benchmarks"))
    from _common import rss_bytes, tree

    exe = Path(sys.executable).with_name("clipsearch")
    log = index_dir.with_name(index_dir.name + ".bench") / "serve.log"
    with open(log, "w") as err:  # a file, not a pipe: a full pipe would stop the server
        proc = subprocess.Popen(
            [str(exe), "serve", "--index", str(index_dir), "--port", "0"], env=env, stderr=err
        )
    try:
        url = ""
        deadline = time.monotonic() + 600
        while not url and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for line in log.read_text().splitlines():
                if " at http://" in line:
                    url = line.split(" at ", 1)[1].split()[0]
        if not url:
            raise RuntimeError(f"clipsearch serve did not start: {log.read_text()}")
        for n in range(queries):
            text = urllib.request.quote(f"{TEXTS[n % len(TEXTS)]} {n}")
            with urllib.request.urlopen(f"{url}api/search?q={text}&k=10", timeout=600) as response:
                response.read()
        return round(sum(rss_bytes(pid) for pid in tree(proc.pid)) / 1e6, 1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def disk_split(index_dir: Path, count: int) -> dict[str, Any]:
    from clipsearch.store.folder import IndexFolder

    with IndexFolder.open(index_dir) as folder:
        info = folder.info()
    split = {key: round(value / count, 1) for key, value in info["bytes"].items()}
    return {
        "store": info["store"],
        "store_params": info["store_params"],
        "built_recall_at_10": info["recall_at_10"],
        "bytes_per_image": round(sum(info["bytes"].values()) / count, 1),
        "bytes_per_image_split": split,
    }


# -- baselines: today's exhaustive sq8, and a numpy brute force over SQLite rows (rclip) -------------


def baselines(index_dir: Path, args: argparse.Namespace, truth: Truth, work: Path) -> dict[str, Any]:
    import faiss

    from clipsearch.store.folder import IndexFolder

    out: dict[str, Any] = {}
    with IndexFolder.open(index_dir) as folder:
        segment = max(folder.store.segments, key=len)  # type: ignore[attr-defined]
        ids = np.asarray(segment.ids)
        codes_path = index_dir / f"{segment.name}.codes.faiss"
        content_rows = _rows_of_contents(folder)
    # sq8, as before segments: the whole file read at each cold start, every query against every vector
    t0 = time.perf_counter()
    sq8 = faiss.read_index(str(codes_path))
    load_s = time.perf_counter() - t0
    times, found = [], []
    for query in truth.queries[:50]:
        t0 = time.perf_counter()
        _, positions = sq8.search(query[None], 10)
        times.append(time.perf_counter() - t0)
        found.append([content_rows[int(i)] for i in ids[positions[0]]])
    out["sq8"] = {
        "warm_ms_p50": round(1000 * float(np.median(times)), 2),
        "warm_ms_p99": round(1000 * float(np.percentile(times, 99)), 2),
        "recall_at_10": round(recall(found, truth.all[1][:50]), 4),
        "load_s": round(load_s, 2),
        "bytes_per_image": round(codes_path.stat().st_size / len(ids) + 8, 1),
    }
    del sq8
    # rclip's design: float32 vectors as SQLite BLOBs, all read and scored by numpy for each query
    db = work / "rclip-like.sqlite"
    if not db.exists():
        say(f"writing {args.count:,} float32 rows into {db} (rclip's design) ...")
        tmp = db.with_name(db.name + ".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        conn.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT, vector BLOB)")
        gen = Clustered(args.count, seed=args.seed)
        for start in range(0, args.count, args.batch):
            x = gen.chunk(start // args.batch, min(args.batch, args.count - start))
            conn.executemany(
                "INSERT INTO images VALUES (?, ?, ?)",
                [(start + i, f"{start + i}", v.tobytes()) for i, v in enumerate(x)],
            )
            conn.commit()
        conn.close()
        os.replace(tmp, db)
    conn = sqlite3.connect(db)
    times, found = [], []
    for query in truth.queries[:5]:  # each query reads every row: a few are enough
        t0 = time.perf_counter()
        rows = conn.execute("SELECT id, vector FROM images").fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), DIM)
        best = np.argsort(-(matrix @ query))[:10]
        times.append(time.perf_counter() - t0)
        found.append([rows[int(i)][0] for i in best])
        del rows, matrix
    conn.close()
    out["numpy_sqlite"] = {
        "warm_ms_p50": round(1000 * float(np.median(times)), 1),
        "recall_at_10": round(recall(found, truth.all[1][:5]), 4),
        "bytes_per_image": round(db.stat().st_size / args.count, 1),
    }
    return out


def _rows_of_contents(folder: Any) -> dict[int, int]:
    rows = folder.catalog.conn.execute(
        "SELECT f.content_id, f.path FROM files f WHERE f.content_id IS NOT NULL"
    )
    return {int(cid): row_of(os.fsdecode(path)) for cid, path in rows}


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, required=True, help="vectors (photos) in the index")
    parser.add_argument("--keep", type=Path, required=True, help="the index folder (kept; a rerun resumes)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    parser.add_argument("--batch", type=int, default=50_000, help="vectors per import batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget", default="1G", help="as clipsearch index --memory-budget")
    parser.add_argument("--baselines", action="store_true", help="also exhaustive sq8 and numpy over SQLite")
    parser.add_argument(
        "--noop-files", action="store_true", help="create the files (empty) and time a no-op index"
    )
    parser.add_argument(
        "--serve-queries", type=int, default=0, help="RSS of clipsearch serve after N searches"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "clipsearch-bench", help="random model weights"
    )
    args = parser.parse_args()

    index_dir = args.keep.expanduser().absolute()
    state = index_dir.with_name(index_dir.name + ".bench")  # exact answers, files, baselines: beside
    state.mkdir(parents=True, exist_ok=True)
    stamp = state / "run.json"
    wanted = {"count": args.count, "seed": args.seed, "batch": args.batch, "noop_files": args.noop_files}
    if stamp.is_file() and json.loads(stamp.read_text()).get("build") != wanted:
        raise SystemExit(
            f"{index_dir} holds another benchmark build ({stamp}); give another --keep or delete both"
        )
    files_root = state / "photos"
    env = {**os.environ, **model_env(args.cache.expanduser())}
    os.environ.update(env)
    from clipsearch.store.maintain import parse_budget

    args.memory_budget = parse_budget(args.memory_budget)
    stamp.write_text(json.dumps({"build": wanted}))

    if args.baselines and args.count > 2_000_000:
        raise SystemExit("--baselines reads every vector per query: give a --count of 2,000,000 or less")
    t0 = time.monotonic()
    built = build(args, index_dir, files_root, state)
    truth: Truth = built.pop("truth")
    record = state / "build.json"
    if built["import_s"] > 1 or not record.is_file():  # this run built (some of) it
        previous = json.loads(record.read_text()) if record.is_file() else {}
        built["build_s"] = round(time.monotonic() - t0 + previous.get("build_s", 0.0), 1)
        built["peak_rss_mb"] = max(
            round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            previous.get("peak_rss_mb", 0.0),
        )
        for key in ("import_s", "import_cpu_s", "generate_s", "generate_cpu_s"):
            built[key] = round(built[key] + previous.get(key, 0.0), 1)
        record.write_text(json.dumps(built))
    else:  # complete already: measure only, with the figures of the run that built it
        built = json.loads(record.read_text())
    build_s, peak_rss_mb = built["build_s"], built["peak_rss_mb"]
    say(f"built in {build_s / 60:.1f} min (peak RSS {peak_rss_mb:,.0f} MB); exporting the text encoder ...")
    _, exported = clipsearch("index", "--index", str(index_dir), "--quiet", env=env)  # also a no-op re-index
    if exported.returncode != 0:
        raise RuntimeError(exported.stderr)

    figures: dict[str, Any] = {"count": args.count, **built}
    figures.update(disk_split(index_dir, args.count))
    say("searching ...")
    figures.update(measure_search(index_dir, truth, files_root))
    figures["cold_search_s"], figures["cold_search_cpu_s"] = measure_cold(index_dir, env)
    if args.baselines:
        say("baselines ...")
        figures["baselines"] = baselines(index_dir, args, truth, state)
    say("adding 20,000 vectors ...")
    figures["checkpoint_20k_s"] = measure_checkpoint(index_dir, args, files_root)
    if args.noop_files:
        seconds, done = clipsearch("index", "--index", str(index_dir), "--quiet", "--json", env=env)
        figures["noop_reindex_s"] = round(seconds, 2)
        figures["noop_reindex_unchanged"] = json.loads(done.stdout.splitlines()[-1]).get("unchanged")
    if args.serve_queries:
        say(f"serving {args.serve_queries:,} searches ...")
        figures["serve_rss_mb"] = measure_serve(index_dir, env, args.serve_queries)

    show(figures)
    if args.json:
        print(json.dumps(figures))


def show(f: dict[str, Any]) -> None:
    split = f["bytes_per_image_split"]
    lines = [
        f"count                     {f['count']:,}",
        f"store                     {f['store']} {f['store_params']}",
        f"warm query, k=10          p50 {f['warm_ms_p50']} ms, p99 {f['warm_ms_p99']} ms "
        f"(CPU p50 {f['warm_cpu_ms_p50']} ms)",
        f"recall@10 vs exact        {f['recall_at_10']} (filter keeping 10%: {f['filtered_recall_at_10']}, "
        f"{f['filtered_ms_p50']} ms p50)",
        f"cold clipsearch search    {f['cold_search_s']} s (CPU {f['cold_search_cpu_s']} s)",
        f"bytes per image on disk   {f['bytes_per_image']} (searched {split['search']}, codes kept for "
        f"re-rank/rebuild {split['codes']}, ids {split['ids']}, catalog {split['catalog']})",
        f"build from imported       {f['build_s']} s (import {f['import_s']} s, "
        f"CPU {f.get('import_cpu_s')} s; "
        f"of which the benchmark generating vectors and exact answers {f.get('generate_s')} s, "
        f"CPU {f.get('generate_cpu_s')} s), peak RSS {f['peak_rss_mb']} MB",
        f"adding 20k vectors        {f['checkpoint_20k_s']} s",
    ]
    if "noop_reindex_s" in f:
        lines.append(
            f"no-op re-index            {f['noop_reindex_s']} s ({f['noop_reindex_unchanged']:,} files)"
        )
    if "serve_rss_mb" in f:
        lines.append(f"clipsearch serve RSS      {f['serve_rss_mb']} MB")
    for name, b in f.get("baselines", {}).items():
        lines.append(
            f"baseline {name:16s} p50 {b['warm_ms_p50']} ms, recall@10 {b['recall_at_10']}, "
            f"{b['bytes_per_image']} bytes/image" + (f", load {b['load_s']} s" if "load_s" in b else "")
        )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
