"""`clipsearch search` answered by a running `clipsearch serve`: same hits, no torch in the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image
from test_server import _start_serving, _stop

from clipsearch.index import Index
from conftest import write_photos

CLI = (  # main() ends the process itself, after running the exit handlers
    "import atexit, sys, json\nfrom clipsearch.cli import main\n"
    "sys.argv = ['clipsearch', *json.loads(sys.argv[1])]\n"
    "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr))\n"
    "main()"
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, json.dumps(args)], capture_output=True, text=True, timeout=120
    )


def test_search_uses_a_warm_server_when_one_runs(tmp_path, tiny_encoder) -> None:
    photos = write_photos(tmp_path / "photos")
    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(tmp_path / "photos")])
    query = ["search", "a cat - a dog:0.5", "--index", str(index_dir), "--json", "-k", "4", "--type", "png"]
    local = cli(*query)
    assert local.returncode == 0 and "NO-TORCH" not in local.stderr  # no server: loads the model itself
    server, _, _ = _start_serving(index_dir, "127.0.0.1")
    try:
        assert (index_dir / "server.json").is_file()
        remote = cli(*query)
        assert remote.returncode == 0 and "NO-TORCH" in remote.stderr, remote.stderr
        strip = [{k: v for k, v in json.loads(x).items()} for x in remote.stdout.splitlines()]
        assert [h["path"] for h in strip] == [json.loads(x)["path"] for x in local.stdout.splitlines()]
        assert all(h["path"].endswith(".png") for h in strip) and len(strip) == 3
        indexed = cli(
            "search", "--image", str(photos["coffee"]), "--index", str(index_dir), "--json", "-k", "1"
        )
        assert json.loads(indexed.stdout)["path"] == str(photos["coffee"])
        assert "NO-TORCH" in indexed.stderr  # an indexed, unchanged image reuses its stored vector
        outside = tmp_path / "query.png"
        Image.open(photos["coffee"]).rotate(2).save(outside)
        other = cli("search", "--image", str(outside), "--index", str(index_dir), "--json", "-k", "1")
        assert "NO-TORCH" not in other.stderr  # image terms are encoded here, never sent to the server
        assert json.loads(other.stdout)["path"] == str(photos["coffee"])
    finally:
        assert _stop(server) == 0
    assert not (index_dir / "server.json").exists()  # withdrawn on exit
