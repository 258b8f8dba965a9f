"""Helpers shared by the benchmark scripts: generated photos, random ViT-B-32 cache, process-tree RSS."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
PHOTOS_VERSION = 1  # bump when make_varied_photos changes, so kept photo folders are remade


def sample_photos() -> list[npt.NDArray[np.uint8]]:
    """scikit-image's bundled sample photos as RGB arrays (those that need no download)."""
    import skimage.data

    bases = []
    for name in SOURCES:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # some samples need a download (pooch) that is not available offline
            continue
        if image.ndim == 3 and image.shape[2] == 3:
            bases.append(image.astype(np.uint8))
    return bases


def make_varied_photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """``count`` distinct JPEGs (quality 90) of ``size`` from random crops of the sample photos."""
    width, height = size
    rng = np.random.default_rng(seed)
    bases = sample_photos()
    grain = rng.normal(0.0, 7.0, size=(height + 64, width + 64)).astype(np.float32)  # luminance grain
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = bases[i % len(bases)]
        bh, bw = base.shape[:2]
        crop_w = min(bw, bh * width / height) * rng.uniform(0.6, 1.0)
        crop_h = crop_w * height / width
        x0, y0 = rng.uniform(0, bw - crop_w), rng.uniform(0, bh - crop_h)
        img = Image.fromarray(base).resize(
            size, Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h)
        )
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        dx, dy = rng.integers(0, 64, size=2)
        pixels = np.asarray(img, dtype=np.float32) + rng.uniform(-20, 20, size=3).astype(np.float32)
        pixels += grain[dy : dy + height, dx : dx + width, None]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"photo_{i:05d}.jpg", quality=90
        )


def ensure_photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Make the photos unless ``folder`` already holds this very set (a kept work folder)."""
    stamp = folder.with_name(folder.name + ".json")  # beside, not inside: no engine should see it
    wanted = {"count": count, "size": list(size), "seed": seed, "version": PHOTOS_VERSION}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    shutil.rmtree(folder, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    print(f"making {count} photos of {size[0]}x{size[1]} in {folder} ...", file=sys.stderr)
    make_varied_photos(folder, count, size, seed)
    stamp.write_text(json.dumps(wanted))


def jpeg_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def tree_bytes(path: Path) -> int:
    """Bytes of all regular files under ``path`` (symlinks not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def add_random_vit_b_32(cache: Path) -> None:
    """Random ViT-B-32 weights where open_clip looks for laion2b_s34b_b79k in the HF cache ``cache``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hfcache import add_vit_b_32

    add_vit_b_32(cache)


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    if not Path(f"/proc/{pid}/task/{pid}/children").exists():  # kernel without CONFIG_PROC_CHILDREN
        return tree_by_scan(pid)
    out, todo = [], [pid]
    while todo:  # reading each thread's children list costs far less than a scan of all of /proc
        current = todo.pop()
        out.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with suppress(OSError):  # the thread or process has just exited
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return out


def tree_by_scan(pid: int) -> list[int]:
    """pid and all its descendants, from the parent pid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Measured:
    """One command run: wall time from process start to exit, peak summed RSS of its process tree, and
    the CPU time (user + system) of the process and the children it waited for."""

    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = True,
    interval: float = 0.05,
) -> Measured:
    """Run ``args``, sampling the RSS of it and all its descendants every ``interval`` seconds."""
    pipe = subprocess.PIPE if capture else None
    cpu_before = children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(list(args), env=env, cwd=cwd, stdout=pipe, stderr=pipe, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(rss_bytes(p) for p in tree(proc.pid)))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)  # communicate() must drain the pipes meanwhile
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return Measured(seconds, peak, proc.returncode, stdout or "", stderr or "", children_cpu() - cpu_before)
