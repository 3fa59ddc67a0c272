"""Lucene indexes through Anserini (the ``lucene`` extra): integer impact indexes and BM25.

**Impact index** (:class:`LuceneImpactIndex`): each document is a sparse vector of non-negative *integer*
impacts over a token vocabulary. It is exported as an Anserini ``JsonVectorCollection``, one JSON object per
line::

    {"id": "<doc id>", "contents": "", "vector": {"t17": 3, "t2045": 12}}

Token keys are ``"t"`` + the decimal token id, never the token's text: any vocabulary (byte-level BPE pieces,
SentencePiece "▁" pieces, tokens with spaces or quotes, 262k-entry Gemma vocabularies) then indexes without
escaping or analysis problems. The index is built with ``-impact -pretokenized``, so a document's impact is
stored as the term frequency and the score of a document is exactly ``Σ_t q_t · d_t`` over shared tokens
(computed by Lucene in float32: exact while a score stays below 2**24 = 16,777,216). Anserini nudges tied
scores apart by multiples of 1e-6 to order ties by doc id; keytok rounds impact scores back to the integers
they are, so ties keep Anserini's order (doc id ascending) and their exact, equal scores.

Integers only, on both sides: Anserini truncates float weights (2.7 → 2) and silently drops zeros, so a float
input raises :class:`KeytokError` unless every value is already a whole number; quantise first (e.g. with
``keytok.engines.sparse.quantize``). Rounding here would hide a wrong scale (weights in [0, 1] would round to
0 or 1), so keytok refuses instead of rounding. Anserini spells a document out as each token repeated
``impact`` times, so indexing time grows with the sum of the impacts: quantise to a few hundred levels
(PromptReps uses weight × 100), not millions; a document's impacts may sum to at most 2**24.

Queries go straight to Anserini's ``SimpleImpactSearcher`` (the Java class behind pyserini's
``LuceneImpactSearcher``) as a ``{token: int}`` map. pyserini's Python wrapper is bypassed: its default
``min_idf=0`` drops a query token that occurs in *every* document (idf = 0), and importing it costs ≈ 18 s;
the direct call drops nothing (the same as ``LuceneImpactSearcher(index, encoder, min_idf=-1)`` with a
pass-through encoder).

**BM25 index** (:class:`LuceneBM25Index`): Anserini's defaults for the BEIR "flat" regressions: a
``JsonCollection`` whose ``contents`` is ``title + " " + text``, the default English analyzer (Porter stemmer,
Lucene's English stopwords removed), BM25 with k1 = 0.9, b = 0.4. Scores are Anserini's: rounded to 4 decimals,
tied scores lowered by multiples of 1e-6 so that ties sort by doc id (as in its regressions).

On disk an index is one folder: the Lucene files side by side with ``manifest.json``
(:class:`keytok.engines.manifest.Manifest`, kind ``"lucene-impact"`` or ``"lucene-bm25"``), which lists every
Lucene file with its size and sha256. Builds are atomic (built in a temporary folder beside ``path`` and renamed
into place); the exported collection goes to another temporary folder beside ``path``, deleted afterwards.

Batch results are :data:`keytok.engines.engine.BatchHits`: ``(ids, scores)``, ``scores`` float32.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import scipy.sparse as sp

from keytok.engines.engine import (
    BatchHits,
    Chunks,
    DocIdStream,
    EngineBase,
    SearchHits,
    cap_k,
    check_doc_ids,
    check_new,
    chunk_source,
    manifest_int,
    meta_dict,
    one_line,
    pad_batch,
)
from keytok.engines.java import anserini_jar, jclass, require_lucene, run_index_collection
from keytok.engines.manifest import Manifest
from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_dir

__all__ = [
    "BM25_B",
    "BM25_K1",
    "TOKEN_PREFIX",
    "LuceneBM25Index",
    "LuceneImpactIndex",
    "token_key",
]

TOKEN_PREFIX = "t"
BM25_K1 = 0.9
BM25_B = 0.4
BM25_PARAMS = "bm25"  # the manifest's entry of k1 and b
_INT32_MAX = 2**31 - 1
# Anserini's JsonVectorCollection turns {"t7": 3} into the text "t7 t7 t7", so a document costs time and
# memory in proportion to the sum of its impacts; past this the Java string builder runs out of room.
MAX_DOC_IMPACT_SUM = 2**24
#: The ``IndexCollection`` arguments of an impact index: integer vectors, taken as they are.
IMPACT_INDEX_ARGS = (
    "-collection",
    "JsonVectorCollection",
    "-generator",
    "DefaultLuceneDocumentGenerator",
    "-impact",
    "-pretokenized",
)


def token_key(token_id: int) -> str:
    """The Lucene term for token id ``token_id`` (``"t" + id``)."""
    return f"{TOKEN_PREFIX}{int(token_id)}"


class _DocLike(Protocol):
    id: str
    text: str


# --------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _collection_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` for the exported collection (same disk as the index), removed after."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.collection.", dir=dest.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_folder(
    path: Path,
    manifest: Manifest,
    write_collection: Callable[[Path], int | None],
    collection_args: list[str],
    threads: int,
    expected_indexed: int | None,
) -> None:
    """Export, index with Anserini into a temporary folder, record the files, write the manifest, swap in.

    ``write_collection`` writes the collection files; it may return the number of documents Anserini must
    index (a streamed collection knows it only once written), which replaces ``expected_indexed``.
    """
    start = time.perf_counter()
    with atomic_dir(path) as tmp, _collection_dir(path) as coll:
        written = write_collection(coll)
        if written is not None:
            expected_indexed = written
        counters = run_index_collection(
            [*collection_args, "-input", str(coll), "-index", str(tmp), "-optimize"], threads=threads
        )
        if expected_indexed is not None and counters["indexed"] != expected_indexed:
            raise KeytokError(
                f"index {path}: Anserini indexed {counters['indexed']} documents, expected {expected_indexed}"
            )
        (tmp / "write.lock").unlink(missing_ok=True)  # left by Lucene's IndexWriter; not part of the index
        for f in sorted(tmp.iterdir()):
            manifest.record_file(tmp, f.name)
        manifest.counts["indexed"] = counters["indexed"]
        manifest.counts["empty"] = manifest.counts["docs"] - counters["indexed"]
        manifest.params["anserini_jar"] = anserini_jar().name
        manifest.params["threads"] = threads
        manifest.params["build_seconds"] = round(time.perf_counter() - start, 3)
        manifest.write(tmp)


def _check_segments(path: Path, manifest: Manifest) -> None:
    """Refuse a manifest without a Lucene commit point, or with counts that are not whole numbers
    (``counts.indexed`` caps ``k``, so a crafted one must not be huge or negative)."""
    if not any(name.startswith("segments_") for name in manifest.files):
        raise KeytokError(f"index {path}: manifest.json lists no Lucene segments_N file")
    try:
        docs = manifest_int(manifest.counts.get("docs"), "counts.docs", 0)
        indexed = manifest_int(manifest.counts.get("indexed"), "counts.indexed", 0)
    except ValueError as exc:
        raise KeytokError(f"index {path}: manifest.json has a bad field ({exc})") from None
    if indexed > docs:
        raise KeytokError(f"index {path}: manifest.json counts {indexed} indexed of {docs} documents")


def _check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise KeytokError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def _integer_values(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as int64, refusing NaN, negative, fractional or out-of-range values."""
    if data.dtype == np.bool_:
        return data.astype(np.int64)
    if np.issubdtype(data.dtype, np.integer):
        vals = data.astype(np.int64)
    elif np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise KeytokError(f"{what} contains NaN or infinite weights")
        if np.any(data != np.round(data)):
            raise KeytokError(
                f"{what} has fractional weights: Lucene impacts are integers (it would truncate them); "
                "quantise first, e.g. keytok.engines.sparse.quantize"
            )
        if data.size and (data.max() > _INT32_MAX or data.min() < -_INT32_MAX):
            raise KeytokError(f"{what} has weights beyond ±{_INT32_MAX}: Lucene impacts are 32-bit")
        vals = data.astype(np.int64)
    else:
        raise KeytokError(f"{what} has dtype {data.dtype}: integer impacts expected")
    if vals.size and vals.min() < 0:
        raise KeytokError(f"{what} has negative weights: Lucene impacts must be ≥ 0")
    if vals.size and vals.max() > _INT32_MAX:
        raise KeytokError(f"{what} has weights above {_INT32_MAX}: Lucene impacts are 32-bit")
    return vals


def _as_int_csr(matrix: Any, what: str) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise KeytokError(f"{what} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix)
    vals = _integer_values(csr.data, what)
    csr = sp.csr_matrix((vals, csr.indices, csr.indptr), shape=csr.shape)
    csr.sum_duplicates()
    csr.eliminate_zeros()  # Anserini drops zero impacts anyway; removing them keeps the counts honest
    return csr


def _check_impact_sums(csr: sp.csr_matrix, ids: Sequence[str], first_row: int) -> None:
    sums = np.asarray(csr.sum(axis=1)).ravel()
    if sums.size and sums.max() > MAX_DOC_IMPACT_SUM:
        row = int(np.argmax(sums))
        raise KeytokError(
            f"vectors row {first_row + row} (doc {ids[row]!r}) has impacts summing to {int(sums[row])}, above "
            f"{MAX_DOC_IMPACT_SUM}: Anserini spells each token out impact times; quantise to a smaller scale"
        )


_WRITE_ROWS = 4096


def _token_keys(vocab: int) -> np.ndarray:
    """``'"t<id>":'`` for every token id, as a numpy object array (indexed by token id)."""
    return np.array([f'"{TOKEN_PREFIX}{t}":' for t in range(vocab)], dtype=object)


def _write_vectors(fh: Any, ids: Sequence[str], csr: sp.csr_matrix, keys: np.ndarray) -> None:
    """Rows of an int CSR matrix as ``JsonVectorCollection`` lines (``keys``: :func:`_token_keys`).

    :data:`_WRITE_ROWS` rows at a time: a whole chunk as Python objects would cost ~40 bytes per posting.
    """
    for r0 in range(0, len(ids), _WRITE_ROWS):
        sub = csr[r0 : r0 + _WRITE_ROWS]
        values, which = np.unique(sub.data, return_inverse=True)
        texts = np.array([str(v) for v in values.tolist()], dtype=object)
        pairs = (keys[sub.indices] + texts[which.ravel()]).tolist()  # '"t17":3'
        indptr = sub.indptr.tolist()
        fh.write(
            "".join(
                f'{{"id":{json.dumps(doc_id)},"contents":"","vector":{{{",".join(pairs[indptr[r] : indptr[r + 1]])}}}}}\n'
                for r, doc_id in enumerate(ids[r0 : r0 + _WRITE_ROWS])
            )
        )


def _hits(java_hits: Any, integer: bool = False) -> SearchHits:
    # Anserini's ScoreTiesAdjusterReranker rounds every score to 4 decimals and then lowers the i-th of a
    # run of tied scores by i·1e-6 so that ties sort by doc id. Impact scores are integers, so rounding
    # restores them exactly (while k < 500,000 and scores < 2**24); BM25 scores are left as Anserini gives them.
    if integer:
        return [(h.docid, float(round(h.score))) for h in java_hits]
    return [(h.docid, float(h.score)) for h in java_hits]


def _split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, min(parts, n) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


_jackson: dict[str, Any] = {}


def _from_json(text: str, container: str) -> Any:
    """Parse ``text`` into a Java ``container`` (``java.util.HashMap`` / ``java.util.ArrayList``) in one call.

    Anserini's fat jar ships Jackson; one parse replaces a pyjnius call per token (``HashMap.put`` with a boxed
    Integer costs ≈ 35 µs per token through pyjnius, 7× slower for an 80-token query). JSON integers within
    32 bits become ``java.lang.Integer``, which is what ``SimpleImpactSearcher`` expects.
    """
    if not _jackson:
        _jackson["mapper"] = jclass("com.fasterxml.jackson.databind.ObjectMapper")()
        jclass_cls = jclass("java.lang.Class")
        for name in ("java.util.HashMap", "java.util.ArrayList"):
            _jackson[name] = jclass_cls.forName(name)
    return _jackson["mapper"].readValue(text, _jackson[container])


def _query_json(pairs: list[tuple[int, int]]) -> str:
    return "{" + ",".join(f'"{TOKEN_PREFIX}{t}":{w}' for t, w in pairs) + "}"


def _run_batch(
    searcher: Any, queries_json: str, n: int, k: int, threads: int, integer: bool = False
) -> list[SearchHits]:
    """Run ``searcher.batch_search`` on ``n`` queries given as one JSON array (of maps or of strings)."""
    qlist = _from_json(queries_json, "java.util.ArrayList")
    qids = _from_json(json.dumps([str(i) for i in range(n)]), "java.util.ArrayList")
    results = searcher.batch_search(qlist, qids, k, threads)
    out: list[SearchHits] = [[] for _ in range(n)]
    for entry in results.entrySet().toArray():
        out[int(entry.getKey())] = _hits(entry.getValue(), integer)
    return out


def _java_message(exc: BaseException) -> str:
    """A pyjnius exception's Java class and message on one line (``CorruptIndexException: checksum
    failed ...``), without the Java stack it carries."""
    cls = str(getattr(exc, "classname", "") or "").rsplit(".", 1)[-1]
    text = one_line(Exception(getattr(exc, "innermessage", None) or str(exc).splitlines()[0]))
    return f"{cls}: {text}" if cls else text


class _LuceneBase(EngineBase):
    """Shared open/close logic of the two Lucene index kinds."""

    kind = ""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._searcher: Any = None

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata saved at build time (the caller's, plus ``vocab_size`` for impact indexes)."""
        return dict(self.manifest.meta)

    @property
    def num_docs(self) -> int:
        """Documents in the Lucene index (documents with no tokens are not indexed)."""
        return int(self.manifest.counts["indexed"])

    def check_compatible(self, expected: Mapping[str, Any]) -> None:
        """Raise :class:`KeytokError` if ``expected`` names another model, method, calibration or vocabulary."""
        self.manifest.check_compatible(expected)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_meta: Mapping[str, Any] | None = None,
        verify: bool = True,
        **options: Any,
    ) -> Self:
        """:meth:`EngineBase.open`; with ``verify`` (the default) Lucene's own checksums of every file are
        checked too, when the JVM opens the index (first search): see :meth:`_check_integrity`."""
        engine = super().open(path, expected_meta=expected_meta, verify=verify, **options)
        engine._verify = verify
        return engine

    def _new_searcher(self) -> Any:
        raise NotImplementedError

    @property
    def searcher(self) -> Any:
        """The Anserini Java searcher, created on first use (this starts the JVM)."""
        if self._searcher is None:
            with self._java():
                if getattr(self, "_verify", False):
                    self._check_integrity()
                self._searcher = self._new_searcher()
        return self._searcher

    def _check_integrity(self) -> None:
        """Lucene's own check of every file's CRC32 footer (``LeafReader.checkIntegrity``).

        The sha256 of the manifest proves nothing against whoever rewrote it; Lucene's checksums are in the
        files themselves, so a byte flipped in a posting list (which Lucene would otherwise read, and
        misread, only at search time) is caught on open. It reads every byte once, like the sha256.
        """
        directory = jclass("org.apache.lucene.store.FSDirectory").open(
            jclass("java.io.File")(str(self.path.resolve())).toPath()
        )
        try:
            reader = jclass("org.apache.lucene.index.DirectoryReader").open(directory)
            try:
                for leaf in reader.leaves().toArray():
                    leaf.reader().checkIntegrity()
            finally:
                reader.close()
        finally:
            directory.close()

    @contextlib.contextmanager
    def _java(self) -> Iterator[None]:
        """Turn a Java exception (pyjnius's ``JavaException``, 40 lines of Java stack) raised while reading
        this index into one line naming the folder and Lucene's reason."""
        try:
            yield
        except KeytokError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "jnius":
                raise
            raise KeytokError(f"index {self.path}: Lucene cannot read it ({_java_message(exc)})") from None

    def close(self) -> None:
        """Release the Lucene reader (the JVM itself lives until the process exits)."""
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
            self._reader = None

    def __enter__(self) -> _LuceneBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- impacts
class LuceneImpactIndex(_LuceneBase):
    """A Lucene impact index of integer token weights, searched by ``Σ q_t · d_t`` (see the module doc)."""

    kind = "lucene-impact"

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        doc_ids: Sequence[str],
        vectors: sp.spmatrix | sp.sparray,
        meta: Mapping[str, Any] | None = None,
        threads: int = 2,
        *,
        overwrite: bool = False,
    ) -> LuceneImpactIndex:
        """Index ``vectors`` (``n_docs × vocab``, non-negative integer impacts) under ``doc_ids`` at ``path``.

        ``meta`` (JSON-serialisable; model, method, ... see :mod:`keytok.engines.manifest`) is stored in the
        manifest, with ``vocab_size`` set to the matrix width. ``threads`` indexing threads (the collection is
        split into that many files). An existing ``path`` is an error unless ``overwrite``; it is then replaced
        only when the build succeeds. Documents without any positive impact are not indexed (they could never
        match); ``counts["empty"]`` in the manifest says how many. For a corpus that does not fit in memory as
        one matrix, see :meth:`build_from_chunks`.
        """
        require_lucene()
        path = Path(path)
        check_new(path, overwrite)
        ids = check_doc_ids(doc_ids, allow_empty=False)
        threads = _check_threads(threads)
        csr = _as_int_csr(vectors, "vectors")
        if csr.shape[0] != len(ids):
            raise KeytokError(f"vectors has {csr.shape[0]} rows but {len(ids)} doc ids were given")
        # one file per thread, contiguous rows; sliced lazily, so one slice is copied at a time
        parts = (
            (part, ids[lo:hi], csr[lo:hi]) for part, (lo, hi) in enumerate(_split_rows(len(ids), threads))
        )
        return cls._build_parts(path, parts, meta, threads, int(csr.shape[1]))

    @classmethod
    def from_collection_files(
        cls,
        path: str | os.PathLike[str],
        files: Sequence[Path],
        meta: Mapping[str, Any],
        *,
        docs: int,
        indexed: int,
        params: Mapping[str, Any],
        threads: int = 2,
        overwrite: bool = False,
    ) -> LuceneImpactIndex:
        """Index JsonVectorCollection ``files`` written elsewhere (already checked: ``docs`` documents, of
        which ``indexed`` hold tokens) with :data:`IMPACT_INDEX_ARGS`, write ``path`` atomically with its
        manifest (``meta``, ``params``), and open it. Anserini must index exactly ``indexed`` documents.
        """
        require_lucene()
        path = Path(path)
        check_new(path, overwrite)
        threads = _check_threads(threads)
        manifest = Manifest(kind=cls.kind, meta=meta_dict(meta), counts={"docs": docs}, params=dict(params))

        def link_files(coll: Path) -> None:
            for f in files:
                try:
                    os.link(f, coll / f.name)
                except OSError:
                    shutil.copyfile(f, coll / f.name)

        _build_folder(path, manifest, link_files, list(IMPACT_INDEX_ARGS), threads, expected_indexed=indexed)
        return cls.open(path)

    @classmethod
    def build_from_chunks(
        cls,
        path: str | os.PathLike[str],
        chunks: Chunks,
        meta: Mapping[str, Any] | None = None,
        threads: int = 2,
        *,
        overwrite: bool = False,
    ) -> LuceneImpactIndex:
        """:meth:`build` from ``(doc_ids, int vectors)`` chunks read once, one at a time.

        ``chunks`` (:data:`keytok.engines.engine.Chunks`, any iterable: one pass): pairs of a list of ids and a
        sparse matrix of their integer impacts, every chunk with the same number of columns. Each chunk is
        written to the exported collection as soon as it is read (chunk ``i`` goes to file ``i % threads``, so
        give at least ``threads`` chunks to keep every indexing thread busy); only the doc ids, for the
        duplicate check, and one chunk are held, never every row. The index answers every query as one
        :meth:`build` from the stacked chunks (Lucene's own files differ from build to build anyway: segment
        ids, timestamps, the threads' interleaving).
        """
        require_lucene()
        path = Path(path)
        check_new(path, overwrite)
        threads = _check_threads(threads)
        source = chunk_source(chunks)
        seen = DocIdStream(keep=False)  # Lucene stores the ids; here they are only checked

        def parts() -> Iterator[tuple[int, list[str], sp.csr_matrix]]:
            for n, chunk_ids, vectors in source():
                csr = _as_int_csr(vectors, f"chunk {n} vectors")
                yield n % threads, seen.take(n, chunk_ids, csr.shape[0]), csr
                del csr, vectors  # freed before the next chunk is read
            seen.done()
            if not seen.count:
                raise KeytokError("chunks hold no documents: nothing to index")

        meta_vocab = meta_dict(meta).get("vocab_size")
        return cls._build_parts(path, parts(), meta, threads, meta_vocab)

    @classmethod
    def _build_parts(
        cls,
        path: Path,
        parts: Iterable[tuple[int, list[str], sp.csr_matrix]],
        meta: Mapping[str, Any] | None,
        threads: int,
        vocab: int | None,
    ) -> LuceneImpactIndex:
        """Export ``(file number, checked ids, int CSR)`` parts as a JSON vector collection, index it, open it."""
        meta_json = meta_dict(meta)
        manifest = Manifest(kind=cls.kind, meta=meta_json, params={"token_key": f"{TOKEN_PREFIX}<token id>"})

        def write_collection(coll: Path) -> int:
            nonlocal vocab
            files: dict[int, Any] = {}
            keys = None
            docs = postings = indexed = max_impact = 0
            try:
                for part, ids, csr in parts:
                    expected = meta_json.get("vocab_size", vocab)
                    if expected is not None and expected != csr.shape[1]:
                        raise KeytokError(
                            f"vectors have {csr.shape[1]} columns but the index has vocab_size={expected}"
                        )
                    vocab = int(csr.shape[1])
                    if ids:
                        _check_impact_sums(csr, ids, docs)
                        if part not in files:
                            files[part] = open(coll / f"part{part:04d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
                        if keys is None:
                            keys = _token_keys(vocab)
                        _write_vectors(files[part], ids, csr, keys)
                        docs += len(ids)
                        postings += int(csr.nnz)
                        indexed += int(np.count_nonzero(np.diff(csr.indptr)))
                        max_impact = max(max_impact, int(csr.data.max()) if csr.nnz else 0)
                    del csr  # freed before the next part is read
            finally:
                for fh in files.values():
                    fh.close()
            meta_json["vocab_size"] = vocab
            manifest.counts.update(docs=docs, postings=postings)
            manifest.params["max_impact"] = max_impact
            return indexed

        _build_folder(path, manifest, write_collection, list(IMPACT_INDEX_ARGS), threads, None)
        return cls.open(path, verify=False)  # just written

    @classmethod
    def _from_manifest(cls, path: Path, manifest: Manifest, **options: Any) -> LuceneImpactIndex:
        """An index built by :meth:`build`, its manifest checked by :meth:`open` (the JVM starts on the
        first search)."""
        require_lucene()
        _check_segments(path, manifest)
        out = cls(path, manifest)
        try:
            manifest_int(manifest.meta.get("vocab_size"), "meta.vocab_size", 1)
        except ValueError as exc:
            raise KeytokError(f"index {path}: manifest.json has a bad field ({exc})") from None
        scale = manifest.meta.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < float("inf"):
            # scores are reported as lucene score x query scale x this scale
            raise KeytokError(
                f"index {path}: manifest.json has scale {scale!r}, not a positive finite number"
            )
        return out

    @property
    def vocab_size(self) -> int:
        """Width of the token vocabulary the index was built with."""
        return int(self.manifest.meta["vocab_size"])

    def _new_searcher(self) -> Any:
        # The JVM resolves relative paths against its own start directory, not Python's os.getcwd()
        return jclass("io.anserini.search.SimpleImpactSearcher")(str(self.path.resolve()))

    def _query_pairs(
        self, query: Mapping[int, int] | sp.spmatrix | sp.sparray, what: str
    ) -> list[tuple[int, int]]:
        if sp.issparse(query):
            csr = sp.csr_matrix(query)
            if csr.shape[0] != 1:
                raise KeytokError(
                    f"{what} has {csr.shape[0]} rows: search() takes one query, use search_batch()"
                )
            return self._csr_rows(csr, what)[0]
        if not isinstance(query, Mapping):
            raise KeytokError(
                f"{what} must be a dict {{token id: int weight}} or a 1-row scipy.sparse matrix"
            )
        if not query:
            return []
        keys = list(query.keys())
        for t in keys:
            if isinstance(t, bool) or not isinstance(t, int | np.integer):
                raise KeytokError(f"{what} has token {t!r}: token ids must be integers")
        tok = np.asarray(keys, dtype=np.int64)
        try:
            raw = np.asarray(list(query.values()))
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"{what} has non-numeric weights ({exc})") from exc
        if raw.dtype == object or not np.issubdtype(raw.dtype, np.number):
            raise KeytokError(f"{what} has non-numeric weights")
        vals = _integer_values(raw, what)
        self._check_token_range(tok, what)
        keep = vals > 0
        return list(zip(tok[keep].tolist(), vals[keep].tolist(), strict=True))

    def _check_token_range(self, tok: np.ndarray, what: str) -> None:
        if tok.size and (tok.min() < 0 or tok.max() >= self.vocab_size):
            bad = int(tok.min()) if tok.min() < 0 else int(tok.max())
            raise KeytokError(
                f"{what} has token id {bad} outside the index vocabulary [0, {self.vocab_size})"
            )

    def _csr_rows(self, csr: sp.csr_matrix, what: str) -> list[list[tuple[int, int]]]:
        if csr.shape[1] != self.vocab_size:
            raise KeytokError(
                f"{what} has {csr.shape[1]} columns but the index vocabulary has {self.vocab_size} tokens"
            )
        csr = _as_int_csr(csr, what)
        return [
            list(
                zip(
                    csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
                    csr.data[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
                    strict=True,
                )
            )
            for i in range(csr.shape[0])
        ]

    def search(self, query: Mapping[int, int] | sp.spmatrix | sp.sparray, k: int = 10) -> SearchHits:
        """Top-``k`` ``(doc_id, score)`` for one query: ``{token id: int weight}`` or a 1-row int sparse matrix.

        Zero weights are ignored; a query with no positive weight returns ``[]``. Ties are ordered by doc id.
        """
        k = cap_k(k, self.num_docs)
        pairs = self._query_pairs(query, "query")
        if not pairs:
            return []
        searcher = self.searcher
        with self._java():
            return _hits(
                searcher.search(_from_json(_query_json(pairs), "java.util.HashMap"), k), integer=True
            )

    def search_batch(self, queries: sp.spmatrix | sp.sparray, k: int = 10, threads: int = 1) -> BatchHits:
        """Search every row of ``queries`` (``n × vocab`` integer sparse matrix) on ``threads`` Java threads.

        Returns ``(ids, scores)`` as described in the module doc.
        """
        k = cap_k(k, self.num_docs)
        threads = _check_threads(threads)
        if not sp.issparse(queries):
            raise KeytokError(f"queries must be a scipy.sparse matrix, got {type(queries).__name__}")
        rows = self._csr_rows(sp.csr_matrix(queries), "queries")
        if not rows:
            return [], np.full((0, k), -np.inf, dtype=np.float32)
        searcher = self.searcher
        with self._java():
            hits = _run_batch(
                searcher,
                "[" + ",".join(_query_json(p) for p in rows) + "]",
                len(rows),
                k,
                threads,
                integer=True,
            )
        return pad_batch(hits, k)


# --------------------------------------------------------------------------------------------- BM25
class LuceneBM25Index(_LuceneBase):
    """Anserini BM25 over title + text (default English analyzer; k1 = 0.9, b = 0.4 unless changed)."""

    kind = "lucene-bm25"

    def __init__(self, path: Path, manifest: Manifest, k1: float = BM25_K1, b: float = BM25_B) -> None:
        super().__init__(path, manifest)
        self.k1 = float(k1)
        self.b = float(b)
        self._reader: Any = None
        self._analyzer: Any = None

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        corpus: Sequence[_DocLike],
        threads: int = 2,
        meta: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> LuceneBM25Index:
        """Index ``corpus`` (objects with ``.id``, ``.text`` and optionally ``.title``) for BM25 at ``path``.

        ``contents`` = ``title + " " + text`` as in Anserini's BEIR flat indexes. Documents whose contents
        are empty are not indexed (``counts["empty"]`` in the manifest). An existing ``path`` is an error
        unless ``overwrite``.
        """
        require_lucene()
        path = Path(path)
        check_new(path, overwrite)
        threads = _check_threads(threads)
        docs = list(corpus)
        if not docs:
            raise KeytokError("corpus is empty: nothing to index")
        for i, d in enumerate(docs):
            if not hasattr(d, "id") or not hasattr(d, "text"):
                raise KeytokError(f"corpus[{i}] is a {type(d).__name__}: documents need .id and .text")
            if not isinstance(d.text, str) or not isinstance(getattr(d, "title", ""), str):
                raise KeytokError(f"corpus[{i}] (id {d.id!r}): .text and .title must be strings")
        ids = check_doc_ids([d.id for d in docs], what="corpus ids", allow_empty=False)
        contents = [f"{getattr(d, 'title', '') or ''} {d.text}".strip() for d in docs]
        manifest = Manifest(
            kind=cls.kind,
            meta=meta_dict(meta),
            counts={"docs": len(ids)},
            params={
                "analyzer": "Anserini DefaultEnglishAnalyzer (Porter stemmer, English stopwords removed)",
                "contents": "title + ' ' + text",
                BM25_PARAMS: {"k1": BM25_K1, "b": BM25_B},
            },
        )

        def write_collection(coll: Path) -> None:
            for part, (lo, hi) in enumerate(_split_rows(len(docs), threads)):
                with open(coll / f"part{part:04d}.jsonl", "w", encoding="utf-8") as fh:
                    for i in range(lo, hi):
                        fh.write(
                            json.dumps({"id": ids[i], "contents": contents[i]}, ensure_ascii=False) + "\n"
                        )

        _build_folder(
            path,
            manifest,
            write_collection,
            ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator"],
            threads,
            expected_indexed=sum(1 for c in contents if c),
        )
        return cls.open(path, verify=False)  # just written

    @classmethod
    def _from_manifest(
        cls, path: Path, manifest: Manifest, k1: float = BM25_K1, b: float = BM25_B, **options: Any
    ) -> LuceneBM25Index:
        """A BM25 index, its manifest checked by :meth:`open`; ``k1``/``b`` (options of :meth:`open`)
        default to Anserini's BEIR flat settings (0.9, 0.4)."""
        require_lucene()
        if not (k1 >= 0 and 0 <= b <= 1):
            raise KeytokError(f"BM25 parameters out of range: k1={k1} (≥ 0), b={b} (in [0, 1])")
        _check_segments(path, manifest)
        return cls(path, manifest, k1=k1, b=b)

    def _new_searcher(self) -> Any:
        searcher = jclass("io.anserini.search.SimpleSearcher")(str(self.path.resolve()))
        searcher.set_bm25(self.k1, self.b)
        return searcher

    @staticmethod
    def _check_text(q: Any, what: str) -> str:
        if not isinstance(q, str):
            raise KeytokError(f"{what} must be a string, got {type(q).__name__}")
        return q

    def search(self, query: str, k: int = 10) -> SearchHits:
        """Top-``k`` ``(doc_id, BM25 score)``; a query with no indexable words returns ``[]``."""
        k = cap_k(k, self.num_docs)
        q = self._check_text(query, "query")
        if not q.strip():
            return []
        searcher = self.searcher
        with self._java():
            return _hits(searcher.search(q, k))

    def explain(self, query: str, doc_id: str) -> list[tuple[str, float]]:
        """The query's analysed terms (Porter stems) that ``doc_id`` contains, with each term's BM25 weight
        in it, largest first: the document's BM25 score is their sum (Anserini rounds it to 4 decimals).
        """
        q = self._check_text(query, "query")
        if self._reader is None:
            with self._java():
                self._reader = jclass("io.anserini.index.IndexReaderUtils").getReader(
                    str(self.path.resolve())
                )
        utils = jclass("io.anserini.index.IndexReaderUtils")
        terms = list(
            dict.fromkeys(jclass("io.anserini.analysis.AnalyzerUtils").analyze(self._stemmer(), q).toArray())
        )
        out = []
        for t in terms:
            try:
                w = float(
                    utils.getBM25AnalyzedTermWeightWithParameters(self._reader, doc_id, t, self.k1, self.b)
                )
            except Exception:  # a doc id the index does not hold: nothing matched
                return []
            if w > 0:
                out.append((str(t), w))
        return sorted(out, key=lambda kv: (-kv[1], kv[0]))

    def _stemmer(self) -> Any:
        if self._analyzer is None:
            self._analyzer = jclass("io.anserini.analysis.DefaultEnglishAnalyzer").newStemmingInstance(
                "porter"
            )
        return self._analyzer

    def terms_at(self, text: str) -> list[tuple[int, int, str]]:
        """The analysed terms of ``text`` (Porter stems, stopwords left out) with the character span of the
        word each came from: ``(start, end, term)`` in order (what :meth:`explain` names, and where)."""
        text = self._check_text(text, "text")
        if not text.strip():
            return []
        from jnius import cast

        klass = jclass("java.lang.Class")
        attrs = "org.apache.lucene.analysis.tokenattributes."
        with self._java():
            stream = self._stemmer().tokenStream("contents", text)
            term = cast(
                attrs + "CharTermAttribute", stream.addAttribute(klass.forName(attrs + "CharTermAttribute"))
            )
            offset = cast(
                attrs + "OffsetAttribute", stream.addAttribute(klass.forName(attrs + "OffsetAttribute"))
            )
            found = []
            try:
                stream.reset()
                while stream.incrementToken():
                    found.append((int(offset.startOffset()), int(offset.endOffset()), str(term.toString())))
                stream.end()
            finally:
                stream.close()
        if any(ord(ch) > 0xFFFF for ch in text):  # Java counts UTF-16 units: a character past the BMP is two
            units = [i for i, ch in enumerate(text) for _ in range(2 if ord(ch) > 0xFFFF else 1)] + [
                len(text)
            ]
            found = [(units[a], units[b] if b < len(units) else len(text), t) for a, b, t in found]
        return found

    def search_batch(self, queries: Sequence[str], k: int = 10, threads: int = 1) -> BatchHits:
        """Search many query texts on ``threads`` Java threads; returns ``(ids, scores)`` (module doc)."""
        k = cap_k(k, self.num_docs)
        threads = _check_threads(threads)
        if isinstance(queries, str):
            raise KeytokError("queries must be a list of strings, got one string: use search()")
        texts = [self._check_text(q, f"queries[{i}]") for i, q in enumerate(queries)]
        if not texts:
            return [], np.full((0, k), -np.inf, dtype=np.float32)
        searcher = self.searcher
        with self._java():
            hits = _run_batch(searcher, json.dumps(texts), len(texts), k, threads)
        return pad_batch(hits, k)
