"""Where an index run's CPU goes, second by second, and what workers and batch size change (issue #20).

    python benchmarks/pipeline_profile.py                          # 64 12-MP JPEGs, 3 settings x 2 rounds
    python benchmarks/pipeline_profile.py --count 32 --settings 2:32 3:32 2:64 --rounds 1

Each setting (``WORKERS:BATCH``) runs ``clipsearch index`` as a user does (a fresh process, a new
index, bf16 where the CPU has it, random ViT-B-32 weights from an offline Hugging Face cache), in
interleaved rounds. Every 0.2 s the CPU time of the process tree is sampled: the main process (model
load, normalising, encoding, committing) and the decoding workers apart. Printed per run:

- wall time, images/s, and the cores' worth of CPU the tree got (under 2 on a shared machine: other
  processes took the rest);
- CPU per image on each side, which the machine's load does not change: the decoders' (read, hash,
  decode, resize, and handing the crop over), and the encoder side's (normalise, encode, commit),
  less the main process's fixed costs (imports, model load), measured on a new index of one image;
  compare with ``compare.py --limit-worker``'s decode and encode CPU measured alone: the difference
  is the pipeline's own cost (hand-over, waiting, spinning);
- from the sync's own report: seconds encoding and seconds the encoder waited for decoders (starved).

``uptime`` is printed beside every run: the figures move with the machine's load.
"""

from __future__ import annotations

import argparse
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
    main_cpu, worker_cpu = (samples[-1][1], samples[-1][2]) if samples else (0.0, 0.0)
    return {
        "workers": workers,
        "batch": batch,
        "images": report["added"],
        "wall_s": wall,
        "img_per_s": report["added"] / wall,
        "cores_used": (main_cpu + worker_cpu) / wall,
        "main_cpu_s": main_cpu,
        "worker_cpu_ms_per_image": 1000 * worker_cpu / max(1, report["added"]),
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
    one = work / "one"  # the main process's fixed CPU (imports, model load, commit): one new image
    one.mkdir(exist_ok=True)
    shutil.copy(sorted(photos.glob("*.jpg"))[0], one / "one.jpg")
    fixed = run_once(one, work / "index-one", env, 1, 1)["main_cpu_s"]
    print(f"main process CPU for a new index of one image (fixed costs): {fixed:.2f} s")
    print(
        "| workers | batch | img/s | wall s | cores used | decoders' CPU per image | encoder side's CPU "
        "per image | encode s | waited for decoders s | uptime |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for _ in range(args.rounds):
        for workers, batch in settings:
            r = run_once(photos, work / "index", env, workers, batch)
            if args.json:
                print(json.dumps(r), flush=True)
                continue
            main_ms = 1000 * (r["main_cpu_s"] - fixed) / max(1, r["images"] - 1)
            print(
                f"| {workers} | {batch} | {r['img_per_s']:.1f} | {r['wall_s']:.1f} | {r['cores_used']:.2f} | "
                f"{r['worker_cpu_ms_per_image']:.1f} ms | {main_ms:.1f} ms | {r['encode_s']} | "
                f"{r['decode_wait_s']} | {r['uptime']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
