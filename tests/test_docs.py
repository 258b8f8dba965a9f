"""The README documents every command and option, and CI runs exactly the README's two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from clipsearch.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_command_and_option_is_in_the_readme() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name, command in commands.items():
        assert f"### `clipsearch {name}" in README, f"no README section for {name}"
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", README), f"{name} {opt}"


def test_ci_runs_the_readme_commands() -> None:
    setup = re.findall(r"```bash\n(.+?)\n```", README, flags=re.S)
    assert len(setup) >= 2
    install_and_demo, tests = setup[0].strip(), setup[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_demo in ci and tests in ci
    assert "pytest" in tests


@pytest.mark.slow
def test_the_readme_python_snippet_runs_as_written(tmp_path: Path) -> None:
    """The Python API section, run unchanged in a folder holding a `demo` folder of shape images."""
    import subprocess
    import sys

    from clipsearch.shapes.world import write_dataset

    snippet = re.search(r"## Python API.*?```python\n(.+?)\n```", README, flags=re.S)
    assert snippet is not None
    write_dataset(tmp_path / "demo", 24, seed=5)
    result = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "24 added, 0 unchanged"
    assert len(lines) == 6 and all(str(tmp_path / "demo") in line for line in lines[1:])
    assert (tmp_path / "indexes" / "mine" / "catalog.sqlite").is_file()
