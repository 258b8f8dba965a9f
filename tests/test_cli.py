"""Tier 2: the CLI end to end (typer's CliRunner and real subprocesses), output contracts and exit codes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch.cli import app, main

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


def _exact(row: dict, key: str = "path") -> str:
    """The path a JSON row names, exactly: from ``path_bytes`` when there is one."""
    raw = row.get(f"{key}_bytes")
    return os.fsdecode(base64.b64decode(raw)) if raw is not None else row[key]


def test_odd_file_names_round_trip(tmp_path, tiny_model) -> None:
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9 latin-1.png")  # not valid UTF-8
    twin = os.fsdecode(os.fsencode(str(folder)) + b"/twin \x9b[2J.png")  # a C1 byte: CSI on some terminals
    newline = folder / "two\nlines.png"
    Image.new("RGB", (40, 40), "red").save(odd)
    Image.new("RGB", (40, 40), "blue").save(newline)
    Path(twin).write_bytes(Path(odd).read_bytes())
    broken = os.fsdecode(os.fsencode(str(folder)) + b"/bad\xff\ttab.jpg")
    Path(broken).write_bytes(b"not a picture")
    idx = tmp_path / "idx"
    report = cli("index", folder, "--index", idx, "--model", tiny_model, "--json").stdout
    counts = json.loads(report)
    assert (counts["added"] + counts["reused"], counts["skipped"]) == (3, 1)  # the twin reuses odd's vector

    result = cli("search", "x", "--index", idx, "--json")
    result.stdout_bytes.decode("utf-8")  # strict: valid UTF-8, no lone surrogates, jq can read it
    assert "\\ud" not in result.stdout
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(_exact(h) for h in hits) == sorted([odd, twin, str(newline)])
    by_path = {_exact(h): h for h in hits}
    assert by_path[odd]["path"] == f"{folder}/caf\ufffd latin-1.png"
    assert base64.b64decode(by_path[odd]["path_bytes"]) == os.fsencode(odd)
    assert by_path[str(newline)]["path"] == str(newline) and "path_bytes" not in by_path[str(newline)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", h["date"]) for h in hits)
    plain = runner.invoke(app, ["search", "--image", odd, "--index", str(idx), "-k", "1"])
    assert plain.stdout_bytes == os.fsencode(odd) + b"\n"  # piped paths stay raw bytes
    nul = runner.invoke(app, ["search", "x", "--index", str(idx), "-0"]).stdout_bytes
    assert sorted(nul.split(b"\0")[:-1]) == sorted(os.fsencode(p) for p in (odd, twin, str(newline)))

    skipped = cli("info", "--index", idx, "--skipped", "--json")
    skipped.stdout_bytes.decode("utf-8")
    row = json.loads(skipped.stdout)
    assert _exact(row) == broken and row["path"] == f"{folder}/bad\ufffd\ttab.jpg"
    table = cli("info", "--index", idx, "--skipped").stdout_bytes
    assert table.count(b"\n") == 1 and table.endswith(os.fsencode(str(folder)) + b"/bad\xff\\ttab.jpg\n")

    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert info["roots"] == [str(folder)] and "roots_bytes" not in info

    groups = [json.loads(line) for line in cli("duplicates", "--index", idx, "--json").stdout.splitlines()]
    assert len(groups) == 1 and groups[0]["identical"] == [[0, 1]]
    assert [os.fsdecode(base64.b64decode(b)) for b in groups[0]["paths_bytes"]] == sorted([odd, twin])
    text = cli("duplicates", "--index", idx).stdout_bytes
    assert b"\x9b" not in text and b"twin \\x9b[2J.png" in text  # no raw control byte reaches the terminal


def test_search_table_on_a_terminal_escapes_names_and_marks_files_not_on_disk(tmp_path, tiny_encoder) -> None:
    import pty

    from PIL import Image

    from clipsearch.api import Index

    folder, drive = tmp_path / "odd", tmp_path / "drive"
    folder.mkdir()
    drive.mkdir()
    Image.new("RGB", (40, 40), "blue").save(folder / "two\nlines\x1b[31m.png")
    Image.new("RGB", (40, 40), "red").save(drive / "away.png")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(folder), str(drive)])
    drive.rename(tmp_path / "unplugged")
    main, secondary = pty.openpty()
    code = "import sys\nfrom clipsearch.cli import main\nsys.argv = ['clipsearch', *sys.argv[1:]]\nmain()\n"
    args = ["search", "x", "--index", str(tmp_path / "idx")]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], stdout=secondary, stderr=subprocess.PIPE, text=True, timeout=120
    )
    os.close(secondary)
    out = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(main, 4096):
            out += chunk
    os.close(main)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(out.decode().replace("\r\n", "\n").splitlines(), key=lambda line: "away" in line)
    assert re.fullmatch(r" +\d +-?\d\.\d{3}  .*/two\\nlines\\x1b\[31m\.png", lines[0]), lines
    assert re.fullmatch(rf" +\d +-?\d\.\d{{3}}  {drive}/away\.png  \[not on disk\]", lines[1]), lines
    assert len(lines) == 2 and "--available leaves them out" in proc.stderr


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


def _run_main(*args: str) -> subprocess.CompletedProcess[str]:
    """``clipsearch ARGS`` in a fresh process through main(); stderr ends with whether torch was imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr))\n"
        f"sys.argv = ['clipsearch', *{list(args)!r}]\nfrom clipsearch.cli import main\nmain()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_bad_index_input_is_refused_before_any_model_loads_or_folder_is_made(tmp_path, photos) -> None:
    idx, folder = tmp_path / "idx", str(photos["coffee"].parent)
    missing = _run_main("index", str(tmp_path / "nonexistent"), folder, "--index", str(idx))  # default model
    assert missing.returncode == 2, missing.stderr
    assert f"No such file or folder: {tmp_path / 'nonexistent'}" in missing.stderr
    assert "weights" not in missing.stderr and "Loading" not in missing.stderr
    unknown = _run_main("index", folder, "--index", str(idx), "--model", "ViT-Z-99")
    assert unknown.returncode == 2, unknown.stderr
    assert "Error: Unknown model 'ViT-Z-99'. Did you mean ViT-" in unknown.stderr
    assert "--pretrained" not in unknown.stderr and "Loading" not in unknown.stderr
    close = _run_main("index", folder, "--index", str(idx), "--model", "vit-b-33")
    assert close.returncode == 2 and "Did you mean ViT-B-32" in close.stderr
    for result in (missing, unknown, close):
        assert result.stderr.rstrip().endswith("NO-TORCH") and "Traceback" not in result.stderr
        assert result.stdout == ""
    assert not idx.exists()


def test_an_unknown_pretrained_tag_is_a_usage_error_naming_the_known_ones(tmp_path, photos) -> None:
    idx = tmp_path / "idx"
    result = cli(
        "index", photos["coffee"].parent, "--index", idx, "--model", "ViT-B-32", "--pretrained", "nope"
    )
    assert result.exit_code == 2
    assert "Unknown pretrained tag 'nope' for model ViT-B-32. Known tags: " in result.stderr
    assert "laion2b_s34b_b79k" in result.stderr and "Traceback" not in result.stderr
    assert not (idx / "catalog.sqlite").exists()


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


def test_version_completion_and_flags_without_a_value_in_help() -> None:
    from clipsearch import __version__

    version = cli("--version")
    assert version.exit_code == 0 and version.stdout == f"clipsearch {__version__}\n"
    top = cli("--help").stdout
    assert "--install-completion" in top and "--show-completion" in top
    for command in ("index", "search", "info", "duplicates", "serve", "demo"):
        text = cli(command, "--help").stdout
        assert "<bool>" not in text, command
        assert re.search(r"--json +Machine-readable", text) or command == "serve", command
    assert "<bool>" not in top and re.search(r"--help +Show this message", top)
    index_help = cli("index", "--help").stdout
    assert re.search(r"--rebuild +Re-index", index_help) and re.search(
        r"--quiet +-q +No progress", index_help
    )
    assert re.search(r"--batch-size +<int range>", index_help)  # options that take a value still say so
    search_help = cli("search", "--help").stdout
    assert re.search(r"--null +-0 +Print only paths", search_help)


def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str, cword: int) -> list[str]:
        code = "import sys\nsys.argv = ['clipsearch']\nfrom clipsearch.cli import main\nmain()\n"
        env = {
            **os.environ,
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
            "_CLIPSEARCH_COMPLETE": "complete_bash",
        }
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("clipsearch se", 1) == ["search", "serve"]
    assert complete("clipsearch search --so", 2) == ["--sort"]


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


@pytest.mark.slow
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


def test_python_dash_m_runs_the_cli_and_importing_its_module_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing the module must not start the CLI: spawned decoding workers re-import it (as
    ``__mp_main__``) when the CLI runs as ``python -m clipsearch``."""
    import importlib

    monkeypatch.setattr(sys, "argv", ["clipsearch", "no-such-command"])  # main() would exit 2 on it
    module = importlib.import_module("clipsearch.__main__")
    assert module.main is main
    command = [sys.executable, "-m", "clipsearch", "info", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
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
