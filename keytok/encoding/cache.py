"""Chunked, resumable cache of corpus embeddings.

Encoding a corpus is the slow part of an index build (SciFact: ~10 minutes on 2 CPU cores), so its
embeddings are cached and a build stopped by Ctrl-C or ``kill -9`` resumes where it stopped.

**Where.** ``$KEYTOK_CACHE/embeddings`` (else ``$XDG_CACHE_HOME/keytok/embeddings``, else
``~/.cache/keytok/embeddings``; see :func:`keytok.utils.hashing.cache_dir`), or the folder given to
:class:`EmbeddingCache`. A user-wide cache rather than one inside each index folder: the same corpus is
typically indexed several times (other K, transform, calibration, index kinds) from the same embeddings.

**Key.** One sub-folder per sha256 of: model fingerprint, embedding method key, precision (dtype *and*
device: bf16 on a CPU and on a GPU give slightly different vectors), ``max_length``, the corpus key (the
corpus file's sha256 when the caller passes it, else a hash of the doc ids and texts) and the chunk size.
``key.json`` in the folder spells the key out. The token-budget batch size is not part of the key: it
changes the floats only in the last bits and is a speed knob.

**Chunks.** Documents are cut, in corpus order, into chunks of ``chunk_size`` (1,024 by default); chunk
``i`` is ``chunk00000i.npy`` (float32 [n, d]) plus ``chunk00000i.json`` recording the sha256 of its doc
ids, of its texts and of the .npy file's bytes. Both are written atomically (temporary file + rename),
the .npy first: a chunk counts only once its .json exists, so a kill at any moment leaves whole chunks
or nothing. Each chunk is encoded by itself (one ``Encoder.encode`` call on exactly that chunk's texts),
so a resumed build computes each missing chunk exactly as an uninterrupted one would: same batches, same
floats, identical embeddings.

**Within a chunk.** While a chunk is encoded, each finished model batch (a few seconds of work) is written
to ``chunk00000i.partial/``, named by the sha256 of the batch's token ids (:class:`BatchJournal`). A build
stopped mid-chunk resumes by reading those batches back instead of recomputing them, so an interruption costs
at most one batch of encoding, whatever the chunk size. The batch plan of a chunk depends only on its texts,
so the resumed chunk's floats are those of an uninterrupted run. The folder is removed once the chunk is
written.

**Validation on read.** A chunk whose record is unreadable, whose ids or texts differ, whose .npy bytes
do not hash to the record, or whose array has the wrong shape or dtype is recomputed with a warning.
Empty texts (``on_empty="keep"`` corpora) are not run through the model: their row is all zeros.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_path, atomic_write_text
from keytok.utils.hashing import cache_dir, sha256_file

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_CHUNK",
    "BatchJournal",
    "CachePlan",
    "CacheReport",
    "ChunkTask",
    "EmbeddingCache",
    "default_cache_root",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_CHUNK = 1024


def default_cache_root() -> Path:
    """``$KEYTOK_CACHE/embeddings`` (see the module docstring for the fallbacks)."""
    return cache_dir() / "embeddings"


def _hash_strings(items: Sequence[str]) -> str:
    # Length-prefixed so that ["ab", "c"] and ["a", "bc"] hash differently.
    h = hashlib.sha256()
    for s in items:
        b = s.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@dataclass
class CacheReport:
    """What one :meth:`EmbeddingCache.encode_corpus` call did."""

    folder: Path
    chunks: int = 0
    reused: int = 0
    computed: int = 0
    recomputed_bad: int = 0
    truncated: int = 0  # texts cut to the encoder's max_length, cached chunks included
    encoded_texts: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for progress output."""
        out = f"embeddings: {self.chunks} chunks ({self.reused} cached, {self.computed} computed"
        if self.recomputed_bad:
            out += f", {self.recomputed_bad} corrupted and recomputed"
        out += ")"
        if self.encoded_texts:
            rate = self.tokens / self.seconds if self.seconds else 0.0
            out += f", {self.encoded_texts} texts / {self.tokens:,} tokens encoded in {self.seconds:.1f} s"
            out += f" ({rate:,.0f} tokens/s)"
        if self.truncated:
            out += f"; {self.truncated} texts cut to max_length"
        return out


@dataclass(frozen=True)
class ChunkTask:
    """One chunk still to encode: its number, its rows ``[lo, hi)`` and the hashes its record must hold."""

    chunk: int
    lo: int
    hi: int
    ids_hash: str
    texts_hash: str


@dataclass
class CachePlan:
    """What :meth:`EmbeddingCache.plan` found: the folder, its key, cached rows filled in, chunks to do."""

    folder: Path
    key: dict[str, Any]
    embeddings: np.ndarray
    todo: list[ChunkTask]
    report: CacheReport


class BatchJournal:
    """Pooled rows of the model batches of one chunk already encoded, for a chunk stopped half-way.

    A batch is named by the sha256 of its token ids (and text spans), so a row block is reused only for the
    very batch that made it. Files are written atomically; one that is unreadable or of the wrong shape is
    ignored (recomputed).
    """

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = folder
        self.dim = dim
        self.reused = 0

    @staticmethod
    def _name(ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> str:
        digest = hashlib.sha256(json.dumps([list(map(int, x)) for x in ids]).encode())
        digest.update(json.dumps([list(map(int, s)) for s in spans]).encode())
        return f"batch-{digest.hexdigest()[:40]}.npy"

    def get(self, ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> np.ndarray | None:
        """The rows saved for this batch, or ``None``."""
        path = self.folder / self._name(ids, spans)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.float32 or arr.shape != (len(ids), self.dim) or not np.isfinite(arr).all():
            return None
        self.reused += 1
        return arr

    def put(self, ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], rows: np.ndarray) -> None:
        """Save one finished batch's rows."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / self._name(ids, spans)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)

    def discard(self) -> None:
        """Remove the journal (its chunk is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class EmbeddingCache:
    """Embeddings of corpora, cached in chunks per (model, method, precision, max_length, corpus).

    >>> cache = EmbeddingCache()                                   # doctest: +SKIP
    >>> emb = cache.encode_corpus(encoder, doc_ids, texts, corpus_checksum=corpus_checksum(path))
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.last_report: CacheReport | None = None

    # ------------------------------------------------------------------ keys
    @staticmethod
    def key(encoder: Any, corpus_key: str, chunk_size: int = DEFAULT_CHUNK) -> dict[str, Any]:
        """The fields that identify one cached corpus encoding (written to ``key.json``)."""
        return {
            "cache_version": CACHE_VERSION,
            "model": encoder.model.name,
            "model_sha256": encoder.model.fingerprint,
            "method": encoder.method.key(),
            # with the backend: an ONNX Runtime forward differs from torch's in the last bits
            "precision": encoder.describe() if hasattr(encoder, "describe") else encoder.precision.describe(),
            "max_length": int(encoder.max_length),
            "corpus": corpus_key,
            "chunk_size": int(chunk_size),
        }

    def folder_for(self, encoder: Any, corpus_key: str, chunk_size: int = DEFAULT_CHUNK) -> Path:
        """The cache folder of this (encoder, corpus) pair."""
        key = self.key(encoder, corpus_key, chunk_size)
        # model name is informational only: the fingerprint identifies the weights
        ident = {k: v for k, v in key.items() if k != "model"}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        return self.root / digest[:32]

    # ------------------------------------------------------------------ chunks
    @staticmethod
    def _names(i: int) -> tuple[str, str]:
        return f"chunk{i:06d}.npy", f"chunk{i:06d}.json"

    def _read_chunk(
        self, folder: Path, i: int, ids_hash: str, texts_hash: str, n: int, dim: int
    ) -> tuple[np.ndarray | None, str | None, int]:
        """(array, None, texts truncated) for a valid chunk; (None, reason, 0) for a corrupted one; (None,
        None, 0) if absent."""
        npy_name, rec_name = self._names(i)
        rec_path, npy_path = folder / rec_name, folder / npy_name
        if not rec_path.exists():
            return None, None, 0
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("record is not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return None, f"unreadable record ({exc})", 0
        if rec.get("ids_sha256") != ids_hash or rec.get("texts_sha256") != texts_hash:
            return None, "its documents differ from the corpus's", 0
        if not npy_path.is_file():
            return None, f"{npy_name} is missing", 0
        try:
            if sha256_file(npy_path) != rec.get("npy_sha256"):
                return None, f"{npy_name} does not match its recorded sha256", 0
            arr = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            return None, f"{npy_name} is unreadable ({exc})", 0
        if arr.dtype != np.float32 or arr.shape != (n, dim):
            return None, f"{npy_name} holds {arr.dtype} {arr.shape}, expected float32 {(n, dim)}", 0
        if not np.isfinite(arr).all():
            return None, f"{npy_name} holds NaN or infinite values", 0
        truncated = rec.get("truncated", 0)
        return arr, None, truncated if type(truncated) is int and 0 <= truncated <= n else 0

    def _write_chunk(
        self, folder: Path, i: int, arr: np.ndarray, ids_hash: str, texts_hash: str, truncated: int = 0
    ) -> None:
        npy_name, rec_name = self._names(i)
        with atomic_path(folder / npy_name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        record = {
            "chunk": i,
            "rows": int(arr.shape[0]),
            "dim": int(arr.shape[1]),
            "ids_sha256": ids_hash,
            "texts_sha256": texts_hash,
            "npy_sha256": sha256_file(folder / npy_name),
            "truncated": int(truncated),
        }
        # The record goes last: it is what marks the chunk complete.
        atomic_write_text(folder / rec_name, json.dumps(record, indent=1) + "\n")

    # ------------------------------------------------------------------ encoding
    def plan(
        self,
        encoder: Any,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        *,
        corpus_checksum: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> CachePlan:
        """Which chunks of this corpus are cached (read into :attr:`CachePlan.embeddings`) and which are not.

        Runners (the local loop of :meth:`encode_corpus`, :mod:`keytok.encoding.ray_runner`) encode the
        chunks of :attr:`CachePlan.todo` with :meth:`encode_chunk`, in any order and on any machine that
        sees the cache folder.
        """
        ids, txt = list(doc_ids), list(texts)
        if len(ids) != len(txt):
            raise KeytokError(f"{len(ids)} doc ids for {len(txt)} texts")
        if not ids:
            raise KeytokError("no documents to encode")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise KeytokError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        corpus_key = (
            corpus_checksum
            or "content:" + hashlib.sha256((_hash_strings(ids) + _hash_strings(txt)).encode()).hexdigest()
        )
        folder = self.folder_for(encoder, corpus_key, chunk_size)
        folder.mkdir(parents=True, exist_ok=True)
        key = self.key(encoder, corpus_key, chunk_size)
        if not (folder / "key.json").is_file():
            atomic_write_text(folder / "key.json", json.dumps(key, indent=2) + "\n")
        dim = int(encoder.model.hidden_size)
        n_chunks = -(-len(ids) // chunk_size)
        report = CacheReport(folder=folder, chunks=n_chunks)
        out = np.zeros((len(ids), dim), dtype=np.float32)
        todo: list[ChunkTask] = []
        for c in range(n_chunks):
            lo, hi = c * chunk_size, min(len(ids), (c + 1) * chunk_size)
            ids_hash, texts_hash = _hash_strings(ids[lo:hi]), _hash_strings(txt[lo:hi])
            arr, problem, truncated = self._read_chunk(folder, c, ids_hash, texts_hash, hi - lo, dim)
            if arr is not None:
                out[lo:hi] = arr
                report.reused += 1
                report.truncated += truncated
                continue
            if problem is not None:
                log.warning(
                    "keytok: cached embeddings chunk %d in %s: %s; recomputing it", c, folder, problem
                )
                report.recomputed_bad += 1
            todo.append(ChunkTask(c, lo, hi, ids_hash, texts_hash))
        return CachePlan(folder=folder, key=key, embeddings=out, todo=todo, report=report)

    def encode_chunk(
        self,
        encoder: Any,
        folder: Path,
        task: ChunkTask,
        texts: Sequence[str],
        on_batch: Any = None,
        report: CacheReport | None = None,
    ) -> tuple[np.ndarray, int, int]:
        """Encode one chunk's ``texts`` and write it to ``folder``; returns (array, texts encoded, tokens).

        Empty texts are not run through the model: their row is all zeros. ``report``: where to count the
        texts cut to ``max_length`` (also recorded with the chunk, for a later build that reuses it).
        """
        if len(texts) != task.hi - task.lo:
            raise KeytokError(f"chunk {task.chunk}: {len(texts)} texts for {task.hi - task.lo} rows")
        keep = [j for j, t in enumerate(texts) if t.strip()]
        arr = np.zeros((len(texts), int(encoder.model.hidden_size)), dtype=np.float32)
        tokens = truncated = 0
        journal = BatchJournal(folder / f"chunk{task.chunk:06d}.partial", arr.shape[1])
        if keep:
            arr[keep] = encoder.encode(
                [texts[j] for j in keep], show_progress=False, on_batch=on_batch, journal=journal
            )
            stats = getattr(encoder, "last_stats", None)
            tokens = int(getattr(stats, "tokens", 0))
            truncated = int(getattr(stats, "truncated", 0))
        self._write_chunk(folder, task.chunk, arr, task.ids_hash, task.texts_hash, truncated)
        journal.discard()
        if report is not None:
            report.truncated += truncated
        return arr, len(keep), tokens

    def add_embeddings(
        self,
        encoder: Any,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        embeddings: np.ndarray,
        *,
        corpus_checksum: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        verify: int = 8,
        min_cosine: float = 0.9999,
        seed: int = 0,
    ) -> CacheReport:
        """Put embeddings computed elsewhere (a GPU machine, another process) into this encoder's cache.

        ``embeddings[i]`` is the pooled embedding of ``texts[i]``; rows of empty texts are stored as zeros,
        as :meth:`encode_corpus` stores them. Before anything is written, ``verify`` sampled non-empty texts
        are encoded here and each must have cosine >= ``min_cosine`` with its given row: embeddings of
        another model, method, prompt or ``max_length`` are refused with a one-line KeytokError. Precision
        is the one thing the check tolerates within ``min_cosine``: the cache is keyed by this encoder's
        precision, and fp32 on a GPU agrees with fp32 on a CPU to ~1e-7 (``experiments/bench_gpu.py``).
        Chunks already cached are kept.
        """
        txt = list(texts)
        emb = np.asarray(embeddings, dtype=np.float32)
        dim = int(encoder.model.hidden_size)
        if emb.shape != (len(txt), dim):
            raise KeytokError(f"embeddings are {emb.shape}, expected {(len(txt), dim)} for {len(txt)} texts")
        if not np.isfinite(emb).all():
            raise KeytokError("embeddings hold NaN or infinite values")
        full = [i for i, t in enumerate(txt) if t.strip()]
        blank = [i for i in full if not emb[i].any()]
        if blank:  # an all-zero row is what a missing one looks like; only empty texts have it
            raise KeytokError(
                f"no embedding for {len(blank)} non-empty texts (first: {doc_ids[blank[0]]!r}): their rows are all zeros"
            )
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(full, size=min(verify, len(full)), replace=False).tolist()) if full else []
        if sample:
            here = encoder.encode([txt[i] for i in sample], show_progress=False)
            given = emb[sample]
            norms = np.linalg.norm(here, axis=1) * np.linalg.norm(given, axis=1)
            cos = (here * given).sum(axis=1) / np.maximum(norms, 1e-30)
            if cos.min() < min_cosine:
                worst = sample[int(cos.argmin())]
                raise KeytokError(
                    f"the given embedding of text {worst} ({doc_ids[worst]!r}) has cosine {cos.min():.5f} with "
                    f"this encoder's (need >= {min_cosine}): made with another model, method or max_length?"
                )
        plan = self.plan(encoder, doc_ids, txt, corpus_checksum=corpus_checksum, chunk_size=chunk_size)
        report = plan.report
        for task in plan.todo:
            block = emb[task.lo : task.hi].copy()
            block[[j for j, t in enumerate(txt[task.lo : task.hi]) if not t.strip()]] = 0.0
            self._write_chunk(plan.folder, task.chunk, block, task.ids_hash, task.texts_hash)
            report.computed += 1
        self.last_report = report
        return report

    def encode_corpus(
        self,
        encoder: Any,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        *,
        corpus_checksum: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        progress: bool = True,
    ) -> np.ndarray:
        """Embeddings [n, hidden] (float32) of ``texts``, computing only the chunks not yet cached.

        ``corpus_checksum`` (e.g. :func:`keytok.data.beir.corpus_checksum`) keys the cache by the corpus
        file; without it the doc ids and texts are hashed. Either way each chunk also records its ids and
        texts, so a stale chunk is never used. Empty texts get zero rows without running the model.
        :attr:`last_report` says what was reused and computed.
        """
        import time

        from tqdm.auto import tqdm

        txt = list(texts)
        plan = self.plan(encoder, doc_ids, txt, corpus_checksum=corpus_checksum, chunk_size=chunk_size)
        report, out = plan.report, plan.embeddings
        started = time.perf_counter()
        pending_docs = sum(t.hi - t.lo for t in plan.todo)
        # One bar over the documents still to encode (not per chunk: chunks are small and many).
        with tqdm(
            total=pending_docs,
            unit="doc",
            desc="embedding",
            disable=not (progress and plan.todo),
            smoothing=0.1,
        ) as bar:
            for task in plan.todo:
                part = txt[task.lo : task.hi]
                # The bar moves per model batch, not per chunk: a chunk can take many minutes.
                arr, encoded, tokens = self.encode_chunk(
                    encoder, plan.folder, task, part, on_batch=lambda n, _t: bar.update(n), report=report
                )
                out[task.lo : task.hi] = arr
                report.tokens += tokens
                report.encoded_texts += encoded
                report.computed += 1
                bar.update(len(part) - encoded)  # empty texts, which skip the model
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"{report.tokens / elapsed:,.0f} tok/s" if elapsed > 0 else "")
        report.seconds = time.perf_counter() - started
        self.last_report = report
        return out
