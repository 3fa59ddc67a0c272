"""The registry of engine kinds: every kind an index folder can hold, and the systems built from them.

Each kind is a module beside this one (:class:`~keytok.pipeline.kinds.base.Kind`): its name, its storage
class, its build step, the query form it takes (text, embedding, float or integer key-token vector), its
search, its explanation and its update steps. Build, search, merge, update, describe, export and the bench
go through :data:`REGISTRY`; no other module spells a kind's name.

A *system* is one kind or several joined by ``+`` and fused per query (``bm25+sparse:feedback``); a part
``kind:mode`` gives a key-token kind its query mode. :data:`SYSTEM_ALIASES` name the fusions keytok
recommends.
"""

from __future__ import annotations

from collections.abc import Iterable

from keytok.errors import KeytokError
from keytok.pipeline.kinds.base import QUERY_FORMS, Hits, Kind
from keytok.pipeline.kinds.bm25 import BM25Kind, BM25XKind
from keytok.pipeline.kinds.dense import DenseKind
from keytok.pipeline.kinds.impact import ImpactKind
from keytok.pipeline.kinds.lucene import LuceneKind
from keytok.pipeline.kinds.sparse import SparseKind

__all__ = [
    "BENCH_SYSTEMS",
    "BUILD_ORDER",
    "DEFAULT_FUSION_WEIGHTS",
    "DEFAULT_KINDS",
    "DEFAULT_SYSTEM",
    "FEEDBACK_FIRST_PASS",
    "KINDS",
    "LEXICAL_BASELINE",
    "NATIVE_KIND",
    "QUERY_FORMS",
    "REGISTRY",
    "SYSTEM_ALIASES",
    "VECTOR_SETTINGS",
    "Hits",
    "Kind",
    "engines_read",
    "kind",
    "kinds_help",
    "needs_model",
    "parse_kinds",
    "system_parts",
]

_SPARSE, _DENSE, _LUCENE = SparseKind(), DenseKind(), LuceneKind()
_BM25, _BM25X, _IMPACT = BM25Kind(), BM25XKind(), ImpactKind()

#: Every kind, in canonical order (``keytok.json``'s ``kinds``, ``--kind`` lists).
REGISTRY: dict[str, Kind] = {k.name: k for k in (_SPARSE, _DENSE, _LUCENE, _BM25, _BM25X, _IMPACT)}
KINDS: tuple[str, ...] = tuple(REGISTRY)
#: The order a build writes them in: the native index first (Lucene takes its integers).
BUILD_ORDER: tuple[Kind, ...] = (_SPARSE, _LUCENE, _DENSE, _BM25, _BM25X, _IMPACT)
#: What ``keytok index build``, :func:`keytok.build_index` and a :class:`~keytok.pipeline.build.BuildConfig`
#: build when no kind is named.
DEFAULT_KINDS: tuple[str, ...] = (_SPARSE.name, _DENSE.name, _LUCENE.name, _BM25.name)
#: The native key-token index: what exports and ``describe`` read the integer vectors from.
NATIVE_KIND = _SPARSE.name
#: The ``keytok.json`` entry of the key-token vectors' settings (the native kind's record), which every kind
#: built from those vectors shares.
VECTOR_SETTINGS = _SPARSE.name
#: What a search runs when no system is named.
DEFAULT_SYSTEM = _SPARSE.name
#: The lexical engine whose top hits feedback queries take their documents from.
FEEDBACK_FIRST_PASS = _BM25.name
#: The system the bench measures the lexical systems against.
LEXICAL_BASELINE = _BM25.name

# Chosen on SciFact's train qrels (experiments/sweep_bm25.py) for an untrained model; the same for every
# collection; a model's own record (LoadedModel.recorded_fusion) replaces them (see keytok.engines.fusion).
# Weights are per part of a system: an engine, or an engine with its query mode (which wins over the engine's).
DEFAULT_FUSION_WEIGHTS: dict[str, float] = {
    part: weight
    for k in (_BM25, _BM25X, _SPARSE, _LUCENE, _DENSE, _IMPACT)
    for part, weight in k.fusion_weights
}
# The BM25 + key-token systems the measurements favour, with the model at query time and without. On
# SciFact train, adding the feedback run to bm25+sparse:expanded got weight 0 (no gain): it is left out.
# bm25+keytok+dense is the best row of a model trained on the collection's training queries.
SYSTEM_ALIASES: dict[str, str] = {
    "bm25+keytok": "bm25+sparse:expanded",
    "bm25+keytok+dense": "bm25+sparse:expanded+dense",
    "bm25+keytok-free": "bm25+sparse:feedback",
}

# The bench's rows, in report order: (label, --system). A row runs when the index holds every engine it
# reads. Sparse parts name their query mode, so no row depends on the index's default mode.
BENCH_SYSTEMS: tuple[tuple[str, str], ...] = (
    ("dense (FAISS {factory})", "dense"),
    ("sparse native, llm-free queries", "sparse:llm-free"),
    ("sparse native, expanded queries", "sparse:expanded"),
    ("sparse native, feedback queries (BM25 first pass)", "sparse:feedback"),
    ("impact (model-weighted terms), llm-free queries", "impact:llm-free"),
    ("impact (model-weighted terms), expanded queries", "impact:expanded"),
    ("impact (model-weighted terms), feedback queries (BM25 first pass)", "impact:feedback"),
    ("lucene impact, expanded queries", "lucene:expanded"),
    ("bm25 (lucene)", "bm25"),
    ("bm25x (lucene)", "bm25x"),
    ("dense+sparse", "dense+sparse:expanded"),
    ("bm25+sparse llm-free", "bm25+sparse:llm-free"),
    ("bm25+keytok-free = bm25+sparse feedback", "bm25+keytok-free"),
    ("bm25+keytok = bm25+sparse", "bm25+keytok"),
    ("bm25+sparse feedback+sparse", "bm25+sparse:feedback+sparse:expanded"),
    ("bm25+dense", "bm25+dense"),
    ("bm25+sparse+dense", "bm25+keytok+dense"),
    ("bm25+impact", "bm25+impact:llm-free"),
    ("bm25x+sparse", "bm25x+sparse:expanded"),
)


def kinds_help() -> str:
    """The kinds, each with what it is, for a command's help."""
    return ", ".join(f"{name} ({k.about})" for name, k in REGISTRY.items())


def kind(name: str) -> Kind:
    """The registered kind ``name``; an unknown name is a one-line error listing the kinds."""
    found = REGISTRY.get(name)
    if found is None:
        raise KeytokError(f"unknown index kind '{name}' (choose from {', '.join(KINDS)})")
    return found


def parse_kinds(kinds: str | Iterable[str]) -> list[str]:
    """``"sparse,dense"`` or an iterable of kind names -> the kinds in canonical order, checked."""
    items = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds)]
    items = [k for k in items if k]
    for k in items:
        kind(k)
    if not items:
        raise KeytokError(f"no index kind given (choose from {', '.join(KINDS)})")
    return [k for k in KINDS if k in items]


def system_parts(system: str) -> list[str]:
    """The parts of a ``--system`` string (aliases resolved), not checked against an index."""
    return [p.strip() for p in SYSTEM_ALIASES.get(system.strip(), system.strip()).split("+")]


def _mode(part: str) -> str:
    return part.partition(":")[2]


def needs_model(parts: list[str]) -> bool:
    """Whether a system runs the model at query time: a part searched by embedding, or expanded queries."""
    return any(kind(p.partition(":")[0]).query_form == "embedding" or _mode(p) == "expanded" for p in parts)


def engines_read(parts: list[str]) -> set[str]:
    """The engines a system reads: its parts' engines, and the first pass of feedback queries."""
    engines = {p.partition(":")[0] for p in parts}
    return engines | ({FEEDBACK_FIRST_PASS} if any(_mode(p) == "feedback" for p in parts) else set())
