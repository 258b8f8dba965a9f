"""Measure indexing speed, query latency and index size per image on generated photos.

    python benchmarks/index_search.py --count 200 --megapixels 1 --model ViT-B-32
    python benchmarks/index_search.py --random-vit-b-32   # offline: random ViT-B-32 weights in a temp cache

Photos are scikit-image's sample photos, resized to the given size, with small colour shifts so
every file has distinct content. Prints one figure per line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_random_vit_b_32, sample_photos
from PIL import Image


def make_photos(folder: Path, count: int, megapixels: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = sample_photos()
    for i in range(count):
        base = Image.fromarray(bases[i % len(bases)]).convert("RGB")
        aspect = base.width / base.height
        height = int((megapixels * 1e6 / aspect) ** 0.5)
        img = base.resize((int(height * aspect), height), Image.Resampling.BICUBIC)
        shift = rng.integers(-20, 20, size=3)
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + shift, 0, 255).astype(np.uint8))
        img.save(folder / f"photo_{i:05d}.jpg", quality=90)


def cli(*args: str, env: dict[str, str]) -> tuple[float, str]:
    exe = Path(sys.executable).parent / "clipsearch"
    started = time.perf_counter()
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - started, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200, help="number of photos")
    parser.add_argument("--megapixels", type=float, default=1.0, help="size of each photo")
    parser.add_argument("--model", default="ViT-B-32", help="model name (as for clipsearch index)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or weights file")
    parser.add_argument("--random-vit-b-32", action="store_true", help="use random ViT-B-32 weights")
    parser.add_argument("--queries", type=int, default=5, help="cold queries to time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="clipsearch-bench-"))
    if args.random_vit_b_32:
        os.environ.update(HF_HUB_CACHE=str(work / "hf"), HF_HUB_OFFLINE="1")  # before huggingface_hub loads
        add_random_vit_b_32(work / "hf")
    env = dict(os.environ)
    photos, index = work / "photos", work / "index"
    make_photos(photos, args.count, args.megapixels)
    model_args = ["--model", args.model] + (["--pretrained", args.pretrained] if args.pretrained else [])

    seconds, out = cli("index", str(photos), "--index", str(index), "--json", "--quiet", *model_args, env=env)
    report = json.loads(out)
    print(f"photos: {args.count} x {args.megapixels} MP JPEG, model {args.model}, {os.cpu_count()} CPUs")
    print(f"index (process start to end): {seconds:.1f} s, {args.count / seconds:.1f} img/s")
    sync_s = report["seconds"]
    print(f"index (sync only, model loaded): {sync_s:.1f} s, {args.count / sync_s:.1f} img/s")
    seconds, out = cli("index", "--index", str(index), "--json", "--quiet", env=env)
    print(f"no-op re-index: {seconds:.2f} s (unchanged={json.loads(out)['unchanged']})")
    times = [cli("search", "a cat", "--index", str(index), "--json", env=env)[0] for _ in range(args.queries)]
    print(f"cold text query (process start to results): median {statistics.median(times):.2f} s")

    from clipsearch.api import Index

    with Index.open(index) as idx:
        idx.search_text("warm-up", 10)
        started = time.perf_counter()
        for i in range(20):
            idx.search_text(f"a photo number {i}", 10)
        print(f"warm text query (in process): {(time.perf_counter() - started) / 20 * 1000:.1f} ms")
        info = idx.info()
    size = info["size_bytes"]
    print(f"index size: {size / 1e6:.2f} MB, {size / info['count'] / 1024:.2f} KB/image")


if __name__ == "__main__":
    main()
