"""Training data for ``keytok train``: scored pairs, NLI-style triplets, (query, positive document) pairs.

* **scored pairs** (:func:`read_pairs`): an STS set by name (``STSB-train``, ``SICK-train``, ... read by
  :func:`keytok.data.sts.load_sts`) or a ``.tsv`` file ``sentence1<TAB>sentence2<TAB>score``. Scores are
  rescaled to [0, 1] over the set (min-max), so a threshold such as "in-batch positive at >= 0.8" means the
  same on STS-B (0..5) as on SICK relatedness (1..5).
* **triplets** (:func:`read_triplets`): SICK by name, built from its entailment judgements: for every
  sentence, each sentence it is in an ENTAILMENT pair with is a positive (either direction: for similarity
  the relation is used symmetrically, as SimCSE uses NLI) and each sentence it is in a CONTRADICTION pair
  with is a hard negative; one triplet per (anchor, positive), negatives taken in turn. SICK train gives
  532 triplets over 367 anchors. Or a ``.tsv`` file ``anchor<TAB>positive<TAB>negative``.
* **qrels pairs** (:func:`read_qrels`): a BEIR folder's ``qrels/train.tsv`` (``FOLDER`` or
  ``FOLDER:split``): one (query text, document title + text) pair per judgement with grade > 0.
* **corpus pairs** (:func:`keytok.training.corpus_pairs.corpus_pairs`, source ``corpus``): a BEIR folder's
  documents alone, made into (title, body), (sentence, rest of the passage) and (crop, crop) pairs, trained
  as qrels pairs.

Every reader returns a :class:`TrainingSet`; ``limit`` keeps a seeded random sample of that many examples.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from keytok.data.beir import load_corpus, load_qrels, load_queries
from keytok.data.contract import iter_text_lines, parse_score
from keytok.data.sts import load_sts
from keytok.errors import KeytokError

__all__ = ["KINDS", "SOURCES", "TrainingSet", "read_pairs", "read_qrels", "read_source", "read_triplets"]

KINDS = ("pairs", "triplets", "qrels")
#: What :func:`read_source` reads: the kinds, and ``corpus`` (a BEIR folder's documents, made into
#: (anchor, positive) pairs of kind ``qrels`` by :mod:`keytok.training.corpus_pairs`).
SOURCES = (*KINDS, "corpus")


@dataclass
class TrainingSet:
    """Examples of one kind from one source: tuples of texts, plus a score in [0, 1] for scored pairs."""

    kind: str  # pairs | triplets | qrels
    source: str
    texts: list[tuple[str, ...]]  # (s1, s2) | (anchor, positive, negative) | (query, document)
    scores: list[float] = field(default_factory=list)  # pairs only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise KeytokError(f"unknown kind of training data '{self.kind}' (choose from {', '.join(KINDS)})")
        if not self.texts:
            raise KeytokError(f"{self.source}: no training examples")

    def __len__(self) -> int:
        return len(self.texts)

    def unique_texts(self) -> list[str]:
        return list(dict.fromkeys(t for example in self.texts for t in example))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "examples": len(self)}

    def summary(self) -> str:
        """One line for the terminal."""
        return f"{self.kind}: {self.source}: {len(self):,} examples"

    def sample(self, limit: int | None, seed: int = 0) -> Self:
        """At most ``limit`` examples, a seeded random sample in the original order."""
        if not limit or limit >= len(self):
            return self
        if limit < 0:
            raise KeytokError(f"limit must be positive, got {limit}")
        keep = sorted(random.Random(seed).sample(range(len(self)), limit))
        return replace(self, **self._subset(keep))

    def _subset(self, keep: list[int]) -> dict[str, list]:
        """The per-example fields restricted to rows ``keep`` (a subclass with more of them adds its own)."""
        return {
            "texts": [self.texts[i] for i in keep],
            "scores": [self.scores[i] for i in keep] if self.scores else [],
        }


def _is_file(spec: str) -> bool:
    return spec.endswith((".tsv", ".txt")) or (os.sep in spec and Path(spec).is_file())


def _read_tsv(path: Path, columns: int, what: str) -> list[tuple[int, list[str]]]:
    rows = []
    for lineno, line in iter_text_lines(path, what):
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) != columns:
            raise KeytokError(
                f"{path} line {lineno}: expected {columns} tab-separated columns, got {len(cols)}"
            )
        if not all(cols[: columns if what != "pairs" else 2]):
            raise KeytokError(f"{path} line {lineno}: empty text")
        rows.append((lineno, cols))
    return rows


def read_pairs(
    spec: str, sts_root: str | os.PathLike[str], limit: int | None = None, seed: int = 0
) -> TrainingSet:
    """Scored pairs from an STS set name or a ``s1<TAB>s2<TAB>score`` file; scores rescaled to [0, 1]."""
    if _is_file(spec):
        path = Path(spec)
        rows = _read_tsv(path, 3, "pairs")
        texts, raw = [], []
        for lineno, (s1, s2, score) in rows:
            raw.append(parse_score(score, f"{path} line {lineno}"))
            texts.append((s1, s2))
    else:
        pairs = load_sts(spec, sts_root)
        texts = [(p.s1, p.s2) for p in pairs]
        raw = [p.score for p in pairs]
    lo, hi = min(raw), max(raw)
    if hi == lo:
        raise KeytokError(f"{spec}: every pair has the same score {lo}: nothing to rank")
    scores = [(s - lo) / (hi - lo) for s in raw]
    return TrainingSet("pairs", spec, texts, scores).sample(limit, seed)


def sick_triplets(pairs: list[Any]) -> list[tuple[str, str, str]]:
    """(anchor, entailed, contradicting) triplets from SICK pairs with entailment labels (see module doc)."""
    positives: dict[str, list[str]] = defaultdict(list)
    negatives: dict[str, list[str]] = defaultdict(list)
    for p in pairs:
        label = (p.label or "").upper()
        if label == "ENTAILMENT":
            positives[p.s1].append(p.s2)
            positives[p.s2].append(p.s1)
        elif label == "CONTRADICTION":
            negatives[p.s1].append(p.s2)
            negatives[p.s2].append(p.s1)
    triplets = []
    for anchor, pos in positives.items():
        neg = negatives.get(anchor)
        if not neg:
            continue
        for i, positive in enumerate(dict.fromkeys(pos)):
            triplets.append((anchor, positive, neg[i % len(neg)]))
    return triplets


def read_triplets(
    spec: str, sts_root: str | os.PathLike[str], limit: int | None = None, seed: int = 0
) -> TrainingSet:
    """Triplets from SICK by name (entailment = positive, contradiction = hard negative) or a 3-column file."""
    if _is_file(spec):
        texts = [tuple(row) for _, row in _read_tsv(Path(spec), 3, "triplets")]
    else:
        if not spec.upper().startswith("SICK"):
            raise KeytokError(
                f"triplets '{spec}': give a SICK split (SICK-train) or an anchor/positive/negative .tsv"
            )
        pairs = load_sts(spec, sts_root)
        texts = sick_triplets(pairs)
        if not texts:
            raise KeytokError(f"{spec}: no sentence has both an entailment and a contradiction judgement")
    return TrainingSet("triplets", spec, texts).sample(limit, seed)


def read_qrels(spec: str, limit: int | None = None, seed: int = 0) -> TrainingSet:
    """(query, positive document) pairs from a BEIR folder's qrels: ``FOLDER`` (train split) or ``FOLDER:split``."""
    folder, split = spec, "train"
    if ":" in spec and not Path(spec).exists():
        folder, split = spec.rsplit(":", 1)
    qrels = load_qrels(folder, split)
    queries = load_queries(folder)
    docs = {d.id: d for d in load_corpus(folder, on_empty="skip")}
    texts = []
    missing = 0
    for qid, judged in qrels.items():
        for did, grade in judged.items():
            if grade <= 0:
                continue
            if qid not in queries or did not in docs:
                missing += 1
                continue
            texts.append((queries[qid], docs[did].full_text))
    if not texts:
        raise KeytokError(f"{spec}: no judged (query, document) pair with grade > 0 found in the corpus")
    return TrainingSet("qrels", spec, texts).sample(limit, seed)


def read_source(
    kind: str,
    spec: str,
    sts_root: str | os.PathLike[str],
    limit: int | None,
    seed: int,
    *,
    per_doc: int = 1,
) -> TrainingSet:
    """Dispatch to the reader of ``kind`` (one of :data:`SOURCES`); ``per_doc``: pairs of each kind per
    document, for ``corpus`` only."""
    if kind == "pairs":
        return read_pairs(spec, sts_root, limit, seed)
    if kind == "triplets":
        return read_triplets(spec, sts_root, limit, seed)
    if kind == "qrels":
        return read_qrels(spec, limit, seed)
    if kind == "corpus":
        # Imported here: corpus_pairs builds on TrainingSet, so it imports this module.
        from keytok.training.corpus_pairs import corpus_pairs

        return corpus_pairs(spec, per_doc=per_doc, limit=limit, seed=seed)
    raise KeytokError(f"unknown kind of training data '{kind}' (choose from {', '.join(SOURCES)})")
