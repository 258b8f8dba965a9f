"""Run a command and report the peak of the summed RSS of it and all its descendants (sampled).

    python benchmarks/peak_rss.py -- clipsearch index ~/Photos --index /tmp/idx

RSS of every process in the tree is read from /proc every 50 ms; the peak of the sum is printed
to stderr when the command ends (this counts shared library pages once per process, so it is
an upper bound of the real memory use).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
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


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    started = time.monotonic()
    proc = subprocess.Popen(args)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(rss_bytes(p) for p in tree(proc.pid)))
        time.sleep(0.05)
    print(
        f"peak RSS (sum over the process tree): {peak / 2**20:.0f} MiB; "
        f"wall {time.monotonic() - started:.1f} s; exit {proc.returncode}",
        file=sys.stderr,
    )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
