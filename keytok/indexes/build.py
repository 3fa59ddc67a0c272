"""Build a keytok index folder from a corpus, open it, search it, write TREC runs.

An index folder holds up to four engines over the same documents and one description::

    indexes/NAME/
      keytok.json           what the folder is: model (name + sha256), method, precision, max length,
                            calibration sha256, sparse settings (K, transform, centering, M, ...), corpus
                            checksum, kinds, doc count, and size + sha256 of the files below
      docs.jsonl            {"id", "title", "snippet"} per document, for display
      df.npy                document frequency of every token over the sparse document vectors (idf)
      center_mean.npy       the corpus mean embedding subtracted before projection (when center != 0)
      calibration.*         a copy of the calibration the vectors were made with (when one was given)
      sparse/               native inverted index (:class:`keytok.indexes.sparse.SparseIndex`)
      dense/                FAISS index of the pooled embeddings (:class:`keytok.indexes.dense.DenseIndex`)
      lucene/               Lucene impact index of the *same integer vectors* the native index stores
      bm25/                 Lucene BM25 over the raw text
      bm25x/                Lucene BM25 over the text + its top key tokens as words (document expansion,
                            :mod:`keytok.alignment.expansion`)
      impact/               native inverted index of model-weighted terms: the text's own tokens re-weighted
                            by the LM head, plus top expansion tokens (:mod:`keytok.alignment.impact`)
      impact_df.npy         document frequency of every token over the impact vectors (their idf)

**Atomic and resumable.** The whole folder is built in a temporary folder beside ``NAME`` and renamed into
place at the end (each sub-index is also written atomically inside it), so a reader sees the old index or
the new one, never a half-built one, and a failed build leaves the destination as it was. The slow part,
the embeddings, goes through :class:`keytok.encoding.cache.EmbeddingCache` chunk by chunk: a build
stopped by Ctrl-C or ``kill -9`` is simply run again, reuses every finished chunk, and ends with an index
identical to an uninterrupted build. A lock file (``.NAME.lock``) keeps two builds of one destination
apart, and lets a new build delete the temporary folders a killed one left behind.

**Searching** (:class:`Searcher`, :func:`open_index`): the model is loaded only when a query needs it
(expanded sparse queries, dense search); LLM-free sparse queries and BM25 need only the tokenizer or
nothing. Before any query is encoded the model's sha256 and the method are checked against the index.
The Lucene backend takes integer queries: the float query vector is quantised to 8 bits per query
(``round(q / q_scale)``, ``q_scale = max(q) / 255``) and scores are reported as
``lucene_score * q_scale * doc_scale``, on the same scale as the native backend's float scores.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok import __version__
from keytok.alignment.expansion import DEFAULT_EXPANSION_WORDS
from keytok.alignment.impact import DEFAULT_IMPACT_EXPANSION
from keytok.alignment.sparse import (
    DEFAULT_CENTER,
    DEFAULT_EXPANSION_WEIGHT,
    DEFAULT_FEEDBACK_DOCS,
    DEFAULT_FEEDBACK_TERMS,
    DEFAULT_K,
    DEFAULT_M,
    DEFAULT_QUERY_MODE,
    DEFAULT_TRANSFORM,
    QUERY_MODES,
    SparseEncoder,
    document_frequency,
    idf_weights,
    token_display,
)
from keytok.errors import KeytokError
from keytok.indexes.fusion import (
    DEFAULT_FUSION,
    DEFAULT_FUSION_DEPTH,
    DEFAULT_FUSION_WEIGHTS,
    FUSIONS,
    HYBRID_ALIASES,
    fuse,
)
from keytok.utils.atomic import atomic_dir, atomic_path
from keytok.utils.hashing import sha256_file, sha256_text

__all__ = [
    "BACKENDS",
    "KINDS",
    "BuildSummary",
    "Hit",
    "Searcher",
    "build_index",
    "open_index",
    "parse_kinds",
    "write_trec_run",
]

FORMAT = "keytok-index-folder"
FORMAT_VERSION = 1
INFO_NAME = "keytok.json"
DOCS_NAME = "docs.jsonl"
DF_NAME = "df.npy"
MEAN_NAME = "center_mean.npy"
IMPACT_DF_NAME = "impact_df.npy"
KINDS: tuple[str, ...] = ("sparse", "dense", "lucene", "bm25", "bm25x", "impact")
BACKENDS = KINDS
QUERY_LEVELS = 255  # integer query weights for the Lucene backend: 8 bits, like the document impacts
SNIPPET_CHARS = 160


def parse_kinds(kinds: str | Iterable[str]) -> list[str]:
    """``"sparse,dense"`` or an iterable of kind names -> the kinds in canonical order, checked."""
    items = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds)]
    items = [k for k in items if k]
    bad = [k for k in items if k not in KINDS]
    if bad:
        raise KeytokError(f"unknown index kind '{bad[0]}' (choose from {', '.join(KINDS)})")
    if not items:
        raise KeytokError(f"no index kind given (choose from {', '.join(KINDS)})")
    return [k for k in KINDS if k in items]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------- build
@dataclass
class BuildSummary:
    """What :func:`build_index` did: counts, timings, and size on disk of each part."""

    path: Path
    docs: int
    empty_docs: int
    kinds: list[str]
    tokens_encoded: int
    embedding: str
    seconds: float
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def lines(self) -> list[str]:
        """A human-readable summary, one line per part."""
        out = [
            f"index {self.path}: {self.docs:,} documents ({self.empty_docs} empty), "
            f"{self.tokens_encoded:,} tokens encoded, {self.seconds:.1f} s",
            f"  {self.embedding}",
        ]
        for name, p in self.parts.items():
            extra = ", ".join(
                f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in p.items() if k != "bytes"
            )
            out.append(f"  {name:<7} {p['bytes'] / 2**20:9.2f} MiB  {extra}")
        return out


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole build
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeytokError(f"another keytok build is writing {out} (lock {lock_path} is held)") from None
        # Holding the lock, any temporary folder of this destination belongs to a build that died: the
        # names atomic_dir gives them (mkdtemp's 8 random characters), and the old copy of a swap cut short.
        leftover = re.compile(rf"^\.{re.escape(out.name)}\.([a-z0-9_]{{8}}\.tmp|old\.\d+)$")
        for stale in out.parent.iterdir():
            if leftover.match(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        fh.close()
        with contextlib.suppress(OSError):
            lock_path.unlink()


def _load_docs(corpus: str | os.PathLike[str], on_empty: str) -> tuple[list[Any], str]:
    from keytok.data.beir import corpus_checksum, load_corpus

    docs = load_corpus(corpus, on_empty=on_empty)  # type: ignore[arg-type]
    if not docs:
        raise KeytokError(f"{corpus}: no documents to index")
    if all(not d.full_text.strip() for d in docs):
        raise KeytokError(f"{corpus}: every document is empty")
    return docs, corpus_checksum(corpus)


def build_index(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    encoder: Any = None,
    model: str = "smollm2-135m",
    method: str = "prompteol",
    dtype: str = "auto",
    device: str | None = None,
    max_length: int = 512,
    kinds: str | Iterable[str] = KINDS,
    k_doc: int = DEFAULT_K,
    transform: str = DEFAULT_TRANSFORM,
    center: float = DEFAULT_CENTER,
    m_query: int = DEFAULT_M,
    expansion_weight: float = DEFAULT_EXPANSION_WEIGHT,
    query_mode: str = DEFAULT_QUERY_MODE,
    calibration: str | os.PathLike[str] | None = None,
    factory: str = "Flat",
    bits: int = 8,
    expansion_words: int = DEFAULT_EXPANSION_WORDS,
    impact_expansion: int = DEFAULT_IMPACT_EXPANSION,
    on_empty: str = "error",
    cache: Any = None,
    chunk_size: int = 1024,
    threads: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Build the index folder ``out`` from ``corpus`` (a BEIR folder or a corpus.jsonl); see the module doc.

    ``encoder`` (a :class:`keytok.encoding.encoder.Encoder`) is built from ``model``/``method``/``dtype``/
    ``device``/``max_length`` when not given (even with every embedding cached: projection needs its LM
    head). ``kinds``: any of sparse, dense, lucene, bm25 (lucene takes the native index's integer vectors,
    which are computed even when ``sparse`` is not kept). ``cache``: an
    :class:`~keytok.encoding.cache.EmbeddingCache` or a folder (default: ``$KEYTOK_CACHE/embeddings``).
    ``expansion_words``: key-token words appended to each document in ``bm25x``;
    ``impact_expansion``: expansion tokens per document in ``impact`` (see the module doc).
    ``on_empty``: what to do with a document whose title and text are empty: ``error``, ``skip``, or
    ``keep`` (the document stays in the native sparse index with no tokens, so evaluations count it, and is
    left out of the dense, Lucene and BM25 engines, which could only return it with score 0). An existing
    ``out`` is replaced only with ``overwrite=True``, and only once the new folder is complete. Returns a
    :class:`BuildSummary`.
    """
    from keytok.encoding.cache import EmbeddingCache

    started = time.perf_counter()
    out = Path(out)
    wanted = parse_kinds(kinds)
    if on_empty not in ("error", "skip", "keep"):
        raise KeytokError(f"on_empty must be error, skip or keep, not {on_empty!r}")
    if out.exists() and not overwrite:
        raise KeytokError(f"index {out} already exists (use --overwrite to replace it)")
    if out.exists() and not (out / INFO_NAME).is_file():
        raise KeytokError(f"{out} exists and is not a keytok index folder: refusing to replace it")
    for name, value in (("expansion_words", expansion_words), ("impact_expansion", impact_expansion)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KeytokError(f"{name} must be a non-negative integer, got {value!r}")
    if {"lucene", "bm25", "bm25x"} & set(wanted):
        from keytok.indexes.java import require_lucene

        require_lucene()
    docs, checksum = _load_docs(corpus, on_empty)
    if encoder is None:
        from keytok.encoding.encoder import Encoder

        encoder = Encoder(model, method, dtype=dtype, device=device, max_length=max_length)
    cal = None
    if calibration is not None:
        from keytok.alignment.calibration import Calibration

        cal = Calibration.load(
            calibration, expect_model=encoder.model.fingerprint, expect_method=encoder.method.key()
        )
    sparse_enc = SparseEncoder(
        encoder,
        k_doc=k_doc,
        m_query=m_query,
        transform=transform,
        calibration=cal,
        query_mode=query_mode,
        center=center,
        expansion_weight=expansion_weight,
    )
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)

    with _build_lock(out):
        ids = [d.id for d in docs]
        texts = [d.full_text for d in docs]
        emb = cache.encode_corpus(
            encoder, ids, texts, corpus_checksum=checksum, chunk_size=chunk_size, progress=progress
        )
        report = cache.last_report
        empty = np.abs(emb).sum(axis=1) == 0
        meta = {
            "model": encoder.model.name,
            "model_sha256": encoder.model.fingerprint,
            "method": encoder.method.key(),
            "calibration_sha256": None if cal is None else cal.sha256,
            "vocab_size": int(encoder.vocab_size),
            "precision": encoder.precision.describe(),
            "max_length": int(encoder.max_length),
            "K": int(k_doc),
            "transform": transform,
            "center": float(center),
        }
        parts: dict[str, dict[str, Any]] = {}
        with atomic_dir(out) as tmp:
            files: dict[str, str] = {}
            doc_vectors = None
            if {"sparse", "lucene", "bm25x", "impact"} & set(wanted):
                if center:
                    sparse_enc.fit_center(emb)
                    with atomic_path(tmp / MEAN_NAME) as p, open(p, "wb") as fh:
                        np.save(fh, sparse_enc.mean, allow_pickle=False)
                    files[MEAN_NAME] = MEAN_NAME
                doc_vectors = sparse_enc.encode_documents_from_embeddings(emb)
                df = document_frequency(doc_vectors)
                with atomic_path(tmp / DF_NAME) as p, open(p, "wb") as fh:
                    np.save(fh, df, allow_pickle=False)
                files[DF_NAME] = DF_NAME
            if cal is not None:
                name = "calibration" + (
                    ".safetensors" if Path(calibration).suffix == ".safetensors" else ".npz"
                )
                shutil.copyfile(calibration, tmp / name)
                files["calibration"] = name
            with atomic_path(tmp / DOCS_NAME) as p, open(p, "w", encoding="utf-8") as fh:
                for d in docs:
                    fh.write(
                        json.dumps(
                            {
                                "id": d.id,
                                "title": d.title,
                                "snippet": " ".join(d.text.split())[:SNIPPET_CHARS],
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
            files[DOCS_NAME] = DOCS_NAME
            native = None
            if doc_vectors is not None:
                from keytok.indexes.sparse import SparseIndex

                # Built even when only "lucene" is asked for: the Lucene index takes its integers from it.
                where = tmp / ("sparse" if "sparse" in wanted else ".sparse-for-lucene")
                native = SparseIndex.build(where, ids, doc_vectors, meta, bits=bits)
                if "sparse" in wanted:
                    parts["sparse"] = {
                        "bytes": _folder_bytes(where),
                        "postings": int(native.manifest.counts["postings"]),
                        "scale": native.scale,
                    }
            if "lucene" in wanted:
                from keytok.indexes.lucene import LuceneImpactIndex

                assert native is not None
                int_ids, int_vectors = native.int_vectors()
                lucene = LuceneImpactIndex.build(
                    tmp / "lucene", int_ids, int_vectors, meta | {"scale": native.scale}, threads=threads
                )
                parts["lucene"] = {"bytes": _folder_bytes(tmp / "lucene"), "indexed": lucene.num_docs}
                lucene.close()
                if "sparse" not in wanted:
                    del native
                    shutil.rmtree(tmp / ".sparse-for-lucene")
            if "dense" in wanted:
                from keytok.indexes.dense import DenseIndex

                # Documents without text have no embedding: like Lucene, the dense index leaves them out
                # (a zero vector would still be returned, with score 0, when k exceeds the matches).
                has_text = np.flatnonzero(~empty)
                dense = DenseIndex.build(
                    tmp / "dense", [ids[i] for i in has_text], emb[has_text], meta, factory=factory
                )
                parts["dense"] = {"bytes": _folder_bytes(tmp / "dense"), "dim": dense.dim, "factory": factory}
            if "bm25" in wanted:
                from keytok.indexes.lucene import LuceneBM25Index

                bm25 = LuceneBM25Index.build(
                    tmp / "bm25", [d for d in docs], threads=threads, meta=meta | {"corpus_sha256": checksum}
                )
                parts["bm25"] = {"bytes": _folder_bytes(tmp / "bm25"), "indexed": bm25.num_docs}
                bm25.close()
            if "bm25x" in wanted:
                from keytok.alignment.expansion import corpus_words, expansion_text, token_words
                from keytok.data.beir import Document
                from keytok.indexes.lucene import LuceneBM25Index

                assert doc_vectors is not None
                words = token_words(
                    sparse_enc.tokenizer, sparse_enc.vocab_size, corpus_words(d.full_text for d in docs)
                )
                extra = expansion_text(doc_vectors, words, expansion_words)
                expanded = [
                    Document(id=d.id, title=d.title, text=f"{d.text} {x}".strip() if x else d.text)
                    for d, x in zip(docs, extra, strict=True)
                    if d.full_text.strip()
                ]
                bm25x = LuceneBM25Index.build(
                    tmp / "bm25x",
                    expanded,
                    threads=threads,
                    meta=meta | {"corpus_sha256": checksum, "expansion_words": expansion_words},
                )
                parts["bm25x"] = {"bytes": _folder_bytes(tmp / "bm25x"), "indexed": bm25x.num_docs}
                bm25x.close()
            if "impact" in wanted:
                from keytok.alignment.impact import model_weighted_terms
                from keytok.indexes.sparse import SparseIndex

                impact_vectors = model_weighted_terms(sparse_enc, emb, texts, expansion=impact_expansion)
                with atomic_path(tmp / IMPACT_DF_NAME) as p, open(p, "wb") as fh:
                    np.save(fh, document_frequency(impact_vectors), allow_pickle=False)
                files[IMPACT_DF_NAME] = IMPACT_DF_NAME
                impact = SparseIndex.build(
                    tmp / "impact",
                    ids,
                    impact_vectors,
                    meta | {"impact_expansion": impact_expansion},
                    bits=bits,
                )
                parts["impact"] = {
                    "bytes": _folder_bytes(tmp / "impact"),
                    "postings": int(impact.manifest.counts["postings"]),
                    "scale": impact.scale,
                }
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "keytok_version": __version__,
                "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "model": encoder.model.name,
                "model_sha256": encoder.model.fingerprint,
                "model_path": str(encoder.model.path) if encoder.model.path else None,
                "method": encoder.method.key(),
                "method_name": encoder.method.name,
                "precision": encoder.precision.describe(),
                "dtype": encoder.precision.name,
                "max_length": int(encoder.max_length),
                "vocab_size": int(encoder.vocab_size),
                "hidden_size": int(encoder.model.hidden_size),
                "calibration_sha256": meta["calibration_sha256"],
                "sparse": sparse_enc.params() | {"bits": bits},
                "bm25x": {"expansion_words": expansion_words},
                "impact": {
                    "expansion": impact_expansion,
                    "weight": "softplus(logit - threshold of the top-X)",
                },
                "fusion": {"method": DEFAULT_FUSION, "weights": dict(DEFAULT_FUSION_WEIGHTS)},
                "dense": {"factory": factory, "metric": "ip", "normalize": True},
                "corpus": {"path": str(Path(corpus).resolve()), "checksum": checksum, "on_empty": on_empty},
                "kinds": wanted,
                "docs": len(docs),
                "empty_docs": int(empty.sum()),
                "files": {
                    role: {
                        "name": name,
                        "bytes": (tmp / name).stat().st_size,
                        "sha256": sha256_file(tmp / name),
                    }
                    for role, name in sorted(files.items())
                },
            }
            info["sha256"] = sha256_text(_canonical(info))
            with atomic_path(tmp / INFO_NAME) as p:
                p.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return BuildSummary(
        path=out,
        docs=len(docs),
        empty_docs=int(empty.sum()),
        kinds=wanted,
        tokens_encoded=report.tokens if report else 0,
        embedding=report.summary() if report else "",
        seconds=time.perf_counter() - started,
        parts=parts,
    )


# --------------------------------------------------------------------------------------------- reading
def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``keytok.json`` of an index folder, checked (format, version, self-checksum, listed files' sizes)."""
    path = Path(path)
    if not path.exists():
        raise KeytokError(f"index {path} does not exist")
    if not path.is_dir():
        raise KeytokError(f"index {path} is not a folder")
    f = path / INFO_NAME
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeytokError(f"{path} is not a keytok index folder (no {INFO_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeytokError(f"index {path}: {INFO_NAME} is unreadable ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise KeytokError(f"index {path}: {INFO_NAME} is not a keytok index description")
    if raw.get("format_version") != FORMAT_VERSION:
        raise KeytokError(
            f"index {path} has format version {raw.get('format_version')}; this keytok reads {FORMAT_VERSION}"
        )
    claimed = raw.pop("sha256", None)
    try:
        actual = sha256_text(_canonical(raw))
    except ValueError:
        actual = None
    if claimed != actual:
        raise KeytokError(f"index {path}: {INFO_NAME} was edited or is corrupted (its sha256 does not match)")
    for role, entry in raw.get("files", {}).items():
        p = path / entry["name"]
        if not p.is_file():
            raise KeytokError(f"index {path}: file {entry['name']} ({role}) is missing")
        if p.stat().st_size != entry["bytes"]:
            raise KeytokError(
                f"index {path}: file {entry['name']} is truncated or changed "
                f"({p.stat().st_size} bytes, {INFO_NAME} says {entry['bytes']})"
            )
    return raw


@dataclass
class Hit:
    """One search result: document id, score, title, and the key tokens that matched with their contribution."""

    doc_id: str
    score: float
    title: str = ""
    matched: list[tuple[str, float]] = field(default_factory=list)
    rank: int = 0
    snippet: str = ""
    sources: dict[str, float] = field(default_factory=dict)  # fused systems: each engine's share

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = {
            "rank": self.rank,
            "doc_id": self.doc_id,
            "score": self.score,
            "title": self.title,
            "snippet": self.snippet,
            "matched": [{"token": t, "contribution": c} for t, c in self.matched],
        }
        if self.sources:
            d["sources"] = dict(self.sources)
        return d


def recorded_dtype(info: dict[str, Any]) -> str:
    """The precision an index's documents were encoded in (``fp32``, ``bf16`` or ``fp16``).

    Queries are encoded in the same precision by default: a query vector from another precision
    differs from what the same text would have given at build time (bf16 moves scores by ~1e-3).
    Indexes written before the ``dtype`` field are read from their ``precision`` description.
    """
    if info.get("dtype"):
        return str(info["dtype"])
    words = str(info.get("precision", "")).replace(",", " ").split()  # "autocast bf16, attention fp32 on cpu"
    for name in ("bf16", "fp16", "fp32"):
        if name in words:
            return name
    return "auto"


class Searcher:
    """An opened keytok index folder (see the module doc); engines and the model are loaded on first use.

    ``encoder``: an already loaded :class:`~keytok.encoding.encoder.Encoder` to encode queries with (it
    must be the index's model and method); ``model``: a model spec to load instead of the one recorded in
    the index (e.g. when the model folder moved). Either is checked against the index's sha256.
    ``dtype``: the query encoder's precision; by default the one the documents were encoded in.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoder: Any = None,
        model: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        verify: bool = False,
    ) -> None:
        self.path = Path(path)
        for _ in range(5):  # a rebuild may swap the folder while keytok.json is read: read it again
            self._identity = _identity(self.path)
            self.info = read_info(self.path)
            if _identity(self.path) == self._identity:
                break
        self._check_unchanged()
        self._model_spec = model
        self._dtype, self._device = dtype, device
        self._encoder = None
        self._engines: dict[str, Any] = {}
        self._docs: dict[str, tuple[str, str]] | None = None
        self._sparse_encoder: SparseEncoder | None = None
        self._idf: np.ndarray | None = None
        self._impact_idf: np.ndarray | None = None
        self._verify = verify
        self._last_queries: tuple[tuple[str, ...], np.ndarray] | None = None
        if encoder is not None:
            self._check_model(encoder.model.fingerprint, encoder.model.name, encoder.method.key())
            self._encoder = encoder

    # ------------------------------------------------------------------ checks and lazy loading
    def _check_unchanged(self) -> None:
        # A rebuild swaps in a whole new folder (new inode). Parts are opened lazily, so reading one from a
        # newer build than the keytok.json read at open would mix two indexes: refuse instead.
        if _identity(self.path) != self._identity:
            raise KeytokError(f"index {self.path} was replaced while it was open; open it again")

    @property
    def kinds(self) -> list[str]:
        """The engines this folder holds."""
        return list(self.info["kinds"])

    @property
    def expected_meta(self) -> dict[str, Any]:
        """What every sub-index's manifest must agree with."""
        i = self.info
        return {
            "model": i["model"],
            "model_sha256": i["model_sha256"],
            "method": i["method"],
            "calibration_sha256": i["calibration_sha256"],
            "vocab_size": i["vocab_size"],
        }

    def _check_model(self, fingerprint: str, name: str, method_key: str | None) -> None:
        i = self.info
        if fingerprint != i["model_sha256"]:
            raise KeytokError(
                f"index {self.path} was built with model {i['model']} (sha256 {i['model_sha256'][:12]}…), "
                f"not {name} (sha256 {fingerprint[:12]}…)"
            )
        if method_key is not None and method_key != i["method"]:
            from keytok.models.methods import EmbeddingMethod

            raise KeytokError(
                f"index {self.path} was built with method {EmbeddingMethod.from_key(i['method']).describe()}, "
                f"not {EmbeddingMethod.from_key(method_key).describe()}"
            )

    @property
    def encoder(self) -> Any:
        """The query encoder (loaded, and checked against the index, on first use)."""
        if self._encoder is None:
            from keytok.encoding.encoder import Encoder
            from keytok.models.loading import load_model
            from keytok.models.methods import EmbeddingMethod

            spec = self._model_spec or self._recorded_model_spec()
            loaded = load_model(spec)
            self._check_model(loaded.fingerprint, spec, None)
            self._encoder = Encoder(
                loaded,
                EmbeddingMethod.from_key(self.info["method"]),
                dtype=self._dtype or recorded_dtype(self.info),
                device=self._device,
                max_length=int(self.info["max_length"]),
            )
            if self._sparse_encoder is not None:
                self._sparse_encoder.encoder = self._encoder
        return self._encoder

    def _recorded_model_spec(self) -> str:
        name, path = self.info["model"], self.info.get("model_path")
        # A packaged name resolves anywhere; a relative folder name only from the build's directory.
        from keytok.models.registry import PACKAGED_MODELS

        if name in PACKAGED_MODELS or Path(name).exists() or not path:
            return name
        return path

    def _tokenizer_only(self) -> Any:
        """The tokenizer of the index's model, without loading the weights (fingerprint still checked)."""
        from transformers import AutoTokenizer

        from keytok.models.loading import resolve_model_folder

        spec = self._model_spec or self._recorded_model_spec()
        folder, fingerprint = resolve_model_folder(spec)
        self._check_model(fingerprint, spec, None)
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # transformers raises many kinds
            raise KeytokError(f"cannot load the tokenizer of {spec}: {str(exc).splitlines()[0]}") from None

    def _file(self, role: str) -> Path | None:
        self._check_unchanged()
        entry = self.info["files"].get(role)
        return None if entry is None else self.path / entry["name"]

    def sparse_encoder(self, need_model: bool) -> SparseEncoder:
        """The :class:`SparseEncoder` the index was built with (the model attached when ``need_model``)."""
        if self._sparse_encoder is None:
            s = self.info["sparse"]
            cal = None
            cal_file = self._file("calibration")
            if cal_file is not None:
                from keytok.alignment.calibration import Calibration

                cal = Calibration.load(cal_file)
                if cal.sha256 != self.info["calibration_sha256"]:
                    raise KeytokError(
                        f"index {self.path}: {cal_file.name} is not the calibration it was built with"
                    )
            mean = None
            mean_file = self._file(MEAN_NAME)
            if mean_file is not None:
                mean = self._npy(mean_file)
            encoder = self.encoder if need_model else self._encoder
            self._sparse_encoder = SparseEncoder(
                encoder,
                k_doc=int(s["K"]),
                m_query=int(s["M"]),
                transform=s["transform"],
                calibration=cal,
                query_mode=s["query_mode"],
                center=float(s["center"]),
                mean=mean,
                expansion_weight=float(s["expansion_weight"]),
                case_variants=bool(s.get("case_variants", False)),
                feedback_docs=int(s.get("feedback_docs", DEFAULT_FEEDBACK_DOCS)),
                feedback_terms=int(s.get("feedback_terms", DEFAULT_FEEDBACK_TERMS)),
                tokenizer=None if encoder is not None else self._tokenizer_only(),
                vocab_size=int(self.info["vocab_size"]),
            )
        elif need_model and self._sparse_encoder.encoder is None:
            self._sparse_encoder.encoder = self.encoder
        return self._sparse_encoder

    def _npy(self, f: Path) -> np.ndarray:
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise KeytokError(f"index {self.path}: {f.name} is unreadable ({exc})") from None

    @property
    def idf(self) -> np.ndarray:
        """idf of every token over the index's sparse document vectors."""
        if self._idf is None:
            f = self._file(DF_NAME)
            if f is None:
                raise KeytokError(
                    f"index {self.path} has no sparse vectors (built with kinds {', '.join(self.kinds)})"
                )
            df = self._npy(f)
            if df.shape != (int(self.info["vocab_size"]),):
                raise KeytokError(f"index {self.path}: {DF_NAME} does not match the vocabulary")
            self._idf = idf_weights(df, int(self.info["docs"]))
        return self._idf

    @property
    def impact_idf(self) -> np.ndarray:
        """idf of every token over the index's model-weighted-term vectors (the ``impact`` engine)."""
        if self._impact_idf is None:
            f = self._file(IMPACT_DF_NAME)
            if f is None:
                raise KeytokError(f"index {self.path} has no impact index (it has {', '.join(self.kinds)})")
            df = self._npy(f)
            if df.shape != (int(self.info["vocab_size"]),):
                raise KeytokError(f"index {self.path}: {IMPACT_DF_NAME} does not match the vocabulary")
            self._impact_idf = idf_weights(df, int(self.info["docs"]))
        return self._impact_idf

    def engine(self, backend: str) -> Any:
        """The opened engine for ``backend`` (checked against the index's model, method and calibration)."""
        if backend not in BACKENDS:
            raise KeytokError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        if backend not in self.kinds:
            raise KeytokError(f"index {self.path} has no {backend} index (it has {', '.join(self.kinds)})")
        if backend not in self._engines:
            self._check_unchanged()
            sub = self.path / backend
            if backend == "sparse":
                from keytok.indexes.sparse import SparseIndex

                eng = SparseIndex.open(sub, expected_meta=self.expected_meta, verify=self._verify)
            elif backend == "dense":
                from keytok.indexes.dense import DenseIndex

                eng = DenseIndex.open(sub, expected_meta=self.expected_meta, verify=self._verify)
            elif backend == "impact":
                from keytok.indexes.sparse import SparseIndex

                eng = SparseIndex.open(sub, expected_meta=self.expected_meta, verify=self._verify)
            elif backend == "lucene":
                from keytok.indexes.lucene import LuceneImpactIndex

                eng = LuceneImpactIndex.open(sub, expected_meta=self.expected_meta, verify=self._verify)
            else:
                from keytok.indexes.lucene import LuceneBM25Index

                eng = LuceneBM25Index.open(sub, verify=self._verify)
            self._engines[backend] = eng
        return self._engines[backend]

    def _doc_info(self) -> dict[str, tuple[str, str]]:
        if self._docs is None:
            self._check_unchanged()
            docs: dict[str, tuple[str, str]] = {}
            f = self.path / DOCS_NAME
            try:
                with open(f, encoding="utf-8") as fh:
                    for line in fh:
                        d = json.loads(line)
                        docs[d["id"]] = (d.get("title", ""), d.get("snippet", ""))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise KeytokError(f"index {self.path}: {DOCS_NAME} is unreadable ({exc})") from None
            self._docs = docs
        return self._docs

    # ------------------------------------------------------------------ search
    def query_vectors(
        self,
        texts: Sequence[str],
        query_mode: str | None = None,
        embeddings: np.ndarray | None = None,
        backend: str = "sparse",
    ) -> sp.csr_matrix:
        """Sparse query vectors of ``texts`` as ``backend`` (sparse, lucene or impact) scores them.

        The impact engine's queries are weighted by the idf of its own vectors (where df is close to the
        words' document frequency), the key-token engines' by the idf of the key-token vectors.
        """
        mode = query_mode or self.info["sparse"]["query_mode"]
        if mode not in QUERY_MODES:
            raise KeytokError(f"unknown query mode '{mode}' (choose from {', '.join(QUERY_MODES)})")
        if mode == "expanded" and embeddings is None:
            embeddings = self.query_embeddings(texts)
        # expanded queries are projected through the LM head: the model is needed even with embeddings given
        enc = self.sparse_encoder(need_model=mode == "expanded")
        idf = self.impact_idf if backend == "impact" else self.idf
        feedback = self.feedback_vectors(texts, backend) if mode == "feedback" else None
        return enc.encode_queries(texts, idf, embeddings=embeddings, mode=mode, feedback=feedback)

    def feedback_vectors(self, texts: Sequence[str], backend: str = "sparse") -> list[sp.csr_matrix]:
        """For each text, the vectors of its top BM25 documents (feedback mode), from ``backend``'s
        native index (``impact``'s for impact queries, else the key-token index).
        """
        if "bm25" not in self.kinds:
            raise KeytokError(
                f"index {self.path}: feedback queries take their first pass from BM25, and it has no bm25 index"
            )
        native_name = "impact" if backend == "impact" else "sparse"
        if native_name not in self.kinds:
            raise KeytokError(f"index {self.path}: feedback queries need its {native_name} index")
        native = self.engine(native_name)
        n_fb = self.sparse_encoder(need_model=False).feedback_docs
        vocab = int(self.info["vocab_size"])
        out = []
        if n_fb == 0:
            return [sp.csr_matrix((0, vocab), dtype=np.float32) for _ in texts]
        ids, _ = self.engine("bm25").search_batch(list(texts), n_fb)
        for docs in ids:
            rows, cols, vals = [], [], []
            for r, d in enumerate(d for d in docs if d in native):
                tok, imp = native.doc_vector(d)
                rows.append(np.full(tok.size, r))
                cols.append(tok)
                vals.append(imp.astype(np.float32) * np.float32(native.scale))
            n = len(rows)
            out.append(
                sp.csr_matrix(
                    (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                    shape=(n, vocab),
                    dtype=np.float32,
                )
                if n
                else sp.csr_matrix((0, vocab), dtype=np.float32)
            )
        return out

    def query_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of query texts; the last batch is remembered (dense and expanded sparse share it)."""
        key = tuple(texts)
        if self._last_queries is None or self._last_queries[0] != key:
            self._last_queries = (key, self.encoder.encode(list(texts), desc="queries"))
        return self._last_queries[1]

    @staticmethod
    def _int_query(row: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
        top = float(row.data.max()) if row.nnz else 0.0
        qscale = top / QUERY_LEVELS if top > 0 else 1.0
        q = row.copy()
        q.data = np.rint(q.data.astype(np.float64) / qscale)
        q.eliminate_zeros()
        return q.astype(np.int64), qscale

    def resolve_system(self, system: str) -> list[str]:
        """The parts of ``system``: one engine (``sparse``), or several joined by ``+`` and fused
        (``bm25+sparse``, ``bm25+sparse:feedback+sparse:expanded``); ``engine:mode`` gives a sparse engine
        its query mode. ``bm25+keytok`` and ``bm25+keytok-free`` name the fusions keytok recommends
        (:data:`keytok.indexes.fusion.HYBRID_ALIASES`).
        """
        if not isinstance(system, str) or not system.strip():
            raise KeytokError(f"system must be a non-empty string, got {system!r}")
        name = HYBRID_ALIASES.get(system.strip(), system.strip())
        parts = [p.strip() for p in name.split("+")]
        for part in parts:
            engine, _, mode = part.partition(":")
            if engine not in BACKENDS:
                choices = ", ".join([*BACKENDS, *HYBRID_ALIASES])
                raise KeytokError(
                    f"unknown system '{system}': '{engine}' is not an engine (choose from {choices})"
                )
            if mode and (mode not in QUERY_MODES or engine not in ("sparse", "lucene", "impact")):
                raise KeytokError(
                    f"system '{system}': '{part}' — only sparse, lucene and impact take a query mode "
                    f"({', '.join(QUERY_MODES)})"
                )
            if engine not in self.kinds:
                raise KeytokError(f"index {self.path} has no {engine} index (it has {', '.join(self.kinds)})")
        if len(set(parts)) != len(parts):
            raise KeytokError(f"system '{system}' names a part twice")
        return parts

    def fusion_settings(
        self, parts: Sequence[str], fusion: str | None = None, weights: Mapping[str, float] | None = None
    ) -> tuple[str, list[float]]:
        """Fusion method and per-engine weights: given ones, else the index's record, else the defaults."""
        rec = self.info.get("fusion") or {}
        method = fusion or rec.get("method") or DEFAULT_FUSION
        if method not in FUSIONS:
            raise KeytokError(f"unknown fusion '{method}' (choose from {', '.join(FUSIONS)})")
        table = dict(DEFAULT_FUSION_WEIGHTS) | dict(rec.get("weights") or {}) | dict(weights or {})
        return method, [float(table.get(p, table.get(p.partition(":")[0], 1.0))) for p in parts]

    def search_batch(
        self,
        queries: Mapping[str, str],
        k: int = 10,
        backend: str = "sparse",
        query_mode: str | None = None,
        explain: bool = False,
        *,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
        depth: int = DEFAULT_FUSION_DEPTH,
    ) -> dict[str, list[Hit]]:
        """Top-``k`` hits for every ``{query id: text}``, queries encoded in one batch.

        ``backend``: one engine, or a fused system (:meth:`resolve_system`): each engine returns its top
        ``max(k, depth)`` and the runs are fused per query with ``fusion`` (minmax, zscore, rrf) and
        ``weights`` (``{engine: weight}``); both default to the index's record. ``explain`` fills
        :attr:`Hit.matched` (the shared key tokens and their contributions; for BM25 the query's analysed
        terms and their BM25 weights in the document) and, for fused systems, :attr:`Hit.sources` (each
        engine's normalised contribution).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise KeytokError(f"k must be a positive integer, got {k!r}")
        qids = list(queries)
        texts = [queries[q] for q in qids]
        for q, t in zip(qids, texts, strict=True):
            if not isinstance(t, str) or not t.strip():
                raise KeytokError(f"query {q!r} is empty")
        parts = self.resolve_system(backend)
        if not qids:
            return {}
        if len(parts) == 1:
            results, explain_rows = self._engine_search(parts[0], texts, k, query_mode)
            return {
                q: self._hits(parts[0], hits, explain_rows[r], texts[r], explain)
                for r, (q, hits) in enumerate(zip(qids, results, strict=True))
            }
        method, w = self.fusion_settings(parts, fusion, weights)
        per_engine = {p: self._engine_search(p, texts, max(k, depth), query_mode) for p in parts}
        out: dict[str, list[Hit]] = {}
        for r, q in enumerate(qids):
            runs = [{d: s for d, s in per_engine[p][0][r]} for p in parts]
            fused = fuse([{q: run} for run in runs], method, w, depth=k).get(q, {})
            hits = list(fused.items())
            rows = self._hits(parts[0], hits, None, texts[r], False)
            if explain:
                from keytok.indexes.fusion import normalise

                norm = [normalise(run, method) for run in runs]
                for h in rows:
                    h.sources = {
                        p: wp * n.get(h.doc_id, 0.0) for p, wp, n in zip(parts, w, norm, strict=True)
                    }
                    for p, run in zip(parts, runs, strict=True):
                        if h.doc_id in run:
                            h.matched += [
                                (f"{t} ({p})", c)
                                for t, c in self._explain(p, per_engine[p][1][r], texts[r], h.doc_id)
                            ]
            out[q] = rows
        return out

    def _engine_search(
        self, backend: str, texts: list[str], k: int, query_mode: str | None
    ) -> tuple[list[list[tuple[str, float]]], list[sp.csr_matrix | None]]:
        """One engine's hits for every text, and the query vectors that explain them (sparse engines).

        ``backend`` may carry its query mode (``sparse:feedback``), which then wins over ``query_mode``.
        """
        backend, _, mode = backend.partition(":")
        query_mode = mode or query_mode
        eng = self.engine(backend)
        results: list[list[tuple[str, float]]]
        explain_rows: list[sp.csr_matrix | None] = [None] * len(texts)
        if backend in ("bm25", "bm25x"):
            ids, scores = eng.search_batch(texts, k)
            results = [
                list(zip(i, s[: len(i)].tolist(), strict=True)) for i, s in zip(ids, scores, strict=True)
            ]
        elif backend == "dense":
            ids, scores = eng.search_batch(self.query_embeddings(texts), k)
            results = [
                list(zip(i, s[: len(i)].tolist(), strict=True)) for i, s in zip(ids, scores, strict=True)
            ]
        else:
            qv = self.query_vectors(texts, query_mode, backend="impact" if backend == "impact" else "sparse")
            if backend in ("sparse", "impact"):
                results = eng.search_batch(qv, k)
                explain_rows = [qv[r] for r in range(qv.shape[0])]
            else:
                doc_scale = float(eng.meta.get("scale", 1.0))
                rows, qscales = zip(*(self._int_query(qv[r]) for r in range(qv.shape[0])), strict=True)
                ids, scores = eng.search_batch(sp.vstack(rows, format="csr"), k)
                results = [
                    [(d, float(x) * qs * doc_scale) for d, x in zip(i, row[: len(i)].tolist(), strict=True)]
                    for i, row, qs in zip(ids, scores, qscales, strict=True)
                ]
                explain_rows = [
                    q.astype(np.float32) * np.float32(qs) for q, qs in zip(rows, qscales, strict=True)
                ]
        return results, explain_rows

    def _explain(
        self, backend: str, query_row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        """What made ``doc_id`` match: shared tokens with their contributions, or BM25's matched terms."""
        backend = backend.partition(":")[0]
        if backend in ("bm25", "bm25x"):
            return self.engine(backend).explain(text, doc_id)
        engine = "impact" if backend == "impact" else "sparse"
        if query_row is None or engine not in self.kinds:
            return []
        tok = self.sparse_encoder(need_model=False).tokenizer
        special = {int(i) for i in tok.all_special_ids}
        return [
            (token_display(tok, t, special), c) for t, c in self.engine(engine).explain(query_row, doc_id)
        ]

    def _hits(
        self,
        backend: str,
        hits: list[tuple[str, float]],
        query_row: sp.csr_matrix | None,
        text: str,
        explain: bool,
    ) -> list[Hit]:
        docs = self._doc_info()
        out = []
        for rank, (d, s) in enumerate(hits, start=1):
            title, snippet = docs.get(d, ("", ""))
            matched = (
                self._explain(backend, query_row, text, d)
                if explain and not backend.startswith("dense")
                else []
            )
            out.append(
                Hit(doc_id=d, score=float(s), title=title, matched=matched, rank=rank, snippet=snippet)
            )
        return out

    def search(
        self,
        query_text: str,
        k: int = 10,
        backend: str = "sparse",
        query_mode: str | None = None,
        *,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[Hit]:
        """Top-``k`` hits for one query, with what matched (see :meth:`search_batch`)."""
        return self.search_batch(
            {"q": query_text}, k, backend, query_mode, explain=True, fusion=fusion, weights=weights
        )["q"]

    def close(self) -> None:
        """Release the Lucene searchers."""
        for eng in self._engines.values():
            if hasattr(eng, "close"):
                eng.close()
        self._engines.clear()


def open_index(path: str | os.PathLike[str], **kwargs: Any) -> Searcher:
    """Open an index folder for search; see :class:`Searcher` for the keyword arguments."""
    return Searcher(path, **kwargs)


# --------------------------------------------------------------------------------------------- runs
def write_trec_run(
    path: str | os.PathLike[str], results: Mapping[str, Sequence[Hit]], tag: str = "keytok"
) -> Path:
    """Write ``results`` as a TREC run file (``qid Q0 docid rank score tag``, rank from 1), atomically.

    Query ids, doc ids and the tag must not contain whitespace (the format is whitespace-separated).
    """
    if not tag or any(c.isspace() for c in tag):
        raise KeytokError(f"run tag {tag!r} must be non-empty and contain no whitespace")
    lines = []
    for qid, hits in results.items():
        if not qid or any(c.isspace() for c in qid):
            raise KeytokError(f"query id {qid!r} contains whitespace: it cannot be written to a TREC run")
        for rank, h in enumerate(hits, start=1):
            if any(c.isspace() for c in h.doc_id):
                raise KeytokError(
                    f"doc id {h.doc_id!r} contains whitespace: it cannot be written to a TREC run"
                )
            lines.append(f"{qid} Q0 {h.doc_id} {rank} {h.score:.6f} {tag}\n")
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return dest
