"""CLIP's byte-level BPE tokenizer without torch: texts -> int64 token arrays, as open_clip makes them.

It reads open_clip's own vocabulary file (found without importing open_clip, which imports torch)
and reproduces ``open_clip.tokenizer.SimpleTokenizer`` with its default settings: the ``lower``
text cleaning, start/end tokens, truncation that keeps the end token, zero padding. Models whose
tokenizer is anything else (Hugging Face tokenizers, SigLIP) are recognised by
:func:`is_plain_clip_tokenizer` and must not use this one.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import itertools
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: What the exported text encoder's settings call this tokenizer.
KIND = "clip-bpe"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # open_clip reads this many merge lines after the header line
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")

# Texts made only of these characters, without '&', come out of ftfy.fix_text unchanged (checked by
# tests/test_tokenizer.py against ftfy), so the usual short ASCII query skips importing ftfy.
_FTFY_NOOP = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


def vocab_path() -> Path | None:
    """open_clip's bundled BPE vocabulary, located without importing open_clip (and torch)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    return None


def _byte_chars() -> dict[int, str]:
    """Byte value -> a printable character standing for it (GPT-2's reversible mapping), in vocab order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - len(printable))
    return chars


def _base_vocab() -> list[str]:
    """The 512 single-symbol tokens in the order of their ids: bytes, then bytes ending a word."""
    chars = list(_byte_chars().values())
    return chars + [c + "</w>" for c in chars]


def read_merges(path: Path | None = None) -> tuple[list[str], str]:
    """The BPE merges of open_clip's vocabulary file, in rank order, and the file's sha256.

    Raises:
        FileNotFoundError: no vocabulary file (open_clip is not installed).
    """
    path = path or vocab_path()
    if path is None:
        raise FileNotFoundError(f"{VOCAB_FILE} not found: is open_clip installed?")
    raw = Path(path).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return lines[1 : _N_MERGES + 1], hashlib.sha256(raw).hexdigest()


def clean_text(text: str) -> str:
    """open_clip's ``lower`` cleaning: ftfy fix, HTML unescape twice, collapse whitespace, lowercase."""
    if not _FTFY_NOOP.fullmatch(text):
        try:
            import ftfy
        except ImportError:  # open_clip depends on ftfy, so this only happens without open_clip
            pass
        else:
            text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """CLIP's BPE tokenizer: ``tokenizer(["a red car"])`` -> int64 array ``(1, context_length)``.

    Args:
        context_length: tokens per text, start and end tokens included (77 for most CLIP models).
        merges: the BPE merges in rank order, ``"first second"`` each (default: read from open_clip's
            vocabulary file, see :func:`read_merges`).

    Raises:
        FileNotFoundError: no vocabulary file (open_clip is not installed).
        ValueError: ``merges`` is not a list of CLIP's 48,894 merges.
    """

    def __init__(self, context_length: int = 77, merges: list[str] | None = None) -> None:
        import regex

        if context_length < 2:
            raise ValueError(f"context_length must hold the start and end tokens, not {context_length}")
        if merges is None:
            merges, self.vocab_sha256 = read_merges()
        else:
            self.vocab_sha256 = ""
        if (
            not isinstance(merges, list)
            or len(merges) != _N_MERGES
            or not all(type(m) is str for m in merges)
        ):
            raise ValueError(f"expected CLIP's {_N_MERGES} BPE merges")
        self.merges = merges
        # "first second" -> rank. The token a merge makes has id 512 + rank (open_clip's vocabulary is
        # the 512 byte symbols, then one token per merge, then the special tokens: all distinct).
        self._ranks: dict[str, int] = dict(zip(merges, range(len(merges)), strict=True))
        base = _base_vocab()
        self._base: dict[str, int] = {t: i for i, t in enumerate(base)}
        self._merged_offset = len(base)
        chars = _byte_chars()
        self._bytes = [chars[b] for b in range(256)]
        self.start_id = len(base) + len(merges)
        self.end_id = self.start_id + 1
        self.vocab_size = self.end_id + 1
        self._cache: dict[str, list[int]] = {
            SPECIAL_TOKENS[0]: [self.start_id],
            SPECIAL_TOKENS[1]: [self.end_id],
        }
        self.context_length = context_length
        specials = "|".join(SPECIAL_TOKENS)
        self._words = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )

    def _bpe(self, word: str) -> list[int]:
        """Token ids of one pre-split word (already mapped to byte characters)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        ids = [self._base[p] for p in parts]
        while len(parts) > 1:
            rank, at = min(
                (self._ranks.get(f"{a} {b}", _N_MERGES), i)
                for i, (a, b) in enumerate(itertools.pairwise(parts))
            )
            if rank == _N_MERGES:
                break
            first, second = parts[at], parts[at + 1]
            new_parts, new_ids = parts[:at], ids[:at]
            i = at
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    new_parts.append(first + second)
                    new_ids.append(self._merged_offset + rank)
                    i += 2
                else:
                    new_parts.append(parts[i])
                    new_ids.append(ids[i])
                    i += 1
            parts, ids = new_parts, new_ids
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without start/end tokens or truncation."""
        ids: list[int] = []
        for word in self._words.findall(clean_text(text)):
            ids.extend(self._bpe("".join(self._bytes[b] for b in word.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> npt.NDArray[np.int64]:
        """Tokens ``(n, context_length)``: start, text, end (kept when truncated), zeros."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [*[self.start_id, *self.encode(text)][: self.context_length - 1], self.end_id]
            out[row, : len(ids)] = ids
        return out


@lru_cache(maxsize=8)
def clip_tokenizer(context_length: int) -> ClipTokenizer:
    """A shared tokenizer per context length from open_clip's vocabulary (reading it takes ~70 ms)."""
    return ClipTokenizer(context_length)


def is_plain_clip_tokenizer(tokenizer: Any) -> int | None:
    """The context length if ``tokenizer`` is open_clip's plain CLIP BPE (which this module reproduces).

    Anything else (Hugging Face or SigLIP tokenizers, extra special tokens, other cleaning, token
    reduction) gives None. Call only where open_clip is imported anyway.
    """
    from open_clip import tokenizer as oc

    if type(tokenizer) is not oc.SimpleTokenizer:
        return None
    plain = (
        getattr(tokenizer, "reduction_fn", None) is None
        and getattr(tokenizer, "clean_fn", None) is oc._clean_lower
        and len(tokenizer.all_special_ids) == len(SPECIAL_TOKENS)
        and tokenizer.vocab_size == len(_base_vocab()) + _N_MERGES + len(SPECIAL_TOKENS)
        and isinstance(tokenizer.context_length, int)
    )
    return tokenizer.context_length if plain else None


def same_tokens(tokenizer: Any, mine: ClipTokenizer, texts: Iterable[str]) -> bool:
    """Whether an open_clip tokenizer and ours give identical tokens for ``texts``."""
    texts = list(texts)
    theirs = np.asarray(tokenizer(texts).numpy(), dtype=np.int64)
    return theirs.shape == (len(texts), mine.context_length) and bool((theirs == mine(texts)).all())
