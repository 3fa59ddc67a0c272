"""Build a keytok index folder from a corpus (:func:`build_index`); its layout is :mod:`keytok.pipeline.folder`.

**Shards.** ``shard=(I, N)`` (CLI ``--shard I/N``, I from 0 to N-1) builds the part of the corpus whose ids
fall in bucket I of N (:func:`shard_of`: a stable hash of the id, so every machine draws the same parts).
A shard folder is an index of its own, searchable alone, and keeps its embeddings so that the N shards can
be merged into the index the whole corpus would have given (see :mod:`keytok.pipeline.merge` for why the
merge re-projects instead of joining postings).

**Atomic and resumable.** The whole folder is built in a temporary folder beside ``NAME`` and renamed into
place at the end (each sub-index is also written atomically inside it), so a reader sees the old index or
the new one, never a half-built one, and a failed build leaves the destination as it was. The slow part,
the embeddings, goes through :class:`keytok.encoding.cache.EmbeddingCache` chunk by chunk: a build
stopped by Ctrl-C or ``kill -9`` is simply run again, reuses every finished chunk, and ends with an index
identical to an uninterrupted build. A lock file (``.NAME.lock``, :mod:`keytok.engines.lock`) keeps two
writers of one destination apart; a ``kill -9`` leaves it and the temporary folders behind, and the next
build or update of that destination deletes them. The Anserini JVM of a Lucene step dies with the build.

**Settings** are one frozen :class:`BuildConfig` (the model, the engines, and the
:class:`~keytok.representations.sparse.SparseConfig` of the key tokens); :func:`build_index` also takes its fields
as keywords. The build runs in steps: documents → embeddings (cached) → sparse vectors → engines →
``keytok.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok._version import __version__
from keytok.engines.engine import folder_bytes
from keytok.engines.fusion import DEFAULT_FUSION, FUSIONS
from keytok.engines.lock import write_lock
from keytok.engines.manifest import FORMAT_VERSION, canonical
from keytok.errors import KeytokError
from keytok.models.registry import DEFAULT_MODEL
from keytok.pipeline.folder import (
    DF_NAME,
    DOCS_NAME,
    EMBEDDINGS_NAME,
    FORMAT,
    INFO_NAME,
    MEAN_NAME,
    SNIPPET_CHARS,
)
from keytok.pipeline.kinds import BUILD_ORDER, DEFAULT_FUSION_WEIGHTS, DEFAULT_KINDS, REGISTRY, parse_kinds
from keytok.representations.expansion import DEFAULT_EXPANSION_WORDS
from keytok.representations.impact import DEFAULT_IMPACT_EXPANSION
from keytok.representations.sparse import SPARSE_FIELDS, SparseConfig, SparseEncoder, document_frequency
from keytok.utils.atomic import atomic_dir, atomic_path
from keytok.utils.hashing import sha256_file, sha256_text

__all__ = [
    "BuildConfig",
    "BuildJob",
    "BuildSummary",
    "build_config",
    "build_index",
    "build_lock",
    "check_destination",
    "engine_meta",
    "load_calibration",
    "load_docs",
    "parse_kinds",
    "parse_shard",
    "require_java",
    "shard_of",
]

SHARD_HASH = "sha256(utf-8 id), first 8 bytes big-endian, mod N"
ON_EMPTY = ("error", "skip", "keep")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` or ``(I, N)`` -> ``(I, N)`` checked (``0 <= I < N``); ``None`` stays ``None``."""
    if shard is None:
        return None
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if m is None:
            raise KeytokError(f"shard must be I/N (e.g. 0/4), not {shard!r}")
        shard = (int(m.group(1)), int(m.group(2)))
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise KeytokError(f"shard must be I/N or a pair (I, N), not {shard!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise KeytokError(f"shard must be two integers I/N, not {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise KeytokError(f"shard {index}/{count}: I must be from 0 to N-1 and N at least 1")
    return index, count


def shard_of(doc_id: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) of a document id: stable across machines, runs and Python versions
    (unlike ``hash()``), and even across shards of any size (see :data:`SHARD_HASH`)."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines an index folder (see the module doc); ``keytok.json`` records it.

    ``model``/``method``/``dtype``/``device``/``max_length`` make the encoder (unless one is given to
    :func:`build_index`); ``kinds``: the engines; ``sparse``: the key-token settings; ``calibration``: a PC1
    adjustment file applied before projection; ``factory``: FAISS index type; ``bits``: bits per integer
    impact; ``expansion_words``: key-token words appended to each document in ``bm25x``;
    ``impact_expansion``: expansion tokens per document in ``impact``; ``backend``: where the model runs; ``on_empty``: a document whose title
    and text are empty: ``error``, ``skip`` or ``keep`` (kept in the native sparse index with no tokens, so
    evaluations count it, and left out of the dense, Lucene and BM25 engines); ``chunk_size``: documents per
    cached embedding chunk; ``threads``: Lucene indexing threads; ``shard``: ``(I, N)`` or ``"I/N"``, build
    only the I-th of N parts of the corpus (see the module doc).
    """

    model: str = DEFAULT_MODEL
    method: str | None = None  # None: the model's own method (keytok.models.methods.resolve_method)
    dtype: str = "auto"
    device: str | None = None
    max_length: int = 512
    kinds: tuple[str, ...] = DEFAULT_KINDS
    sparse: SparseConfig = field(default_factory=SparseConfig)
    calibration: str | None = None
    factory: str = "Flat"
    bits: int = 8
    expansion_words: int = DEFAULT_EXPANSION_WORDS
    impact_expansion: int = DEFAULT_IMPACT_EXPANSION
    on_empty: str = "error"
    chunk_size: int = 1024
    threads: int = 2
    shard: tuple[int, int] | None = None
    head: str | None = None  # take the LM head from this base model (an embedder without its own head)
    backend: str = (
        "auto"  # where the model runs: torch or its graph in ONNX Runtime (keytok.encoding.backends)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(parse_kinds(self.kinds)))
        object.__setattr__(self, "shard", parse_shard(self.shard))
        if self.calibration is not None:
            object.__setattr__(self, "calibration", os.fspath(self.calibration))
        if self.on_empty not in ON_EMPTY:
            raise KeytokError(f"on_empty must be error, skip or keep, not {self.on_empty!r}")
        for name in ("expansion_words", "impact_expansion", "chunk_size", "threads"):
            value = getattr(self, name)
            low = 0 if name in ("expansion_words", "impact_expansion") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "non-negative" if low == 0 else "positive"
                raise KeytokError(f"{name} must be a {kind} integer, got {value!r}")

    def encoder(self) -> Any:
        """The :class:`~keytok.encoding.encoder.Encoder` the model settings describe."""
        from keytok.encoding.encoder import Encoder

        return Encoder(
            self.model,
            self.method,
            dtype=self.dtype,
            device=self.device,
            max_length=self.max_length,
            head=self.head,
            backend=self.backend,
        )


BUILD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BuildConfig))


def build_config(config: BuildConfig | None = None, **settings: Any) -> BuildConfig:
    """``config`` (default: the defaults) with keyword ``settings`` replacing its fields; the sparse
    settings (``k_doc``, ``m_query``, ...) may be given flat and go into ``config.sparse``."""
    base = config if config is not None else BuildConfig()
    sparse = {k: settings.pop(k) for k in list(settings) if k in SPARSE_FIELDS}
    bad = sorted(set(settings) - set(BUILD_FIELDS))
    if bad:
        raise KeytokError(
            f"unknown build setting {bad[0]!r} (choose from {', '.join(BUILD_FIELDS + SPARSE_FIELDS)})"
        )
    cfg = replace(base, **settings) if settings else base
    return replace(cfg, sparse=replace(cfg.sparse, **sparse)) if sparse else cfg


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
def build_lock(out: Path) -> Iterator[None]:
    """The destination's write lock (:func:`keytok.engines.lock.write_lock`), refused at once when another
    build or update holds it; taking it deletes the temporary folders a killed build left behind."""
    with write_lock(out, wait=0, what="build"):
        yield


def load_docs(corpus: str | os.PathLike[str], on_empty: str) -> tuple[list[Any], str]:
    """The corpus's documents (``on_empty``: what an empty one does) and its checksum; none, or none with
    text, is a one-line error."""
    from keytok.data.beir import corpus_checksum, load_corpus

    docs = load_corpus(corpus, on_empty=on_empty)  # type: ignore[arg-type]
    if not docs:
        raise KeytokError(f"{corpus}: no documents to index")
    if all(not d.full_text.strip() for d in docs):
        raise KeytokError(f"{corpus}: every document is empty")
    return docs, corpus_checksum(corpus)


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` without ``overwrite``, and one that is not an index folder at all."""
    if out.exists() and not overwrite:
        raise KeytokError(f"index {out} already exists (pass overwrite=True to replace it)")
    if out.exists() and not (out / INFO_NAME).is_file():
        raise KeytokError(f"{out} exists and is not a keytok index folder: refusing to replace it")


def load_calibration(path: str | None, encoder: Any) -> Any:
    """The calibration file ``path`` (None: none), checked against ``encoder``'s model and method."""
    if path is None:
        return None
    from keytok.representations.calibration import Calibration

    return Calibration.load(path, expect_model=encoder.model.fingerprint, expect_method=encoder.method.key())


@dataclass
class BuildJob:
    """One build in progress: its inputs, the temporary folder, and what the steps have written."""

    out: Path
    config: BuildConfig
    docs: list[Any]
    checksum: str
    emb: np.ndarray
    sparse_enc: SparseEncoder
    meta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # more keytok.json entries (shard, merged_from)
    tmp: Path = Path()  # the temporary folder being written; set by write_folder
    files: dict[str, str] = field(default_factory=dict)  # role -> file name, listed in keytok.json
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    doc_vectors: sp.csr_matrix | None = None
    native: Any = None

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]

    @property
    def empty(self) -> np.ndarray:
        return np.abs(self.emb).sum(axis=1) == 0

    def save_npy(self, name: str, array: np.ndarray) -> None:
        with atomic_path(self.tmp / name) as p, open(p, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        self.files[name] = name

    def part(self, kind: str, **figures: Any) -> None:
        self.parts[kind] = {"bytes": folder_bytes(self.tmp / kind), **figures}

    def summary(self, tokens: int, embedding: str, seconds: float) -> BuildSummary:
        return BuildSummary(
            path=self.out,
            docs=len(self.docs),
            empty_docs=int(self.empty.sum()),
            kinds=list(self.config.kinds),
            tokens_encoded=tokens,
            embedding=embedding,
            seconds=seconds,
            parts=self.parts,
        )


def build_index(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: BuildConfig | None = None,
    *,
    encoder: Any = None,
    cache: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    runner: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    **settings: Any,
) -> BuildSummary:
    """Build the index folder ``out`` from ``corpus`` (a BEIR folder or a corpus.jsonl); see the module doc.

    ``config``: a :class:`BuildConfig`; its fields, and the sparse ones (``k_doc``, ``m_query``, ...), may
    also be given as keywords. ``encoder`` (a :class:`keytok.encoding.encoder.Encoder`) is made from the
    config's model settings when not given (even with every embedding cached: projection needs its LM
    head). ``cache``: an :class:`~keytok.encoding.cache.EmbeddingCache` or a folder (default:
    ``$KEYTOK_CACHE/embeddings``). An existing ``out`` is replaced only with ``overwrite=True``, and only
    once the new folder is complete. ``runner="ray"`` encodes the chunks not yet cached on a Ray cluster
    (:mod:`keytok.encoding.ray_runner`; ``ray_address`` joins a running one, ``ray_workers`` sizes the
    actor pool) before the build goes on locally from the cache: the same index, the encode spread out.
    Returns a :class:`BuildSummary`.
    """
    from keytok.encoding.cache import EmbeddingCache

    started = time.perf_counter()
    cfg = build_config(config, **settings)
    out = Path(out)
    check_destination(out, overwrite)
    require_java(cfg)
    docs, checksum = load_docs(corpus, cfg.on_empty)
    docs, cache_key, extra = _select_shard(docs, checksum, cfg.shard, corpus)
    encoder = encoder if encoder is not None else cfg.encoder()
    _fusion_record(encoder)  # a model's bad fusion record stops the build before any encoding
    cal = load_calibration(cfg.calibration, encoder)
    sparse_enc = SparseEncoder(encoder, cfg.sparse, calibration=cal)
    cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    if runner not in ("local", "ray"):
        raise KeytokError(f"unknown runner {runner!r} (choose from local, ray)")
    with build_lock(out):
        emb, tokens, embedding_line = _embed(
            cache, encoder, docs, cache_key, cfg, progress, runner, ray_address, ray_workers
        )
        job = BuildJob(out, cfg, docs, checksum, emb, sparse_enc, engine_meta(encoder, cfg, cal), extra=extra)
        write_folder(job, corpus, encoder)
    return job.summary(tokens, embedding_line, time.perf_counter() - started)


def require_java(cfg: BuildConfig) -> None:
    """Refuse, before any work, a build of a kind that needs Lucene where the ``lucene`` extra is missing."""
    if any(REGISTRY[k].needs_java for k in cfg.kinds):
        from keytok.engines.java import require_lucene

        require_lucene()


def _select_shard(
    docs: list[Any], checksum: str, shard: tuple[int, int] | None, corpus: str | os.PathLike[str]
) -> tuple[list[Any], str, dict[str, Any]]:
    """The documents of ``shard`` (all without one), the key of their embedding cache, and what
    ``keytok.json`` records of the shard."""
    if shard is None:
        return docs, checksum, {}
    index, count = shard
    mine = [d for d in docs if shard_of(d.id, count) == index]
    if not any(d.full_text.strip() for d in mine):
        raise KeytokError(f"{corpus}: shard {index}/{count} has no document with text (of {len(docs)})")
    record = {"index": index, "count": count, "corpus_docs": len(docs), "hash": SHARD_HASH}
    # Its own cache key: a shard's chunks hold other documents than the whole corpus's chunks.
    return mine, f"{checksum}:shard-{index}-of-{count}", {"shard": record}


def write_folder(job: BuildJob, corpus: str | os.PathLike[str], encoder: Any) -> None:
    """Write the index folder ``job.out`` atomically from the job's documents and embeddings (the
    build's steps after encoding; :mod:`keytok.pipeline.merge` calls it too, holding the build lock)."""
    with atomic_dir(job.out) as tmp:
        job.tmp = tmp
        if job.config.shard is not None:
            job.save_npy(EMBEDDINGS_NAME, np.ascontiguousarray(job.emb, dtype=np.float32))
        _write_sparse_vectors(job)
        _write_calibration(job)
        _write_docs(job)
        asked = set(job.config.kinds)
        needed = asked | {REGISTRY[k].built_from for k in asked} - {None}
        for kind in BUILD_ORDER:  # the native index first: Lucene takes its integers
            if kind.name in needed:
                kind.build(job)
        _write_info(job, corpus, encoder)


def _embed(
    cache: Any,
    encoder: Any,
    docs: list[Any],
    checksum: str,
    cfg: BuildConfig,
    progress: bool,
    runner: str,
    ray_address: str | None,
    ray_workers: int | None,
) -> tuple[np.ndarray, int, str]:
    """The corpus embeddings from the cache, its missing chunks encoded first (here, or on Ray); also the
    tokens encoded and a line saying how."""
    ids, texts = [d.id for d in docs], [d.full_text for d in docs]
    line, tokens = "", 0  # checksum: the cache key (the corpus's, or a shard's)
    if runner == "ray":
        from keytok.encoding.ray_runner import encode_on_ray

        ray_report = encode_on_ray(
            encoder, ids, texts, corpus_checksum=checksum, chunk_size=cfg.chunk_size, cache=cache,
            workers=ray_workers, address=ray_address,
        )  # fmt: skip
        line, tokens = ray_report.summary() + "; then ", ray_report.tokens
    emb = cache.encode_corpus(
        encoder, ids, texts, corpus_checksum=checksum, chunk_size=cfg.chunk_size, progress=progress
    )
    report = cache.last_report
    return emb, tokens + (report.tokens if report else 0), line + (report.summary() if report else "")


def _fusion_record(encoder: Any) -> dict[str, Any]:
    """The index's fusion settings: the defaults, with the model's own record (a trained checkpoint's
    weights, chosen on its held-out training queries) over them."""
    own = encoder.model.recorded_fusion or {}
    if own and own.get("method") not in FUSIONS:
        where = encoder.model.path / "keytok.json" if encoder.model.path else encoder.model.name
        raise KeytokError(
            f"{where}: bad 'fusion' record (unknown method {own.get('method')!r}; choose from {', '.join(FUSIONS)})"
        )
    record = {
        "method": own.get("method", DEFAULT_FUSION),
        "weights": dict(DEFAULT_FUSION_WEIGHTS)
        | {k: float(v) for k, v in (own.get("weights") or {}).items()},
    }
    if own.get("chosen_on"):
        record["chosen_on"] = str(own["chosen_on"])
    return record


def engine_meta(encoder: Any, cfg: BuildConfig, cal: Any) -> dict[str, Any]:
    """What every engine's manifest records of the model, so that opening can check the querying one."""
    return {
        "model": encoder.model.name,
        "model_sha256": encoder.model.fingerprint,
        "method": encoder.method.key(),
        "calibration_sha256": None if cal is None else cal.sha256,
        "vocab_size": int(encoder.vocab_size),
        "precision": encoder.precision.describe(),
        "max_length": int(encoder.max_length),
        "K": cfg.sparse.k_doc,
        "transform": cfg.sparse.transform,
        "center": cfg.sparse.center,
    }


# ---------------------------------------------------------------------------------- the build's steps
def _write_sparse_vectors(job: BuildJob) -> None:
    """Key-token vectors of the documents (and the corpus mean, their df), when an engine needs them."""
    if not any(REGISTRY[k].needs_vectors for k in job.config.kinds):
        return
    enc = job.sparse_enc
    if enc.center:
        enc.fit_center(job.emb)
        job.save_npy(MEAN_NAME, enc.mean)
    job.doc_vectors = enc.encode_documents_from_embeddings(job.emb)
    job.save_npy(DF_NAME, document_frequency(job.doc_vectors))


def _write_calibration(job: BuildJob) -> None:
    path = job.config.calibration
    if job.sparse_enc.calibration is None or path is None:
        return
    name = "calibration" + (".safetensors" if Path(path).suffix == ".safetensors" else ".npz")
    shutil.copyfile(path, job.tmp / name)
    job.files["calibration"] = name


def _write_docs(job: BuildJob) -> None:
    with atomic_path(job.tmp / DOCS_NAME) as p, open(p, "w", encoding="utf-8") as fh:
        for d in job.docs:
            snippet = " ".join(d.text.split())[:SNIPPET_CHARS]
            fh.write(
                json.dumps({"id": d.id, "title": d.title, "snippet": snippet}, ensure_ascii=False) + "\n"
            )
    job.files[DOCS_NAME] = DOCS_NAME


def _write_info(job: BuildJob, corpus: str | os.PathLike[str], encoder: Any) -> None:
    """``keytok.json``: what the folder is, what made it, and the size and sha256 of its own files."""
    cfg, tmp = job.config, job.tmp
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "keytok_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": encoder.model.name,
        "model_sha256": encoder.model.fingerprint,
        "model_path": str(encoder.model.path) if encoder.model.path else None,
        "head": encoder.head_spec,  # the base whose LM head projects the embeddings, if not the model's own
        "method": encoder.method.key(),
        "method_name": encoder.method.name,
        "precision": encoder.precision.describe(),
        "dtype": encoder.precision.name,
        "max_length": int(encoder.max_length),
        "vocab_size": int(encoder.vocab_size),
        "hidden_size": int(encoder.model.hidden_size),
        "calibration_sha256": job.meta["calibration_sha256"],
        **{kind.name: kind.record(job) for kind in REGISTRY.values() if kind.recorded},
        "fusion": _fusion_record(encoder),
        "corpus": {"path": str(Path(corpus).resolve()), "checksum": job.checksum, "on_empty": cfg.on_empty},
        "kinds": list(cfg.kinds),
        "docs": len(job.docs),
        "empty_docs": int(job.empty.sum()),
        **job.extra,
        "files": {
            role: {"name": name, "bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            for role, name in sorted(job.files.items())
        },
    }
    info["sha256"] = sha256_text(canonical(info))
    with atomic_path(tmp / INFO_NAME) as p:
        p.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
