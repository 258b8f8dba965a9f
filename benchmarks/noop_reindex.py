"""Time a re-index that finds nothing changed, on a large folder (issue target: 100k files in <= 5 s).

    python benchmarks/noop_reindex.py --count 100000

Writes --count small PNG files (eight distinct images, copied, in folders of 1000). The first eight
are indexed with `clipsearch index` and the bundled shapes model; the copies are then recorded in the
catalog directly, with the rows an index run would write for copies (their size, mtime and the
content id of the image they copy) -- the set-up only, to save the minutes an index run spends
reading 100k files. Then `clipsearch index` runs again, as a user would, and the wall time from
process start to exit is printed (median of --repeat runs). A no-op re-index only stats files: it
neither opens them nor loads the model.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def make_files(folder: Path, count: int, start: int = 0) -> list[Path]:
    """PNG files number start..count-1 in subfolders of 1000; file i has content i % 8."""
    blobs = []
    for i in range(8):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (30 * i, 255 - 30 * i, 90)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    paths = []
    for i in range(start, count):
        sub = folder / f"d{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:06d}.png"
        path.write_bytes(blobs[i % len(blobs)])
        paths.append(path)
    return paths


def record_copies(index: Path, seeds: list[Path], copies: list[Path]) -> None:
    """Write the catalog rows an index run writes for files that copy already indexed content."""
    from clipsearch.store.catalog import Catalog, NewFile
    from clipsearch.store.folder import CATALOG_FILE

    catalog = Catalog(index / CATALOG_FILE, writer=True)
    known = catalog.files_under(str(seeds[0].parent.parent))
    content = [known[str(p)].content_id for p in seeds]
    with catalog.transaction():
        catalog.upsert_files(
            NewFile(str(p), st.st_size, st.st_mtime_ns, content[i % len(seeds)], None)
            for i, p in enumerate(copies, start=len(seeds))
            for st in [p.stat()]
        )
    catalog.close()


def run(*args: str) -> tuple[float, str]:
    exe = Path(sys.executable).parent / "clipsearch"
    started = time.perf_counter()
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="number of files")
    parser.add_argument("--repeat", type=int, default=3, help="no-op re-index runs to time")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="clipsearch-noop-"))
    photos, index = work / "photos", work / "index"
    started = time.perf_counter()
    seeds = make_files(photos, 8)
    seconds, out = run("index", str(photos), "--index", str(index), "--model", "shapes", "--quiet")
    print(f"first index of the 8 distinct images: {seconds:.1f}s  ({out.splitlines()[0]})")
    copies = make_files(photos, args.count, start=8)
    record_copies(index, seeds, copies)
    print(f"{args.count} files written and recorded in {time.perf_counter() - started:.1f}s ({work})")
    times = []
    for _ in range(args.repeat):
        seconds, out = run("index", "--index", str(index), "--quiet")
        times.append(seconds)
    print(
        f"no-op re-index of {args.count} files: median {statistics.median(times):.2f}s "
        f"(runs: {', '.join(f'{t:.2f}' for t in times)})  ({out.splitlines()[0]})"
    )
    size = sum(p.stat().st_size for p in index.iterdir() if p.is_file())
    print(f"index folder: {size / 1e6:.1f} MB ({size / args.count:.0f} B per file)")
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
