"""Tier 2: the CLI end to end (typer's CliRunner and real subprocesses), output contracts and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch.cli import app

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_index_search_info_json_contracts(tmp_path, photos, tiny_model) -> None:
    folder, idx = photos["coffee"].parent, tmp_path / "idx"
    result = cli("index", folder, "--index", idx, "--model", tiny_model, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("added", "updated", "reused", "removed", "unchanged", "skipped"):
        assert isinstance(report[key], int)
    assert report["added"] == len(photos) and report["index"] == str(idx)
    assert f"Writing index {idx}" in result.stderr

    result = cli("search", "a rocket", "--index", idx, "--json", "-k", "3")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert all(os.path.isabs(h["path"]) and isinstance(h["score"], float) for h in lines)
    assert [h["score"] for h in lines] == sorted((h["score"] for h in lines), reverse=True)

    result = cli("search", "--image", photos["chelsea"], "--index", idx, "--json", "--top", "1")
    assert json.loads(result.stdout)["path"] == str(photos["chelsea"])

    result = cli("info", "--index", idx, "--json")
    info = json.loads(result.stdout)
    assert (info["index"], info["model"], info["pretrained"], info["count"]) == (str(idx), tiny_model, "", 6)
    assert info["dim"] == 32


def test_plain_output_and_default_index_location(photos, tiny_model) -> None:
    default = Path(os.environ["CLIPSEARCH_INDEX"])
    result = cli("index", photos["coffee"].parent, "--model", tiny_model)
    assert result.exit_code == 0, result.stderr
    assert "6 added" in result.stdout and str(default) in result.stdout
    result = cli("search", "coins")  # piped: one path per line, nothing else on stdout
    assert result.exit_code == 0
    assert sorted(result.stdout.split()) == sorted(str(p) for p in photos.values())
    result = cli("info")
    assert f"Index:    {default}" in result.stdout and "6 files" in result.stdout


def test_reindex_uses_recorded_model_and_reports_changes(tmp_path, photos, tiny_model) -> None:
    idx = tmp_path / "idx"
    cli("index", photos["coffee"].parent, "--index", idx, "--model", tiny_model)
    photos["coins"].unlink()
    (photos["coffee"].parent / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = cli("index", "--index", idx, "--json")  # no --model: the index's own
    report = json.loads(result.stdout)
    assert (report["removed"], report["skipped"], report["unchanged"]) == (1, 1, 5)
    result = cli("info", "--index", idx, "--skipped", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(photos["coffee"].parent / "broken.jpg")]
    assert rows[0]["reason"].startswith("not-an-image: ")
    result = cli("info", "--index", idx, "--skipped")
    assert result.stdout == f"{rows[0]['reason']}\t{rows[0]['path']}\n"


def test_odd_file_names_round_trip(tmp_path, tiny_model) -> None:
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9 latin-1.png")  # not valid UTF-8
    newline = folder / "two\nlines.png"
    Image.new("RGB", (40, 40), "red").save(odd)
    Image.new("RGB", (40, 40), "blue").save(newline)
    idx = tmp_path / "idx"
    assert (
        json.loads(cli("index", folder, "--index", idx, "--model", tiny_model, "--json").stdout)["added"] == 2
    )
    hits = [json.loads(line) for line in cli("search", "x", "--index", idx, "--json").stdout.splitlines()]
    assert sorted(h["path"] for h in hits) == sorted([odd, str(newline)])
    plain = runner.invoke(app, ["search", "--image", odd, "--index", str(idx), "-k", "1"])
    assert plain.stdout_bytes == os.fsencode(odd) + b"\n"


def test_errors_have_exit_codes_and_no_traceback(tmp_path, photos, tiny_model) -> None:
    idx = tmp_path / "idx"
    missing = cli("search", "x", "--index", tmp_path / "none")
    assert missing.exit_code == 1 and "No index at" in missing.stderr
    nothing = cli("search", "--index", idx)
    assert nothing.exit_code == 2 and "Nothing to search for" in nothing.stderr
    assert cli("search", "x", "-k", "0").exit_code == 2
    assert cli("index", tmp_path / "no-such-folder", "--index", idx, "--model", tiny_model).exit_code == 2
    cli("index", photos["coffee"].parent, "--index", idx, "--model", tiny_model)
    other = cli("index", photos["coffee"].parent, "--index", idx, "--model", "ViT-B-32")
    assert other.exit_code == 1 and "--rebuild" in other.stderr and tiny_model in other.stderr
    bad_query_image = cli("search", "--image", tmp_path / "nope.jpg", "--index", idx)
    assert bad_query_image.exit_code == 2 and "does not exist" in bad_query_image.stderr
    (tmp_path / "file-not-dir").write_text("x")
    assert cli("info", "--index", tmp_path / "file-not-dir").exit_code == 1
    for result in (missing, nothing, other, bad_query_image):
        assert "Traceback" not in result.stderr + result.stdout


def test_every_command_and_option_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert {"index", "search", "info"} <= set(commands)
    for name, command in commands.items():
        assert command.help, name
        assert cli(name, "--help").exit_code == 0
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} {param.name} has no help text"


def test_help_does_not_import_torch() -> None:
    code = (  # main() ends the process itself, after running the exit handlers
        "import atexit, sys\n"
        "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr))\n"
        "sys.argv = ['clipsearch', '--help']\nfrom clipsearch.cli import main\nmain()\n"
        "print('main() returned', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "NO-TORCH" in result.stderr and "search" in result.stdout
    assert "returned" not in result.stderr and result.returncode == 0


def test_index_process_waits_passively_and_leaves_triton_out(
    tiny_model: str, photos: dict[str, Path], index_dir: Path
) -> None:
    """What main() sets before torch loads: passive OpenMP waiting (encode on every core) and no
    Triton, though torchvision's import brings in torch._dynamo, which would import it."""
    code = (
        "import atexit, os, sys\n"
        "def report():\n"
        "    triton = sys.modules.get('triton', 'absent')\n"
        "    print('DYNAMO', 'torch._dynamo' in sys.modules, 'TRITON', triton, file=sys.stderr)\n"
        "    print('OMP', os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)\n"
        "atexit.register(report)\n"
        f"sys.argv = ['clipsearch', 'index', {str(photos['astronaut'].parent)!r}, '--index', "
        f"{str(index_dir)!r}, '--model', {tiny_model!r}, '--quiet']\n"
        "from clipsearch.cli import main\nmain()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "DYNAMO True TRITON None" in result.stderr and "OMP PASSIVE" in result.stderr
    assert "triton" not in result.stderr.replace("TRITON", "")  # no "triton not found" warning


@pytest.mark.parametrize("command", ["index", "search", "info"])
def test_console_script_runs(command: str) -> None:
    exe = Path(sys.executable).parent / "clipsearch"
    args = [str(exe)] if exe.exists() else [sys.executable, "-m", "clipsearch"]
    result = subprocess.run([*args, command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--index" in result.stdout


def test_folder_settings_are_kept_shown_changed_and_forgotten(tmp_path, photos, tiny_model) -> None:
    folder, idx = photos["coffee"].parent, tmp_path / "idx"
    result = cli("index", folder, "--index", idx, "--model", tiny_model, "--exclude", "*.png",
                 "--max-pixels", "20000000", "--json")  # fmt: skip
    assert json.loads(result.stdout)["added"] == 3, result.stderr  # the 3 JPEGs
    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert info["root_settings"] == [
        {"path": str(folder), "include_hidden": False, "exclude": ["*.png"], "max_pixels": 20_000_000}
    ]
    assert f"Roots:    {folder}  (exclude *.png; max 20,000,000 pixels)" in cli("info", "--index", idx).stdout
    again = json.loads(cli("index", "--index", idx, "--json").stdout)  # the README's plain re-sync
    assert (again["added"], again["unchanged"]) == (0, 3)
    (folder / "sub").mkdir()
    nested = cli("index", folder / "sub", "--index", idx, "--exclude", "x")
    assert nested.exit_code == 2 and f"clipsearch index {folder} --exclude" in nested.stderr
    cleared = json.loads(cli("index", folder, "--index", idx, "--exclude", "", "--json").stdout)
    assert cleared["added"] == 3
    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert info["root_settings"][0]["exclude"] == [] and info["count"] == 6

    result = cli("forget", folder, "--index", idx, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"forgotten": str(folder), "removed": 6, "index": str(idx)}
    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert (info["count"], info["vectors"], info["roots"]) == (0, 0, [])
    unknown = cli("forget", folder, "--index", idx)
    assert unknown.exit_code == 2 and "is not a folder of the index" in unknown.stderr
    assert "Traceback" not in unknown.stderr + nested.stderr
