"""Tier 1: walking folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipsearch.ingest.scan import scan
from clipsearch.ingest.sync import normalize_roots


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(records) -> list[str]:
    return sorted(os.path.basename(r.path) for r in records)


def test_finds_images_recursively_and_ignores_other_files(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "sub" / "deeper" / "b.PNG")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "with space.webp")
    records = list(scan([str(tmp_path)]))
    assert names(records) == ["a.jpg", "b.PNG", "with space.webp"]
    assert all(os.path.isabs(r.path) for r in records)
    rec = next(r for r in records if r.path.endswith("a.jpg"))
    st = os.stat(rec.path)
    assert (rec.size, rec.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_hidden_skipped_unless_asked(tmp_path: Path) -> None:
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".cache" / "c.jpg")
    touch(tmp_path / "v.jpg")
    assert names(scan([str(tmp_path)])) == ["v.jpg"]
    assert names(scan([str(tmp_path)], include_hidden=True)) == [".hidden.jpg", "c.jpg", "v.jpg"]


def test_symlink_loop_terminates_and_broken_link_ignored(tmp_path: Path) -> None:
    touch(tmp_path / "d" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "broken.jpg")
    assert names(scan([str(tmp_path)])) == ["x.jpg"]


def test_single_file_root_and_missing_root(tmp_path: Path) -> None:
    photo = touch(tmp_path / "one.jpg")
    assert names(scan([str(photo), str(tmp_path / "missing")])) == ["one.jpg"]


def test_normalize_roots_drops_nested_and_duplicates(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "ab")
    assert normalize_roots([a, a + "/x/y", b, a + "/"]) == [a, b]


def test_ignore_files_and_exclude_patterns(tmp_path: Path) -> None:
    touch(tmp_path / "keep.jpg")
    touch(tmp_path / "raw" / "a.jpg")
    touch(tmp_path / "trip" / "b.png")
    touch(tmp_path / "trip" / "b.tmp.png")
    touch(tmp_path / "trip" / "thumbs" / "t.jpg")
    touch(tmp_path / "trip" / "keep.tmp.png")
    (tmp_path / ".clipsearchignore").write_text("raw/\n# a comment\n")
    (tmp_path / "trip" / ".clipsearchignore").write_text("*.tmp.png\n!keep.tmp.png\n")
    assert names(scan([str(tmp_path)])) == ["b.png", "keep.jpg", "keep.tmp.png", "t.jpg"]
    assert names(scan([str(tmp_path)], exclude=["thumbs/", "keep.*"])) == ["b.png"]
    assert names(scan([str(tmp_path)], exclude=["/b.png"])) == ["b.png", "keep.jpg", "keep.tmp.png", "t.jpg"]


def test_a_bad_line_in_an_ignore_file_is_skipped_with_a_warning(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.png")
    touch(tmp_path / "raw" / "c.jpg")
    touch(tmp_path / "sub" / "d.jpg")
    touch(tmp_path / "sub" / "e.jpg")
    (tmp_path / ".clipsearchignore").write_text("raw/\n!\n[z-a]\n*.png\n")
    (tmp_path / "sub" / ".clipsearchignore").write_text("e.jpg\n\\\n")
    warnings: list[str] = []
    assert names(scan([str(tmp_path)], warn=warnings.append)) == ["a.jpg", "d.jpg"]
    top, sub = tmp_path / ".clipsearchignore", tmp_path / "sub" / ".clipsearchignore"
    assert [w.split(": ")[0] for w in warnings] == [f"{top}, line 2", f"{top}, line 3", f"{sub}, line 2"]
    assert "'[z-a]'" in warnings[1] and "bad character range z-a" in warnings[1]
    assert all("skipped" in w for w in warnings)


def test_an_oversized_ignore_file_is_not_read(tmp_path: Path) -> None:
    from clipsearch.ingest.scan import IGNORE_FILE_MAX_BYTES

    touch(tmp_path / "a.jpg")
    touch(tmp_path / "raw" / "b.jpg")
    (tmp_path / ".clipsearchignore").write_text("raw/\n" + "#" * IGNORE_FILE_MAX_BYTES)
    warnings: list[str] = []
    assert names(scan([str(tmp_path)], warn=warnings.append)) == ["a.jpg", "b.jpg"]
    assert len(warnings) == 1 and str(tmp_path / ".clipsearchignore") in warnings[0]
    assert "not read" in warnings[0] and f"{IGNORE_FILE_MAX_BYTES:,}" in warnings[0]


def test_a_bad_exclude_pattern_is_a_bad_value(tmp_path: Path) -> None:
    from clipsearch.errors import BadValueError
    from clipsearch.ingest.sync import SyncOptions

    touch(tmp_path / "a.jpg")
    for pattern in ("!", "[z-a]"):
        with pytest.raises(BadValueError) as info:
            list(scan([str(tmp_path)], exclude=["ok/", pattern]))
        assert (info.value.name, info.value.value) == ("exclude", pattern)
        assert "not a valid gitignore pattern" in info.value.problem
        with pytest.raises(BadValueError):  # checked when the options are made, before any work
            SyncOptions(exclude=("*.png", pattern))


def test_a_link_into_or_above_a_root_is_not_followed(tmp_path: Path) -> None:
    """One file, one path: a link up to the root's parent used to walk the parent's files in again."""
    photos = tmp_path / "photos"
    touch(photos / "a.jpg")
    touch(photos / "2019" / "b.jpg")
    touch(tmp_path / "elsewhere" / "c.jpg")
    os.symlink("..", photos / "2019" / "loop")  # up to the parent: holds the root
    os.symlink(".", photos / "2019" / "self")  # the root itself
    os.symlink(photos / "a.jpg", photos / "2019" / "linked.jpg")  # a linked file is still a file
    os.symlink(tmp_path / "elsewhere", photos / "2019" / "out")  # outside every root: followed
    assert sorted(r.path for r in scan([str(photos / "2019")])) == [
        str(photos / "2019" / "b.jpg"),
        str(photos / "2019" / "linked.jpg"),
        str(photos / "2019" / "out" / "c.jpg"),
    ]
    os.symlink(photos / "2019", tmp_path / "elsewhere" / "back")  # into another root of the index
    records = scan([str(tmp_path / "elsewhere")], avoid=[str(photos)])
    assert [r.path for r in records] == [str(tmp_path / "elsewhere" / "c.jpg")]


def test_indexed_names_are_those_whose_splitext_extension_is_indexed() -> None:
    """is_indexed_name (asked of every file a scan meets, without os.path's calls) agrees with
    ``os.path.splitext`` on names and paths: leading dots, several dots, case, folders."""
    import itertools

    from clipsearch.ingest.scan import INDEXED_EXTENSIONS, is_indexed_name

    parts = ["", ".", "..", "a", "b.c", "jpg", ".jpg", "JPG", ".JpEg", ".mp4", "x/", "/", ".png.", "é"]
    for k in (1, 2, 3):
        for combo in itertools.product(parts, repeat=k):
            name = "".join(combo)
            assert is_indexed_name(name) == (os.path.splitext(name)[1].lower() in INDEXED_EXTENSIONS), name
