"""Typed exceptions. The library raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class: the message is written for the user and says what to do next."""

    exit_code = 1


class UsageError(ClipsearchError):
    """The request itself is malformed (bad option value, unknown model name...)."""

    exit_code = 2


class ModelUnavailableError(ClipsearchError):
    """Model weights could not be found locally nor downloaded."""


class ModelMismatchError(ClipsearchError):
    """An index built with one model was asked to take vectors from another."""


class IndexNotFoundError(ClipsearchError):
    """No index exists at the given location."""


class IndexCorruptError(ClipsearchError):
    """Something exists at the index location but it is not a readable clipsearch index."""


class IndexAccessError(ClipsearchError):
    """The index folder cannot be read or written (permissions, full disk, removed folder...)."""


class IndexBusyError(ClipsearchError):
    """Another process holds the index's writer lock."""


class ImageError(ClipsearchError):
    """One image could not be used; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        # decoding workers send these back to the parent process: rebuild from both fields
        return (type(self), (self.reason, self.detail))
