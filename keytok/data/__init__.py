"""Readers for the data keytok works on: BEIR retrieval folders, STS sentence pairs, plain text lists.

Every reader validates strictly and raises :class:`~keytok.errors.KeytokError` naming the file and line of a
fault. The data sets themselves are not part of the package: pass their paths.
"""

from keytok.data.beir import (
    BeirPaths,
    Document,
    corpus_checksum,
    join_title,
    load_corpus,
    load_qrels,
    load_queries,
    resolve_beir,
)
from keytok.data.sts import STS_BENCHMARKS, STSPair, load_sts, sts12_smtnews_high, sts_subsets
from keytok.data.texts import load_texts

__all__ = [
    "STS_BENCHMARKS",
    "BeirPaths",
    "Document",
    "STSPair",
    "corpus_checksum",
    "join_title",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "load_sts",
    "load_texts",
    "resolve_beir",
    "sts12_smtnews_high",
    "sts_subsets",
]
