"""Tier 3 (loading): the default model, ViT-B-32 / laion2b_s34b_b79k, end to end through the CLI, offline.

The weights are random (no pretrained weights can be downloaded here) but the architecture, the
cache layout, the file names and the loading code are the real ones.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from clipsearch.cli import app

pytestmark = pytest.mark.slow  # random ViT-B-32 weights, then the full-size model through the CLI
runner = CliRunner()


def cli(*args: object) -> dict[str, object] | list[dict[str, object]]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return rows[0] if len(rows) == 1 else rows


def test_default_model_index_search_rename_delete(vit_b_32_cache, photos, tmp_path) -> None:
    folder, idx = photos["coffee"].parent, tmp_path / "idx"
    first = cli("index", folder, "--index", idx, "--json")  # no --model: the default
    assert first["added"] == len(photos)
    info = cli("info", "--index", idx, "--json")
    assert (info["model"], info["pretrained"], info["dim"]) == ("ViT-B-32", "laion2b_s34b_b79k", 512)

    hits = cli("search", "a photo of a cat", "--index", idx, "--json", "-k", "3")
    assert len(hits) == 3
    self_hit = cli("search", "--image", photos["astronaut"], "--index", idx, "--json", "-k", "1")
    assert self_hit["path"] == str(photos["astronaut"])

    again = cli("index", "--index", idx, "--json")
    assert (again["unchanged"], again["added"], again["updated"]) == (len(photos), 0, 0)

    renamed = folder / "cat renamed.png"
    os.rename(photos["chelsea"], renamed)
    photos["rocket"].unlink()
    after = cli("index", "--index", idx, "--json")
    assert (after["reused"], after["removed"], after["added"]) == (1, 2, 0)
    every = cli("search", "anything", "--index", idx, "--json", "-k", "50")
    paths = {h["path"] for h in every}
    assert str(renamed) in paths
    assert not paths & {str(photos["rocket"]), str(photos["chelsea"])}
