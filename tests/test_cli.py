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


def test_a_bad_exclude_pattern_is_a_usage_error_before_any_work(tmp_path, photos, tiny_model) -> None:
    idx = tmp_path / "idx"
    result = cli(
        "index", photos["coffee"].parent, "--index", idx, "--model", tiny_model, "--exclude", "[z-a]"
    )
    assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert "--exclude '[z-a]': not a valid gitignore pattern" in result.stderr
    assert "Loading model" not in result.stderr and not idx.exists()


def test_a_bad_line_in_an_ignore_file_is_a_warning_with_its_place(tmp_path, photos, tiny_model) -> None:
    folder = photos["coffee"].parent
    (folder / ".clipsearchignore").write_text("*.png\n!\n")
    result = cli("index", folder, "--index", tmp_path / "idx", "--model", tiny_model, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["added"] == 3  # the JPEGs: the good line applies
    assert f"Warning: {folder / '.clipsearchignore'}, line 2: " in result.stderr


@pytest.fixture
def mounts():  # type: ignore[no-untyped-def]
    """Mount points made by a test (tmpfs or read-only binds), unmounted after it; skip without the right."""
    made: list[Path] = []

    def mount(*args: str | Path) -> None:
        target = Path(args[-1])
        done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        made.append(target)

    yield mount
    for target in reversed(made):
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True)


def no_traceback(result) -> bool:  # type: ignore[no-untyped-def]
    return result.exception is None or isinstance(result.exception, SystemExit)


def test_index_on_a_read_only_index_folder_is_a_message(tmp_path, photos, tiny_model, mounts) -> None:
    idx = tmp_path / "idx"
    assert cli("index", photos["coffee"].parent, "--index", idx, "--model", tiny_model).exit_code == 0
    mounts("--bind", idx, idx)
    mounts("-o", "remount,bind,ro", idx)
    for args in (("index", photos["coffee"].parent), ("index",)):
        result = cli(*args, "--index", idx)
        assert result.exit_code == 1 and no_traceback(result), result.exception
        assert f"Cannot write to the index folder {idx}: Read-only file system." in result.stderr
    assert cli("search", "coins", "--index", idx).exit_code == 0  # reading it still works


def test_index_creation_on_a_nearly_full_disk_is_a_message(tmp_path, photos, tiny_model, mounts) -> None:
    """At every fill level the run ends with a message (or succeeds), never a traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    for free_kb in range(20, 260, 20):
        mounts("-t", "tmpfs", "-o", "size=3m", "tmpfs", disk)
        (disk / "filler").write_bytes(bytes((3 * 1024 - free_kb) * 1024))
        result = cli("index", photos["coffee"].parent, "--index", disk / "idx", "--model", tiny_model, "-q")
        assert no_traceback(result), (free_kb, result.exception)
        assert result.exit_code in (0, 1), (free_kb, result.stderr)
        if result.exit_code:
            assert f"{disk / 'idx'}" in result.stderr and "free" in result.stderr, result.stderr
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:  # busy: a file left open
            subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)
            pytest.fail(f"a run with {free_kb} KB free left a file of the index open")


def test_info_prints_a_root_that_is_not_utf8_under_a_strict_utf8_stdout(tmp_path, tiny_encoder) -> None:
    from clipsearch.api import Index

    root = os.fsdecode(os.fsencode(str(tmp_path)) + b"/photos-\xff")
    os.mkdir(root)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([root])
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-m", "clipsearch", "info", "--index", str(tmp_path / "idx")],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Roots:    " + os.fsencode(root) + b"\n" in done.stdout  # the name's own bytes


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_html_to_a_path_that_cannot_be_written_is_a_usage_error(tmp_path, photos, tiny_model, where) -> None:
    idx = tmp_path / "idx"
    assert cli("index", photos["coffee"].parent, "--index", idx, "--model", tiny_model).exit_code == 0
    target = tmp_path / "nowhere" / "page.html" if where == "missing-folder" else tmp_path / "out"
    (tmp_path / "out").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = cli("search", "coins", "--index", idx, "--html", target)
    assert result.exit_code == 2 and no_traceback(result), result.exception
    assert "--html" in result.stderr and str(target) in result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no page, no stray .tmp


def test_a_gallery_that_cannot_be_written_leaves_nothing_behind(tmp_path) -> None:
    from clipsearch.errors import OutputFileError
    from clipsearch.web.gallery import write_gallery

    (tmp_path / "out").mkdir()
    for target in (tmp_path / "nowhere" / "page.html", tmp_path / "out"):
        with pytest.raises(OutputFileError) as info:
            write_gallery(target, "a query", [])
        assert info.value.exit_code == 1 and str(target) in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]
