"""Where an index run's CPU goes, second by second, and what workers and batch size change (issue #20).

    python benchmarks/pipeline_profile.py                          # 64 12-MP JPEGs, 3 settings x 2 rounds
    python benchmarks/pipeline_profile.py --count 32 --settings 2:32 3:32 2:64 --rounds 1

Each setting (``WORKERS:BATCH``) runs ``clipsearch index`` as a user does (a fresh process, a new
index, bf16 where the CPU has it, random ViT-B-32 weights from an offline Hugging Face cache), in
interleaved rounds. Every 0.2 s the CPU time of the process tree is sampled: the main process (model
load, normalising, encoding, committing) and the decoding workers apart. Printed per run:

- wall time, images/s, and the CPU the tree used (cores' worth) from its start and from the first
  second both the encoder and the decoders were busy (steady state);
- the share of 0.2-s samples in which the tree used at least 90% of every core it may run on
  (``busy``): on a shared machine other processes take some, so compare settings within a run;
- from the sync's own report: seconds encoding and seconds the encoder waited for decoders (starved).

``uptime`` is printed beside every run: the figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_random_vit_b_32, ensure_photos, tree

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def run_once(photos: Path, index: Path, env: dict[str, str], workers: int, batch: int) -> dict[str, Any]:
    shutil.rmtree(index, ignore_errors=True)
    exe = Path(sys.executable).parent / "clipsearch"
    command = [str(exe), "index", str(photos), "--index", str(index), "--model", "ViT-B-32"]
    command += ["--pretrained", "laion2b_s34b_b79k", "--quiet", "--json"]
    command += ["--workers", str(workers), "--batch-size", str(batch)]
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, float]] = []  # (t, main CPU s, workers CPU s), cumulative
    seen: dict[int, float] = {}  # every worker's last CPU reading (a finished one keeps its total)
    while proc.poll() is None:
        main = cpu_seconds(proc.pid)
        for pid in tree(proc.pid)[1:]:
            seen[pid] = max(seen.get(pid, 0.0), cpu_seconds(pid))
        samples.append((time.monotonic() - started, main, sum(seen.values())))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"index failed: {stderr.strip()[-800:]}")
    report = json.loads(stdout.splitlines()[-1])
    cores = len(os.sched_getaffinity(0))
    rates = []
    for (t0, m0, w0), (t1, m1, w1) in itertools.pairwise(samples):
        dt = max(t1 - t0, 1e-6)
        rates.append((t1, (m1 - m0) / dt, (w1 - w0) / dt))
    steady = next((t for t, m, w in rates if m > 0.3 and w > 0.3), None)  # both sides working
    busy = [m + w >= 0.9 * cores for t, m, w in rates if steady is not None and t >= steady]
    total_cpu = samples[-1][1] + samples[-1][2] if samples else 0.0
    late = [(m, w) for t, m, w in rates if steady is not None and t >= steady]
    return {
        "workers": workers,
        "batch": batch,
        "images": report["added"],
        "wall_s": wall,
        "img_per_s": report["added"] / wall,
        "cores_used": total_cpu / wall,
        "steady_from_s": steady,
        "steady_main_cores": sum(m for m, _ in late) / max(1, len(late)),
        "steady_worker_cores": sum(w for _, w in late) / max(1, len(late)),
        "busy_share": sum(busy) / max(1, len(busy)),
        "encode_s": report.get("encode_seconds"),
        "decode_wait_s": report.get("decode_wait_seconds"),
        "uptime": os.popen("uptime").read().strip(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=64, help="12-MP JPEGs (default 64)")
    parser.add_argument("--settings", nargs="+", default=["2:32", "3:32", "2:64"], help="WORKERS:BATCH ...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf-cache", type=Path, default=Path.home() / ".cache" / "clipsearch-bench" / "hf")
    parser.add_argument("--workdir", type=Path, help="keep the photos here (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not any(
        args.hf_cache.glob("models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/*/*.safetensors")
    ):
        add_random_vit_b_32(args.hf_cache)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clipsearch-profile-"))
    photos = work / "photos-12mp"
    ensure_photos(photos, args.count, (4000, 3000), 0)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(args.hf_cache),
        "HF_HUB_OFFLINE": "1",
        "CLIPSEARCH_CACHE": str(args.hf_cache.parent / "clipsearch"),
    }
    settings = [tuple(int(v) for v in s.split(":")) for s in args.settings]
    run_once(photos, work / "index", env, *settings[0])  # warm: the model preview, the text export
    print(
        "| workers | batch | img/s | wall s | cores used | steady from s | main / workers cores | busy "
        "| encode s | waited s | uptime |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for _ in range(args.rounds):
        for workers, batch in settings:
            r = run_once(photos, work / "index", env, workers, batch)
            if args.json:
                print(json.dumps(r), flush=True)
                continue
            steady = "-" if r["steady_from_s"] is None else f"{r['steady_from_s']:.1f}"
            print(
                f"| {workers} | {batch} | {r['img_per_s']:.1f} | {r['wall_s']:.1f} | {r['cores_used']:.2f} | "
                f"{steady} | {r['steady_main_cores']:.2f} / {r['steady_worker_cores']:.2f} | "
                f"{r['busy_share']:.0%} | {r['encode_s']} | {r['decode_wait_s']} | {r['uptime']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
