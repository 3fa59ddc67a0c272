"""Training pairs made from a corpus alone (no queries, no qrels), as unsupervised dense retrievers make them.

A user with only documents still has signal: parts of one document are about the same thing. Three kinds of
(anchor, positive) pair are made from each document and trained like (query, document) pairs, with in-batch
negatives (kind ``"qrels"``):

* ``title``: the title ↔ the body. Cranfield repeats each title as the first sentence of its text; that copy is
  removed from the body (as :func:`keytok.data.beir.join_title` does), so the pair cannot be matched by copying
  and Cranfield's 1,400 titles are not lost. No pair when the title is empty or the whole body.
* ``ict``: the inverse cloze task (Lee et al., ACL 2019): one sentence ↔ the rest of the body. As in the paper
  the sentence is removed from its context with probability 0.9 and left in with 0.1, so the model learns
  both topical matching and some lexical matching. Only sentences of at least :data:`MIN_SENTENCE_WORDS` words
  are chosen as the anchor (a heading such as "Results." says nothing about its passage).
* ``crop``: independent cropping (Contriever, Izacard et al. 2021): two spans of the body drawn independently,
  each 10–50 % of its words long.

Sentences come from :func:`split_sentences`, a regex splitter (no model or download at run time).
Everything is drawn from a random generator seeded with ``(seed, document id)``, so the pairs of a document do
not depend on the rest of the corpus and the same call gives the same pairs.

Two pairs of one document can meet in a batch, where each is the other's in-batch negative although they are
about the same thing. This is left as it is: the trainer shuffles each set, and a pair meets a sibling with
probability about (pairs per document − 1) · (batch size − 1) / pairs, 0.4 % for SciFact's 15k pairs in
batches of 32 — not worth a sampler that keeps documents apart.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keytok.data.beir import Document, load_corpus
from keytok.errors import KeytokError
from keytok.training.data import TrainingSet

__all__ = [
    "CORPUS_KINDS",
    "CorpusPairs",
    "corpus_pairs",
    "crop_pairs",
    "ict_pairs",
    "split_sentences",
    "title_pairs",
]

CORPUS_KINDS = ("title", "ict", "crop")
#: ICT removes the anchor sentence from its context this often (Lee et al. 2019).
ICT_REMOVE = 0.9
#: Shortest sentence used as an ICT anchor, in words.
MIN_SENTENCE_WORDS = 4
#: A crop's length as a share of the body's words (Contriever's 0.1 and 0.5).
CROP_MIN, CROP_MAX = 0.1, 0.5

# Words that end in a full stop without ending a sentence (lower case, final stop removed). Words that often
# end sentences too ("etc", "no") are left out: a wrong merge costs less than a wrong split.
_ABBREVIATIONS: frozenset[str] = frozenset().union(
    ("cf", "vs", "viz", "al", "approx", "ca", "resp", "sec", "dept", "univ"),  # Latin and academic
    ("fig", "figs", "eq", "eqs", "ref", "refs", "vol", "pp"),  # references
    ("dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "inc", "ltd", "corp"),  # titles, companies
    ("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"),  # months
)  # initialisms ("e.g", "i.e", "u.s") are recognised by their shape
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")  # u.s, e.g, ph.d
# A word (possibly empty: a stop standing alone, as in Cranfield's " . "), its end punctuation, closing quotes
# or brackets, then whitespace and the next sentence's first character.
_END = re.compile(r"(?<!\S)(\S*?)([.!?]+)([\"'”’)\]]*)(?=\s+(\S))")
_PARAGRAPH = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, split at ``.``/``!``/``?`` before whitespace and at blank lines.

    A stop is not an end after an abbreviation ("e.g.", "Dr.", "et al."), an initialism ("U.S.") or an initial
    ("J. Smith"), nor, in text that has capital letters, before a lower-case word; a decimal ("3.5") is never
    split, as no space follows its point. A stop standing alone ("flow . the") always ends a sentence, so
    lower-cased corpora such as Cranfield split too. Pieces without a letter or digit are dropped (runs of
    stops, ". . . .", as some SciFact abstracts have).
    """
    cased = any(c.isupper() for c in text)
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        start = 0
        for m in _END.finditer(paragraph):
            if _is_end(m.group(1), m.group(2), m.group(4), cased):
                sentences.append(paragraph[start : m.end()].strip())
                start = m.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if any(c.isalnum() for c in s)]


def _is_end(word: str, punctuation: str, following: str, cased: bool) -> bool:
    """Whether ``word`` + ``punctuation`` ends a sentence that ``following`` (a character) starts."""
    if not word:
        return True
    if punctuation == "." and _is_abbreviation(word):
        return False
    return not (cased and following.islower())


def _is_abbreviation(word: str) -> bool:
    """Whether a word before a stop is an abbreviation, an initialism or an initial, not a sentence's end."""
    w = word.lstrip("([{\"'“‘").lower()
    return w in _ABBREVIATIONS or bool(_INITIALISM.fullmatch(w)) or (len(w) == 1 and w.isalpha())


@dataclass
class CorpusPairs(TrainingSet):
    """Pairs made from a corpus: a :class:`TrainingSet` of kind ``"qrels"`` that also records how each pair
    was made (``origins``: title | ict | crop) and how many documents were too short, for the run record."""

    origins: list[str] = field(default_factory=list)
    documents: int = 0
    too_short: int = 0
    per_doc: int = 1
    min_words: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.origins) != len(self.texts):
            raise ValueError(f"{len(self.origins)} origins for {len(self.texts)} pairs")

    def made(self) -> dict[str, int]:
        """Pairs of each kind, in :data:`CORPUS_KINDS` order."""
        counts = Counter(self.origins)
        return {kind: counts[kind] for kind in CORPUS_KINDS if kind in counts}

    def describe(self) -> dict[str, Any]:
        """The base record plus the pairs made of each kind and the documents read and skipped."""
        return {
            **super().describe(),
            "made_from": "corpus",
            "made": self.made(),
            "per_doc": self.per_doc,
            "min_words": self.min_words,
            "documents": self.documents,
            "too_short": self.too_short,
        }

    def summary(self) -> str:
        """One line for the terminal: pairs of each kind and the documents skipped as too short."""
        made = ", ".join(f"{kind} {n:,}" for kind, n in self.made().items())
        return (
            f"corpus: {self.source}: {len(self):,} pairs ({made}) from {self.documents:,} documents; "
            f"{self.too_short:,} under {self.min_words} words skipped"
        )

    def _subset(self, keep: list[int]) -> dict[str, list]:
        """A sample keeps each pair's origin with it, so :meth:`made` stays true after ``limit``."""
        return {**super()._subset(keep), "origins": [self.origins[i] for i in keep]}


CorpusInput = str | os.PathLike[str] | Mapping[str, Document | Mapping[str, str]] | Iterable[Document]


def corpus_pairs(
    corpus: CorpusInput,
    kinds: Sequence[str] = CORPUS_KINDS,
    per_doc: int = 1,
    limit: int | None = None,
    seed: int = 0,
    min_words: int = 20,
) -> CorpusPairs:
    """(anchor, positive) pairs from the documents of ``corpus`` alone (see the module doc for each kind).

    ``corpus``: a BEIR folder or ``corpus.jsonl`` (read by :func:`keytok.data.beir.load_corpus`, which refuses
    a bad file in one line; queries and qrels are not needed), a ``{id: Document or {"title", "text"}}``
    mapping, or an iterable of :class:`~keytok.data.beir.Document`. ``per_doc``: pairs of each kind per
    document (a title gives one at most, ICT one per sentence at most). Documents whose body has fewer than
    ``min_words`` words give no pair and are counted as too short; pairs whose two sides are equal are
    dropped. ``limit`` keeps a seeded sample of that many pairs. Raises KeytokError when no pair can be made.
    """
    _check_args(kinds, per_doc, min_words)
    docs, source = _documents(corpus)
    texts: list[tuple[str, ...]] = []
    origins: list[str] = []
    too_short = 0
    for doc in docs:
        body = _body(doc)
        if len(body.split()) < min_words:
            too_short += 1
            continue
        for kind, pair in _document_pairs(doc, body, kinds, per_doc, random.Random(f"{seed}:{doc.id}")):
            if pair[0].strip() != pair[1].strip():
                texts.append(pair)
                origins.append(kind)
    if not texts:
        raise KeytokError(
            f"{source}: no training pair could be made from {len(docs)} documents "
            f"({too_short} have under {min_words} words)"
        )
    made = CorpusPairs(
        "qrels",
        source,
        texts,
        origins=origins,
        documents=len(docs),
        too_short=too_short,
        per_doc=per_doc,
        min_words=min_words,
    )
    return made.sample(limit, seed)


def _check_args(kinds: Sequence[str], per_doc: int, min_words: int) -> None:
    unknown = [k for k in kinds if k not in CORPUS_KINDS]
    if unknown or not kinds:
        raise KeytokError(f"corpus pair kinds {list(kinds)}: choose from {', '.join(CORPUS_KINDS)}")
    if per_doc < 1:
        raise KeytokError(f"pairs per document must be >= 1, got {per_doc}")
    if min_words < 2:
        raise KeytokError(f"min_words must be >= 2 (a crop pair needs two words), got {min_words}")


def _documents(corpus: CorpusInput) -> tuple[list[Document], str]:
    """The documents of any accepted ``corpus`` form, and a name for messages and the run record."""
    if isinstance(corpus, str | os.PathLike):
        return load_corpus(corpus, on_empty="keep"), str(corpus)
    if isinstance(corpus, Mapping):
        docs = [
            d if isinstance(d, Document) else Document(str(i), d.get("text", ""), d.get("title", ""))
            for i, d in corpus.items()
        ]
    else:
        docs = list(corpus)
    return docs, f"corpus of {len(docs)} documents"


def _body(doc: Document) -> str:
    """The document's text without a leading copy of its title (Cranfield repeats it)."""
    text, title = doc.text.strip(), doc.title.strip()
    if title and text.lower().startswith(title.lower()):
        return text[len(title) :].strip()
    return text


def _document_pairs(
    doc: Document, body: str, kinds: Sequence[str], per_doc: int, rng: random.Random
) -> list[tuple[str, tuple[str, str]]]:
    """``(kind, pair)`` for every pair of ``kinds`` one document gives, in ``kinds`` order."""
    made: list[tuple[str, tuple[str, str]]] = []
    for kind in kinds:
        if kind == "title":
            made += [("title", p) for p in title_pairs(doc.title, body)]
        elif kind == "ict":
            made += [("ict", p) for p in ict_pairs(split_sentences(body), per_doc, rng)]
        else:
            made += [("crop", p) for p in crop_pairs(body.split(), per_doc, rng)]
    return made


def title_pairs(title: str, body: str) -> list[tuple[str, str]]:
    """``[(title, body)]``, or nothing when the title is empty or is the whole body."""
    title = title.strip()
    return [(title, body)] if title and title.lower() != body.lower() else []


def ict_pairs(sentences: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to ``n`` (sentence, context) pairs, distinct anchor sentences; the context is the other sentences
    (probability :data:`ICT_REMOVE`) or all of them. A passage of one sentence has no context: no pair."""
    if len(sentences) < 2:
        return []
    anchors = [i for i, s in enumerate(sentences) if len(s.split()) >= MIN_SENTENCE_WORDS]
    pairs = []
    for i in rng.sample(anchors, min(n, len(anchors))):
        remove = rng.random() < ICT_REMOVE
        context = [s for j, s in enumerate(sentences) if j != i or not remove]
        pairs.append((sentences[i], " ".join(context)))
    return pairs


def crop_pairs(words: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` pairs of two spans of ``words`` drawn independently, each :data:`CROP_MIN`–:data:`CROP_MAX` of
    the words long (at least one word)."""
    shortest = max(1, math.ceil(CROP_MIN * len(words)))
    longest = max(shortest, math.floor(CROP_MAX * len(words)))

    def span() -> str:
        length = rng.randint(shortest, longest)
        start = rng.randint(0, len(words) - length)
        return " ".join(words[start : start + length])

    return [(span(), span()) for _ in range(n)]
