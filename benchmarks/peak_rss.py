"""Run a command and report the peak of the summed RSS of it and all its descendants (sampled).

    python benchmarks/peak_rss.py -- clipsearch index ~/Photos --index /tmp/idx

RSS of every process in the tree is read from /proc every 50 ms; the peak of the sum is printed
to stderr when the command ends (this counts shared library pages once per process, so it is
an upper bound of the real memory use).
"""

from __future__ import annotations

import sys

from _common import run_measured


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    run = run_measured(args, capture=False)
    print(
        f"peak RSS (sum over the process tree): {run.peak_rss / 2**20:.0f} MiB; "
        f"wall {run.seconds:.1f} s; exit {run.returncode}",
        file=sys.stderr,
    )
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
