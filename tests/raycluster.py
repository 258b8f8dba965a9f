"""Ray on this machine for the tests and ``benchmarks/ray_ingest.py``: clusters of ``ray start`` nodes
(1 CPU each, each its own raylet in its own process group), the environment their runs need, and
how to find and kill what a Ray kept in its own temporary folder left running. Nothing here calls
``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def ray_pids(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (the Ray sessions kept there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder).encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_ray(folder: Path) -> None:
    for pid in ray_pids(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(folder: Path, seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the Ray processes of ``folder`` to end; those still running."""
    deadline = time.monotonic() + seconds
    while ray_pids(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray_pids(folder)


def ray_env(folder: Path, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) for a Ray whose sessions live in ``folder``."""
    return dict(
        os.environ if base is None else base,
        RAY_TMPDIR=str(folder),
        RAY_AUTH_MODE="disabled",  # token authentication would write a token into the home folder
        RAY_USAGE_STATS_ENABLED="0",
        # a lost node is noticed in ~4 s instead of ~15
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
        **extra,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A Ray cluster on this machine: a head and worker nodes (1 CPU each), each its own raylet
    in its own process group, its sessions in ``folder``; nodes start with ``ray_env(folder, env)``."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.env = ray_env(folder, env)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: dict[str, int] = {}

    def start(self, name: str, *, head: bool = False, wrap: list[str] | None = None) -> None:
        """Start a node (``wrap``: a command line to run ``ray start`` under)."""
        args = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
        if head:
            args += ["--head", "--port", str(self.port), "--temp-dir", str(self.folder),
                     "--include-dashboard", "false"]  # fmt: skip
        else:
            args += ["--address", self.address]
        log_path = self.folder / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*(wrap or []), *args], env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        self.groups[name] = proc.pid  # the session leader's pid is the group's id
        if proc.wait(timeout=240) != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{log_path.read_text()[-3000:]}")

    def kill(self, name: str) -> None:
        """SIGKILL a node's process group: its raylet and every worker it started."""
        os.killpg(self.groups.pop(name), signal.SIGKILL)

    def stop(self) -> None:
        for group in self.groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.groups.clear()
        kill_ray(self.folder)  # what changed its process group, found by its temporary folder


def committed(index: Path) -> int:
    """Files the index has committed so far (0 before its catalog exists)."""
    try:
        with sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM files").fetchone()[0])
    except sqlite3.Error:
        return 0
