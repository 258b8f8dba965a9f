"""What model to use: its spec (name + pretrained tag), its precision, and the bundled-model registry.

Bundled models (the shapes demo model) register themselves through the ``clipsearch.models``
entry-point group (``pyproject.toml``), or by calling :func:`register_model`; this package never
imports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from clipsearch.errors import BadValueError, UsageError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
ENTRY_POINT_GROUP = "clipsearch.models"

#: How a model computes: ``auto`` means bf16 where the CPU computes bfloat16 natively, else fp32.
Precision = Literal["fp32", "bf16", "auto"]
#: A precision that is actually run (``auto`` resolved).
RunPrecision = Literal["fp32", "bf16"]


def parse_precision(value: str) -> Precision:
    """Validate a precision given as text (``fp32``, ``bf16`` or ``auto``)."""
    if value not in get_args(Precision):
        raise BadValueError("precision", value, "choose fp32, bf16 or auto")
    return cast(Precision, value)


def resolve_precision(precision: str) -> RunPrecision:
    """``auto`` -> ``bf16`` where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX), else ``fp32``."""
    precision = parse_precision(precision)
    if precision != "auto":
        return precision
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"


@dataclass(frozen=True)
class BundledModel:
    """A model that ships as an open_clip ``local-dir:`` folder inside an installed package.

    ``prepare`` runs before the model is built (e.g. to register a custom timm image tower).
    """

    folder: Path
    prepare: Callable[[], None] | None = None


_BUNDLED: dict[str, BundledModel] = {}
_discovered = False


def register_model(name: str, model: BundledModel) -> None:
    """Make ``name`` usable as a model name (``--model NAME``)."""
    _BUNDLED[name] = model


def bundled_model(name: str) -> BundledModel | None:
    """The bundled model registered under ``name``, discovering installed plugins on first use."""
    global _discovered
    if name not in _BUNDLED and not _discovered:
        _discovered = True
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name not in _BUNDLED:
                register = entry.load()
                register()
    return _BUNDLED.get(name)


def is_bundled(name: str) -> bool:
    return bundled_model(name) is not None


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, exactly as an index records it.

    Args:
        name: an open_clip model name (``ViT-B-32``), ``hf-hub:org/repo``, ``local-dir:/path`` or a
            bundled model name (``shapes``).
        pretrained: an open_clip pretrained tag, a path to a weights file, or ``""`` where the name
            carries its own weights (``hf-hub:``, ``local-dir:``, bundled).
    """

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED

    @classmethod
    def parse(cls, name: str | None, pretrained: str | None) -> ModelSpec:
        """Normalise user input: default tag only for the default model, absolute weights paths.

        Raises:
            BadValueError: an empty name, or weights given for a model that carries its own.
            UsageError: an open_clip model name without weights.
        """
        name = (name or DEFAULT_MODEL).strip()
        if not name:
            raise BadValueError("model", name, "the model name is empty (e.g. ViT-B-32 or shapes)")
        if name.startswith(("hf-hub:", "local-dir:")) or is_bundled(name):
            if pretrained:
                raise BadValueError("pretrained", pretrained, f"model {name} carries its own weights")
            return cls(name, "")
        check_model_name(name)
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL else ""
        if pretrained and looks_like_path(pretrained):
            pretrained = os.path.abspath(os.path.expanduser(pretrained))  # keep symlink names
        if not pretrained:
            raise MissingPretrainedError(name)
        return cls(name, pretrained)

    def label(self) -> str:
        """Human-readable form, e.g. ``ViT-B-32 (laion2b_s34b_b79k)``."""
        return f"{self.name} ({self.pretrained})" if self.pretrained else self.name


class MissingPretrainedError(UsageError):
    """An open_clip model name was given without a pretrained tag or weights file."""

    def __init__(self, model: str) -> None:
        super().__init__(f"Model {model} needs weights: a pretrained tag or a weights file.")
        self.model = model


class UnknownModelError(UsageError):
    """A model name that is neither open_clip's, nor ``hf-hub:``/``local-dir:``, nor bundled."""

    def __init__(self, model: str, suggestions: list[str]) -> None:
        hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"Unknown model {model!r}.{hint} Model names are open_clip's (ViT-B-32, ...), "
            "hf-hub:org/repo, local-dir:/path, or a bundled model (shapes)."
        )
        self.model = model
        self.suggestions = suggestions


def _config_names() -> set[str]:
    """open_clip's model names, read from its config folder without importing it (or torch)."""
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        return set()
    folder = Path(next(iter(found.submodule_search_locations))) / "model_configs"
    return {p.stem for p in folder.glob("*.json")}


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` (with close names) unless open_clip knows ``name``.

    Cheap (a folder listing, no torch import): a name open_clip's config folder lacks can only be
    known if it was registered at run time, which needs open_clip imported already.
    """
    names = _config_names()
    if name in names:
        return
    import difflib
    import sys

    known = set(names)
    if "open_clip" in sys.modules:
        known |= set(sys.modules["open_clip"].list_models())
    if name not in known:
        by_case = {n.lower(): n for n in known}
        close = difflib.get_close_matches(name.lower(), list(by_case), n=3, cutoff=0.6)
        raise UnknownModelError(name, [by_case[c] for c in close])


def looks_like_path(value: str) -> bool:
    """Whether a ``pretrained`` value names a file rather than an open_clip tag."""
    return (
        os.sep in value
        or value.startswith((".", "~"))
        or Path(value).suffix in {".safetensors", ".bin", ".pt", ".pth", ".npz"}
    )
