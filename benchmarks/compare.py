"""Index and query speed side by side: a naive open_clip loop, rclip and clipsearch (issue #7).

    python benchmarks/compare.py                        # 64 12-MP + 200 small JPEGs, about 5 min on 2 cores
    python benchmarks/compare.py --large 4 --small 8 --queries 2     # a quick look
    python benchmarks/compare.py --large 256 --small 0 --repeat 3    # 12-MP ratios, median of 3 rounds
    python benchmarks/compare.py --json | jq .

The photos are made here: scikit-image's sample photos, cropped, flipped, colour-shifted and
upscaled, with a little grain so the JPEGs are about as large as a camera's. Every engine runs
offline on random weights (speed does not depend on the weights) and is timed as a user runs it,
a fresh process from start to exit:

- naive: open_clip ViT-B-32, PIL open + convert RGB + the model's own preprocess, fp32, batch 32,
  torch threads = cores, one file after another; it runs as ``compare.py --naive-worker``.
- rclip 4.0.8 (the current release, 2026-10): ``pip install rclip==4.0.8`` into its own venv, made
  with a Python >= 3.12 (rclip 4 needs it; found on PATH or among pyenv's versions, or
  ``--rclip-python``). It decodes JPEGs reduced with ``draft`` and runs ONNX Runtime fp32; its ONNX
  files are exported here from open_clip ViT-B-32-256 (the architecture rclip ships, 256 px input)
  the way rclip's scripts/convert_model.py does, and put in its data dir (RCLIP_DATADIR) with the
  tokenizer vocabulary and the four licence files it also wants. rclip has no index-only command: it
  indexes the current folder, then answers the query, so its index and no-op re-index times include
  one query.
- clipsearch: ``clipsearch index FOLDER --index DIR --model ViT-B-32 --pretrained laion2b_s34b_b79k``
  with random weights in a Hugging Face cache (tests/hfcache.py), HF_HUB_OFFLINE=1.

Peak RSS is the peak of the summed RSS of the process and all its children (sampled every 50 ms).
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, Measured, add_random_vit_b_32, ensure_photos, jpeg_files, run_measured, tree_bytes
from _rclip import (
    RCLIP_IMAGE_SIZE,
    RCLIP_MODEL,
    RCLIP_PACKAGE,
    RclipUnavailable,
    ensure_rclip,
    export_rclip_model,
    rclip_datadir,
    rclip_db_stats,
)
from PIL import Image

QUERY = "a cat"
NAIVE_MODEL, NAIVE_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- naive loop


def naive_worker(folder: Path, out: Path, batch_size: int) -> None:
    """The loop most people would write first; runs in its own process so it is timed from start."""
    import open_clip
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model, _, preprocess = open_clip.create_model_and_transforms(NAIVE_MODEL, pretrained=NAIVE_PRETRAINED)
    model.eval()
    paths = jpeg_files(folder)
    features = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = [preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]]
            encoded = model.encode_image(torch.stack(batch))
            features.append(torch.nn.functional.normalize(encoded, dim=-1).numpy())
    np.save(out, np.concatenate(features))
    print(json.dumps({"images": len(paths)}))


def bench_naive(photos: Path, work: Path, env: dict[str, str], batch_size: int) -> dict[str, Any]:
    out = work / "naive.npy"
    run = run_measured(
        [sys.executable, __file__, "--naive-worker", str(photos), str(out), "--batch-size", str(batch_size)],
        env=env,
    )
    check(run, "naive loop")
    images = json.loads(run.stdout.splitlines()[-1])["images"]
    return {"images": images, **throughput(images, run)}


# ---------------------------------------------------------------- the two-core limit and fidelity


def limit_worker(
    folder: Path, out: Path, precision: str, sample: int, shapes: int, coverage: str = "sides"
) -> None:
    """(Own process, torch threads on every core.) The CPU one image costs in each stage of
    clipsearch's pipeline, measured alone: reading + hashing + decoding + resize/crop, and the side
    views' crops with ``coverage`` ``sides`` (thread CPU time, as one worker spends it), and
    normalising + encoding a batch of 32 crops (process CPU time of all threads, per vector) times
    the vectors per image (3 for a 4:3 photo with side views). The cores over their sum is the most
    images/s the machine can index.
    Then the fidelity of the default decode path against decoding every pixel (fp32): cosine on
    ``sample`` photos of this set (ViT-B-32) and, when ``shapes`` > 0, cosine and top-10 on that many
    shapes-world JPEGs with the trained shapes model (see benchmarks/decode_scale.py)."""
    import time

    import torch

    from clipsearch.encoders.facts import DEFAULT_DECODE_SCALE, draft_side
    from clipsearch.encoders.images import open_image
    from clipsearch.encoders.loading import load_encoder
    from clipsearch.encoders.spec import resolve_precision
    from clipsearch.ingest.decode import file_digest

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    files = jpeg_files(folder)[:sample]
    encoder = load_encoder(NAIVE_MODEL, NAIVE_PRETRAINED, precision=precision)
    transform = encoder.pixel_transform
    assert transform is not None
    side = draft_side(encoder, DEFAULT_DECODE_SCALE)
    decode: list[float] = []
    crops = []
    vectors = 0
    for path in files:
        started = time.thread_time()
        data = path.read_bytes()
        file_digest(data)
        image = open_image(data, min_side=side)
        crops.append(transform.resize_crop(image))
        views = transform.side_views(image) if coverage == "sides" else []
        decode.append(time.thread_time() - started)
        vectors += 1 + len(views)
    batch = np.stack((crops * (32 // len(crops) + 1))[:32])
    encoder.encode_pixels(transform.normalize(batch))  # warm
    rounds = 3
    started = time.process_time()
    for _ in range(rounds):
        encoder.encode_pixels(transform.normalize(batch))
    encode = (time.process_time() - started) / (rounds * len(batch))
    decode_s = statistics.median(decode)
    result: dict[str, Any] = {
        "cores": cores,
        "precision": resolve_precision(precision),
        "decode_scale": DEFAULT_DECODE_SCALE,
        "coverage": coverage,
        "vectors_per_image": vectors / len(files),
        "decode_cpu_ms": 1000 * decode_s,
        "encode_cpu_ms_per_vector": 1000 * encode,
        "encode_cpu_ms": 1000 * encode * vectors / len(files),
        "limit_img_per_s": cores / (decode_s + encode * vectors / len(files)),
    }
    fp32 = encoder if encoder.precision == "fp32" else load_encoder(NAIVE_MODEL, NAIVE_PRETRAINED)
    fast = fp32.encode_pixels(transform.normalize(np.stack(crops)))
    full = fp32.encode_pixels(
        transform.normalize(
            np.stack([transform.resize_crop(open_image(p, max_pixels=200_000_000)) for p in files])
        )
    )
    result["vit_cosine_min"] = float(np.sum(fast * full, axis=1).min())
    if shapes > 0:
        import tempfile

        from decode_scale import compare, decode_all, shapes_jpegs

        from clipsearch.shapes.evaluate import color_shape_queries, position_queries

        with tempfile.TemporaryDirectory(prefix="clipsearch-fidelity-") as tmp:
            paths, scenes = shapes_jpegs(Path(tmp), shapes, 0)
            model = load_encoder("shapes")
            queries = {**color_shape_queries(), **position_queries()}
            relevant = [np.array([s.matches(**a) for s in scenes]) for a in queries.values()]
            decoded = decode_all(paths, model.pixel_transform, model.image_size)
            row = compare(model, decoded, text_queries=list(queries), relevant=relevant)[
                f"{DEFAULT_DECODE_SCALE:g}x"
            ]
        result["shapes"] = {
            "images": len(paths),
            "cosine_min": row["cosine_min"],
            "same_top10": row["top10_same"],
            "same_hits": row["same_hits"],
            "queries": row["top10_queries"],
        }
    out.write_text(json.dumps(result))


def bench_limit(
    photos: Path, work: Path, env: dict[str, str], args: argparse.Namespace, shapes: int
) -> dict[str, Any]:
    out = work / "limit.json"
    command = [
        sys.executable,
        __file__,
        "--limit-worker",
        str(photos),
        str(out),
        "--precision",
        args.precision,
    ]
    command += ["--limit-sample", str(args.limit_sample), "--fidelity-shapes", str(shapes)]
    command += ["--coverage", args.coverage]
    run = run_measured(command, env={**env, "OMP_WAIT_POLICY": "PASSIVE"})
    check(run, "two-core limit probe")
    result = json.loads(out.read_text())
    result["fixed_cpu_s"] = fixed_cpu(work, env, args.precision, next(iter(jpeg_files(photos))))
    return result


def fixed_cpu(work: Path, env: dict[str, str], precision: str, photo: Path) -> float:
    """CPU seconds (all processes) of ``clipsearch index`` making a new index of one photo: what every
    run spends besides its images (imports, model load, commit)."""
    folder, index = work / "fixed-photo", work / "fixed-index"
    shutil.rmtree(index, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, folder / photo.name)
    model = ["--model", NAIVE_MODEL, "--pretrained", NAIVE_PRETRAINED, "--precision", precision]
    command = [clipsearch_exe(), "index", str(folder), "--index", str(index), *model, "--quiet"]
    run = run_measured(command, env=env)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(index, ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(f"clipsearch index of one photo failed: {run.stderr.strip()[-400:]}")
    return run.cpu_seconds


# ---------------------------------------------------------------- rclip


def bench_rclip(
    exe: Path, photos: Path, datadir: Path, models: Path, env: dict[str, str], queries: int
) -> dict[str, Any]:
    rclip_datadir(datadir, models)
    env = {**env, "RCLIP_DATADIR": str(datadir)}
    command = [str(exe), "--filepath-only", "--top", "10", QUERY]
    index = run_measured(command, env=env, cwd=photos)
    check(index, "rclip (index + query)")
    images, size = rclip_db_stats(datadir)
    noop = run_measured(command, env=env, cwd=photos)
    check(noop, "rclip (no-op re-index + query)")
    cold = [
        run_measured([str(exe), "--no-indexing", *command[1:]], env=env, cwd=photos) for _ in range(queries)
    ]
    for run in cold:
        check(run, "rclip --no-indexing (query)")
    return {
        "images": images,
        **throughput(images, index),
        "cold_query_s": statistics.median(r.seconds for r in cold),
        "index_bytes": size,
        "index_bytes_per_image": size / max(images, 1),
        "noop_reindex_s": noop.seconds,
    }


# ---------------------------------------------------------------- clipsearch


def clipsearch_exe() -> str:
    beside = Path(sys.executable).parent / "clipsearch"
    found = str(beside) if beside.is_file() else shutil.which("clipsearch")
    if found is None:
        sys.exit("clipsearch is not installed in this Python environment: run `pip install -e .` first.")
    return found


def warm_clipsearch(env: dict[str, str], work: Path, precision: str) -> None:
    """One-time set-up, like exporting rclip's model: clipsearch's first index run on a machine exports
    the model's text encoder to ONNX and keeps the model's preview (input size, preprocessing) that
    lets later runs decode while torch imports; both in CLIPSEARCH_CACHE, shared by every index."""
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "warm.jpg")
    model = ["--model", NAIVE_MODEL, "--pretrained", NAIVE_PRETRAINED, "--precision", precision]
    command = [clipsearch_exe(), "index", str(photos), "--index", str(work / "index"), *model, "--quiet"]
    run = run_measured(command, env=env)
    check(run, "clipsearch warm-up")
    log(f"clipsearch set-up (text encoder export, once per model and machine): {run.seconds:.1f}s")
    shutil.rmtree(work, ignore_errors=True)


def bench_clipsearch(
    photos: Path,
    index: Path,
    env: dict[str, str],
    queries: int,
    precision: str,
    coverage: str | None = "sides",
) -> dict[str, Any]:
    """One clipsearch engine's figures; ``coverage`` None: the tree's own default (an older tree, a
    ``--baseline``, may not know the option)."""
    exe = clipsearch_exe()
    shutil.rmtree(index, ignore_errors=True)
    model = ["--model", NAIVE_MODEL, "--pretrained", NAIVE_PRETRAINED, "--precision", precision]
    model += ["--coverage", coverage] if coverage is not None else []
    command = [exe, "index", str(photos), "--index", str(index), *model, "--quiet", "--json"]
    first = run_measured(command, env=env)
    check(first, "clipsearch index")
    report = json.loads(first.stdout.splitlines()[-1])
    noop = run_measured(command, env=env)
    check(noop, "clipsearch index (no-op)")
    search = [exe, "search", QUERY, "--index", str(index), "--top", "10", "--json", "--precision", precision]
    cold = [run_measured(search, env=env) for _ in range(queries)]
    for run in cold:
        check(run, "clipsearch search")
    images = int(report["added"])
    # the catalog and vectors are top-level files; a subfolder holds a per-index model cache (a fixed cost)
    size = sum(f.stat().st_size for f in index.iterdir() if f.is_file())
    extra = tree_bytes(index) - size
    return {
        "images": images,
        "skipped": int(report["skipped"]),
        **throughput(images, first),
        "sync_only_s": float(report["seconds"]),
        "cold_query_s": statistics.median(r.seconds for r in cold),
        "index_bytes": size,
        "index_bytes_per_image": size / max(images, 1),
        "index_folder_extra_bytes": extra,
        "noop_reindex_s": noop.seconds,
        "noop_unchanged": int(json.loads(noop.stdout.splitlines()[-1])["unchanged"]),
    }


# ---------------------------------------------------------------- running and reporting


def check(run: Measured, what: str) -> None:
    if run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{what} failed (exit {run.returncode}):\n{tail}")


def throughput(images: int, run: Measured) -> dict[str, float]:
    return {
        "index_s": run.seconds,
        "img_per_s": images / run.seconds,
        "peak_rss_mib": run.peak_rss / 2**20,
    }


def attempt(name: str, bench: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one engine's benchmark; a failure is reported and recorded, and the others still run."""
    log(f"  {name} ...")
    try:
        return bench()
    except (RclipUnavailable, RuntimeError, OSError, sqlite3.Error, ValueError, KeyError) as error:
        log(f"  {name} failed, left out: {error}")
        return {"error": str(error)}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's figures over the rounds: median index time (and throughput from it), highest
    peak RSS, the rest from the last round; every round's index time is kept."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    result = dict(runs[-1])
    times = [r["index_s"] for r in runs]
    result["index_s"] = statistics.median(times)
    result["img_per_s"] = result["images"] / result["index_s"]
    result["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    result["index_s_runs"] = times
    return result


def ratio(results: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    x, y = results.get(a, {}).get("img_per_s"), results.get(b, {}).get("img_per_s")
    return x / y if x and y else None


ROWS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("images indexed", "images", lambda v: f"{v:.0f}"),
    ("index, process start to end (s)", "index_s", lambda v: f"{v:.1f}"),
    ("index throughput (img/s)", "img_per_s", lambda v: f"{v:.2f}"),
    ("peak RSS while indexing (MiB)", "peak_rss_mib", lambda v: f"{v:.0f}"),
    ("cold text query, median (s)", "cold_query_s", lambda v: f"{v:.2f}"),
    ("index data on disk (KB/image)", "index_bytes_per_image", lambda v: f"{v / 1024:.2f}"),
    ("+ model files in index (MB)", "index_folder_extra_bytes", lambda v: f"{v / 1e6:.0f}"),
    ("no-op re-index (s)", "noop_reindex_s", lambda v: f"{v:.2f}"),
)
ENGINES = ("naive", "rclip", "clipsearch", "baseline")


def cell(result: dict[str, Any] | None, key: str, fmt: Callable[[float], str]) -> str:
    if result is None:
        return "skipped"
    if "error" in result:
        return "failed"
    return "-" if result.get(key) is None else fmt(result[key])


def print_table(record: dict[str, Any]) -> None:
    engines = record["engines"]
    print(f"\n{record['title']}: {record['count']} images, mean {record['mean_file_mb']:.2f} MB per file")
    shown = [e for e in ENGINES if e != "baseline" or e in engines]
    print(f"{'':34}" + "".join(f"{e:>12}" for e in shown))
    for label, key, fmt in ROWS:
        print(f"{label:34}" + "".join(f"{cell(engines.get(e), key, fmt):>12}" for e in shown))
    for name, value in record["ratios"].items():
        print(f"throughput {name}: {'-' if value is None else f'{value:.2f}x'}")
    if any(len(engines[e].get("index_s_runs", [])) > 1 for e in engines):
        rounds = "; ".join(
            f"{e} {', '.join(f'{t:.1f}' for t in engines[e]['index_s_runs'])}"
            for e in ENGINES
            if engines.get(e, {}).get("index_s_runs")
        )
        print(f"index times per round (s), median in the table: {rounds}")
    print_targets(record)


#: Issue #20's targets: clipsearch/rclip 4.0.8 throughput per size class, share of the two-core limit,
#: fidelity of the default decode path, peak RSS.
RCLIP_TARGET = {"12mp": 2.5, "small": 3.0}
LIMIT_TARGET, COSINE_TARGET, RSS_TARGET_GB = 0.90, 0.995, 1.2


def print_targets(record: dict[str, Any]) -> None:
    """The issue's target rows for this size class: measured, and the target beside."""
    mine = record["engines"].get("clipsearch", {})
    print("targets (issue #20):")
    vs_rclip = record["ratios"].get("clipsearch/rclip")
    got = "-" if vs_rclip is None else f"{vs_rclip:.2f}x"
    print(f"  throughput vs rclip 4.0.8: {got} (target >= {RCLIP_TARGET[record['class']]:g}x)")
    limit = record.get("limit")
    if limit and mine.get("img_per_s"):
        share = mine["img_per_s"] / limit["limit_img_per_s"]
        sync_share = (
            mine["images"] / mine["sync_only_s"] / limit["limit_img_per_s"]
            if mine.get("sync_only_s")
            else None
        )
        fixed = limit.get("fixed_cpu_s", 0.0)
        per_image = (limit["decode_cpu_ms"] + limit["encode_cpu_ms"]) / 1000
        with_fixed = mine["images"] / ((mine["images"] * per_image + fixed) / limit["cores"])
        print(
            f"  vs the {limit['cores']}-core limit: {mine['img_per_s']:.1f} of "
            f"{limit['limit_img_per_s']:.1f} img/s = "
            f"{share:.0%} from process start (target >= {LIMIT_TARGET:.0%}); "
            + (f"{sync_share:.0%} of the sync alone; " if sync_share else "")
            + f"limit from {limit['decode_cpu_ms']:.1f} ms decode (read, hash, decode at "
            f">= {limit['decode_scale']:g}x, resize) + {limit['encode_cpu_ms']:.1f} ms encode "
            f"({limit['precision']}, {limit['vectors_per_image']:.2f} vectors of "
            f"{limit['encode_cpu_ms_per_vector']:.1f} ms: coverage {limit['coverage']}) CPU per image"
        )
        print(
            f"  with a run's fixed CPU ({fixed:.1f} s: imports, model load, commit; measured indexing one "
            f"photo) the most for {mine['images']} images is {with_fixed:.1f} img/s: "
            f"{mine['img_per_s'] / with_fixed:.0%} of it"
        )
        shapes = limit.get("shapes")
        fidelity = (
            "  fidelity of the default path vs full decode, fp32: cosine min "
            f"{limit['vit_cosine_min']:.4f} (ViT-B-32)"
        )
        if shapes:
            fidelity += (
                f", {shapes['cosine_min']:.4f} (shapes model, {shapes['images']} shapes JPEGs); same top-10 "
                f"{shapes['same_top10']}/{shapes['queries']}, as many right answers in it "
                f"{shapes['same_hits']}/{shapes['queries']}"
            )
        print(fidelity + f" (target: cosine >= {COSINE_TARGET}, same top-10)")
    if mine.get("peak_rss_mib"):
        gb = mine["peak_rss_mib"] * 2**20 / 1e9
        print(f"  peak RSS while indexing: {gb:.2f} GB (target <= {RSS_TARGET_GB} GB)")


def print_footer(info: dict[str, Any]) -> None:
    baseline = info.get("baseline_rev")
    print(
        f"\nclipsearch {info['clipsearch_rev']}, {info['rclip_version'] or 'rclip not run'}; "
        + (f"baseline: clipsearch {baseline} (its own source tree, same venv); " if baseline else "")
        + f"{info['cpus']} CPUs ({info['cpu']}), load average {info['load_avg_1m_start']:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end. Precision: naive fp32, rclip ONNX fp32 ({RCLIP_MODEL}, "
        f"{RCLIP_IMAGE_SIZE} px), clipsearch {info['clipsearch_precision']}. "
        "rclip's index and no-op re-index times include one query (it has no index-only command)."
    )


def size_classes(args: argparse.Namespace) -> list[tuple[str, str, int, tuple[int, int]]]:
    small = tuple(int(v) for v in args.small_size.lower().split("x"))
    return [
        ("12mp", "12-MP JPEG (4000x3000)", args.large, (4000, 3000)),
        ("small", f"small JPEG ({small[0]}x{small[1]})", args.small, (small[0], small[1])),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipsearch-bench"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--large", type=int, default=64, metavar="N", help="12-MP JPEGs to index (default 64)"
    )
    parser.add_argument(
        "--small", type=int, default=200, metavar="N", help="small JPEGs to index (default 200)"
    )
    parser.add_argument(
        "--small-size",
        default="1024x768",
        metavar="WxH",
        help="size of the small JPEGs, at most 1 MP (default 1024x768)",
    )
    parser.add_argument(
        "--queries", type=int, default=5, metavar="N", help="cold text queries to time (median)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="index each folder N times per engine, in interleaved rounds; the table shows the median",
    )
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive open_clip loop")
    parser.add_argument("--skip-rclip", action="store_true", help="leave out rclip")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="clipsearch --precision (default auto)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="batch size of the naive loop (default 32)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="folder for photos, indexes and rclip data (default: a new temp folder)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work folder; with --workdir its photos are reused next run",
    )
    parser.add_argument(
        "--cache", type=Path, default=cache, help=f"folder for set-up reused across runs ({cache})"
    )
    parser.add_argument(
        "--rclip-venv",
        type=Path,
        help="venv for rclip, made if missing, refused if it holds another rclip "
        "(default: CACHE/rclip-venv, made, or remade when it holds another rclip)",
    )
    parser.add_argument(
        "--rclip-package",
        default=RCLIP_PACKAGE,
        help=f"pip requirement for rclip (default: {RCLIP_PACKAGE})",
    )
    parser.add_argument(
        "--rclip-python",
        metavar="PYTHON",
        help="interpreter for rclip's venv (default: a Python >= 3.12 on PATH or in pyenv)",
    )
    parser.add_argument(
        "--hf-cache",
        type=Path,
        help="Hugging Face cache with random ViT-B-32 laion2b_s34b_b79k weights (default: CACHE/hf, made)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run the clipsearch source tree at TREE (e.g. a git worktree of an older commit) as the "
        "engine 'baseline', in the same venv and interleaved rounds: a before/after figure in one run",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo generator")
    parser.add_argument(
        "--limit-sample",
        type=int,
        default=24,
        metavar="N",
        help="photos of each set whose decode and encode CPU give the two-core limit, and whose "
        "default-path vectors are compared with full decoding (default 24)",
    )
    parser.add_argument(
        "--fidelity-shapes",
        type=int,
        default=200,
        metavar="N",
        help="shapes-world JPEGs for the fidelity row's top-10 check, once per run (0: leave it out)",
    )
    parser.add_argument("--skip-limit", action="store_true", help="leave out the limit and fidelity rows")
    parser.add_argument(
        "--coverage",
        default="sides",
        choices=("sides", "none"),
        help="clipsearch --coverage (default sides, the index default for ViT-B-32: a 4:3 photo gets 3 "
        "vectors, its centre crop and two side views; rclip and naive make 1)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per size class on stdout")
    parser.add_argument(
        "--limit-worker",
        nargs=2,
        type=Path,
        metavar=("FOLDER", "OUT"),
        help="(internal) measure the two-core limit and fidelity on FOLDER's JPEGs into OUT.json, and exit",
    )
    parser.add_argument(
        "--naive-worker",
        nargs=2,
        type=Path,
        metavar=("FOLDER", "OUT"),
        help="(internal) run the naive loop over FOLDER's JPEGs, save the vectors to OUT.npy, and exit",
    )
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown CPU",
    )
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": cpu, "load_avg_1m_start": os.getloadavg()[0]}


def output_of(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.naive_worker:
        naive_worker(*args.naive_worker, batch_size=args.batch_size)
        return
    if args.limit_worker:
        limit_worker(
            *args.limit_worker, args.precision, args.limit_sample, args.fidelity_shapes, args.coverage
        )
        return

    from clipsearch.encoders.spec import resolve_precision

    info = {**machine(), "clipsearch_precision": resolve_precision(args.precision)}
    hf_cache = args.hf_cache or args.cache / "hf"
    if not any(hf_cache.glob("models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/*/*.safetensors")):
        log(f"writing random ViT-B-32 weights to {hf_cache} ...")
        add_random_vit_b_32(hf_cache)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hf_cache),
        "HF_HUB_OFFLINE": "1",
        "CLIPSEARCH_CACHE": str(args.cache / "clipsearch"),
    }
    warm_clipsearch(env, args.cache / "clipsearch-warmup", args.precision)
    baseline_env: dict[str, str] | None = None
    if args.baseline is not None:
        if not (args.baseline / "clipsearch" / "__init__.py").is_file():
            sys.exit(f"--baseline {args.baseline}: not a clipsearch source tree (no clipsearch/__init__.py).")
        # the console script imports whichever clipsearch comes first on the path; its own model cache,
        # since an older revision may keep other files there
        baseline_env = {
            **env,
            "PYTHONPATH": str(args.baseline.resolve()),
            "CLIPSEARCH_CACHE": str(args.cache / "clipsearch-baseline"),
        }
        warm_clipsearch(baseline_env, args.cache / "clipsearch-warmup-baseline", args.precision)
        info["baseline_rev"] = output_of(["git", "-C", str(args.baseline), "describe", "--always", "--dirty"])

    rclip_exe: Path | None = None
    rclip_models = args.cache / "rclip-model"
    rclip_error = "left out (--skip-rclip)"
    if not args.skip_rclip:
        try:
            venv = args.rclip_venv or args.cache / "rclip-venv"
            rclip_exe = ensure_rclip(
                venv, args.rclip_package, args.rclip_python, replace=args.rclip_venv is None
            )
            export_rclip_model(rclip_models)
        except (RclipUnavailable, RuntimeError, OSError, ImportError) as error:
            rclip_error = f"rclip is unavailable: {error}"
            log(f"rclip left out: {error}")

    info["clipsearch_rev"] = output_of(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    info["rclip_version"] = output_of([str(rclip_exe), "--version"]) if rclip_exe else None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clipsearch-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    made = [work] if args.workdir is None else []  # in a given --workdir, remove only what this run made
    fidelity_done = False
    try:
        for key, title, count, size in size_classes(args):
            if count <= 0:
                continue
            photos = work / f"photos-{key}"
            made += [photos, photos.with_name(photos.name + ".json"), work / f"rclip-data-{key}"]
            made += [work / f"index-{key}", work / "naive.npy", work / "limit.json"]
            ensure_photos(photos, count, size, args.seed)
            files = jpeg_files(photos)
            log(f"{title}: {len(files)} images")
            benches: dict[str, Callable[[], dict[str, Any]]] = {}
            if not args.skip_naive:
                benches["naive"] = partial(bench_naive, photos, work, env, args.batch_size)
            if rclip_exe is not None:
                datadir = work / f"rclip-data-{key}"
                benches["rclip"] = partial(
                    bench_rclip, rclip_exe, photos, datadir, rclip_models, env, args.queries
                )
            index = work / f"index-{key}"
            benches["clipsearch"] = partial(
                bench_clipsearch, photos, index, env, args.queries, args.precision, args.coverage
            )
            if baseline_env is not None:
                benches["baseline"] = partial(
                    bench_clipsearch,
                    photos,
                    work / f"index-{key}-baseline",
                    baseline_env,
                    args.queries,
                    args.precision,
                    None,  # the baseline tree's own default coverage
                )
                made.append(work / f"index-{key}-baseline")
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in benches}
            for round_ in range(args.repeat):  # rounds interleave the engines: drift hits all alike
                if args.repeat > 1:
                    log(f"  round {round_ + 1} of {args.repeat}")
                for name, bench in benches.items():
                    runs[name].append(attempt(name, bench))
            engines = {name: combine(results) for name, results in runs.items()}
            limit = None
            if not args.skip_limit:
                log("  two-core limit and fidelity ...")
                shapes = args.fidelity_shapes if not fidelity_done else 0  # the shapes check: once a run
                try:
                    limit = bench_limit(photos, work, env, args, shapes)
                    fidelity_done = fidelity_done or shapes > 0
                except (RuntimeError, OSError, ValueError) as error:
                    log(f"  limit probe failed, left out: {error}")
            if rclip_exe is None and not args.skip_rclip:
                engines["rclip"] = {"error": rclip_error}
            record = {
                "class": key,
                "title": title,
                "count": len(files),
                "mean_file_mb": sum(p.stat().st_size for p in files) / len(files) / 1e6,
                **info,
                "load_avg_1m_end": os.getloadavg()[0],
                "engines": engines,
                "ratios": {
                    "clipsearch/naive": ratio(engines, "clipsearch", "naive"),
                    "clipsearch/rclip": ratio(engines, "clipsearch", "rclip"),
                    **(
                        {"clipsearch/baseline": ratio(engines, "clipsearch", "baseline")}
                        if "baseline" in engines
                        else {}
                    ),
                },
                "limit": limit,
            }
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                print_table(record)
        if not args.json:
            print_footer(info)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            for path in made:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
