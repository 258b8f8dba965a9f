"""Every notebook in notebooks/ runs top to bottom on this environment's Python, without touching the repo."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_NAME = "clipsearch-test"


def _environment_check() -> str:
    """Source of a first cell: the kernel must be this interpreter's environment and import this checkout."""
    import clipsearch

    return (
        "import sys\n"
        "import clipsearch\n"
        f"assert sys.prefix == {sys.prefix!r}, f'kernel runs in {{sys.prefix}}, not the test environment'\n"
        f"assert clipsearch.__file__ == {clipsearch.__file__!r}, f'kernel imports {{clipsearch.__file__}}'\n"
    )


def _install_kernel(jupyter_dir: Path) -> None:
    """A kernelspec that starts ipykernel on this very interpreter, whatever kernels the user has."""
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clipsearch tests",
        "language": "python",
    }
    folder = jupyter_dir / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_with_outputs(notebook: Path) -> None:
    """Notebooks are committed executed, so that they render with their figures on GitHub."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{notebook.name} has no code cells"
    unexecuted = [i for i, cell in enumerate(code) if cell.get("execution_count") is None]
    assert not unexecuted, f"{notebook.name}: code cells {unexecuted} were saved without running them"
    errors = [o for cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{notebook.name} was saved with an error output: {errors[0].get('ename')}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a copy in a temp folder; any cell error fails the test with the cell and its traceback."""
    import nbformat
    from nbclient import NotebookClient

    _install_kernel(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    before = notebook.read_bytes()
    copy = Path(shutil.copy(notebook, tmp_path / notebook.name))
    nb = nbformat.read(copy, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_environment_check()))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(nb, copy)
    assert notebook.read_bytes() == before, f"running {notebook.name} modified the file in the repo"
