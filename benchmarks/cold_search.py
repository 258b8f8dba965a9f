"""Time a cold `clipsearch search "TEXT"` (a fresh process, no server) and break it into its parts.

    python benchmarks/cold_search.py /path/to/index "a red car" --runs 5

The index should hold an exported text encoder (`clipsearch index` writes one). Prints one figure
per line: the median over the runs of the whole command's wall time (process start to exit) and
CPU time (user + system, all threads: close to the wall time on an idle machine, and much less
affected by other load), then the same for each stage, measured inside a fresh interpreter that
does the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import children_cpu

# Each stage in the order the CLI goes through it, timed in a fresh interpreter.
STAGES = r"""
import json, sys, time
marks = [("start", time.perf_counter(), time.process_time())]
def mark(name): marks.append((name, time.perf_counter(), time.process_time()))
import clipsearch.cli
mark("import cli (typer, click)")
import typer._adapters  # typer converts option values with pydantic TypeAdapters
mark("typer option parsing (pydantic import)")
from clipsearch.query.grammar import build_terms
from clipsearch.api import Index
from clipsearch.query.rank import SearchOptions, finish
mark("import library (numpy, sqlite3)")
import os
from pathlib import Path
from clipsearch.encoders.cache import ModelCache
configured = os.environ.get("CLIPSEARCH_CACHE")
cache = ModelCache(Path(configured)) if configured else ModelCache.default()
idx = Index.open(sys.argv[1], cache=cache)
mark("open catalog (sqlite)")
import onnxruntime
mark("import onnxruntime")
from clipsearch.encoders.onnx_text import MODEL_FILE, OnnxTextEncoder, onnx_dir, open_session
from clipsearch.encoders.onnx_text import read_tokenizer, usable_settings
folder = onnx_dir(cache, idx.meta.weights_sha256)
settings = usable_settings(folder, idx.meta.weights_sha256, idx.meta.dim)
tokenizer = read_tokenizer(folder, settings.context_length)
mark("settings + tokenizer (BPE merges JSON)")
session = open_session(folder / MODEL_FILE)
mark("onnx session load")
encoder = OnnxTextEncoder(session, tokenizer, settings.dim, variable_length=settings.variable_length)
vector = encoder.encode_texts([sys.argv[2]])[0]
mark("tokenize + encode")
import faiss
mark("import faiss")
store = idx.store
mark("faiss load")
options = SearchOptions.parse(top=None, threshold=None, cutoff=None, sort="score")
hits = finish(idx.search_vectors(vector, options.candidates)[0], options)
mark("search + sqlite rows")
assert "torch" not in sys.modules and "open_clip" not in sys.modules
print(json.dumps([(b[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(marks, marks[1:])]))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of one run of ``cmd``."""
    cpu_before = children_cpu()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, children_cpu() - cpu_before


def show(name: str, runs: list[tuple[float, float]]) -> None:
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    print(
        f"{name:38s} wall {statistics.median(walls):6.3f} s  cpu {statistics.median(cpus):6.3f} s"
        f"  (wall: {', '.join(f'{w:.3f}' for w in walls)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("query", nargs="?", default="a red car")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "CLIPSEARCH_INDEX": str(args.index)}
    exe = Path(sys.executable).with_name("clipsearch")
    search = [str(exe), "search", args.query, "--index", str(args.index)]
    timed(search, env)  # warm the page cache: "cold" means a new process, not a cold disk
    show("clipsearch search (whole command)", [timed(search, env) for _ in range(args.runs)])
    show(
        "python -c pass (interpreter start)",
        [timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs)],
    )
    stages: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", STAGES, str(args.index), args.query],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        for name, seconds, cpu in json.loads(out):
            stages.setdefault(name, []).append((seconds, cpu))
    print("stages, in a fresh interpreter doing the same steps (medians):")
    for name, values in stages.items():
        show(f"  {name}", values)
    total_wall = sum(statistics.median(w for w, _ in v) for v in stages.values())
    total_cpu = sum(statistics.median(c for _, c in v) for v in stages.values())
    print(f"  {'sum of stages':36s} wall {total_wall:6.3f} s  cpu {total_cpu:6.3f} s")


if __name__ == "__main__":
    main()
