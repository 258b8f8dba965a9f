"""Set up rclip 4.x for an offline benchmark: its venv, and its ONNX model files exported from open_clip.

rclip (github.com/yurijmikhalevich/rclip) 4.x needs Python >= 3.12, so its venv is made with a
Python found on PATH or among pyenv's versions (not necessarily the one running the benchmark). It
runs ONNX Runtime and loads, from its data dir ($RCLIP_DATADIR, else ~/.local/share/rclip),
``<MODEL_SUBDIR>/visual.onnx``, ``textual.onnx``, ``tokenizer/bpe_simple_vocab_16e6.txt.gz`` and four
licence files beside them (rclip/model_download.py); it downloads whichever is missing from Hugging
Face. Offline, we export the model files here from a random-weight open_clip ViT-B-32-256 exactly as
rclip's scripts/convert_model.py exports the released model (256 px input, fp32, opset 18, inputs and
outputs named ``input`` and ``output``), and write placeholder licence files (rclip only checks they
exist). Its index is ``db.sqlite3`` in the same data dir.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from contextlib import closing
from pathlib import Path

# The rclip the benchmarks compare with (2026-10); it needs Python >= 3.12.
RCLIP_PACKAGE, RCLIP_MIN_PYTHON = "rclip==4.0.8", (3, 12)
# rclip 4.x: its data dir holds <MODEL_SUBDIR>/{visual,textual}.onnx and the tokenizer vocabulary
RCLIP_MODEL, RCLIP_IMAGE_SIZE, RCLIP_CONTEXT = "ViT-B-32-256", 256, 77
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
# ... and these licence files beside them (downloaded when missing, even if the model files are there)
RCLIP_LEGAL_FILES = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")


class RclipUnavailable(Exception):
    """rclip could not be installed, set up or run; the message says why."""


def python_version(python: str) -> tuple[int, int] | None:
    """(major, minor) of the interpreter ``python``, or None when it does not run (a pyenv shim of a
    version that is not selected, say)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        major, minor = (int(part) for part in done.stdout.split())
    except ValueError:
        return None
    return (major, minor) if done.returncode == 0 else None


def find_python(minimum: tuple[int, int] = RCLIP_MIN_PYTHON) -> str:
    """An interpreter of at least ``minimum``: this one, else python3.X on PATH, else pyenv's (the
    oldest that is new enough, as rclip's own CI tests it)."""
    candidates = [sys.executable]
    later = [f"python{minimum[0]}.{minor}" for minor in range(minimum[1], minimum[1] + 4)]
    candidates += [found for name in later if (found := shutil.which(name))]
    pyenv_root = os.environ.get("PYENV_ROOT") or (
        subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        if shutil.which("pyenv")
        else ""
    )
    if pyenv_root:
        versions = Path(pyenv_root) / "versions"
        folders = [p for p in versions.glob(f"{minimum[0]}.*") if _version_key(p.name)[:2] >= minimum]
        folders.sort(key=lambda p: _version_key(p.name))
        candidates += [str(p / "bin" / "python3") for p in folders]
    for python in candidates:
        version = python_version(python)
        if version is not None and version >= minimum:
            return python
    wanted = ".".join(map(str, minimum))
    raise RclipUnavailable(
        f"rclip needs Python >= {wanted} and none was found (tried {', '.join(candidates)}): install one "
        f"(e.g. `pyenv install {wanted}`) or pass its path with --rclip-python"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def installed_rclip(venv: Path) -> str | None:
    """The version of rclip installed in ``venv``, or None."""
    python = venv / "bin" / "python"
    if not python.is_file():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('rclip'))"],
        capture_output=True,
        text=True,
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def ensure_rclip(
    venv: Path, package: str = RCLIP_PACKAGE, python: str | None = None, *, replace: bool = True
) -> Path:
    """The rclip executable in ``venv``, made with ``pip install <package>`` unless the venv already
    holds an rclip that ``package`` accepts. Another rclip there is replaced if ``replace`` (a venv
    the benchmark made), else refused (a venv the user named)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        wanted = Requirement(package)
    except InvalidRequirement as error:
        raise RclipUnavailable(f"{package!r} is not a pip requirement: {error}") from error
    exe = venv / "bin" / "rclip"
    have = installed_rclip(venv)
    if exe.is_file() and have is not None and wanted.specifier.contains(have, prereleases=True):
        return exe
    python = python or find_python()
    why = f"it holds rclip {have}" if have else "it has no rclip"
    if venv.exists():
        if not replace:
            raise RclipUnavailable(f"{venv} cannot be used: {why}, and {package} is wanted")
        print(f"replacing {venv} ({why}; {package} wanted) ...", file=sys.stderr)
        shutil.rmtree(venv)
    print(f"installing {package} into {venv} with {python} ...", file=sys.stderr)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in ([python, "-m", "venv", str(venv)], [*pip, package]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RclipUnavailable(f"`{' '.join(step)}` failed (exit {done.returncode}):\n{tail}")
    if not exe.is_file():
        raise RclipUnavailable(f"{package} installed into {venv} but {exe} is missing")
    return exe


def export_rclip_model(dest: Path) -> None:
    """rclip's data-dir model files, exported from a random ViT-B-32-256 as rclip's convert_model.py does."""
    wanted = [f"{RCLIP_MODEL_SUBDIR}/visual.onnx", f"{RCLIP_MODEL_SUBDIR}/textual.onnx", RCLIP_VOCAB]
    if all((dest / name).is_file() for name in (*wanted, *RCLIP_LEGAL_FILES)):
        return
    import open_clip
    import torch

    print(f"exporting random-weight {RCLIP_MODEL} to ONNX for rclip in {dest} ...", file=sys.stderr)

    class Visual(torch.nn.Module):
        def __init__(self, visual: torch.nn.Module) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.visual(inputs)

    class Textual(torch.nn.Module):
        def __init__(self, clip: torch.nn.Module) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.clip.encode_text(inputs)

    torch.manual_seed(0)
    model = open_clip.create_model(RCLIP_MODEL, pretrained=None).eval()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / RCLIP_MODEL_SUBDIR).mkdir(parents=True)
    exports = (
        (Visual(model.visual), torch.randn(1, 3, RCLIP_IMAGE_SIZE, RCLIP_IMAGE_SIZE), "visual.onnx"),
        (Textual(model), torch.zeros(1, RCLIP_CONTEXT, dtype=torch.long), "textual.onnx"),
    )
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # as convert_model.py: the fused kernel does not export
    try:
        for wrapper, dummy, name in exports:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
                torch.onnx.export(
                    wrapper.eval(),
                    (dummy,),
                    str(tmp / RCLIP_MODEL_SUBDIR / name),
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    opset_version=18,
                    dynamo=False,
                )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    vocab = tmp / RCLIP_VOCAB
    vocab.parent.mkdir(parents=True)
    shutil.copy2(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
    for name in RCLIP_LEGAL_FILES:
        (tmp / name).write_text("Random-weight model exported by clipsearch benchmarks/compare.py.\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def rclip_datadir(datadir: Path, model_files: Path) -> None:
    """A fresh rclip data dir (its db.sqlite3 goes here) whose model files link to ``model_files``."""
    shutil.rmtree(datadir, ignore_errors=True)
    datadir.mkdir(parents=True)
    for entry in model_files.iterdir():
        (datadir / entry.name).symlink_to(entry.resolve())


def rclip_db_stats(datadir: Path) -> tuple[int, int]:
    """(images indexed, bytes of the database files) of an rclip data dir."""
    db = datadir / "db.sqlite3"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        (count,) = con.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL").fetchone()
    size = sum(p.stat().st_size for p in datadir.glob("db.sqlite3*"))
    return int(count), size
