"""Tier 1: the torch-free CLIP tokenizer gives exactly open_clip's tokens."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import open_clip
import pytest
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

from clipsearch.encoders.tokenizer import (
    _FTFY_NOOP,
    ClipTokenizer,
    clean_text,
    is_plain_clip_tokenizer,
    vocab_path,
)

TRICKY = [
    "a red car",
    "",
    " ",
    "   \t\n  ",
    "A Photo Of A DOG",
    "Café crème brûlée, naïve façade, Ångström, São Paulo",
    "e\u0301 (combining accent) vs é",
    "emoji 🚗🔥👍🏽 👨‍👩‍👧 flags 🇫🇷",
    "東京の夜景 北京 서울의 밤 ภาษาไทย",
    "Привет мир, γειά σου κόσμε, مرحبا",
    "punctuation!!! ??? ... --- (brackets) [x] {y} <z> @#$%^*~`|\\/",
    "don't it's we'll they're I've I'm he'd",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &amp;amp;amp; &quot;q&quot; &#39;s &eacute;",
    "numbers 0 12 345 6789 3.14159 1,000,000 ٣ ² ½",
    "mojibake: Ã©tÃ© cafÃ©",
    "ﬁne ligature, ＡＢＣ full width, “curly” ‘quotes’",
    "control\x00chars\x1b[31mred\x1b[0m and \x7f",
    "line\r\nbreaks\rand\u2028separators\u00a0nbsp",
    "<start_of_text> inside <END_OF_TEXT> text",
    "word " * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 300,
    "a" + "\u0301" * 40,
    "🍮" * 50,
]


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.parametrize("context_length", [77, 32, 16, 5, 2])
def test_same_tokens_as_open_clip(context_length: int) -> None:
    theirs = SimpleTokenizer(context_length=context_length)(TRICKY).numpy()
    mine = ClipTokenizer(context_length)(TRICKY)
    assert mine.dtype == np.int64 and mine.shape == (len(TRICKY), context_length)
    for text, a, b in zip(TRICKY, theirs, mine, strict=True):
        assert a.tolist() == b.tolist(), repr(text)


def test_long_text_keeps_the_end_token(reference: SimpleTokenizer) -> None:
    tokens = ClipTokenizer(77)(["word " * 100])[0]
    assert tokens[0] == reference.sot_token_id and tokens[-1] == reference.eot_token_id
    assert (tokens != 0).all()
    empty = ClipTokenizer(77)([""])[0]
    assert empty[:2].tolist() == [reference.sot_token_id, reference.eot_token_id] and not empty[2:].any()


@pytest.mark.slow
def test_every_vocabulary_word_gets_open_clips_ids(reference: SimpleTokenizer) -> None:
    """Each whole-word token of the vocabulary, tokenized alone: checks the merge ranks and ids."""
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    words = []
    for token in list(reference.encoder)[512:-2]:
        if token.endswith("</w>"):
            try:
                words.append(bytes(to_byte[c] for c in token[: -len("</w>")]).decode("utf-8"))
            except (UnicodeDecodeError, KeyError):
                continue
    assert len(words) > 20_000
    theirs = SimpleTokenizer(context_length=12)(words).numpy()
    mine = ClipTokenizer(12)(words)
    wrong = [w for w, a, b in zip(words, theirs, mine, strict=True) if a.tolist() != b.tolist()]
    assert not wrong, wrong[:10]


def test_the_models_own_tokenizers_are_recognised_and_matched() -> None:
    from clipsearch.shapes import MODEL_DIR

    shapes = open_clip.get_tokenizer(f"local-dir:{MODEL_DIR}")
    assert is_plain_clip_tokenizer(shapes) == 32
    assert is_plain_clip_tokenizer(open_clip.get_tokenizer("ViT-B-32")) == 77
    assert (shapes(TRICKY).numpy() == ClipTokenizer(32)(TRICKY)).all()


@pytest.mark.parametrize(
    "other",
    [
        SimpleTokenizer(clean="canonicalize"),
        SimpleTokenizer(clean="whitespace"),
        SimpleTokenizer(additional_special_tokens=["<mask>"]),
        SimpleTokenizer(reduction_mask="simple"),
        open_clip.tokenize,
        None,
    ],
    ids=["canonicalize", "whitespace", "extra-special", "reduction", "function", "none"],
)
def test_other_tokenizers_are_not_taken_for_clip_bpe(other: object) -> None:
    assert is_plain_clip_tokenizer(other) is None


def test_ascii_fast_path_is_what_ftfy_does() -> None:
    """Texts that skip ftfy must be texts ftfy leaves alone (up to what whitespace cleaning erases)."""
    import ftfy

    alphabet = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&") + "\t\n\r"
    rng = random.Random(7)
    samples = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(5000)]
    samples += ["a\r\nb", "x\ry", "<b>bold</b>", "it's 'quoted' \"double\"", "  lead and trail  "]
    for text in samples:
        assert _FTFY_NOOP.fullmatch(text)
        assert " ".join(ftfy.fix_text(text).split()) == " ".join(text.split()), repr(text)
    for text in ["&amp;", "é", "\x1b[31m", "\x00", "\x7f", "\u2028"]:
        assert not _FTFY_NOOP.fullmatch(text)
    assert clean_text("  A&amp;amp;B  ") == "a&b"


def test_no_torch_and_no_open_clip_import() -> None:
    code = (
        "import sys\n"
        "from clipsearch.encoders.tokenizer import ClipTokenizer\n"
        "assert ClipTokenizer(77)(['a red café &amp; 🚗']).shape == (1, 77)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert vocab_path() is not None and vocab_path().name == "bpe_simple_vocab_16e6.txt.gz"


def test_merges_saved_as_json_give_the_same_tokens() -> None:
    import json

    from clipsearch.encoders.tokenizer import read_merges

    merges, sha = read_merges()
    assert len(sha) == 64 and merges[0] == "i n"
    again = ClipTokenizer(77, json.loads(json.dumps(merges, ensure_ascii=False)))
    assert (again(TRICKY) == ClipTokenizer(77)(TRICKY)).all()
    for bad in (merges[:-1], [*merges[:-1], 5], tuple(merges)):
        with pytest.raises(ValueError):
            ClipTokenizer(77, bad)  # type: ignore[arg-type]
