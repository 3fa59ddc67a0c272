"""Semantic textual similarity (STS) evaluation: Spearman x 100 of cosine similarity against gold scores.

The usual table (SentEval, SimCSE, BeLLM) reports STS12..STS16, STS-B test and SICK-R test. For STS12..16 the
subsets of a year are concatenated and one Spearman correlation is taken over all of them (SimCSE's "all"
setting); :func:`keytok.data.sts.load_sts` already returns a year's subsets concatenated.

Each unique sentence is encoded once, whatever the number of pairs or sets it appears in::

    from keytok.data.sts import load_sts
    from keytok.encoding.encoder import Encoder
    from keytok.evaluation.sts import sts_spearman

    enc = Encoder("smollm2-135m", "prompteol")
    sts_spearman(enc, load_sts("STSB-test", "../shared/data/sts"))   # -> a float, e.g. 55.3
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from keytok.data.sts import STS_BENCHMARKS, STSPair, load_sts
from keytok.errors import KeytokError

__all__ = [
    "STSResult",
    "cosine_pairs",
    "evaluate_sts",
    "pair_cosines",
    "sample_pairs",
    "spearman_x100",
    "sts_scores",
    "sts_spearman",
    "unique_sentences",
]

PairLike = STSPair | tuple[str, str, float]


class _Encodes(Protocol):
    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray: ...


def _as_pair(pair: PairLike, i: int) -> STSPair:
    if isinstance(pair, STSPair):
        p = pair
    else:
        try:
            s1, s2, score = pair
        except (TypeError, ValueError):
            raise KeytokError(f"pair {i} is not (sentence1, sentence2, score)") from None
        p = STSPair(s1, s2, score)
    if not isinstance(p.s1, str) or not isinstance(p.s2, str) or not p.s1.strip() or not p.s2.strip():
        raise KeytokError(f"pair {i} has an empty or non-string sentence")
    try:
        score = float(p.score)
    except (TypeError, ValueError):
        raise KeytokError(f"pair {i}: gold score {p.score!r} is not a number") from None
    if not math.isfinite(score):
        raise KeytokError(f"pair {i}: gold score {p.score!r} is not a finite number")
    return p if type(p.score) is float else STSPair(p.s1, p.s2, score, p.label)


def _check_pairs(pairs: Iterable[PairLike], what: str = "STS pairs") -> list[STSPair]:
    checked = [_as_pair(p, i) for i, p in enumerate(pairs)]
    if not checked:
        raise KeytokError(f"{what}: no pairs to evaluate")
    return checked


def unique_sentences(pairs: Iterable[STSPair]) -> list[str]:
    """The distinct sentences of ``pairs`` in first-seen order."""
    return list(dict.fromkeys(s for p in pairs for s in (p.s1, p.s2)))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays (float64; a zero vector gives 0).

    Rounded to 12 decimals: equal vectors (an identical sentence pair) then give exactly 1.0 and tie, instead of
    ranking among themselves by arithmetic noise; float32 embeddings carry no information at that depth.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise KeytokError(f"cosine of arrays shaped {a.shape} and {b.shape}: need two equal [n, d] arrays")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.round((a * b).sum(1) / np.clip(na * nb, 1e-30, None), 12)


def pair_cosines(
    pairs: Sequence[STSPair], embeddings: Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray]
) -> np.ndarray:
    """Cosine similarity of each pair, looking sentences up in ``embeddings``.

    ``embeddings`` is a {sentence: vector} mapping or a (sentences, [n, d] array) tuple.
    """
    if isinstance(embeddings, tuple):
        texts, matrix = embeddings
        row = {t: i for i, t in enumerate(texts)}
        try:
            a = matrix[[row[p.s1] for p in pairs]]
            b = matrix[[row[p.s2] for p in pairs]]
        except KeyError as exc:
            raise KeytokError(f"no embedding for sentence {str(exc)[:60]}") from None
    else:
        try:
            a = np.stack([embeddings[p.s1] for p in pairs])
            b = np.stack([embeddings[p.s2] for p in pairs])
        except KeyError as exc:
            raise KeytokError(f"no embedding for sentence {str(exc)[:60]}") from None
    return cosine_pairs(a, b)


def spearman_x100(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation x 100 (``scipy.stats.spearmanr``); one-line KeytokError where undefined."""
    from scipy.stats import spearmanr

    pred = np.asarray(predicted, dtype=np.float64)
    ref = np.asarray(gold, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise KeytokError(f"{pred.shape[0] if pred.ndim else 0} predictions for {ref.size} gold scores")
    if pred.size < 2:
        raise KeytokError(f"Spearman needs at least 2 pairs, got {pred.size}")
    if not np.isfinite(pred).all():
        raise KeytokError("predicted similarities contain NaN or infinity")
    if np.ptp(ref) == 0:
        raise KeytokError("all gold scores are equal: Spearman correlation is undefined")
    if np.ptp(pred) == 0:
        raise KeytokError("all predicted similarities are equal: Spearman correlation is undefined")
    rho = spearmanr(pred, ref).statistic
    return float(rho) * 100.0


def sts_spearman(encoder: _Encodes, pairs: Sequence[STSPair]) -> float:
    """Spearman x 100 between the cosine similarity of each pair's embeddings and its gold score.

    ``encoder`` is a :class:`keytok.encoding.encoder.Encoder` (anything with ``encode(texts) -> [n, d]``);
    ``pairs`` are :class:`~keytok.data.sts.STSPair` (or ``(s1, s2, score)`` tuples). Each distinct sentence is
    encoded once. An empty list, empty sentences, non-finite or constant gold scores raise KeytokError.
    """
    checked = _check_pairs(pairs)
    texts = unique_sentences(checked)
    emb = encoder.encode(texts)
    return spearman_x100(pair_cosines(checked, (texts, emb)), [p.score for p in checked])


def sample_pairs(pairs: Sequence[STSPair], limit: int | None, seed: int = 0) -> list[STSPair]:
    """At most ``limit`` pairs drawn uniformly without replacement (seeded), in their original order.

    A random draw rather than the first ``limit`` pairs, because STS12..16 are concatenations of subsets and the
    head of the list is one subset only. ``limit`` None or 0 keeps every pair.
    """
    pairs = list(pairs)
    if not limit or limit >= len(pairs):
        return pairs
    if limit < 0:
        raise KeytokError(f"limit must be positive, got {limit}")
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
    return [pairs[i] for i in keep]


@dataclass
class STSResult:
    """Spearman x 100 per set, the number of pairs per set, and the plain average over the sets."""

    scores: dict[str, float]
    pairs: dict[str, int]
    sentences: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "avg": round(self.average, 4),
            "pairs": dict(self.pairs),
            "sentences": self.sentences,
            "stats": dict(self.stats),
        }


def sts_scores(
    encoder: _Encodes,
    sets: Mapping[str, Sequence[STSPair]],
    *,
    show_progress: bool | None = None,
    desc: str = "STS",
) -> STSResult:
    """Spearman x 100 for several sets, encoding the union of their distinct sentences in one call."""
    if not sets:
        raise KeytokError("no STS sets to evaluate")
    checked = {name: _check_pairs(pairs, f"STS set {name}") for name, pairs in sets.items()}
    texts = list(dict.fromkeys(s for pairs in checked.values() for s in unique_sentences(pairs)))
    kwargs: dict[str, Any] = {"desc": desc}
    if show_progress is not None:
        kwargs["show_progress"] = show_progress
    emb = encoder.encode(texts, **kwargs)
    scores = {
        name: spearman_x100(pair_cosines(pairs, (texts, emb)), [p.score for p in pairs])
        for name, pairs in checked.items()
    }
    last = getattr(encoder, "last_stats", None)
    stats = last.as_dict() if last is not None and hasattr(last, "as_dict") else {}
    return STSResult(scores, {n: len(p) for n, p in checked.items()}, len(texts), stats)


def evaluate_sts(
    encoder: _Encodes,
    root: str | os.PathLike[str],
    names: Sequence[str] = STS_BENCHMARKS,
    *,
    limit: int | None = None,
    show_progress: bool | None = None,
) -> STSResult:
    """Load the STS sets ``names`` from ``root`` (see :func:`keytok.data.sts.load_sts`) and score them.

    ``limit`` evaluates a seeded random sample of at most that many pairs per set (for quick runs).
    """
    sets = {name: sample_pairs(load_sts(name, root), limit) for name in names}
    return sts_scores(encoder, sets, show_progress=show_progress)
