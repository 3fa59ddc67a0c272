"""Dense vector index on FAISS: exact (``"Flat"``) or approximate (``"HNSW32"``, ``"IVF256,Flat"``, ``"IVF256,PQ16"``…).

Scores are "higher is better" for every metric: cosine / inner product as is, and for ``metric="l2"`` the
negated squared L2 distance. With ``normalize=True`` (the default) documents and queries are L2-normalised, so
``metric="ip"`` ranks by cosine similarity; a zero vector stays zero (it scores 0 against everything).

A GPU is used for training, adding and searching when ``faiss.get_num_gpus() > 0`` and the index type has a
GPU implementation (Flat, IVF; HNSW has none and stays on the CPU); the saved file is always the CPU index.

On disk an index is a folder: ``manifest.json`` (:class:`keytok.engines.manifest.Manifest`, kind ``"dense"``;
params: factory, metric, normalize, dim), ``index.faiss`` (``faiss.write_index``) and ``doc_ids.json`` (a JSON
list; row ``i`` of the FAISS index is ``doc_ids[i]``), both listed in the manifest with size and sha256. :meth:`DenseIndex.build` and
:meth:`DenseIndex.save` write atomically (temporary folder beside the destination, then a rename).

Batch results are :data:`keytok.engines.engine.BatchHits` (``(ids, scores)``; an approximate index may find
fewer than ``k``); ``scores`` is float32.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

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
    manifest_int,
    meta_dict,
    one_line,
)
from keytok.engines.manifest import Manifest
from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_dir

__all__ = ["DenseIndex"]

KIND = "dense"
INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# faiss GPU k-selection is limited to this many results; larger k searches on the CPU.
_GPU_MAX_K = 2048


def _gpu_count() -> int:
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the GPU module
        return 0


def _to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A GPU clone of ``index``, or None when there is no GPU or the type has no GPU version."""
    if _gpu_count() == 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):  # e.g. HNSW: "not implemented on GPU"
        return None


def _to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") else index


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 [n, d] array, refusing empty, ragged, non-finite or mis-sized input."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise KeytokError(f"{what} is not a numeric array ({exc})") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise KeytokError(f"{what} has dtype {arr.dtype}: a float array is expected")
    if arr.ndim != 2:
        raise KeytokError(f"{what} has shape {arr.shape}: a 2-D array [n, dim] is expected")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise KeytokError(f"{what} is empty (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise KeytokError(f"{what} has dimension {arr.shape[1]} but the index has dimension {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise KeytokError(f"{what} row {int(np.argmin(finite))} contains NaN or infinite values")
    return arr


def _check_factory(factory: str, metric: str) -> None:
    if metric not in _METRICS:
        raise KeytokError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if not isinstance(factory, str) or not factory.strip():
        raise KeytokError(f"factory must be a faiss index_factory string, got {factory!r}")


def _new_faiss(dim: int, factory: str, metric: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, _METRICS[metric])
    except RuntimeError as exc:
        raise KeytokError(
            f"faiss cannot build factory {factory!r} for dimension {dim}: {_faiss_message(exc)}"
        ) from exc


def _faiss_call(fn: Any, x: np.ndarray, factory: str) -> None:
    """``fn(x)`` (an index's train or add), a faiss error as a :class:`KeytokError`."""
    try:
        fn(x)
    except RuntimeError as exc:
        raise KeytokError(
            f"faiss could not train/add {factory!r} on {x.shape[0]} vectors: {_faiss_message(exc)}"
        ) from exc


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero rather than becoming NaN
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _read_ids(path: Path, manifest: Manifest) -> list[str]:
    """``doc_ids.json``, listed in the manifest and checked: unique, non-empty strings (row i of the
    FAISS index is ``ids[i]``; a crafted list of numbers or repeats would give unusable hits)."""
    try:
        doc_ids = json.loads(manifest.file(IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeytokError(f"index {path}: file {IDS_FILE} is unreadable ({one_line(exc)})") from None
    if not isinstance(doc_ids, list):
        raise KeytokError(f"index {path}: file {IDS_FILE} is not a JSON list")
    check_stored_ids(doc_ids, f"index {path}: file {IDS_FILE}")
    return doc_ids


class DenseIndex(EngineBase):
    """A FAISS index over document embeddings with string doc ids (see the module doc)."""

    kind = KIND

    def __init__(self, path: Path | None, index: faiss.Index, doc_ids: list[str], manifest: Manifest) -> None:
        self.path = path
        self.index = index  # always the CPU index; the GPU clone is a cache
        self.doc_ids = doc_ids
        self.manifest = manifest
        self._id_set = set(doc_ids)
        self._gpu: faiss.Index | None = None
        self._gpu_tried = False

    # ----------------------------------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.index.d)

    @property
    def metric(self) -> str:
        """``"ip"`` or ``"l2"``."""
        return str(self.manifest.params["metric"])

    @property
    def normalize(self) -> bool:
        """Whether vectors are L2-normalised before indexing and search."""
        return bool(self.manifest.params["normalize"])

    @property
    def meta(self) -> dict[str, Any]:
        """The caller's metadata saved at build time."""
        return dict(self.manifest.meta)

    def check_compatible(self, expected: Mapping[str, Any]) -> None:
        """Raise :class:`KeytokError` if ``expected`` names another model, method or calibration."""
        self.manifest.check_compatible(expected)

    def __len__(self) -> int:
        return len(self.doc_ids)

    # ----------------------------------------------------------------------------------------- build/io
    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str] | None,
        doc_ids: Sequence[str],
        embeddings: np.ndarray,
        meta: Mapping[str, Any] | None = None,
        factory: str = "Flat",
        metric: str = "ip",
        normalize: bool = True,
        *,
        overwrite: bool = False,
    ) -> DenseIndex:
        """Index ``embeddings`` (float ``[n, d]``) under ``doc_ids``; save to ``path`` unless it is None.

        ``factory`` is a ``faiss.index_factory`` string; indexes that need training (IVF, PQ) are trained on
        ``embeddings`` themselves, so pass enough vectors (IVF``n`` needs ≥ ``n``; FAISS recommends ≥ 39·n).
        An existing ``path`` is an error unless ``overwrite``. For embeddings that do not fit in memory
        twice (input and the index), see :meth:`build_from_chunks`.
        """
        check_new(path, overwrite)
        _check_factory(factory, metric)
        ids = check_doc_ids(doc_ids)
        x = _as_matrix(embeddings, "embeddings")
        if x.shape[0] != len(ids):
            raise KeytokError(f"embeddings has {x.shape[0]} rows but {len(ids)} doc ids were given")
        meta_json = meta_dict(meta)
        return cls._build_pieces(path, [(ids, x)], meta_json, factory, metric, normalize, None, overwrite)

    @classmethod
    def build_from_chunks(
        cls,
        path: str | os.PathLike[str] | None,
        chunks: Chunks,
        meta: Mapping[str, Any] | None = None,
        factory: str = "Flat",
        metric: str = "ip",
        normalize: bool = True,
        *,
        train: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> DenseIndex:
        """:meth:`build` from ``(doc_ids, embeddings)`` chunks read once, one at a time, added chunk by chunk.

        ``chunks`` (:data:`keytok.engines.engine.Chunks`, any iterable: one pass): pairs of a list of ids and a
        float ``[n_i, d]`` array, the same ``d`` for all. Only the FAISS index itself (for ``"Flat"`` every
        vector, ``4 d`` bytes each: FAISS keeps its indexes in memory), the doc ids and one chunk are held,
        never a second copy of all the embeddings. An index that needs training (IVF, PQ) is trained on
        ``train`` (float ``[m, d]``, normalised like the documents) or, when it is None, on the first chunk:
        make that one large enough. The result is the one :meth:`build` makes from the stacked chunks (the
        same ``index.faiss`` bytes) whenever the index needs no training or ``train`` is those stacked
        vectors, except for HNSW, whose graph depends on the order points are added in batches.
        """
        check_new(path, overwrite)
        _check_factory(factory, metric)
        source = chunk_source(chunks)
        seen = DocIdStream()

        def pieces() -> Iterator[tuple[list[str], np.ndarray]]:
            dim = None
            for n, chunk_ids, emb in source():
                x = _as_matrix(emb, f"chunk {n} embeddings", dim)
                dim = x.shape[1]
                yield seen.take(n, chunk_ids, x.shape[0]), x
                del x, emb  # freed before the next chunk is read

        return cls._build_pieces(
            path, pieces(), meta_dict(meta), factory, metric, normalize, train, overwrite, seen
        )

    @classmethod
    def _build_pieces(
        cls,
        path: str | os.PathLike[str] | None,
        pieces: Iterable[tuple[list[str], np.ndarray]],
        meta_json: dict[str, Any],
        factory: str,
        metric: str,
        normalize: bool,
        train: np.ndarray | None,
        overwrite: bool,
        seen: DocIdStream | None = None,
    ) -> DenseIndex:
        """Create the FAISS index on the first checked ``(ids, float32 matrix)`` piece, train, add them all."""
        index = work = gpu = None
        ids: list[str] = []
        for piece_ids, x in pieces:
            if normalize:
                x = _normalize(x)
            if index is None:
                index = _new_faiss(x.shape[1], factory, metric)
                gpu = _to_gpu(index)
                work = gpu if gpu is not None else index
                if not work.is_trained:
                    sample = x if train is None else _as_matrix(train, "train", x.shape[1])
                    if train is not None and normalize:
                        sample = _normalize(sample)
                    _faiss_call(work.train, sample, factory)
            _faiss_call(work.add, x, factory)
            ids.extend(piece_ids)
            del x  # freed before the next piece is read
        if index is None:
            raise KeytokError("chunks hold no embeddings: nothing to index")
        if seen is not None:
            seen.done()
        if gpu is not None:
            index = _to_cpu(gpu)
        manifest = Manifest(
            kind=KIND,
            meta=meta_json,
            counts={"docs": len(ids)},
            params={
                "factory": factory,
                "metric": metric,
                "normalize": bool(normalize),
                "dim": int(index.d),
                "faiss_version": faiss.__version__,
            },
        )
        out = cls(None, index, ids, manifest)
        out._gpu = gpu
        out._gpu_tried = True
        if path is not None:
            out.save(path, overwrite=overwrite)
        return out

    @classmethod
    def _from_manifest(cls, path: Path, manifest: Manifest, **options: Any) -> DenseIndex:
        """Load the FAISS index and doc ids of a folder whose manifest :meth:`open` has checked
        (:meth:`keytok.engines.engine.EngineBase.open`)."""
        doc_ids = _read_ids(path, manifest)
        try:
            index = faiss.read_index(str(manifest.file(INDEX_FILE)))
        except RuntimeError as exc:
            raise KeytokError(
                f"index {path}: file {INDEX_FILE} is not a readable faiss index ({_faiss_message(exc)})"
            ) from None
        try:
            dim, metric = manifest_int(manifest.params.get("dim"), "params.dim", 1), manifest.params["metric"]
            bool(manifest.params["normalize"])
            docs = manifest_int(manifest.counts.get("docs", len(doc_ids)), "counts.docs", 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeytokError(f"index {path}: manifest.json lacks or has a bad field ({exc})") from None
        if metric not in _METRICS:
            raise KeytokError(f"index {path}: manifest.json has unknown metric {metric!r}")
        if index.ntotal != len(doc_ids) or index.d != dim or docs != len(doc_ids):
            raise KeytokError(
                f"index {path}: file {INDEX_FILE} holds {index.ntotal} vectors of dimension {index.d}, "
                f"{IDS_FILE} {len(doc_ids)} ids, the manifest says {docs} of dimension {dim}"
            )
        if index.metric_type != _METRICS[metric]:
            raise KeytokError(f"index {path}: file {INDEX_FILE} does not use the manifest's metric {metric}")
        return cls(path, index, doc_ids, manifest)

    def save(self, path: str | os.PathLike[str] | None = None, *, overwrite: bool = False) -> Path:
        """Write the index to ``path`` (default: where it was opened/built), replacing that folder atomically.

        Another existing folder is only replaced with ``overwrite=True``.
        """
        dest = Path(path) if path is not None else self.path
        if dest is None:
            raise KeytokError("this index was built in memory: give save() a path")
        if dest.exists() and dest != self.path and not overwrite:
            raise KeytokError(f"index {dest} already exists (pass overwrite=True to replace it)")
        manifest = Manifest(
            kind=KIND,
            meta=dict(self.manifest.meta),
            counts={"docs": len(self.doc_ids)},
            params=dict(self.manifest.params),
        )
        with atomic_dir(dest) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            (tmp / IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
            manifest.record_file(tmp, INDEX_FILE)
            manifest.record_file(tmp, IDS_FILE)
            manifest.write(tmp)
        manifest.folder = dest
        self.manifest = manifest
        self.path = dest
        return dest

    def add(self, doc_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Append documents (in memory; call :meth:`save` to persist). A doc id already present is an error."""
        ids = check_doc_ids(doc_ids, existing=self._id_set)
        x = _as_matrix(embeddings, "embeddings", self.dim)
        if x.shape[0] != len(ids):
            raise KeytokError(f"embeddings has {x.shape[0]} rows but {len(ids)} doc ids were given")
        if self.normalize:
            x = _normalize(x)
        self.index.add(x)
        self.doc_ids.extend(ids)
        self._id_set.update(ids)
        self._gpu, self._gpu_tried = None, False  # the GPU clone is stale now

    # ----------------------------------------------------------------------------------------- search
    def set_search_params(self, **params: float) -> None:
        """Set FAISS search parameters by name, e.g. ``efSearch=128`` (HNSW) or ``nprobe=16`` (IVF)."""
        ps = faiss.ParameterSpace()
        for name, value in params.items():
            try:
                ps.set_index_parameter(self.index, name, value)
            except RuntimeError as exc:
                raise KeytokError(
                    f"search parameter {name}={value!r} does not apply to a {self.manifest.params['factory']!r} index"
                ) from exc
        self._gpu, self._gpu_tried = None, False

    def _searcher(self, k: int) -> faiss.Index:
        if k > _GPU_MAX_K:
            return self.index
        if not self._gpu_tried:
            self._gpu = _to_gpu(self.index)
            self._gpu_tried = True
        return self._gpu if self._gpu is not None else self.index

    def search_batch(self, queries: np.ndarray, k: int = 10) -> BatchHits:
        """Top-``k`` for each row of ``queries`` (float ``[n, dim]``); returns ``(ids, scores)``."""
        k = cap_k(k, len(self.doc_ids))
        q = _as_matrix(queries, "queries", self.dim)
        if self.normalize:
            q = _normalize(q)
        kk = min(k, len(self.doc_ids))
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        if kk == 0:
            return [[] for _ in range(q.shape[0])], scores
        dist, idx = self._searcher(kk).search(q, kk)
        if self.metric == "l2":
            dist = -dist
        ids: list[list[str]] = []
        for i in range(q.shape[0]):
            valid = idx[i] >= 0
            n = int(valid.sum())
            ids.append([self.doc_ids[j] for j in idx[i][valid].tolist()])
            scores[i, :n] = dist[i][valid]
        return ids, scores

    def search(self, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc_id, score)`` for one query vector (shape ``[dim]`` or ``[1, dim]``)."""
        q = np.asarray(query)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[0] != 1:
            raise KeytokError(f"query has shape {q.shape}: one vector [dim] is expected, use search_batch()")
        ids, scores = self.search_batch(q, k)
        return [(d, float(s)) for d, s in zip(ids[0], scores[0].tolist(), strict=False)]


def _faiss_message(exc: Exception) -> str:
    # faiss messages read "Error in <C++ signature> at <file>:<line>: Error: '<condition>' failed: <reason>";
    # only the reason helps a user.
    text = " ".join(str(exc).split())
    text = re.sub(r"^.*? at \S+:\d+: ", "", text)
    text = re.sub(r"^Error: '.*?' failed: ", "", text)
    return text or type(exc).__name__
