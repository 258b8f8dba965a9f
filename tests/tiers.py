"""The fast tier (``pytest -m "not slow"``) must still import every module of the package.

A pytest plugin (tests/conftest.py loads it). At the end of a whole-suite run, the fast tier or the
full suite, it lists the package's modules from its source files and fails the run, naming them, if
any was never imported into the test process. It checks imports (``sys.modules``), not lines: a
module counts once a collected test file or a test that ran has imported it, directly or through
another module. That needs no coverage tool and cannot slow the tests. Work done only in
subprocesses (CLI runs, decoding workers) does not count; each module must be imported in-process.

The check runs only when the whole suite was asked for: no paths, node ids, ``-k``, ``--deselect``
or ``--lf``; no ``-m`` or exactly ``-m "not slow"``; and every selected test passed (after a failure
or ``-x`` the run already fails, and fewer tests ran).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = "clipsearch"
TIERS = ("", "not slow")  # the -m expressions of the two tiers: the full suite and the fast tier
_UNIMPORTED = pytest.StashKey[list[str]]()


def package_modules(package: str = PACKAGE) -> list[str]:
    """Every module of ``package``, read from its source tree (``__init__``s as the package name)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not an importable package")
    names = []
    for location in spec.submodule_search_locations:
        root = Path(location)
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if all(part.isidentifier() for part in parts):  # no folders of data that hold scripts
                names.append(".".join((package, *parts)))
    return sorted(set(names))


def unimported(modules: Iterable[str], loaded: Iterable[str]) -> list[str]:
    """The ``modules`` that are not in ``loaded`` (the names in sys.modules)."""
    return sorted(set(modules) - set(loaded))


def whole_suite(config: pytest.Config) -> bool:
    """True when this run is one of the two tiers over the whole test suite."""
    markexpr = " ".join((config.option.markexpr or "").split())
    return (
        config.args_source != pytest.Config.ArgsSource.ARGS
        and markexpr in TIERS
        and not config.option.keyword
        and not config.getoption("deselect", None)
        and not config.getoption("lf", False)
        and not config.option.collectonly
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != pytest.ExitCode.OK or not whole_suite(session.config):
        return
    package = session.config.getini("tiers_package") or PACKAGE
    missing = unimported(package_modules(package), sys.modules)
    if missing:
        session.config.stash[_UNIMPORTED] = missing
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    missing = config.stash.get(_UNIMPORTED, [])
    if not missing:
        return
    tier = "the fast tier (-m 'not slow')" if config.option.markexpr else "the test suite"
    terminalreporter.section("modules no test imports", sep="=", red=True, bold=True)
    terminalreporter.line(
        f"{len(missing)} module(s) of {config.getini('tiers_package') or PACKAGE} were never imported by "
        f"{tier}; give each a test that runs without the slow mark:"
    )
    for name in missing:
        terminalreporter.line(f"  {name}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("tiers_package", "package whose every module a whole-suite run must import", default="")
