"""The two test tiers: a whole-suite run fails if it never imported some package module (tests/tiers.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tiers import package_modules, unimported

ROOT = Path(__file__).resolve().parent.parent

FAKE_TESTS = """
import pytest

import fakepkg.eager


def test_fast():
    import fakepkg.sub.used


@pytest.mark.slow
def test_slow():
    import fakepkg.lazy
"""


@pytest.fixture
def fake_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A package of four modules, one imported only by a slow test, and a suite of two tests."""
    pytester.makeini("[pytest]\nmarkers = slow: slow\ntiers_package = fakepkg\n")
    package = pytester.mkpydir("fakepkg")
    for name in ("eager.py", "lazy.py"):
        (package / name).write_text("")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "used.py").write_text("")
    (package / "data").mkdir()  # a folder of files that are not modules
    (package / "data" / "not-a-module.py").write_text("")
    pytester.makepyfile(test_fake=FAKE_TESTS)
    pytester.syspathinsert()
    return pytester


def test_package_modules_are_every_source_file() -> None:
    modules = package_modules("clipsearch")
    files = list((ROOT / "clipsearch").rglob("*.py"))
    assert len(modules) == len(files)
    assert {"clipsearch", "clipsearch.cli", "clipsearch.store", "clipsearch.store.catalog"} <= set(modules)
    assert unimported(["a", "a.b", "c"], ["a", "c", "os"]) == ["a.b"]


def test_fast_tier_fails_naming_the_module_only_a_slow_test_imports(fake_project: pytest.Pytester) -> None:
    result = fake_project.runpytest("-p", "tiers", "-m", "not slow")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*modules no test imports*", "*1 module(s) of fakepkg*", "  fakepkg.lazy"])
    assert "fakepkg.eager" not in result.stdout.str() and "not-a-module" not in result.stdout.str()


def test_whole_suite_that_imports_every_module_passes(fake_project: pytest.Pytester) -> None:
    result = fake_project.runpytest("-p", "tiers")
    assert result.ret == pytest.ExitCode.OK
    assert "modules no test imports" not in result.stdout.str()


@pytest.mark.parametrize(
    "selection", [["test_fake.py"], ["-k", "fast"], ["--deselect", "test_fake.py::test_slow"]]
)
def test_a_partial_run_is_not_checked(fake_project: pytest.Pytester, selection: list[str]) -> None:
    result = fake_project.runpytest("-p", "tiers", "-m", "not slow", *selection)
    assert result.ret == pytest.ExitCode.OK


def test_a_failing_run_keeps_its_own_failure(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_broken="def test_broken():\n    assert False\n")
    result = fake_project.runpytest("-p", "tiers", "-m", "not slow")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "modules no test imports" not in result.stdout.str()


def test_the_readme_gives_the_fast_tier_and_says_ci_runs_everything() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    assert '`.venv/bin/python -m pytest -m "not slow" -q`' in setup
    assert re.search(r"CI runs every test", setup)
    assert "slow: " in (ROOT / "pyproject.toml").read_text()  # the marker the fast tier leaves out
