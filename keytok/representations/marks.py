"""Where a text holds the key tokens (or BM25 terms) that matched: character spans at real positions.

A key token is marked where the tokenizer puts that very token in the text (its offsets), never where its
letters happen to occur: ``▁a`` is not marked inside "at", nor ``ther`` inside "there" (which the tokenizer
reads as ``▁there``). The marks go word by word: a word is marked only from its first piece (the one that
starts it) on, so a piece that continues a word is marked only inside a word whose first piece matched too;
and a word of which fewer than ``min_chars`` letters would be marked gets no mark (a lone ``▁a`` or ``s``
says nothing to a reader).
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from typing import Any

__all__ = ["mark_words", "token_marks", "token_pieces"]

_WORD = re.compile(r"[^\W_]+")

#: a piece of a text: (start, end, label), end exclusive, in characters of the text
Piece = tuple[int, int, str]


def token_pieces(tokenizer: Any, text: str, label: Any) -> list[Piece]:
    """The tokens of ``text`` as ``(start, end, label(token id))``, by the tokenizer's offsets, the space a
    word-start token carries left out. A tokenizer without offsets (a slow one) gives ``[]``."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pairs = list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return []
    out = []
    for tid, (a, b) in pairs:
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            out.append((int(a), int(b), label(int(tid))))
    return out


def mark_words(
    text: str, pieces: Sequence[Piece], wanted: Container[str], *, min_chars: int = 2
) -> list[Piece]:
    """The ``pieces`` whose label is ``wanted``, kept by the word rules of the module doc.

    ``pieces``: the text cut by a tokenizer or an analyzer, in order, each ``(start, end, label)``. A piece
    belongs to the word (run of letters and digits) where its first letter or digit lies; pieces with none
    (punctuation, spaces) are never marked.
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    by_word: dict[int, list[Piece]] = {}
    w = 0
    for a, b, label in pieces:
        first = next((i for i in range(a, min(b, len(text))) if text[i].isalnum()), None)
        if first is None:
            continue
        while w < len(words) and words[w][1] <= first:
            w += 1
        if w == len(words):
            break
        if words[w][0] <= first:
            by_word.setdefault(w, []).append((a, b, label))
    out: list[Piece] = []
    for w, parts in by_word.items():
        start = words[w][0]
        if parts[0][0] > start or parts[0][2] not in wanted:  # the word's first piece did not match
            continue
        kept = [p for p in parts if p[2] in wanted]
        letters = sum(sum(ch.isalnum() for ch in text[a:b]) for a, b, _ in kept)
        if letters >= min_chars:
            out += kept
    return out


def token_marks(
    tokenizer: Any, text: str, wanted: Container[str], display: Any, *, min_chars: int = 2
) -> list[Piece]:
    """Spans of ``text`` where the tokenizer puts a token whose ``display(token id)`` (as ``keytok tokens``
    shows it: ``▁bone``) is in ``wanted``, by the word rules of the module doc."""
    return mark_words(text, token_pieces(tokenizer, text, display), wanted, min_chars=min_chars)
