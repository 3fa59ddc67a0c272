"""What the native sparse, FAISS and Lucene engines share: the protocol, the result type, the checks.

Every engine is one folder with a ``manifest.json`` (:mod:`keytok.engines.manifest`) and offers::

    Engine.build(path, doc_ids, vectors_or_docs, meta, ...) -> Engine    # atomic, then opened
    Engine.open(path, *, expected_meta=None, verify=True) -> Engine      # checked, files rehashed
    engine.search(query, k) -> [(doc_id, score), ...]                    # best first
    engine.search_batch(queries, k) -> BatchHits                         # (ids, scores)

:data:`BatchHits` is ``(ids, scores)``: ``ids[i]`` lists query ``i``'s doc ids best first (fewer than ``k``
when fewer documents match); ``scores`` is a float array ``[n_queries, k]`` padded with ``-inf``, where
``k`` is capped at the number of documents of the index (:func:`cap_k`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from keytok.engines.manifest import Manifest
from keytok.errors import KeytokError

__all__ = [
    "BatchHits",
    "Chunks",
    "DocIdStream",
    "Engine",
    "EngineBase",
    "cap_k",
    "check_doc_ids",
    "check_k",
    "check_stored_ids",
    "chunk_source",
    "folder_bytes",
    "identity",
    "manifest_int",
    "meta_dict",
    "one_line",
    "open_manifest",
    "pad_batch",
    "read_unchanged",
]

BatchHits = tuple[list[list[str]], np.ndarray]
SearchHits = list[tuple[str, float]]
T = TypeVar("T")
#: The input of the engines' ``build_from_chunks``: ``(doc_ids, vectors)`` pairs, read one at a time. A zero-argument
#: callable returning a fresh iterable of them (e.g. a generator function reading files), or a list/tuple, can
#: be read more than once; any other iterable (a generator) is read once.
Chunks = Iterable[tuple[Sequence[str], Any]] | Callable[[], Iterable[tuple[Sequence[str], Any]]]


class Engine(Protocol):
    """The shape of the three engines (see the module doc)."""

    path: Path | None
    manifest: Manifest

    def search(self, query: Any, k: int = 10) -> SearchHits: ...

    def search_batch(self, queries: Any, k: int = 10) -> BatchHits: ...


class EngineBase:
    """What the engines share: :meth:`open`, which checks the folder's manifest and hands it to the
    engine's ``_from_manifest`` to map the files."""

    kind = ""

    @classmethod
    def _from_manifest(cls, path: Path, manifest: Manifest, **options: Any) -> Self:
        raise NotImplementedError

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_meta: Mapping[str, Any] | None = None,
        verify: bool = True,
        **options: Any,
    ) -> Self:
        """Open the engine folder ``path``.

        Its ``manifest.json`` is checked: format, kind, every listed file's size and (unless
        ``verify=False``, for a huge index) sha256, and ``expected_meta`` (the querying encoder's model,
        model_sha256, method, calibration_sha256, vocab_size; see :meth:`Manifest.check_compatible`).
        ``options`` go to the engine (BM25's ``k1`` and ``b``). Raises :class:`KeytokError` on any
        mismatch, missing, truncated, corrupted or edited file. A writer swaps in a whole new folder:
        should that happen while the folder is read, its inode changes and it is read again rather than
        mixing two versions.
        """
        return read_unchanged(
            path, lambda: cls._from_manifest(*open_manifest(path, cls.kind, expected_meta, verify), **options)
        )


def check_k(k: Any) -> int:
    """``k`` as an int, refusing anything but a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise KeytokError(f"k must be a positive integer, got {k!r}")
    return int(k)


def cap_k(k: Any, n_docs: int) -> int:
    """``k`` checked (:func:`check_k`) and capped at ``n_docs`` (at least 1).

    Every engine sizes memory by ``k`` (the sparse kernel's heap, the result arrays, Lucene's priority
    queue, FAISS's output), and no query can return more hits than the index holds documents: capping
    keeps ``-k 1000000000`` on a 300-document index from allocating gigabytes.
    """
    return min(check_k(k), max(1, int(n_docs)))


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_doc_ids(
    doc_ids: Sequence[str],
    n_rows: int | None = None,
    *,
    existing: set[str] | Mapping[str, Any] | None = None,
    what: str = "doc_ids",
    allow_empty: bool = True,
) -> list[str]:
    """``doc_ids`` as a list: non-empty, valid Unicode strings, none twice (nor in ``existing``).

    ``n_rows``: how many vectors they label (checked); ``allow_empty=False`` refuses an empty list.
    """
    if isinstance(doc_ids, str | bytes):
        raise KeytokError(f"{what} must be a list of strings, not a single string")
    ids = list(doc_ids)
    if not ids and not allow_empty:
        raise KeytokError(f"{what} is empty: nothing to index")
    if n_rows is not None and len(ids) != n_rows:
        raise KeytokError(f"{len(ids)} doc ids given for {n_rows} vectors")
    seen: set[str] = set()
    for i, d in enumerate(ids):
        if not isinstance(d, str) or not d.strip():
            raise KeytokError(f"{what}[{i}] is {d!r}: doc ids must be non-empty strings")
        if not _utf8(d):
            raise KeytokError(f"{what}[{i}]: doc id {d!r} is not valid Unicode text")
        if d in seen or (existing is not None and d in existing):
            raise KeytokError(f"{what}[{i}]: duplicate doc id {d!r}")
        seen.add(d)
    return ids


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a KeytokError is one line; library messages may not be)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def manifest_int(value: Any, name: str, low: int = 0) -> int:
    """A whole-number field of a manifest, refused (ValueError naming ``name``) unless an int >= ``low``.

    ``int()`` alone would take ``true``, ``2.7`` or ``"12"`` from a crafted manifest.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} is {value!r}, not an integer >= {low}")
    return value


def check_stored_ids(ids: list[Any], where: str, live: np.ndarray | None = None) -> None:
    """Refuse stored doc ids (``where``: the index and file, for the message) that are not non-empty,
    valid Unicode strings, unique among live documents (``live``: uint8/bool per id; all when None).

    An index file is untrusted: a non-string id ends in a traceback deep in a search, and ids that repeat
    give hits that cannot be told apart. The common case, all fine, costs a few C-speed passes (a set, one
    join and encode); only a failing list is walked id by id for the message.
    """
    if ids and set(map(type, ids)) != {str}:
        i = next(i for i, d in enumerate(ids) if type(d) is not str)
        raise KeytokError(f"{where}: id {i} is {one_line_repr(ids[i])}, not a string")
    try:
        "\n".join(ids).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, d in enumerate(ids) if not _utf8(d))
        raise KeytokError(f"{where}: id {i} is not valid Unicode text") from None
    if not all(map(str.strip, ids)):
        i = next(i for i, d in enumerate(ids) if not d.strip())
        raise KeytokError(f"{where}: id {i} is empty")
    kept = ids if live is None or live.all() else [ids[i] for i in np.flatnonzero(live).tolist()]
    if len(set(kept)) != len(kept):
        seen: set[str] = set()
        dup = next(d for d in kept if d in seen or seen.add(d))  # type: ignore[func-returns-value]
        raise KeytokError(f"{where}: id {one_line_repr(dup)} is there twice")


def one_line_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error message about untrusted data."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chunk_source(
    chunks: Chunks, *, passes: int = 1, why: str = ""
) -> Callable[[], Iterator[tuple[int, Sequence[str], Any]]]:
    """A function that returns a fresh iterator of ``(chunk number, doc_ids, vectors)`` over ``chunks``.

    ``chunks`` (see :data:`Chunks`): a callable returning an iterable or a list/tuple can be read ``passes``
    times; another iterable only once, so ``passes > 1`` refuses it, with ``why`` as the reason.
    Each item must be a ``(doc_ids, vectors)`` pair; the engine checks the ids and the vectors.
    """
    import scipy.sparse as sp

    if isinstance(chunks, np.ndarray) or sp.issparse(chunks):
        raise KeytokError(
            "chunks must be (doc_ids, vectors) pairs, not one matrix: use build() for a whole matrix"
        )
    if callable(chunks):
        make: Callable[[], Iterable[Any]] = chunks
    elif isinstance(chunks, list | tuple):
        make = lambda: chunks  # noqa: E731 - a list can be read again
    elif isinstance(chunks, Iterable) and not isinstance(chunks, str | bytes | Mapping):
        if passes > 1:
            raise KeytokError(f"chunks is a one-pass iterator, but {why}")
        read: list[bool] = []

        def make() -> Iterable[Any]:
            if read:
                raise KeytokError("chunks is a one-pass iterator and was already read")
            read.append(True)
            return chunks

    else:
        raise KeytokError(
            f"chunks must be an iterable of (doc_ids, vectors) pairs, not {type(chunks).__name__}"
        )

    def numbered() -> Iterator[tuple[int, Sequence[str], Any]]:
        items = make()
        if not isinstance(items, Iterable) or isinstance(items, str | bytes | Mapping):
            raise KeytokError(
                f"the chunks callable returned a {type(items).__name__}, not an iterable of pairs"
            )
        for n, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise KeytokError(f"chunk {n} is a {type(item).__name__}, not a (doc_ids, vectors) pair")
            yield n, item[0], item[1]
            del item  # let the caller free this chunk before the next one is read

    return numbered


class DocIdStream:
    """The doc ids of a chunked build, checked chunk by chunk: valid, and none twice across all chunks."""

    def __init__(self, keep: bool = True) -> None:
        """``keep=False``: only check the ids (:attr:`ids` stays empty, :attr:`count` counts them)."""
        self.ids: list[str] = []
        self.count = 0
        self._keep = keep
        self._seen: set[str] = set()

    def take(self, chunk: int, doc_ids: Sequence[str], n_rows: int) -> list[str]:
        """Check chunk ``chunk``'s ``doc_ids`` (one per vector row, ``n_rows``), append and return them."""
        if isinstance(doc_ids, str | bytes):
            raise KeytokError(f"chunk {chunk}: doc_ids must be a list of strings, not a single string")
        ids = list(doc_ids)
        if len(ids) != n_rows:
            raise KeytokError(f"chunk {chunk}: {len(ids)} doc ids given for {n_rows} vectors")
        ids = check_doc_ids(ids, existing=self._seen, what=f"chunk {chunk} doc_ids")
        self._seen.update(ids)
        if self._keep:
            self.ids.extend(ids)
        self.count += len(ids)
        return ids

    def done(self) -> list[str]:
        """All ids, in order; the duplicate check's set is freed (it costs more memory than the list)."""
        self._seen = set()
        return self.ids


def meta_dict(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of the caller's metadata, refused unless it is JSON-serialisable."""
    out = dict(meta or {})
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise KeytokError(f"meta is not JSON-serialisable ({exc})") from exc
    return out


def check_new(path: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Refuse to build over an existing ``path`` unless ``overwrite``."""
    if path is not None and Path(path).exists() and not overwrite:
        raise KeytokError(f"index {path} already exists (pass overwrite=True to replace it)")


def open_manifest(
    path: str | os.PathLike[str],
    kind: str,
    expected_meta: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> tuple[Path, Manifest]:
    """The checked manifest of the engine folder ``path``: format, kind, every file (rehashed unless
    ``verify=False``), and the querying encoder's ``expected_meta``."""
    path = Path(path)
    manifest = Manifest.load(path, kind=kind, verify=verify)
    if expected_meta is not None:
        manifest.check_compatible(expected_meta)
    return path, manifest


def pad_batch(per_query: Sequence[SearchHits], k: int, dtype: Any = np.float32) -> BatchHits:
    """Per-query hit lists as :data:`BatchHits`."""
    scores = np.full((len(per_query), k), -np.inf, dtype=dtype)
    ids: list[list[str]] = []
    for i, hits in enumerate(per_query):
        ids.append([d for d, _ in hits])
        if hits:
            scores[i, : len(hits)] = [s for _, s in hits]
    return ids, scores


def batch_lists(hits: BatchHits) -> list[SearchHits]:
    """:data:`BatchHits` as one ``[(doc_id, score), ...]`` list per query."""
    ids, scores = hits
    return [list(zip(i, s[: len(i)].tolist(), strict=True)) for i, s in zip(ids, scores, strict=True)]


def read_unchanged(path: str | os.PathLike[str], read: Callable[[], T], tries: int = 5) -> T:
    """``read()`` of the folder ``path``, read again while the folder is swapped under it.

    A writer swaps in a whole new folder (new inode): a read that fails, or ends, while the folder is not
    the one it started on is done again rather than mixing two versions; an error raised while the folder
    stood still is the folder's. Raises :class:`KeytokError` when it keeps changing.
    """
    for _ in range(tries):
        before = identity(path)
        try:
            result = read()
        except KeytokError:
            if identity(path) == before:
                raise
            continue
        if identity(path) == before:
            return result
    raise KeytokError(
        f"index {path} kept changing while it was being opened (is another process rewriting it?)"
    )


def identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``: a writer that swaps in a new folder changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
