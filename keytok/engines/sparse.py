"""Native inverted index over quantised key-token impacts: memory-mapped, exact top-k.

Design (measured on this project's 2-core machines; see ``experiments/bench_sparse.py``):

* **Exhaustive token-major accumulation, no dynamic pruning.** keytok queries are long (own tokens plus
  64-128 expansion tokens drawn from the same frequent head as the documents), so WAND/MaxScore/block-max
  have little to skip (on the synthetic corpus below a query touches ~16 % of all postings). Every posting
  of every query token is added into a score array, then the top k are selected.
* **Segments of 65,536 documents.** Documents are cut into segments of :data:`SEGMENT_DOCS`; each segment
  is its own token-major postings block. Two wins: a document number inside a segment fits in ``uint16``
  (2 bytes instead of 4 per posting: 3 bytes per posting with a ``uint8`` impact, which is what keeps the
  index under 25 % of a FAISS Flat index at d = 576), and the segment's score accumulator (65,536 x float32
  = 256 KiB) stays in L2 cache while the postings stream by; with one global 4 MB array at 1 M documents
  every scatter-add missed L2 (numba: 33.7 -> 25.8 ms/query at 1 M documents). Segments also make
  :meth:`SparseIndex.add` cheap: full segments are never rewritten.
* **The inner loop is a numba kernel** (``nogil``; it also folds the top-k selection into the pass over
  each segment's scores, which saves an ``argpartition`` over all documents: 6 ms at 1 M). Synthetic
  corpus of ``experiments/bench_sparse.py`` (128 Zipf tokens per document over 49,152 ids, 80-token
  queries, uint8 impacts), single thread, p50 ms/query on the shared 2-core machine:

  ============================================  ==========  ============
  engine                                        100 k docs  1 M docs
  ============================================  ==========  ============
  scipy ``D[:, q] @ w`` + argpartition          3.9         118
  this index, scipy path (no numba)             6.6         51
  this index, numba kernel                      2.3         19.0
  Lucene impact (pyserini/Anserini)             33.0        285
  ============================================  ==========  ============

  (``experiments/results/bench_sparse.md`` has the full run, FAISS Flat and bytes on disk.) With
  ``KEYTOK_SPARSE_KERNEL=numpy`` the segmented scipy path is used instead; both give the same results.
* **Impacts are integers**: ``round(w / scale)`` clipped to ``[0, 2**bits - 1]`` (``bits = 8`` by default,
  ``uint8``; up to 16 bits stored as ``uint16``); ``scale`` is global, by default the largest weight of
  the build divided by ``2**bits - 1``. Weights that round to 0 are dropped. :func:`quantize` is public so
  that the Lucene exporter writes exactly the same integers. Query weights are not quantised: a score is
  ``scale * sum_t q_t * impact_t``, accumulated in float32, i.e. the float dot product with the quantised
  document vectors; its difference from the float dot product is at most ``scale / 2 * sum_t q_t``.
* **Ranking is deterministic**: score descending, then internal document number (insertion order)
  ascending. Only documents sharing at least one token with positive weight are returned (as in Lucene).

On-disk format (one folder, every file listed with size and sha256 in ``manifest.json``, see
:mod:`keytok.engines.manifest`)::

    manifest.json          kind "sparse"; params: bits, scale, impact_dtype, segment_docs, segments
    doc_ids.json           JSON list of the document ids, internal number = position
    deleted.npy            uint8 bitmap (np.packbits, little bit order) of tombstoned documents
    seg00000.indptr.npy    uint32 (int64 if needed) [vocab_size + 1]: token t's postings are [p[t], p[t+1])
    seg00000.docs.npy      uint16 [postings]: document number inside the segment, ascending per token
    seg00000.impacts.npy   uint8 (uint16 for bits > 8) [postings]
    seg00001....           segment s holds documents [s * 65536, (s + 1) * 65536)

Arrays are opened with ``np.load(mmap_mode="r")``; nothing is copied into memory but the document ids
and the deletion bitmap. The vocabulary is not remapped: ``indptr`` costs 4 bytes per vocabulary entry and
segment (1 MiB per segment for a 262,144-token vocabulary), small next to the postings.

A corpus too large to hold as one matrix is built by :meth:`SparseIndex.build_from_chunks` from
``(doc_ids, vectors)`` chunks read one at a time (the same folder, byte for byte): at 10 M synthetic
documents of 128 tokens its peak RSS was 0.52 x the 4.0 GB index it wrote (``experiments/bench_scale.py``).

Writes are atomic: :meth:`SparseIndex.build`, :meth:`~SparseIndex.build_from_chunks`,
:meth:`~SparseIndex.add`, :meth:`~SparseIndex.delete` and :meth:`~SparseIndex.compact` write a complete
new folder beside the index (unchanged files hard-linked, not copied) and swap it in by rename
(:func:`keytok.utils.atomic.atomic_dir`); an open index keeps reading the files it mapped. One writer at a
time: updates take the folder's write lock (:mod:`keytok.engines.lock`, an ``flock`` the kernel releases if
the writer dies), so a second writer, in this process or another, waits (``wait`` seconds, then a one-line
error) and then starts from the folder the first one wrote: no write is lost.

Adding and deleting documents:

* :meth:`SparseIndex.add` appends: the last, partial segment is rebuilt with the new documents and new
  segments follow; full segments are kept as they are. New documents are quantised with the index's
  existing scale (one scale, so the integers stay exportable to Lucene as they are); weights above the
  top level are clipped to it, counted in ``params.clipped_weights`` and reported with a warning. Build
  with an explicit larger ``scale`` to leave headroom for later additions.
* :meth:`SparseIndex.delete` only sets tombstones in ``deleted.npy``: the documents stop appearing in
  results at once, but their postings stay on disk and are still scanned. :meth:`SparseIndex.compact`
  drops them physically (it renumbers documents and rewrites all segments). A deleted id may be added
  again (an update is delete + add).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.engine import (
    BatchHits,
    Chunks,
    DocIdStream,
    EngineBase,
    cap_k,
    check_doc_ids,
    check_new,
    check_stored_ids,
    chunk_source,
    identity,
    manifest_int,
    one_line,
)
from keytok.engines.lock import DEFAULT_WAIT_S, write_lock
from keytok.engines.manifest import MANIFEST_NAME, Manifest
from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_dir
from keytok.utils.stamps import folder_key, is_checked, mark_checked

#: Documents per segment; a document number inside a segment is stored as uint16.
SEGMENT_DOCS = 65536
DEFAULT_BITS = 8
KIND = "sparse"
DOC_IDS_FILE = "doc_ids.json"
DELETED_FILE = "deleted.npy"

Query = Mapping[int, float] | sp.spmatrix | sp.sparray | np.ndarray


# ---------------------------------------------------------------------------------------------------------------
# quantisation


def _impact_dtype(bits: int) -> np.dtype:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise KeytokError(f"impact bits must be an integer from 1 to 16, not {bits!r}")
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _as_csr(vectors: Any, what: str) -> sp.csr_matrix:
    """``vectors`` as a canonical CSR matrix (sorted, no duplicate entries), checked finite and >= 0."""
    if sp.issparse(vectors) or (isinstance(vectors, np.ndarray) and vectors.ndim == 2):
        x = sp.csr_matrix(vectors)
    else:
        raise KeytokError(
            f"{what} must be a 2-D scipy.sparse matrix or numpy array, not {type(vectors).__name__}"
        )
    if x.dtype.kind not in "fiu":
        raise KeytokError(f"{what} must hold real numbers, not {x.dtype}")
    if not x.has_canonical_format:
        x = x.copy()
        x.sum_duplicates()
    if x.nnz:
        if not np.isfinite(x.data).all():
            raise KeytokError(f"{what} contain NaN or infinite weights")
        if x.data.min() < 0:
            raise KeytokError(f"{what} contain negative weights; impacts must be >= 0")
    return x


_QUANTIZE_BLOCK = 1 << 20


def _quantize_data(data: np.ndarray, scale: float, bits: int) -> tuple[np.ndarray, int]:
    levels = (1 << bits) - 1
    out = np.empty(data.shape, dtype=_impact_dtype(bits))
    clipped = 0
    # float64 division so that the integers do not depend on the input's float width; in blocks, so that the
    # float64 temporaries stay at 8 MiB instead of 16 bytes per weight of a whole segment
    for a in range(0, data.size, _QUANTIZE_BLOCK):
        q = np.rint(np.asarray(data[a : a + _QUANTIZE_BLOCK], dtype=np.float64) / scale)
        clipped += int(np.count_nonzero(q > levels))
        np.clip(q, 0, levels, out=q)
        out[a : a + _QUANTIZE_BLOCK] = q
    return out, clipped


#: The largest document weight an index may stand for (``scale * (2**bits - 1)``): float32's largest, since
#: the weights come from float32 vectors. A larger scale, only possible in a crafted manifest, would make
#: scores overflow to infinity.
MAX_WEIGHT = float(np.finfo(np.float32).max)


def _check_scale(scale: Any, bits: int, where: str = "quantisation") -> float:
    """``scale`` as a float, refused unless finite, positive, and such that the top level stays a finite
    float32 weight (:data:`MAX_WEIGHT`)."""
    ok = isinstance(scale, int | float) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0
    if not ok or float(scale) * ((1 << bits) - 1) > MAX_WEIGHT:
        raise KeytokError(
            f"{where}: the quantisation scale must be a positive finite number with scale x {(1 << bits) - 1} "
            f"below {MAX_WEIGHT:.3g}, not {scale!r}"
        )
    return float(scale)


def _check_vocab(expected: Any, columns: int, what: str) -> int:
    """``columns``, refused unless it equals ``expected`` (meta's ``vocab_size`` or an earlier chunk's width)."""
    if expected is not None and expected != columns:
        raise KeytokError(f"{what} have {columns} columns but the index has vocab_size={expected}")
    return int(columns)


def _default_scale(x: sp.csr_matrix, bits: int) -> float:
    top = float(x.data.max()) if x.nnz else 0.0
    return top / ((1 << bits) - 1) if top > 0 else 1.0


def quantize(
    vectors: Any, scale: float | None = None, bits: int = DEFAULT_BITS
) -> tuple[sp.csr_matrix, float]:
    """Integer impacts of non-negative sparse ``vectors``: ``(int CSR matrix, scale)``.

    ``int = round(w / scale)`` clipped to ``[0, 2**bits - 1]``, entries that round to 0 removed; dtype uint8
    for ``bits <= 8``, else uint16. ``scale`` defaults to ``max(w) / (2**bits - 1)`` (the largest weight maps
    to the top level). ``w ~= int * scale``. Deterministic: the same input gives the same integers, which
    is what lets the native index and a Lucene impact index agree.
    """
    _impact_dtype(bits)
    x = _as_csr(vectors, "vectors")
    scale = _default_scale(x, bits) if scale is None else _check_scale(scale, bits)
    ints, _ = _quantize_data(x.data, scale, bits)
    out = sp.csr_matrix((ints, x.indices.copy(), x.indptr.copy()), shape=x.shape)
    out.eliminate_zeros()
    return out, float(scale)


# ---------------------------------------------------------------------------------------------------------------
# kernels


def _numba_kernel() -> Any:
    import numba

    @numba.njit(nogil=True, cache=True)
    def search_segment(
        indptr, docs, imps, q_tok, q_w, acc, n, live, base, heap_s, heap_i, state
    ):  # pragma: no cover - compiled
        acc[:] = 0.0
        for j in range(q_tok.size):
            t = q_tok[j]
            w = q_w[j]
            for p in range(indptr[t], indptr[t + 1]):
                acc[docs[p]] += w * np.float32(imps[p])
        # Fold the top-k selection into one pass over this segment's scores. The heap's root is the worst
        # hit kept: lowest score, and among equal scores the highest document number. Documents come in
        # ascending order, so a later one with the root's score never displaces it (ties: lower number wins).
        k = heap_s.size
        size = state[0]
        thresh = heap_s[0] if size == k else np.float32(0.0)
        for i in range(n):
            s = acc[i]
            if s > thresh and live[i]:
                idx = base + i
                if size < k:
                    pos = size
                    size += 1
                    while pos > 0:
                        parent = (pos - 1) >> 1
                        ps = heap_s[parent]
                        if s < ps or (s == ps and idx > heap_i[parent]):
                            heap_s[pos] = ps
                            heap_i[pos] = heap_i[parent]
                            pos = parent
                        else:
                            break
                    heap_s[pos] = s
                    heap_i[pos] = idx
                else:
                    pos = 0
                    while True:
                        c = 2 * pos + 1
                        if c >= k:
                            break
                        if c + 1 < k and (
                            heap_s[c + 1] < heap_s[c]
                            or (heap_s[c + 1] == heap_s[c] and heap_i[c + 1] > heap_i[c])
                        ):
                            c += 1
                        cs = heap_s[c]
                        if cs < s or (cs == s and heap_i[c] > idx):
                            heap_s[pos] = cs
                            heap_i[pos] = heap_i[c]
                            pos = c
                        else:
                            break
                    heap_s[pos] = s
                    heap_i[pos] = idx
                if size == k:
                    thresh = heap_s[0]
        state[0] = size

    return search_segment


_KERNEL: Any = None


def _kernel() -> tuple[str, Any]:
    """The accumulation kernel to use: ``("numba", fn)`` or ``("numpy", None)``.

    ``KEYTOK_SPARSE_KERNEL=numpy`` takes the scipy path (the reference the tests hold the kernel to);
    numba (a dependency) is imported lazily so that importing this module stays cheap.
    """
    global _KERNEL
    want = os.environ.get("KEYTOK_SPARSE_KERNEL", "auto").lower()
    if want == "numpy":
        return "numpy", None
    if _KERNEL is None:
        _KERNEL = _numba_kernel()
    return "numba", _KERNEL


def _topk_exact(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best positive scores: score descending, index ascending (the kernel's rule)."""
    positive = int(np.count_nonzero(scores > 0))
    k = min(k, positive)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        above = np.flatnonzero(scores > kth)
        at = np.flatnonzero(scores == kth)[: k - above.size]
        sel = np.concatenate([above, at])
    else:
        sel = np.arange(scores.size)
    return sel[np.lexsort((sel, -scores[sel]))].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# segments


@dataclass
class _Segment:
    number: int
    start: int  # internal number of its first document
    n: int
    indptr: np.ndarray
    docs: np.ndarray
    impacts: np.ndarray

    @staticmethod
    def names(number: int) -> tuple[str, str, str]:
        stem = f"seg{number:05d}"
        return f"{stem}.indptr.npy", f"{stem}.docs.npy", f"{stem}.impacts.npy"

    def int_rows(self, vocab_size: int) -> sp.csr_matrix:
        """This segment's documents as an integer CSR matrix (n x vocab), rows in document order."""
        m = sp.csc_matrix(
            (
                np.asarray(self.impacts),
                np.asarray(self.docs, dtype=np.int32),
                np.asarray(self.indptr, dtype=np.int64),
            ),
            shape=(self.n, vocab_size),
        )
        out = m.tocsr()
        out.sort_indices()
        return out

    def scores_numpy(self, q_tok: np.ndarray, q_w: np.ndarray, buf: dict[str, np.ndarray]) -> np.ndarray:
        """Float32 scores of this segment's documents (the scipy path; ``buf``: reusable scratch arrays)."""
        a = np.asarray(self.indptr[q_tok], dtype=np.int64)
        b = np.asarray(self.indptr[q_tok + 1], dtype=np.int64)
        keep = b > a
        if not keep.any():
            return np.zeros(self.n, dtype=np.float32)
        a, b = a[keep], b[keep]
        ptr = np.zeros(a.size + 1, dtype=np.int64)
        np.cumsum(b - a, out=ptr[1:])
        total = int(ptr[-1])
        if buf["docs"].size < total:
            buf["docs"] = np.empty(total + total // 4, dtype=np.int32)
            buf["imps"] = np.empty(total + total // 4, dtype=np.float32)
        # Gather and widen in one pass into reused buffers: fresh multi-MB arrays per query cost more in
        # page faults than the arithmetic (measured: 4.4 -> ~2 ms per 1.3 M postings).
        docs = np.concatenate([self.docs[x:y] for x, y in zip(a, b, strict=True)], out=buf["docs"][:total])
        imps = np.concatenate([self.impacts[x:y] for x, y in zip(a, b, strict=True)], out=buf["imps"][:total])
        # int32 indptr like the indices, so scipy need not scan them to pick a common index dtype
        m = sp.csc_matrix((imps, docs, ptr.astype(np.int32)), shape=(SEGMENT_DOCS, a.size))
        # rows = SEGMENT_DOCS, not n: any uint16 document number is in bounds, even from a corrupted file
        return (m @ q_w[keep])[: self.n].astype(np.float32, copy=False)


def _check_segment(
    where: str,
    names: tuple[str, str, str],
    indptr: np.ndarray,
    docs: np.ndarray,
    imps: np.ndarray,
    n: int,
    vocab_size: int,
    bits: int,
) -> None:
    """Refuse a segment whose arrays would make a reader index outside them or return wrong hits.

    Checked: dtypes and shapes (``indptr`` [vocab + 1] uint32/int64, ``docs`` uint16 and ``impacts`` of the
    index's width, native byte order, one impact per posting), ``indptr`` starting at 0, non-decreasing and
    ending at the postings count, every document number below the segment's ``n`` documents, the postings
    of each token strictly ascending (sorted, no document twice), and every impact within ``bits``. Cost: a
    few vectorised passes over the segment's postings, no copy larger than a boolean per posting.
    """
    f_ptr, f_docs, f_imps = names
    if indptr.ndim != 1 or indptr.shape[0] != vocab_size + 1 or indptr.dtype not in (np.uint32, np.int64):
        raise KeytokError(
            f"{where}: file {f_ptr} has dtype {indptr.dtype.str} and shape {indptr.shape}, not uint32/int64 "
            f"[{vocab_size + 1}]"
        )
    for name, arr, want in ((f_docs, docs, np.dtype(np.uint16)), (f_imps, imps, _impact_dtype(bits))):
        if arr.ndim != 1 or arr.dtype != want:
            raise KeytokError(
                f"{where}: file {name} has dtype {arr.dtype.str} and shape {arr.shape}, not {want} [postings]"
            )
    if docs.size != imps.size:
        raise KeytokError(f"{where}: file {f_imps} holds {imps.size} impacts for {docs.size} postings")
    if int(indptr[0]) != 0 or int(indptr[-1]) != docs.size:
        raise KeytokError(
            f"{where}: file {f_ptr} spans postings {int(indptr[0])} to {int(indptr[-1])}, "
            f"not 0 to the {docs.size} of {f_docs}"
        )
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise KeytokError(f"{where}: file {f_ptr} is not non-decreasing")
    if docs.size == 0:
        return
    top = int(docs.max())
    if top >= n:
        raise KeytokError(
            f"{where}: file {f_docs} holds document number {top}, outside its segment of {n} documents"
        )
    ascending = docs[1:] > docs[:-1]
    starts = np.asarray(indptr[1:-1], dtype=np.int64)
    starts = starts[(starts > 0) & (starts < docs.size)]
    ascending[starts - 1] = True  # a new token starts there: its first posting may be any number
    if not bool(ascending.all()):
        p = int(np.argmin(ascending)) + 1
        token = int(np.searchsorted(indptr, p, side="right")) - 1
        raise KeytokError(f"{where}: file {f_docs}: the postings of token {token} are not sorted and unique")
    levels = (1 << bits) - 1
    if int(imps.max()) > levels:
        raise KeytokError(
            f"{where}: file {f_imps} holds impact {int(imps.max())}, above the top level {levels} of {bits} bits"
        )


class _SegmentWriter:
    """Cuts a stream of integer CSR row blocks into segment files."""

    def __init__(
        self, folder: Path, first_number: int, first_doc: int, vocab_size: int, impact_dtype: np.dtype
    ):
        self.folder = folder
        self.number = first_number
        self.start = first_doc
        self.vocab_size = vocab_size
        self.impact_dtype = impact_dtype
        self.pending: list[sp.csr_matrix] = []
        self.pending_rows = 0
        self.written: list[str] = []
        self.postings = 0

    def feed(self, rows: sp.csr_matrix) -> None:
        at = 0
        while at < rows.shape[0]:
            take = min(rows.shape[0] - at, SEGMENT_DOCS - self.pending_rows)
            # the writer never modifies what it holds, so a block taken whole is kept as it is, not copied
            self.pending.append(rows if take == rows.shape[0] else rows[at : at + take])
            self.pending_rows += take
            at += take
            if self.pending_rows == SEGMENT_DOCS:
                self._flush()

    def close(self) -> None:
        if self.pending_rows:
            self._flush()

    def _flush(self) -> None:
        block = sp.vstack(self.pending, format="csr") if len(self.pending) > 1 else self.pending[0]
        csc = block.tocsc()
        csc.sort_indices()
        nnz = int(csc.nnz)
        indptr = csc.indptr.astype(np.uint32 if nnz < 2**32 else np.int64)
        names = _Segment.names(self.number)
        for name, arr in zip(
            names,
            (indptr, csc.indices.astype(np.uint16), csc.data.astype(self.impact_dtype, copy=False)),
            strict=True,
        ):
            np.save(self.folder / name, np.ascontiguousarray(arr), allow_pickle=False)
        self.written.extend(names)
        self.postings += nnz
        self.number += 1
        self.start += block.shape[0]
        self.pending, self.pending_rows = [], 0


def _feed_quantised(writer: _SegmentWriter, x: sp.csr_matrix, scale: float, bits: int) -> int:
    """Quantise ``x`` and feed it to ``writer``; returns how many weights were clipped to the top level."""
    clipped = 0
    # quantise one segment's rows at a time so that only one int copy of a slice is in memory
    for s0 in range(0, x.shape[0], SEGMENT_DOCS):
        rows = x[s0 : s0 + SEGMENT_DOCS]
        ints, n_clip = _quantize_data(rows.data, scale, bits)
        clipped += n_clip
        q = sp.csr_matrix((ints, rows.indices, rows.indptr), shape=rows.shape)
        q.eliminate_zeros()
        writer.feed(q)
    return clipped


def _link_or_copy(src: Path, dst: Path) -> None:
    # Files are never modified in place, so sharing the inode with the previous version is safe and keeps
    # add/delete from copying gigabytes.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------------------------------------
# the index


class SparseIndex(EngineBase):
    """A native sparse index folder opened for search (see the module docstring for the format).

    Build with :meth:`build`, open with :meth:`open` (:meth:`keytok.engines.engine.EngineBase.open`: the
    manifest and every file's sha256 checked); :meth:`search`, :meth:`search_batch`,
    :meth:`explain`; :meth:`add`, :meth:`delete`, :meth:`compact` rewrite the folder atomically and
    reload this object.
    """

    kind = KIND

    def __init__(self, path: str | os.PathLike[str], manifest: Manifest) -> None:
        """Map an index whose manifest has been loaded and checked; use :meth:`open` instead."""
        self.path = Path(path)
        self._tls = threading.local()
        self._load(manifest)

    # ------------------------------------------------------------------ opening

    @classmethod
    def _from_manifest(cls, path: Path, manifest: Manifest, **options: Any) -> SparseIndex:
        """Map the files of an index whose manifest :meth:`open` has checked."""
        return cls(path, manifest)

    def _npy(self, name: str) -> np.ndarray:
        """A file the manifest lists, memory-mapped (numpy refuses a header that claims more than the file
        holds, or a pickled object)."""
        try:
            return np.asarray(np.load(self.manifest.file(name), mmap_mode="r", allow_pickle=False))
        except (ValueError, OSError, EOFError) as exc:
            raise KeytokError(f"index {self.path}: file {name} is unreadable ({one_line(exc)})") from None

    def _load(self, manifest: Manifest) -> None:
        """Map the files and check every invariant search, export and updates rely on.

        The sha256 in the manifest proves only that the folder is what its own manifest says, and whoever
        edits a file can rewrite the hashes too. So the structure is checked on every open, ``verify`` or
        not: the numba kernel and scipy's ``tocsr`` index arrays with the stored numbers without bounds
        checks, and a document number past its segment would read or write outside them (a segfault, or
        silently wrong hits). The checks are vectorised, one pass over each segment's postings; once they have
        passed, the folder's files are stamped as checked (:mod:`keytok.utils.stamps`, in keytok's cache), and
        a later open of the very same files (path, inode, size, mtime, ctime) skips them.
        """
        self.manifest = manifest
        stamp = folder_key(self.path, [MANIFEST_NAME, *manifest.files], "sparse-structure-v1")
        self._checked = is_checked(stamp)
        self._stamp = _stamp(self.path)  # what add/delete/compact compare against, under the lock
        n_docs, n_segments, counts = self._load_params(manifest)
        self.doc_ids: list[str] = self._load_ids(n_docs)
        self._load_deleted(n_docs)
        if counts.get("live_docs", self.n_live) != self.n_live:
            raise KeytokError(
                f"index {self.path}: file {DELETED_FILE} leaves {self.n_live} live documents, "
                f"manifest.json says {counts['live_docs']}"
            )
        if not self._checked:
            check_stored_ids(self.doc_ids, f"index {self.path}: file {DOC_IDS_FILE}", self._live)
        self._segments: list[_Segment] = [self._load_segment(s, n_docs) for s in range(n_segments)]
        postings = sum(seg.docs.size for seg in self._segments)
        if counts.get("postings", postings) != postings:
            raise KeytokError(
                f"index {self.path}: the segments hold {postings} postings, manifest.json says {counts['postings']}"
            )
        self._id_index: dict[str, int] | None = None
        if not self._checked:
            mark_checked(stamp)

    def _load_params(self, manifest: Manifest) -> tuple[int, int, dict[str, int]]:
        """Set vocab_size, scale and bits from the manifest, checked; return the document and segment counts
        and the optional counts (live_docs, postings) to compare with the files."""
        where = f"index {self.path}: manifest.json"
        p, c = manifest.params, manifest.counts
        try:
            self.vocab_size = manifest_int(manifest.meta.get("vocab_size"), "meta.vocab_size", 1)
            self.bits = manifest_int(p.get("bits"), "params.bits", 1)
            n_docs = manifest_int(c.get("docs"), "counts.docs", 0)
            n_segments = manifest_int(p.get("segments"), "params.segments", 0)
            segment_docs = manifest_int(p.get("segment_docs"), "params.segment_docs", 1)
            optional = {k: manifest_int(c[k], f"counts.{k}", 0) for k in ("live_docs", "postings") if k in c}
        except ValueError as exc:
            raise KeytokError(f"{where} has a bad field ({exc})") from None
        if segment_docs != SEGMENT_DOCS:
            raise KeytokError(f"{where} has segment size {segment_docs} (this keytok uses {SEGMENT_DOCS})")
        _impact_dtype(self.bits)
        self.scale = _check_scale(p.get("scale"), self.bits, where)
        if n_segments != -(-n_docs // SEGMENT_DOCS):
            raise KeytokError(f"{where} lists {n_segments} segments for {n_docs} documents")
        return n_docs, n_segments, optional

    def _load_ids(self, n_docs: int) -> list[str]:
        """``doc_ids.json``: a JSON list of ``n_docs`` ids (what they are is checked once the live ones are known)."""
        try:
            ids = json.loads(self.manifest.file(DOC_IDS_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeytokError(
                f"index {self.path}: file {DOC_IDS_FILE} is unreadable ({one_line(exc)})"
            ) from None
        if not isinstance(ids, list) or len(ids) != n_docs:
            raise KeytokError(f"index {self.path}: file {DOC_IDS_FILE} does not hold a list of {n_docs} ids")
        return ids

    def _load_deleted(self, n_docs: int) -> None:
        """The tombstone bitmap as ``_live`` (uint8 per document) and ``n_live``."""
        packed = self._npy(DELETED_FILE)
        if packed.dtype != np.uint8 or packed.shape != ((n_docs + 7) // 8,):
            raise KeytokError(f"index {self.path}: file {DELETED_FILE} does not match {n_docs} documents")
        deleted = np.unpackbits(packed, count=n_docs, bitorder="little").astype(bool)
        self._live = np.ascontiguousarray(~deleted).view(np.uint8)
        self.n_live = int(np.count_nonzero(self._live))

    def _load_segment(self, s: int, n_docs: int) -> _Segment:
        """Segment ``s``'s arrays, mapped and checked by :func:`_check_segment`."""
        names = _Segment.names(s)
        indptr, docs, imps = (self._npy(n) for n in names)
        n = min(SEGMENT_DOCS, n_docs - s * SEGMENT_DOCS)
        if self._checked:
            return _Segment(s, s * SEGMENT_DOCS, n, indptr, docs, imps)
        _check_segment(f"index {self.path}", names, indptr, docs, imps, n, self.vocab_size, self.bits)
        return _Segment(s, s * SEGMENT_DOCS, n, indptr, docs, imps)

    # ------------------------------------------------------------------ properties

    @property
    def meta(self) -> dict[str, Any]:
        """The build metadata (model, model_sha256, method, K, calibration_sha256, vocab_size, ...)."""
        return self.manifest.meta

    @property
    def n_docs(self) -> int:
        """Documents stored, deleted ones included (internal numbers run from 0 to ``n_docs - 1``)."""
        return len(self.doc_ids)

    def __len__(self) -> int:
        return self.n_live

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and doc_id in self._ids()

    def _ids(self) -> dict[str, int]:
        """Live doc id -> internal number, built on first use (add, delete, explain)."""
        if self._id_index is None:
            live = self._live
            self._id_index = {d: i for i, d in enumerate(self.doc_ids) if live[i]}
        return self._id_index

    def check_compatible(self, expected: Mapping[str, Any]) -> None:
        """Raise :class:`KeytokError` if ``expected`` (an encoder's meta) names another model, method,
        calibration or vocabulary than this index was built with (see :meth:`Manifest.check_compatible`)."""
        self.manifest.check_compatible(expected)

    def _internal(self, doc_id: str) -> int:
        i = self._ids().get(doc_id)
        if i is None:
            raise KeytokError(f"doc id {doc_id!r} is not in index {self.path}")
        return i

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        doc_ids: Sequence[str],
        vectors: Any,
        meta: Mapping[str, Any],
        *,
        bits: int = DEFAULT_BITS,
        scale: float | None = None,
        overwrite: bool = False,
    ) -> SparseIndex:
        """Build an index folder at ``path`` from ``vectors`` (n_docs x vocab_size, weights >= 0) and open it.

        ``meta`` is stored in the manifest; its ``vocab_size``, if given, must equal the number of columns
        (and is set from it otherwise). ``bits``/``scale``: see :func:`quantize`. An existing ``path`` is
        replaced only with ``overwrite=True``, and only once the new index is complete. For a corpus that
        does not fit in memory as one matrix, see :meth:`build_from_chunks`.
        """
        path = Path(path)
        check_new(path, overwrite)
        _impact_dtype(bits)
        x = _as_csr(vectors, "document vectors")
        ids = check_doc_ids(doc_ids, x.shape[0])
        _check_vocab(meta.get("vocab_size"), x.shape[1], "document vectors")
        if scale is None:
            scale = _default_scale(x, bits)
        pieces = (
            (ids[s0 : s0 + SEGMENT_DOCS], x[s0 : s0 + SEGMENT_DOCS])
            for s0 in range(0, len(ids), SEGMENT_DOCS)
        )
        return cls._build_pieces(path, meta, x.shape[1], pieces, bits, scale)

    @classmethod
    def build_from_chunks(
        cls,
        path: str | os.PathLike[str],
        chunks: Chunks,
        meta: Mapping[str, Any],
        *,
        bits: int = DEFAULT_BITS,
        scale: float | None = None,
        overwrite: bool = False,
    ) -> SparseIndex:
        """:meth:`build` from ``(doc_ids, vectors)`` chunks read one at a time, with memory bounded by a chunk.

        ``chunks`` (:data:`keytok.engines.engine.Chunks`): pairs of a list of ids and a sparse matrix (or 2-D
        array) of their vectors, every chunk with the same number of columns (``meta["vocab_size"]`` if given).
        Chunks may have any number of rows; documents are numbered in the order they come.

        ``scale=None`` (the default scale of :func:`quantize`, the largest weight of the whole build) needs a
        first pass over the vectors, so ``chunks`` must then be readable twice: a zero-argument callable
        returning a fresh iterable (e.g. a generator function reading chunk files), or a list. With an explicit
        ``scale`` (leave headroom: larger weights are clipped and counted in ``params.clipped_weights``) one
        pass is made and any iterable, a generator included, will do.

        Memory: besides the doc ids (kept, they are part of the index) the build holds one chunk and one
        segment (:data:`SEGMENT_DOCS` documents) of integer postings, never all the vectors. The folder is
        byte for byte the one :meth:`build` writes from the stacked chunks (the manifest's ``created`` time
        aside); it is written in a temporary folder and swapped in only when complete.
        """
        path = Path(path)
        check_new(path, overwrite)
        _impact_dtype(bits)
        source = chunk_source(
            chunks,
            passes=1 if scale is not None else 2,
            why="scale=None needs a first pass for the largest weight: give scale=, or a callable returning chunks",
        )
        vocab = meta.get("vocab_size")
        if scale is None:
            top = 0.0
            for n, _, vectors in source():
                x = _as_csr(vectors, f"chunk {n} vectors")
                vocab = _check_vocab(vocab, x.shape[1], f"chunk {n} vectors")
                top = max(top, float(x.data.max()) if x.nnz else 0.0)
            scale = top / ((1 << bits) - 1) if top > 0 else 1.0
        seen = DocIdStream()

        def pieces() -> Iterator[tuple[list[str], sp.csr_matrix]]:
            nonlocal vocab
            for n, chunk_ids, vectors in source():
                x = _as_csr(vectors, f"chunk {n} vectors")
                vocab = _check_vocab(vocab, x.shape[1], f"chunk {n} vectors")
                yield seen.take(n, chunk_ids, x.shape[0]), x
                del x, vectors  # freed before the next chunk is read

        return cls._build_pieces(path, meta, vocab, pieces(), bits, scale, lambda: vocab)

    @classmethod
    def _build_pieces(
        cls,
        path: Path,
        meta: Mapping[str, Any],
        vocab: int | None,
        pieces: Iterable[tuple[list[str], sp.csr_matrix]],
        bits: int,
        scale: float,
        final_vocab: Callable[[], int | None] | None = None,
    ) -> SparseIndex:
        """Quantise and write checked ``(ids, canonical CSR)`` pieces as a new index folder at ``path``, open it.

        ``final_vocab``: the vocabulary width once the pieces are read (a stream learns it from its first chunk).
        """
        impact_dtype = _impact_dtype(bits)
        scale = _check_scale(scale, bits)
        ids: list[str] = []
        clipped = 0
        with atomic_dir(path) as tmp:
            writer = _SegmentWriter(tmp, 0, 0, vocab or 0, impact_dtype)
            for piece_ids, x in pieces:
                clipped += _feed_quantised(writer, x, float(scale), bits)
                ids.extend(piece_ids)
                del x  # freed before the next piece is read
            writer.close()
            if final_vocab is not None:
                vocab = final_vocab()
            if vocab is None:
                raise KeytokError("no chunks and no meta vocab_size: the vocabulary size is unknown")
            manifest = Manifest(
                kind=KIND,
                meta={**meta, "vocab_size": int(vocab)},
                params={
                    "bits": bits,
                    "scale": float(scale),
                    "impact_dtype": impact_dtype.name,
                    "segment_docs": SEGMENT_DOCS,
                    "clipped_weights": clipped,
                },
            )
            _finish(tmp, manifest, writer, ids, np.zeros(len(ids), dtype=bool))
        del ids  # the opened index reads its own copy
        return cls.open(path, verify=False)  # just written

    # ------------------------------------------------------------------ search

    def _query(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """``query`` as (token ids int64, weights float32), checked against the vocabulary."""
        if isinstance(query, Mapping):
            if not query:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            try:
                tok = np.fromiter((int(t) for t in query), dtype=np.int64, count=len(query))
                w = np.fromiter((float(v) for v in query.values()), dtype=np.float64, count=len(query))
            except (TypeError, ValueError) as exc:
                raise KeytokError(f"query must map integer token ids to numbers ({exc})") from None
        elif sp.issparse(query) or isinstance(query, np.ndarray):
            x = sp.csr_matrix(
                query.reshape(1, -1) if isinstance(query, np.ndarray) and query.ndim == 1 else query
            )
            if x.shape[0] != 1:
                raise KeytokError(f"a single query must have one row, not {x.shape[0]} (use search_batch)")
            if x.shape[1] != self.vocab_size:
                raise KeytokError(
                    f"query has {x.shape[1]} columns but index {self.path} has a vocabulary of {self.vocab_size}: "
                    "built with another model?"
                )
            x.sum_duplicates()
            tok, w = x.indices.astype(np.int64), x.data.astype(np.float64)
        else:
            raise KeytokError(
                f"query must be a dict {{token_id: weight}} or a 1-row sparse matrix, not {type(query).__name__}"
            )
        if tok.size:
            if tok.min() < 0 or tok.max() >= self.vocab_size:
                bad = tok[(tok < 0) | (tok >= self.vocab_size)][0]
                raise KeytokError(
                    f"query token id {bad} is outside the vocabulary of index {self.path} ({self.vocab_size})"
                )
            if not np.isfinite(w).all() or w.min() < 0:
                raise KeytokError("query weights must be finite and >= 0")
        keep = w > 0
        return tok[keep], w[keep].astype(np.float32)

    def _search_one(
        self, tok: np.ndarray, w: np.ndarray, k: int, kernel: Any, buf: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        if tok.size == 0 or self.n_docs == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if kernel is None:
            scores = np.empty(self.n_docs, dtype=np.float32)
            for seg in self._segments:
                scores[seg.start : seg.start + seg.n] = seg.scores_numpy(tok, w, buf)
            scores[self._live == 0] = 0
            idx = _topk_exact(scores, k)
            return idx, scores[idx]
        acc, heap_s, heap_i, state = buf["acc"], buf["heap_s"], buf["heap_i"], buf["state"]
        state[0] = 0
        for seg in self._segments:
            kernel(
                seg.indptr,
                seg.docs,
                seg.impacts,
                tok,
                w,
                acc,
                seg.n,
                self._live[seg.start : seg.start + seg.n],
                seg.start,
                heap_s,
                heap_i,
                state,
            )
        size = int(state[0])
        s, i = heap_s[:size], heap_i[:size]
        order = np.lexsort((i, -s))
        return i[order].copy(), s[order].copy()

    def _buffers(self, k: int) -> dict[str, np.ndarray]:
        """This thread's scratch arrays, reused across queries (allocating them per query costs page faults)."""
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = self._new_buffers(k)
        elif buf["heap_s"].size != k:
            buf.update(heap_s=np.zeros(k, dtype=np.float32), heap_i=np.zeros(k, dtype=np.int64))
        return buf

    @staticmethod
    def _new_buffers(k: int) -> dict[str, np.ndarray]:
        return {
            "acc": np.zeros(SEGMENT_DOCS, dtype=np.float32),
            "heap_s": np.zeros(k, dtype=np.float32),
            "heap_i": np.zeros(k, dtype=np.int64),
            "state": np.zeros(1, dtype=np.int64),
            "docs": np.zeros(0, dtype=np.int32),
            "imps": np.zeros(0, dtype=np.float32),
        }

    def search(self, query: Query, k: int = 10) -> list[tuple[str, float]]:
        """The top ``k`` live documents for ``query`` as ``[(doc_id, score), ...]``, best first.

        ``query``: ``{token_id: weight}``, a 1 x vocab_size sparse matrix, or a 1-D dense array; weights >= 0.
        Score = dot product of the query with the document's quantised vector (``impact * scale``).
        """
        k = cap_k(k, self.n_live)
        tok, w = self._query(query)
        _, kernel = _kernel()
        idx, scores = self._search_one(tok, w, k, kernel, self._buffers(k))
        return [
            (self.doc_ids[i], float(s) * self.scale)
            for i, s in zip(idx.tolist(), scores.tolist(), strict=True)
        ]

    def search_batch_indices(
        self, queries: Any, k: int = 10, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` for every row of ``queries`` (n_queries x vocab_size sparse or dense, weights >= 0).

        Returns ``(indices, scores)``, both ``(n_queries, k)`` with ``k`` capped at the live documents
        (:func:`~keytok.engines.engine.cap_k`): internal document numbers (positions in
        :attr:`doc_ids`, ``-1`` where a query matched fewer than ``k`` documents) and float64 scores (``-inf``
        there), the same values :meth:`search` returns.
        ``threads``: the queries are split into this many contiguous chunks searched by as many threads
        (default: the usable CPUs). The numba kernel releases the GIL, so the threads run in parallel; how
        much that pays depends on free cores (on the shared 2-core development machine, at load 4-6, two
        threads gave 0.9-1.1x of one: measure on yours). Results do not depend on ``threads``.
        """
        k = cap_k(k, self.n_live)
        if sp.issparse(queries) or isinstance(queries, np.ndarray):
            q = sp.csr_matrix(queries)
        else:
            raise KeytokError(f"queries must be a 2-D sparse matrix or array, not {type(queries).__name__}")
        if q.ndim != 2 or q.shape[1] != self.vocab_size:
            raise KeytokError(
                f"queries have {q.shape[-1]} columns but index {self.path} has a vocabulary of {self.vocab_size}: "
                "built with another model?"
            )
        q = _as_csr(q, "query vectors")
        nq = q.shape[0]
        out_i = np.full((nq, k), -1, dtype=np.int64)
        out_s = np.full((nq, k), -np.inf, dtype=np.float64)
        _, kernel = _kernel()
        tok_all = q.indices.astype(np.int64)
        w_all = q.data.astype(np.float32)

        def run(lo: int, hi: int) -> None:
            buf = self._buffers(k)
            for r in range(lo, hi):
                a, b = q.indptr[r], q.indptr[r + 1]
                w = w_all[a:b]
                keep = w > 0
                idx, s = self._search_one(tok_all[a:b][keep], w[keep], k, kernel, buf)
                out_i[r, : idx.size] = idx
                out_s[r, : s.size] = s.astype(np.float64) * self.scale

        if threads is None:
            threads = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            )
        threads = max(1, min(int(threads), nq))
        if threads == 1:
            run(0, nq)
        else:
            bounds = np.linspace(0, nq, threads + 1).astype(int)
            with ThreadPoolExecutor(threads) as pool:
                for f in [pool.submit(run, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]:
                    f.result()
        return out_i, out_s

    def search_batch(self, queries: Any, k: int = 10, threads: int | None = None) -> BatchHits:
        """:meth:`search` for every row of ``queries`` as ``(ids, scores)`` (:data:`~keytok.engines.engine.BatchHits`,
        float64 scores); see :meth:`search_batch_indices` for ``threads``."""
        idx, scores = self.search_batch_indices(queries, k, threads)
        ids = self.doc_ids
        return [[ids[i] for i in row.tolist() if i >= 0] for row in idx], scores

    def explain(self, query: Query, doc_id: str) -> list[tuple[int, float]]:
        """The tokens ``query`` and ``doc_id`` share and each one's contribution to the score, largest first.

        The contributions sum to the document's score for the query (up to float rounding).
        """
        tok, w = self._query(query)
        i = self._internal(doc_id)
        seg = self._segments[i // SEGMENT_DOCS]
        local = i - seg.start
        out = []
        for t, wt in zip(tok.tolist(), w.tolist(), strict=True):
            a, b = int(seg.indptr[t]), int(seg.indptr[t + 1])
            p = a + int(np.searchsorted(seg.docs[a:b], local))
            if p < b and int(seg.docs[p]) == local:
                out.append((t, float(np.float32(wt) * np.float32(seg.impacts[p])) * self.scale))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out

    def doc_vector(self, doc_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A document's integer vector: ``(token ids ascending, impacts)``; weights are ``impacts * scale``."""
        i = self._internal(doc_id)
        seg = self._segments[i // SEGMENT_DOCS]
        pos = np.flatnonzero(np.asarray(seg.docs) == i - seg.start)
        tokens = np.searchsorted(np.asarray(seg.indptr, dtype=np.int64), pos, side="right") - 1
        return tokens.astype(np.int64), np.asarray(seg.impacts[pos])

    def int_vectors(self) -> tuple[list[str], sp.csr_matrix]:
        """The live documents' ids and integer vectors (n_live x vocab_size CSR), e.g. for a Lucene export."""
        live = self._live.astype(bool)
        parts = [seg.int_rows(self.vocab_size)[live[seg.start : seg.start + seg.n]] for seg in self._segments]
        dtype = _impact_dtype(self.bits)
        mat = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.vocab_size), dtype=dtype)
        return [d for d, keep in zip(self.doc_ids, live.tolist(), strict=True) if keep], mat.astype(dtype)

    # ------------------------------------------------------------------ updates

    def add(self, doc_ids: Sequence[str], vectors: Any, *, wait: float = DEFAULT_WAIT_S) -> None:
        """Append documents (ids must not be live in the index) and reload; see the module docstring.

        Holds the folder's write lock (:meth:`_writing`): ``wait`` seconds for another writer, then a
        one-line :class:`KeytokError`.
        """
        x = _as_csr(vectors, "document vectors")
        ids = check_doc_ids(doc_ids, x.shape[0])
        with self._writing("add", wait):
            self._add(ids, x)

    def _add(self, ids: list[str], x: sp.csr_matrix) -> None:
        """:meth:`add` with the write lock held and this object up to date."""
        if x.shape[1] != self.vocab_size:
            raise KeytokError(
                f"document vectors have {x.shape[1]} columns but index {self.path} has a vocabulary of "
                f"{self.vocab_size}: built with another model?"
            )
        live_ids = self._ids()
        dup = next((d for d in ids if d in live_ids), None)
        if dup is not None:
            raise KeytokError(f"doc id {dup!r} is already in index {self.path}")
        ints, clipped = _quantize_data(x.data, self.scale, self.bits)
        # copies: eliminate_zeros() works in place, and x may share its arrays with the caller's matrix
        new = sp.csr_matrix((ints, x.indices.copy(), x.indptr.copy()), shape=x.shape)
        new.eliminate_zeros()
        if clipped:
            warnings.warn(
                f"{clipped} weights of the added documents exceed the top quantisation level of index "
                f"{self.path} and were clipped (build with a larger scale to leave headroom)",
                stacklevel=3,
            )
        manifest = self._next_manifest()
        manifest.params["clipped_weights"] = int(manifest.params.get("clipped_weights", 0)) + clipped
        keep_segments = self.n_docs // SEGMENT_DOCS  # full segments stay as they are
        with atomic_dir(self.path) as tmp:
            kept = self._link_segments(tmp, manifest, range(keep_segments))
            writer = _SegmentWriter(
                tmp, keep_segments, keep_segments * SEGMENT_DOCS, self.vocab_size, _impact_dtype(self.bits)
            )
            writer.postings = kept
            if keep_segments < len(self._segments):
                writer.feed(self._segments[keep_segments].int_rows(self.vocab_size))
            writer.feed(new)
            writer.close()
            deleted = np.concatenate([self._live == 0, np.zeros(len(ids), dtype=bool)])
            _finish(tmp, manifest, writer, self.doc_ids + ids, deleted)
        self._reload()

    def delete(self, doc_ids: Sequence[str], *, wait: float = DEFAULT_WAIT_S) -> int:
        """Tombstone documents (all must be live, else nothing changes) and reload; returns how many.

        The documents vanish from results at once; their postings stay until :meth:`compact`. Holds the
        write lock like :meth:`add`.
        """
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        with self._writing("delete", wait):
            targets = sorted({self._internal(d) for d in doc_ids})
            if not targets:
                return 0
            deleted = self._live == 0
            deleted[targets] = True
            manifest = self._next_manifest()
            with atomic_dir(self.path) as tmp:
                postings = self._link_segments(tmp, manifest, range(len(self._segments)))
                writer = _SegmentWriter(
                    tmp, len(self._segments), self.n_docs, self.vocab_size, _impact_dtype(self.bits)
                )
                writer.postings = postings
                _finish(tmp, manifest, writer, self.doc_ids, deleted, ids_from=self.manifest)
            self._reload()
            return len(targets)

    def compact(self, *, wait: float = DEFAULT_WAIT_S) -> int:
        """Physically drop deleted documents (renumbering the rest) and reload; returns how many were dropped.

        Holds the write lock like :meth:`add`.
        """
        with self._writing("compact", wait):
            dropped = self.n_docs - self.n_live
            if dropped == 0:
                return 0
            manifest = self._next_manifest()
            live = self._live.astype(bool)
            with atomic_dir(self.path) as tmp:
                writer = _SegmentWriter(tmp, 0, 0, self.vocab_size, _impact_dtype(self.bits))
                for seg in self._segments:
                    writer.feed(seg.int_rows(self.vocab_size)[live[seg.start : seg.start + seg.n]])
                writer.close()
                ids = [d for d, keep in zip(self.doc_ids, live.tolist(), strict=True) if keep]
                _finish(tmp, manifest, writer, ids, np.zeros(len(ids), dtype=bool))
            self._reload()
            return dropped

    @contextlib.contextmanager
    def _writing(self, what: str, wait: float) -> Iterator[None]:
        """Hold the folder's write lock (:func:`keytok.engines.lock.write_lock`) and bring this object up to
        date with the folder first.

        Without both, two processes that opened the same index and each added documents would each write
        a new folder from the version they had read, and the first one's documents would be lost. Another
        writer may have swapped in a new folder since this object was opened: it is then reloaded, so the
        write starts from what is on disk now.
        """
        with write_lock(self.path, wait=wait, what=what):
            if _stamp(self.path) != self._stamp:
                self._reload()
            yield

    def _next_manifest(self) -> Manifest:
        m = self.manifest
        return Manifest(
            kind=m.kind, meta=dict(m.meta), params=dict(m.params), format_version=m.format_version
        )

    def _link_segments(self, tmp: Path, manifest: Manifest, numbers: range | Sequence[int]) -> int:
        """Hard-link unchanged segment files into ``tmp``, reusing their recorded hashes; returns postings."""
        postings = 0
        for s in numbers:
            for name in _Segment.names(s):
                _link_or_copy(self.path / name, tmp / name)
                manifest.record_file(tmp, name, sha256=self.manifest.files[name].sha256)
            postings += self._segments[s].docs.size
        return postings

    def _reload(self) -> None:
        self.__dict__.update(SparseIndex.open(self.path, verify=False).__dict__)  # just written


def _stamp(path: Path) -> tuple[Any, ...] | None:
    """What changes when a writer swaps in a new version of the folder ``path``: its inode, and its
    manifest's inode, size and mtime (both, so that a reused inode number alone cannot hide a swap)."""
    try:
        st = os.stat(path / "manifest.json")
    except OSError:
        return None
    return identity(path), st.st_ino, st.st_size, st.st_mtime_ns


def _finish(
    tmp: Path,
    manifest: Manifest,
    writer: _SegmentWriter,
    ids: list[str],
    deleted: np.ndarray,
    ids_from: Manifest | None = None,
) -> None:
    """Write doc ids, the deletion bitmap and the manifest of a complete index folder ``tmp``.

    ``ids_from``: an index whose ``doc_ids.json`` holds ``ids`` already; it is linked instead of rewritten.
    """
    if ids_from is not None and ids_from.folder is not None:
        _link_or_copy(ids_from.folder / DOC_IDS_FILE, tmp / DOC_IDS_FILE)
        manifest.record_file(tmp, DOC_IDS_FILE, sha256=ids_from.files[DOC_IDS_FILE].sha256)
    else:
        (tmp / DOC_IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
        manifest.record_file(tmp, DOC_IDS_FILE)
    np.save(tmp / DELETED_FILE, np.packbits(deleted, bitorder="little"), allow_pickle=False)
    manifest.record_file(tmp, DELETED_FILE)
    for name in writer.written:
        manifest.record_file(tmp, name)
    n = len(ids)
    manifest.params["segments"] = -(-n // SEGMENT_DOCS)
    manifest.counts = {"docs": n, "live_docs": int(n - deleted.sum()), "postings": int(writer.postings)}
    manifest.write(tmp)
