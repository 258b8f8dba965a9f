"""Evaluation sets: the queries to score and what is relevant to each, from the stored marks or a JSONL file.

Relevance is per file: a query's relevant files are the files of its relevant pictures (identical
copies included), as a search lists them. :func:`relevant_paths` resolves a query's relevance in a
given index (another index of the same photos resolves the same marks to its own files).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipsearch.errors import UsageError
from clipsearch.query.grammar import QuerySyntaxError, parse_query
from clipsearch.query.judgements import JudgedPathError, content_ids_of
from clipsearch.store.catalog import Catalog, Judgement

_GLOB = frozenset("*?[")


class NoJudgementsError(UsageError):
    """An evaluation or a fit was asked of an index that holds no usable marks."""

    def __init__(self, index: Path, problem: str) -> None:
        super().__init__(f"{problem} (index {index}).")
        self.index = index
        self.problem = problem


class EvalFileError(UsageError):
    """An evaluation file cannot be used; ``line`` is 1-based (0: the file as a whole)."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class EvalQuery:
    """A query and what is relevant to it: picture hashes (stored marks) or paths and patterns (a
    file: absolute, or a pattern without ``/`` matched against file names); ``line`` in the file."""

    query: str
    hashes: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class EvalSet:
    """The queries to score; ``source`` is ``judgements`` or the file's path."""

    source: str
    queries: tuple[EvalQuery, ...]
    path: Path | None = None


def from_judgements(marks: Sequence[Judgement], index: Path) -> EvalSet:
    """Every stored query with at least one picture marked relevant (indexed now or not: another
    index of the same photos may hold it).

    Raises:
        NoJudgementsError: there are no marks, or none says relevant.
    """
    if not marks:
        raise NoJudgementsError(index, "The index holds no judgements yet, so there is nothing to score")
    relevant: dict[str, set[str]] = {}
    for mark in marks:
        relevant.setdefault(mark.query, set())
        if mark.relevant:
            relevant[mark.query].add(mark.hash)
    queries = tuple(EvalQuery(q, frozenset(h)) for q, h in relevant.items() if h)
    if not queries:
        raise NoJudgementsError(
            index, "The index's judgements mark no picture relevant, so there is nothing to find"
        )
    return EvalSet("judgements", queries)


def read_eval_file(path: Path) -> EvalSet:
    """Read a JSONL file: one ``{"query": "...", "relevant": ["path", "*pattern*", ...]}`` per line
    (blank lines are skipped). Relative paths and patterns with a ``/`` are relative to the file's
    folder; a pattern without ``/`` matches file names in any folder; ``*`` matches across folders.

    Raises:
        EvalFileError: the file cannot be read, is empty, or a line is malformed (with its number).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EvalFileError(path, 0, f"cannot be read ({problem})") from None
    base = path.absolute().parent
    queries = [
        _eval_line(path, base, no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()
    ]
    if not queries:
        raise EvalFileError(path, 0, 'holds no queries; write one {"query": ..., "relevant": [...]} per line')
    return EvalSet(str(path), tuple(queries), path)


def _eval_line(path: Path, base: Path, no: int, line: str) -> EvalQuery:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvalFileError(path, no, f"not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise EvalFileError(path, no, 'not a JSON object; write {"query": ..., "relevant": [...]}')
    query, relevant = row.get("query"), row.get("relevant")
    if not isinstance(query, str) or not query.strip():
        raise EvalFileError(path, no, '"query" must be a non-empty string')
    if not isinstance(relevant, list) or not relevant or not all(isinstance(r, str) and r for r in relevant):
        raise EvalFileError(path, no, '"relevant" must be a non-empty list of paths or patterns')
    try:
        parse_query(query)
    except QuerySyntaxError as exc:
        raise EvalFileError(path, no, f"the query is malformed: {str(exc).splitlines()[0]}") from None
    patterns = tuple(
        r if "/" not in r and _GLOB & set(r) else os.path.join(base, os.path.expanduser(r)) for r in relevant
    )
    return EvalQuery(query, patterns=patterns, line=no)


def relevant_paths(query: EvalQuery, catalog: Catalog, names: IndexedPaths, source: Path | None) -> set[str]:
    """The indexed files relevant to ``query`` in this index.

    Raises:
        EvalFileError: a literal path of the file names no indexed picture, or a pattern matches none.
    """
    if query.hashes:
        ids = catalog.contents_with_hashes(sorted(query.hashes))
        return {e.path for files in catalog.entries_of(sorted(ids.values())).values() for e in files}
    out: set[str] = set()
    for pattern in query.patterns:
        if not _GLOB & set(pattern):
            path = os.path.normpath(pattern)
            state = catalog.file(path)
            if state is None or state.content_id is None:
                problem = _unindexed(catalog, path)
                raise EvalFileError(source or Path("?"), query.line, problem)
            out.add(path)
            continue
        found = names.matching(pattern)
        if not found:
            raise EvalFileError(source or Path("?"), query.line, f"no indexed file matches {pattern!r}")
        out |= found
    return out


def _unindexed(catalog: Catalog, path: str) -> str:
    try:
        content_ids_of(catalog, [path])
    except JudgedPathError as exc:
        return str(exc).rstrip(".")
    return f"{path} is not in the index"


class IndexedPaths:
    """Every indexed path of a catalog, read once, for patterns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._paths: list[str] | None = None

    def matching(self, pattern: str) -> set[str]:
        if self._paths is None:
            self._paths = [
                p
                for root in self.catalog.roots()
                for p, s in self.catalog.files_under(root).items()
                if s.content_id is not None
            ]
        if "/" in pattern:
            return {p for p in self._paths if fnmatch.fnmatchcase(p, pattern)}
        return {p for p in self._paths if fnmatch.fnmatchcase(os.path.basename(p), pattern)}
