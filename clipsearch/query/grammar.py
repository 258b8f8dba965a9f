"""The query language: terms (texts and image paths) joined by + and -, with optional weights.

Pure parsing, no numpy or torch, so ``clipsearch search --help`` can show the grammar cheaply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipsearch.errors import UsageError

GRAMMAR = (
    "A query is one or more terms joined by ' + ' or ' - ' (spaces around the sign), e.g.\n"
    "  a dog on a beach - people + ./holiday.jpg\n\n"
    "A sign stuck to the next word after a space subtracts or adds it too (red circle -blue). "
    "A term is text, or an image when it starts with '/', './', '../' or '~/'. Put a term in double "
    "quotes to keep a '+', '-' or spaces in it (\"rock + roll\", \"./my photos/cat.jpg\"). A weight is "
    "written after a colon (dog:0.5) or before a star (0.5*dog); the default is 1.\n\n"
    "The terms are combined in embedding space: each term is encoded to a unit vector, multiplied by "
    "its weight (negative after '-'; weights between -100 and 100), summed, and the sum is re-normalised."
)

#: Largest weight a term may carry (the sum is re-normalised: larger weights only drown the others).
MAX_WEIGHT = 100.0
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_IMAGE_PREFIXES = ("/", "./", "../", "~/")


class WeightError(UsageError):
    """A term's weight is 0, not a finite number, or larger than :data:`MAX_WEIGHT` either way."""

    def __init__(self, value: str, weight: float) -> None:
        self.value = value
        self.weight = weight
        self.problem = (
            "a weight of 0 removes the term; leave the term out instead"
            if weight == 0
            else f"a weight must be a number between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g} (not {weight:g})"
        )
        super().__init__(f"Query term {value!r}: {self.problem}.")


@dataclass(frozen=True)
class Term:
    """One part of a query: text or an image path, with a signed weight.

    Raises:
        WeightError: the weight is 0, not finite, or beyond ±:data:`MAX_WEIGHT` (checked here, so
            terms parsed from a query and terms built in Python are held to the same range).
    """

    kind: str  # "text" or "image"
    value: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise UsageError(f"A query term is 'text' or 'image', not {self.kind!r}.")
        if not (math.isfinite(self.weight) and 0 < abs(self.weight) <= MAX_WEIGHT):
            raise WeightError(self.value, self.weight)


class EmptyQueryError(UsageError):
    """A search with no terms at all."""

    def __init__(self) -> None:
        super().__init__("Nothing to search for: give a query or an image.")


class QuerySyntaxError(UsageError):
    """A malformed query expression; the message points at the problem."""

    def __init__(self, expr: str, position: int, problem: str) -> None:
        super().__init__(
            f"Bad query at position {position + 1}: {problem}\n  {expr}\n  {' ' * position}^\n"
            "The query grammar: terms joined by ' + ' or ' - ', quotes, weights (dog:0.5)."
        )
        self.position = position


def _split_weight(atom: str, expr: str, position: int) -> tuple[str, float]:
    """``dog:0.5`` / ``0.5*dog`` -> ("dog", 0.5); anything else keeps weight 1."""
    head, sep, tail = atom.rpartition(":")
    if sep and _NUMBER.match(tail.strip()):
        atom, weight = head.strip(), float(tail)
    else:
        head, sep, tail = atom.partition("*")
        if sep and _NUMBER.match(head.strip()):
            atom, weight = tail.strip(), float(head)
        else:
            weight = 1.0
    if not atom:
        raise QuerySyntaxError(expr, position, "a weight needs a term (e.g. dog:0.5)")
    return atom, weight


def make_term(
    atom: str, sign: float = 1.0, *, expr: str = "", position: int = 0, image: bool | None = None
) -> Term:
    """A term from one atom of text (weight syntax allowed); ``image=None`` guesses from a path prefix."""
    quoted = len(atom) >= 2 and atom[0] == atom[-1] == '"'
    body, weight = (atom[1:-1], 1.0) if quoted else _split_weight(atom.strip(), expr or atom, position)
    if quoted and not body.strip():
        raise QuerySyntaxError(expr or atom, position, "empty quotes")
    is_image = body.startswith(_IMAGE_PREFIXES) if image is None else image
    try:
        return Term("image" if is_image else "text", body, sign * weight)
    except WeightError as exc:
        raise QuerySyntaxError(expr or atom, position, exc.problem) from None


def parse_query(expr: str) -> list[Term]:
    """Parse the query grammar (see ``GRAMMAR``) into terms.

    Raises:
        QuerySyntaxError: with the position of the problem.
    """
    terms: list[Term] = []
    sign, start, i = 1.0, 0, 0
    pending_op: int | None = None  # position of an operator still waiting for its term
    atom_chars: list[str] = []

    def flush(end: int) -> None:
        nonlocal atom_chars
        atom = "".join(atom_chars).strip()
        if atom:
            terms.append(make_term(atom, sign, expr=expr, position=start))
        elif pending_op is not None or terms:
            raise QuerySyntaxError(expr, end if pending_op is None else pending_op, "expected a term here")
        atom_chars = []

    while i < len(expr):
        ch = expr[i]
        if ch == '"':
            close = expr.find('"', i + 1)
            if close < 0:
                raise QuerySyntaxError(expr, i, "this quote is never closed")
            if "".join(atom_chars).strip():
                raise QuerySyntaxError(expr, i, "a quoted term must stand alone between signs")
            start = i
            atom_chars = list(expr[i : close + 1])
            pending_op = None
            i = close + 1
            continue
        at_boundary = i == 0 or expr[i - 1].isspace()
        has_term = bool("".join(atom_chars).strip()) or bool(terms)
        spaced = i + 1 == len(expr) or expr[i + 1].isspace()
        # "red circle -blue": a sign after a space, stuck to the next word, subtracts it too
        stuck = has_term and pending_op is None and not spaced and expr[i + 1] not in "+-"
        if ch in "+-" and at_boundary and (spaced or stuck):
            if "".join(atom_chars).strip() or terms or pending_op is not None:
                flush(i)
            pending_op = i
            sign = 1.0 if ch == "+" else -1.0
            i += 1
            continue
        if not atom_chars or not "".join(atom_chars).strip():
            start = i
        if atom_chars and atom_chars[0] == '"' and not ch.isspace():
            raise QuerySyntaxError(expr, i, "a quoted term must stand alone between signs")
        atom_chars.append(ch)
        i += 1
        if pending_op is not None and not ch.isspace():
            pending_op = None
    if pending_op is not None:
        raise QuerySyntaxError(expr, pending_op, "expected a term after this sign")
    atom = "".join(atom_chars).strip()
    if atom:
        terms.append(make_term(atom, sign, expr=expr, position=start))
    if not terms:
        raise QuerySyntaxError(expr, 0, "the query is empty")
    return terms


def build_terms(
    query: str | None,
    *,
    images: list[str] = (),  # type: ignore[assignment]
    add: list[str] = (),  # type: ignore[assignment]
    sub: list[str] = (),  # type: ignore[assignment]
    sub_images: list[str] = (),  # type: ignore[assignment]
) -> list[Term]:
    """All the terms of a search: the query expression plus the --image/--add/--sub/--sub-image options."""
    terms = parse_query(query) if query is not None else []
    terms += [make_term(v, 1.0, image=True) for v in images]
    terms += [make_term(v, 1.0, image=False) for v in add]
    terms += [make_term(v, -1.0, image=False) for v in sub]
    terms += [make_term(v, -1.0, image=True) for v in sub_images]
    if not terms:
        raise EmptyQueryError
    return terms


def describe(terms: list[Term]) -> str:
    """The terms written back in the query grammar, e.g. ``beach + dog:0.5 - people``."""
    parts = []
    for i, term in enumerate(terms):
        sign = "-" if term.weight < 0 else "+"
        weight = abs(term.weight)
        value = f'"{term.value}"' if any(c in term.value for c in '+-:*"') else term.value
        text = value if weight == 1 else f"{value}:{weight:g}"
        parts.append(text if i == 0 and sign == "+" else f"{sign} {text}")
    return " ".join(parts)
