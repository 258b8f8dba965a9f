"""The per-machine model cache: files any index of a model may reuse (exported text encoders, previews).

The location is configuration (:class:`ModelCache`), chosen at the edge: the CLI reads
``$CLIPSEARCH_CACHE``; a Python caller passes a folder or takes the user's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsearch.encoders.facts import ModelPreview
from clipsearch.encoders.pixels import PixelTransform
from clipsearch.encoders.spec import ModelSpec


@dataclass(frozen=True)
class ModelCache:
    """Where per-machine model files live.

    Args:
        root: the cache folder (``text-onnx/`` and ``models/`` inside).
    """

    root: Path

    @classmethod
    def default(cls) -> ModelCache:
        """The user's cache folder (e.g. ``~/.cache/clipsearch``)."""
        import platformdirs

        return cls(Path(platformdirs.user_cache_dir("clipsearch")))

    @property
    def text_onnx(self) -> Path:
        """The folder holding exported text encoders."""
        return self.root / "text-onnx"

    def preview_file(self, spec: ModelSpec) -> Path:
        from importlib.metadata import PackageNotFoundError, version

        try:
            open_clip_version = version("open_clip_torch")
        except PackageNotFoundError:
            open_clip_version = "?"
        key = json.dumps([spec.name, spec.pretrained, open_clip_version])
        return self.root / "models" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def preview(self, spec: ModelSpec) -> ModelPreview | None:
        """The preview kept for this model on this machine, if any (reads one small file; no torch)."""
        try:
            data = json.loads(self.preview_file(spec).read_text())
            transform = {
                k: tuple(v) if isinstance(v, list) else v for k, v in data["pixel_transform"].items()
            }
            return ModelPreview(
                str(data["weights_sha256"]),
                int(data["dim"]),
                (int(data["image_size"][0]), int(data["image_size"][1])),
                PixelTransform(**transform),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):  # none yet, or unreadable
            return None

    def remember_preview(self, spec: ModelSpec, preview: ModelPreview | None) -> None:
        """Keep ``preview`` for the next sync of this model, or forget a wrong one (None); best effort."""
        path = self.preview_file(spec)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if preview is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(preview)))
            os.replace(tmp, path)
        except OSError:  # a read-only or full cache only costs the next sync a few seconds
            tmp.unlink(missing_ok=True)
