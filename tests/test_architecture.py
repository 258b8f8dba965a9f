"""The house: the package's import graph, read from the source, has no cycles and no forbidden edges.

Every import counts: module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only
cycle is still two rooms that know each other). See ``../shared/STYLE.md`` and the README's
"How it is built".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import clipsearch

PACKAGE = Path(clipsearch.__file__).parent

#: The stages of the data flow; none of them may import a front end or the façade.
STAGES = ("store", "encoders", "ingest", "query", "shapes")
FRONT = ("clipsearch.api", "clipsearch.cli", "clipsearch.web", "clipsearch.demo")
HEAVY = ("torch", "torchvision", "open_clip", "timm", "onnxruntime", "onnx")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> package modules it imports, module -> top-level outside packages it imports)."""
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    inside: dict[str, set[str]] = {name: set() for name in files}
    outside: dict[str, set[str]] = {name: set() for name in files}
    top = root.name
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    while target not in files and "." in target:  # `import a.b.c` of a name in a.b
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        inside[name].add(target)
                else:
                    outside[name].add(target.split(".")[0])
    return inside, outside


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def forbidden(inside: dict[str, set[str]], outside: dict[str, set[str]], top: str) -> list[str]:
    """Every edge the house rules out, as 'a -> b (why)'."""
    bad = []
    for module, targets in inside.items():
        stage = next((s for s in STAGES if in_room(module, f"{top}.{s}")), None)
        for target in sorted(targets):
            why = None
            if in_room(module, f"{top}.store") and in_room(target, f"{top}.encoders"):
                why = "storage knows no model"
            elif in_room(module, f"{top}.encoders") and in_room(target, f"{top}.store"):
                why = "an encoder knows no index"
            elif in_room(module, f"{top}.encoders") and in_room(target, f"{top}.shapes"):
                why = "bundled models register themselves"
            elif in_room(module, f"{top}.query") and in_room(target, f"{top}.ingest"):
                why = "searching never writes"
            elif stage and any(in_room(target, f.replace("clipsearch", top, 1)) for f in FRONT):
                why = "a stage takes a store and an encoder, never a front end"
            elif target == f"{top}.cli" and module != f"{top}.__main__":
                why = "only the entry point imports the CLI"
            if why:
                bad.append(f"{module} -> {target} ({why})")
        if in_room(module, f"{top}.store"):
            bad += [
                f"{module} -> {h} (storage imports no model code)"
                for h in sorted(outside[module] & set(HEAVY))
            ]
    return bad


def test_the_package_has_no_import_cycles() -> None:
    inside, _ = import_graph(PACKAGE)
    assert cycles(inside) == []


def test_no_room_imports_what_it_must_not() -> None:
    inside, outside = import_graph(PACKAGE)
    assert forbidden(inside, outside, PACKAGE.name) == []


def test_every_stage_has_its_room() -> None:
    for stage in (*STAGES, "web"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg import a\n"}, ["pkg.a", "pkg.b"]),
        (
            {
                "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n",
                "b.py": "from .a import Y\n",
            },
            ["pkg.a", "pkg.b"],
        ),
    ],
)
def test_the_checker_finds_hidden_cycles(tmp_path: Path, files: dict[str, str], cycle: list[str]) -> None:
    """Function-level, TYPE_CHECKING and relative imports all count (the tree before the move had two)."""
    root = _write(tmp_path / "pkg", {"__init__.py": "", **files})
    inside, _ = import_graph(root)
    assert cycles(inside) == [cycle]


def test_the_checker_finds_forbidden_edges(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "api.py": "",
            "store/__init__.py": "",
            "store/folder.py": "def f():\n    import torch\n    from pkg.encoders.loading import g\n",
            "encoders/__init__.py": "",
            "encoders/loading.py": "import pkg.shapes\nfrom pkg.store import folder\n",
            "shapes/__init__.py": "",
            "query/__init__.py": "",
            "query/vector.py": "from pkg.ingest import decode\nfrom pkg.api import Index\n",
            "ingest/__init__.py": "",
            "ingest/decode.py": "",
        },
    )
    inside, outside = import_graph(root)
    assert sorted(forbidden(inside, outside, "pkg")) == [
        "pkg.encoders.loading -> pkg.shapes (bundled models register themselves)",
        "pkg.encoders.loading -> pkg.store.folder (an encoder knows no index)",
        "pkg.query.vector -> pkg.api (a stage takes a store and an encoder, never a front end)",
        "pkg.query.vector -> pkg.ingest.decode (searching never writes)",
        "pkg.store.folder -> pkg.encoders.loading (storage knows no model)",
        "pkg.store.folder -> torch (storage imports no model code)",
    ]


# ------------------------------------------------------------------ messages

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
#: Modules that speak to a command line of their own: the CLI, the demo script it runs, the web server
#: (its messages name no flags either, but they are phrased for the page), and the shapes trainer's
#: argparse front end.
FRONT_FILES = ("cli.py", "demo.py", "shapes/train.py")


def flags_in_messages(root: Path) -> list[str]:
    """Every string literal of the library (docstrings aside) that names a ``--flag``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in FRONT_FILES or rel.startswith("web/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{rel}:{node.lineno}: {flag}" for flag in FLAG.findall(node.value)]
    return found


def test_no_library_message_names_a_cli_flag() -> None:
    """A Python user is never told to "pass --rebuild": the library raises typed errors with facts and
    the CLI (``cli.phrase``) adds flags. The old tree (1f3fcc9) had 35 such literals."""
    assert flags_in_messages(PACKAGE) == []


def test_the_flag_check_sees_a_flag_in_a_message(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "x.py").write_text(
        '"""Run with --rebuild (a docstring may say so)."""\n'
        "def f():\n    raise ValueError('Re-create it with --rebuild.')\n"
    )
    assert flags_in_messages(tmp_path) == ["store/x.py:3: --rebuild"]
