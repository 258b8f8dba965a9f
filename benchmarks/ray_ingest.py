"""Indexing on Ray against the local engine, a two-node cluster losing a node, and the driver's
commit rate (issue 17). Prints the issue's targets:

- ``clipsearch index --ray local`` (a Ray of every core, started for the run) against the plain
  local engine on the same photos: Ray's overhead as a share of its wall time (target <= 25%);
- a two-node cluster on this machine (``ray start --head --num-cpus 1`` and ``ray start --address
  ... --num-cpus 1``): files read and encoded per node, then the same run with the second node
  SIGKILLed mid-run (its raylet's process group): every file indexed exactly once;
- the driver's commit rate (vectors/s through the Ray engine's commit code) and, with the per-core
  throughput measured above, the node count at which the driver becomes the bottleneck.

    python benchmarks/ray_ingest.py                                   # 192 12-MP JPEGs, ViT-B-32, 3 rounds
    python benchmarks/ray_ingest.py --photos 8 --repeat 1 --model tiny      # a quick look (busy machine)
    python benchmarks/ray_ingest.py --skip-cluster --json | jq .

Every run is a fresh process from start to exit, on random weights (speed does not depend on the
weights) in a Hugging Face cache made here (HF_HUB_OFFLINE=1), at ``--precision`` (default auto:
bf16 where the CPU has it). The model's preview and text export are made once before timing, as
for a user's second run. On a machine with GPUs, ``--ray local`` gives each model copy one GPU
(``num_gpus=1`` actors): the same command measures it. Every Ray started here lives in the work
folder's ``ray`` folder and is stopped by process group, never with ``ray stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, Measured, add_random_vit_b_32, ensure_photos, run_measured

sys.path.insert(0, str(ROOT / "tests"))
from raycluster import Cluster, committed, ray_env

MODELS = {"vit-b-32": ("ViT-B-32", "laion2b_s34b_b79k"), "tiny": ("hf-hub:clipsearch-test/tiny-clip", None)}


def log(message: str) -> None:
    print(f"[ray_ingest] {message}", file=sys.stderr, flush=True)


def check(run: Measured, what: str) -> dict[str, Any]:
    if run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"{what} failed (exit {run.returncode}):\n{tail}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def index_command(photos: Path, index: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    exe = Path(sys.executable).with_name("clipsearch")
    name, pretrained = MODELS[args.model]
    model = ["--model", name, *(["--pretrained", pretrained] if pretrained else [])]
    return [str(exe), "index", str(photos), "--index", str(index), *model, "--precision", args.precision,
            "--quiet", "--json", *extra]  # fmt: skip


def environment(work: Path, args: argparse.Namespace) -> dict[str, str]:
    hf = work / "hf"
    if not (hf / ".ready").exists():
        from hfcache import add_tiny_model

        log("writing random model weights into a Hugging Face cache ...")
        add_random_vit_b_32(hf) if args.model == "vit-b-32" else add_tiny_model(hf)
        (hf / ".ready").write_text("")
    ray_tmp = work / "ray"
    ray_tmp.mkdir(exist_ok=True)
    return ray_env(
        ray_tmp,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        HF_HUB_CACHE=str(hf),
        HF_HUB_OFFLINE="1",
        CLIPSEARCH_CACHE=str(work / "clipsearch-cache"),
    )


# -- local engine against a local Ray ----------------------------------------------------------


def compare_local(photos: Path, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    warm = work / "warm-index"
    check(run_measured(index_command(photos, warm, args), env=env), "warm-up")  # preview, text export
    shutil.rmtree(warm, ignore_errors=True)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    reports: dict[str, dict[str, Any]] = {}
    for round_ in range(args.repeat):
        for engine, extra in (("local", ()), ("ray", ("--ray", "local"))):
            index = work / f"index-{engine}"
            shutil.rmtree(index, ignore_errors=True)
            run = run_measured(index_command(photos, index, args, *extra), env=env)
            reports[engine] = check(run, f"{engine} round {round_ + 1}")
            times[engine].append(run.seconds)
            log(f"round {round_ + 1}: {engine} {run.seconds:.1f} s ({reports[engine]['added']} added)")
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    images = reports["local"]["added"] + reports["local"]["reused"]
    return {
        "images": images,
        "local_s": local,
        "ray_s": ray,
        "local_img_s": images / local,
        "ray_img_s": images / ray,
        "ray_overhead": (ray - local) / ray,
        "rounds_s": times,
        "ray_nodes": reports["ray"]["nodes"],
    }


# -- a two-node cluster on this machine ---------------------------------------------------------


def exactly_once(index: Path, photos: Path) -> bool:
    """Every photo has one row with a content, and the vector set holds each content's vectors once."""
    with sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT path, content_id FROM files").fetchall()
        contents = {r[0] for r in conn.execute("SELECT id FROM contents")}
    paths = sorted(os.fsdecode(bytes(r[0]) if isinstance(r[0], bytes) else r[0]) for r in rows)
    expected = sorted(str(p) for p in photos.iterdir())
    return paths == expected and all(r[1] is not None for r in rows) and {r[1] for r in rows} == contents


def two_nodes(photos: Path, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kill in (False, True):
        cluster = Cluster(Path(env["RAY_TMPDIR"]), env)
        try:
            cluster.start("head", head=True)
            cluster.start("second")
            index = work / f"index-cluster-{'kill' if kill else 'whole'}"
            shutil.rmtree(index, ignore_errors=True)
            command = index_command(photos, index, args, "--ray", "auto")
            started = time.perf_counter()
            proc = subprocess.Popen(command, env=dict(env, RAY_ADDRESS=cluster.address),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            killed_at = None
            if kill:
                total = sum(1 for _ in photos.iterdir())
                while proc.poll() is None and committed(index) < total // 3:
                    time.sleep(0.1)
                if proc.poll() is None:
                    cluster.kill("second")
                    killed_at = committed(index)
            stdout, stderr = proc.communicate()
            seconds = time.perf_counter() - started
            report = check(Measured(seconds, 0, proc.returncode, stdout, stderr), "cluster run")
            out["killed" if kill else "whole"] = {
                "seconds": seconds,
                "nodes": report["nodes"],
                "files_per_s_per_node": {n: c["read"] / seconds for n, c in report["nodes"].items()},
                "killed_after_files": killed_at,
                "exactly_once": exactly_once(index, photos),
            }
            log(f"two nodes{' (one killed)' if kill else ''}: {seconds:.1f} s, {report['nodes']}")
        finally:
            cluster.stop()
    return out


# -- the driver's commit rate ----------------------------------------------------------------


def commit_rate(work: Path, dim: int, count: int, batch: int) -> float:
    """Vectors/s through the Ray engine's commit code (result rows -> import_batch -> SQLite), with
    a checkpoint at the end: what the driver does for every batch that comes back."""
    sys.path.insert(0, str(ROOT))
    from clipsearch.encoders.encoder import l2_normalize
    from clipsearch.ingest.ray_engine import RayOptions, _Commits
    from clipsearch.ingest.sync import SyncOptions, SyncReport, Work
    from clipsearch.store.catalog import IndexMeta, RootSettings
    from clipsearch.store.folder import IndexFolder

    path = work / "commit-rate"
    shutil.rmtree(path, ignore_errors=True)
    meta = IndexMeta("bench", "", "0" * 64, dim, "sq8", coverage="none")
    folder = IndexFolder.open_for_write(path, lambda: meta)
    root = "/bench/photos"
    with folder.catalog.transaction():
        folder.catalog.set_root(root, RootSettings())
    options = SyncOptions(batch_size=batch, export_text=False)
    work = Work(folder, None, [], options, None, (), SyncReport(str(path)))  # type: ignore[arg-type]
    commits = _Commits(work, RayOptions(commit_vectors=batch, commit_seconds=float("inf")))
    rng = np.random.default_rng(0)
    vectors = l2_normalize(rng.standard_normal((count, dim)).astype(np.float32))
    started = time.perf_counter()
    for start in range(0, count, batch):
        n = min(batch, count - start)
        rows = np.arange(start, start + n)
        column = np.empty(n, dtype=object)
        for i, row in enumerate(rows):
            column[i] = vectors[row : row + 1]
        text = np.full(n, "", dtype=object)
        commits.take(
            {
                "path": np.array([f"{root}/p{r:08d}.jpg".encode() for r in rows], dtype=object),
                "size": rows + 1000,
                "mtime_ns": rows + 10**18,
                "digest": np.array([f"{r:032x}" for r in rows], dtype=object),
                "known": np.zeros(n, bool),
                "reason": text,
                "detail": text,
                "width": np.full(n, 4000),
                "height": np.full(n, 3000),
                "taken": np.full(n, np.nan),
                "views": text,
                "vectors": column,
            }
        )
    commits.flush()
    folder.checkpoint()
    seconds = time.perf_counter() - started
    folder.close()
    shutil.rmtree(path, ignore_errors=True)
    return count / seconds


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=192, help="JPEGs to index (default 192)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="their size, 4:3 (default 12)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of local vs Ray (median)")
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b-32", help="random weights of it")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto (default)")
    parser.add_argument("--skip-cluster", action="store_true", help="leave out the two-node cluster runs")
    parser.add_argument("--commit-vectors", type=int, default=20_000, help="vectors in the commit-rate run")
    parser.add_argument(
        "--node-cores", type=int, default=16, help="cores of the nodes in the scaling estimate"
    )
    parser.add_argument(
        "--work", type=Path, help="work folder to keep (photos are reused); default: a temp one"
    )
    parser.add_argument("--json", action="store_true", help="the results as one JSON object on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="ray-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    width = round((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    size = (width, round(width * 3 / 4))
    photos = work / "photos"
    try:
        ensure_photos(photos, args.photos, size, seed=0)
        env = environment(work, args)
        results: dict[str, Any] = {
            "photos": args.photos,
            "size": size,
            "model": args.model,
            "cores": os.cpu_count(),
        }
        results["local_vs_ray"] = compare_local(photos, work, env, args)
        if not args.skip_cluster:
            results["two_nodes"] = two_nodes(photos, work, env, args)
        dim = 512 if args.model == "vit-b-32" else 32
        results["commit_vectors_s"] = {b: commit_rate(work, dim, args.commit_vectors, b) for b in (32, 512)}
        report(results, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results))
        return
    cmp = results["local_vs_ray"]
    w, h = results["size"]
    print(f"{cmp['images']} photos of {w}x{h}, model {results['model']}, {results['cores']} cores, "
          f"{args.repeat} interleaved round(s), median wall time from process start to exit:")  # fmt: skip
    print(f"  local engine       {cmp['local_s']:7.1f} s  {cmp['local_img_s']:6.1f} img/s")
    print(f"  --ray local        {cmp['ray_s']:7.1f} s  {cmp['ray_img_s']:6.1f} img/s")
    verdict = "meets" if cmp["ray_overhead"] <= 0.25 else "misses"
    share = cmp["ray_overhead"] * 100
    print(f"  Ray's overhead     {share:6.1f}% of its wall time ({verdict} the <= 25% target)")
    if "two_nodes" in results:
        for key, what in (("whole", "two nodes"), ("killed", "two nodes, the second killed mid-run")):
            run = results["two_nodes"][key]
            nodes = ", ".join(f"{n} read {c['read']} encoded {c['encoded']}" for n, c in run["nodes"].items())
            extra = f", killed after {run['killed_after_files']} files" if key == "killed" else ""
            print(f"  {what}: {run['seconds']:.1f} s{extra}; {nodes}; "
                  f"every file exactly once: {run['exactly_once']}")  # fmt: skip
    rates = results["commit_vectors_s"]
    rate = rates[32]
    per_core = cmp["local_img_s"] / max(1, results["cores"])  # a node at full speed, as the local engine
    node = per_core * args.node_cores
    print(f"  driver commit rate {rate:7.0f} vectors/s in transactions of 32 vectors (a local run's "
          f"--batch-size), {rates[512]:.0f} in transactions of 512 (Ray's commit_vectors)")  # fmt: skip
    cores, nodes = args.node_cores, cmp["ray_nodes"].values()
    per_photo = sum(n["encoded"] for n in nodes) / max(1, sum(n["read"] for n in nodes))
    small, large = rate / per_photo / node, rates[512] / per_photo / node
    print(f"  scaling on paper: {per_core:.1f} img/s per core here -> a {cores}-core node ~{node:.0f} img/s "
          f"({per_photo:.2f} vectors a photo with side views); the driver becomes the bottleneck at "
          f"~{large:.0f} such nodes (~{small:.0f} if it committed every 32 vectors)")  # fmt: skip
    print("  past that node count: sharded commits. Each node's actors write their vectors as parquet "
          "shards (path, hash, vectors) on the shared file system, and the driver imports whole shards "
          "through the import path (Index.import_vectors: bulk rows, a segment per shard) instead of "
          "committing result batches one by one; or several indexes, one per folder.")  # fmt: skip


if __name__ == "__main__":
    main()
