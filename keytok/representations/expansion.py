"""Key tokens back to words, for document expansion in a BM25 index (doc2query's idea, without a generator).

A document's top key tokens are vocabulary pieces: ``Ġexperimental``, ``experimental``, ``ĠExperimental``,
``ation``. BM25 indexes words, so each token is decoded and turned into a word:

* the decoded piece, stripped of its leading space, must be letters only (hyphens inside allowed) and at
  least ``min_chars`` long: digits, punctuation and byte pieces carry nothing a BM25 analyzer keeps;
* a piece that does not start a word (no leading space: ``ation``, ``ological``) is kept only if it is a
  word of the corpus itself (``known_words``), since otherwise it is a fragment of some longer word, and
  appending fragments as words would only add noise terms;
* case variants collapse into one lower-cased word that keeps the best weight of its forms (the three
  ``experimental`` forms above are one word).

The words are ordered by weight and the first ``max_words`` are appended to the document's text, each
once: Lucene's analyzer then stems them and drops stopwords as it does for the text. Appending a word the
text already has raises its term frequency: the model's vote that the word matters.

**Measured, and not a default system**: on SciFact train (``experiments/sweep_bm25.py``) BM25 over the
expanded documents gives .6977 with 8 words (BM25 alone .6974) and .6933 with 32; in the committed bench
reports (``experiments/results/bm25_keytok/``) 8 words give .6785 against .6789 on SciFact test and .3517
against .3509 on Cranfield. The words are mostly the model's generic reading of the text
("experimental experiment experimentation argument test evidence ..." for a Cranfield document), which
matches every query a little. ``bm25x`` stays available as an index kind (``--kind bm25x``) with the best count, 8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["DEFAULT_EXPANSION_WORDS", "corpus_words", "expansion_text", "key_token_words", "token_words"]

DEFAULT_EXPANSION_WORDS = 8  # the better of 8 and 32 on SciFact train

_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*", re.UNICODE)
_WHOLE = re.compile(r"^[^\W\d_]+(?:-[^\W\d_]+)*$", re.UNICODE)


def corpus_words(texts: Iterable[str]) -> set[str]:
    """Lower-cased words (letters, inner hyphens) that occur in ``texts``."""
    words: set[str] = set()
    for t in texts:
        words.update(w.lower() for w in _WORD.findall(t))
    return words


def token_words(tokenizer: Any, vocab_size: int, known_words: set[str], min_chars: int = 3) -> list[str]:
    """The word each token id stands for ("" when it stands for none), by the rules of the module doc."""
    special = {int(i) for i in tokenizer.all_special_ids}
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    out = [""] * vocab_size
    for i in range(vocab_size):
        if i in special or pieces[i] is None:
            continue
        text = tokenizer.convert_tokens_to_string([pieces[i]])
        starts_word = text[:1].isspace()
        word = text.strip()
        if len(word) < min_chars or not _WHOLE.match(word):
            continue
        low = word.lower()
        if starts_word or low in known_words:
            out[i] = low
    return out


def key_token_words(
    ids: Sequence[int] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    words: Sequence[str],
    max_words: int,
) -> list[tuple[str, float]]:
    """The first ``max_words`` distinct words of one document's key tokens, best weight first."""
    best: dict[str, float] = {}
    for t, w in zip(np.asarray(ids).tolist(), np.asarray(weights, dtype=np.float64).tolist(), strict=True):
        word = words[t] if 0 <= t < len(words) else ""
        if word and w > best.get(word, 0.0):
            best[word] = w
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:max_words]


def expansion_text(doc_vectors: sp.csr_matrix, words: Sequence[str], max_words: int) -> list[str]:
    """For each row of ``doc_vectors`` (key-token weights), its expansion words joined by spaces."""
    x = sp.csr_matrix(doc_vectors)
    out = []
    for r in range(x.shape[0]):
        lo, hi = x.indptr[r], x.indptr[r + 1]
        out.append(" ".join(w for w, _ in key_token_words(x.indices[lo:hi], x.data[lo:hi], words, max_words)))
    return out
