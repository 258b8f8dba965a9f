"""Typed exceptions carrying facts. The library raises these; the CLI and the web server phrase them.

A library message says what happened in terms a Python caller understands (which index, which
model, which path) and never names a command-line flag: ``cli.py`` adds the command to run next,
``web/server.py`` picks the HTTP status.
"""

from __future__ import annotations

from pathlib import Path


class ClipsearchError(Exception):
    """Base class: the message is written for the user."""

    exit_code = 1


class UsageError(ClipsearchError):
    """The request itself is malformed (bad option value, unknown model name...)."""

    exit_code = 2


class BadValueError(UsageError):
    """One named parameter has an unusable value.

    ``name`` is the parameter as the library calls it (``cutoff``, ``in``, ``min_side``); the CLI
    shows it as its flag (``--cutoff``), the web API as its query parameter.
    """

    def __init__(self, name: str, value: object, problem: str) -> None:
        super().__init__(f"{name} {value!r}: {problem}")
        self.name = name
        self.value = value
        self.problem = problem


class ModelUnavailableError(ClipsearchError):
    """Model weights could not be found locally nor downloaded, or could not be loaded.

    ``repo`` and ``filename`` name the Hugging Face download that would fix it, where there is one.
    """

    def __init__(self, model: str, problem: str, *, repo: str = "", filename: str = "") -> None:
        lines = [f"Cannot load the weights of model {model}.", problem]
        if repo:
            lines += [
                "To fix it: connect to the internet once (the weights are then cached for offline use); "
                f"or, on a machine with internet, download {filename} from https://huggingface.co/{repo} "
                "and give that file as the model's pretrained weights; or copy a Hugging Face cache that "
                f"holds {repo} to this machine and point HF_HUB_CACHE at it.",
            ]
        super().__init__("\n".join(lines))
        self.model = model
        self.problem = problem
        self.repo = repo
        self.filename = filename


class ModelMismatchError(ClipsearchError):
    """An index built with one model was asked to take vectors from another."""

    def __init__(self, index: Path, have: str, want: str) -> None:
        super().__init__(
            f"The index at {index} was built with model {have}, but the model now in use is {want}. "
            "Vectors of two models cannot be mixed."
        )
        self.index = index
        self.have = have
        self.want = want


class IndexNotFoundError(ClipsearchError):
    """No index exists at the given location."""

    def __init__(self, index: Path) -> None:
        super().__init__(f"No index at {index}.")
        self.index = index


class IndexCorruptError(ClipsearchError):
    """Something exists at the index location but it is not a readable clipsearch index.

    ``rebuildable``: the folder is a clipsearch index whose files are damaged (re-creating it
    helps); False for a foreign file or folder in the index's place.
    """

    def __init__(self, index: Path, problem: str, *, rebuildable: bool = True) -> None:
        super().__init__(problem)
        self.index = index
        self.rebuildable = rebuildable


class IndexAccessError(ClipsearchError):
    """The index folder cannot be read or written (permissions, full disk, removed folder...)."""

    def __init__(self, index: Path, problem: str) -> None:
        super().__init__(problem)
        self.index = index


class IndexGoneError(IndexAccessError):
    """The index folder was deleted (or replaced) while a writer was writing to it."""

    def __init__(self, index: Path) -> None:
        super().__init__(
            index,
            f"The index folder {index} was deleted while this run was writing to it: the index is gone, "
            "and nothing this run did was kept.",
        )


class IndexChangedError(ClipsearchError):
    """The index was replaced by a rebuild (with another model) while a search was under way."""

    def __init__(self, index: Path) -> None:
        super().__init__(f"The index at {index} was rebuilt while this search ran; search again.")
        self.index = index


class IndexBusyError(ClipsearchError):
    """Another process holds the index's writer lock."""

    def __init__(self, index: Path, pid: str) -> None:
        super().__init__(f"Another clipsearch process (pid {pid}) is writing to the index at {index}.")
        self.index = index
        self.pid = pid


class NoRootsError(UsageError):
    """A sync was asked to re-sync the recorded folders of an index that records none."""

    def __init__(self, index: Path) -> None:
        super().__init__(f"The index at {index} records no folders to index yet.")
        self.index = index


class NotARootError(UsageError):
    """A folder to forget is not one of the folders the index records."""

    def __init__(self, index: Path, root: str, roots: list[str]) -> None:
        super().__init__(
            f"{root} is not one of the folders the index at {index} records ({', '.join(roots) or 'none'})."
        )
        self.index = index
        self.root = root
        self.roots = roots


class RootInsideRootError(UsageError):
    """Settings were given for a folder that lies inside a folder the index records (whose settings apply)."""

    def __init__(self, root: str, enclosing: str) -> None:
        super().__init__(
            f"{root} lies inside {enclosing}, which the index records: the settings of {enclosing} "
            "apply to it."
        )
        self.root = root
        self.enclosing = enclosing


class MissingRootsError(ClipsearchError):
    """A rebuild needs every folder of the index, and some are missing (an unplugged drive?)."""

    def __init__(self, index: Path, missing: list[str]) -> None:
        super().__init__(
            f"Cannot rebuild the index at {index}: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (unmounted?), and its entries would be lost. "
            "Nothing was changed."
        )
        self.index = index
        self.missing = missing


class FolderNotIndexedError(UsageError):
    """A search was restricted to a folder that is not inside any indexed folder, or that does not
    exist and holds no indexed file (``missing``: a typo inside an indexed folder)."""

    def __init__(self, folder: str, roots: list[str], *, missing: bool = False) -> None:
        super().__init__(
            f"{folder}: no such folder, and no indexed file lies under it."
            if missing
            else f"{folder} is not inside an indexed folder ({', '.join(roots) or 'none yet'})."
        )
        self.folder = folder
        self.roots = roots
        self.missing = missing


class OutputFileError(ClipsearchError):
    """A file the caller asked to be written (an HTML gallery...) could not be written."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"Cannot write {path}: {problem}. Nothing was written there.")
        self.path = path
        self.problem = problem


class ImageError(ClipsearchError):
    """One image could not be used; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        # decoding workers send these back to the parent process: rebuild from both fields
        return (type(self), (self.reason, self.detail))
