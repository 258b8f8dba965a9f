"""The README documents every command and option, and CI runs exactly the README's two commands."""

from __future__ import annotations

import re
from pathlib import Path

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
