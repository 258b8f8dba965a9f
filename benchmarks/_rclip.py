"""Set up rclip 3.x for an offline benchmark: its venv, and its ONNX model files exported from open_clip.

rclip (github.com/yurijmikhalevich/rclip) runs ONNX Runtime and loads, from its data dir
($RCLIP_DATADIR, else ~/.local/share/rclip), ``<MODEL_SUBDIR>/visual.onnx``, ``textual.onnx`` and
``tokenizer/bpe_simple_vocab_16e6.txt.gz``; it downloads them from Hugging Face when they are
missing. Offline, we export them here from a random-weight open_clip ViT-B-32-256 exactly as
rclip's scripts/convert_model.py exports the released model. Its index is ``db.sqlite3`` in the
same data dir.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import warnings
from contextlib import closing
from pathlib import Path

# rclip 3.x: its data dir holds <MODEL_SUBDIR>/{visual,textual}.onnx and the tokenizer vocabulary
RCLIP_MODEL, RCLIP_IMAGE_SIZE, RCLIP_CONTEXT = "ViT-B-32-256", 256, 77
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
# rclip after 3.3.0 also wants these beside the model files (and downloads them when missing)
RCLIP_LEGAL_FILES = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")


class RclipUnavailable(Exception):
    """rclip could not be installed, set up or run; the message says why."""


def ensure_rclip(venv: Path, package: str) -> Path:
    """The rclip executable in ``venv``, made with ``pip install <package>`` if it is not there."""
    exe = venv / "bin" / "rclip"
    if exe.is_file():
        return exe
    print(f"installing {package} into {venv} ...", file=sys.stderr)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in ([sys.executable, "-m", "venv", str(venv)], [*pip, package]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RclipUnavailable(f"`{' '.join(step)}` failed (exit {done.returncode}):\n{tail}")
    if not exe.is_file():
        raise RclipUnavailable(f"{package} installed into {venv} but {exe} is missing")
    return exe


def export_rclip_model(dest: Path) -> None:
    """rclip's data-dir model files, exported from a random ViT-B-32-256 as rclip's convert_model.py does."""
    marker = dest / RCLIP_MODEL_SUBDIR / "textual.onnx"
    if marker.is_file():
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
