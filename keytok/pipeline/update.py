"""Add documents to an index folder, or delete them: ``keytok index add`` / ``keytok index delete``.

An update is one write of the whole folder, as a build is, so that the folder's engines, ``docs.jsonl``,
``df.npy`` and ``keytok.json`` always describe the same documents:

* It holds the folder's write lock (:mod:`keytok.engines.lock`, the build's), so two updates, or an update
  and a build, never both write from the same old folder: the second waits ``wait`` seconds, then starts
  from what the first wrote, or is refused in one line. No added document is lost.
* It writes a new folder beside the old one, hard-linking every file it does not change (an engine's
  writes replace files by rename, so a link is never written through), and swaps it in by one atomic
  exchange (:func:`keytok.utils.atomic.atomic_dir`). A ``kill -9`` at any point leaves the folder as it
  was before the update or as it is after it, never between; the next writer removes the leftovers.

Which engines can be updated, and how:

* ``sparse`` and ``impact`` (native inverted indexes): :meth:`SparseIndex.add` / ``delete`` (tombstones;
  the index's own quantisation scale is kept, so added weights above its top level are clipped, with a
  warning).
* ``dense`` (FAISS): vectors are appended; a delete rebuilds the index from its stored vectors (a Flat or
  HNSW index gives them back; one that cannot, e.g. IVF without a direct map, is refused in one line).
* ``lucene`` (Lucene impact): rebuilt from the updated native index's integers, which is what a build
  indexes too (so it needs ``sparse`` in the folder, as every build has).
* ``bm25`` and ``bm25x`` index the full texts of every document, which the folder does not keep: an index
  that holds them is refused in one line (build it again from the grown corpus).

New documents are encoded with the index's own recorded model, method, precision, max length,
calibration, corpus mean and sparse settings (:meth:`Searcher.sparse_encoder`): the same vectors a build
would have made for them, though the corpus mean and the quantisation scale stay those of the original
build. ``df.npy`` (the idf of query expansion) is kept exact on add; on delete the deleted documents'
stored tokens are subtracted (a token whose weight quantised to 0 stays counted, at most one per token
and document).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.lock import DEFAULT_WAIT_S, write_lock
from keytok.engines.manifest import canonical
from keytok.errors import KeytokError
from keytok.pipeline.folder import (
    DF_NAME,
    DOCS_NAME,
    INFO_NAME,
    SNIPPET_CHARS,
    read_info,
)
from keytok.pipeline.kinds import BUILD_ORDER, DEFAULT_SYSTEM, REGISTRY
from keytok.utils.atomic import atomic_dir, atomic_path
from keytok.utils.hashing import sha256_file, sha256_text

__all__ = ["UPDATABLE", "UpdateSummary", "add_documents", "delete_documents", "read_ids_file"]

#: Engines an update can bring up to date (see the module doc); the others are refused.
UPDATABLE = tuple(name for name, kind in REGISTRY.items() if kind.updatable)


@dataclass
class UpdateSummary:
    """What an update did: the folder, the operation, the ids it changed and the documents it holds now."""

    path: Path
    operation: str
    doc_ids: list[str]
    docs: int
    kinds: list[str]
    clipped_weights: int = 0
    engines: dict[str, int] = field(default_factory=dict)  # kind -> documents it holds afterwards

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}

    def lines(self) -> list[str]:
        verb = "added" if self.operation == "add" else "deleted"
        out = [f"index {self.path}: {verb} {len(self.doc_ids):,} documents, {self.docs:,} now"]
        out += [f"  {kind:<7} {n:,} documents" for kind, n in self.engines.items()]
        if self.clipped_weights:
            out.append(f"  {self.clipped_weights} weights clipped to the index's top quantisation level")
        return out


# ------------------------------------------------------------------------------------------- checks
def _check_updatable(path: Path, info: dict[str, Any], operation: str) -> None:
    """Refuse, in one line, an index holding an engine an update cannot bring up to date."""
    kinds = info["kinds"]
    stuck = [k for k in kinds if k not in UPDATABLE]
    if stuck:
        raise KeytokError(
            f"index {path} holds {', '.join(stuck)}, which index the full texts of every document and cannot "
            f"be updated in place; {operation} refused (build the index again, or build it with --kind "
            f"{','.join(k for k in kinds if k in UPDATABLE) or DEFAULT_SYSTEM})"
        )
    for k in kinds:
        source = REGISTRY[k].built_from
        if source is not None and source not in kinds:
            raise KeytokError(
                f"index {path} holds {k} without {source}, whose integers it is rebuilt from; {operation} refused"
            )


def _read_docs(folder: Path) -> list[dict[str, Any]]:
    """The ``docs.jsonl`` records of ``folder`` (checked by :meth:`Searcher.check` before)."""
    with open(folder / DOCS_NAME, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _is_empty(record: dict[str, Any]) -> bool:
    """Whether a ``docs.jsonl`` record is an empty document (no title, no text: its snippet is empty)."""
    return not str(record.get("title", "")).strip() and not str(record.get("snippet", "")).strip()


def read_ids_file(path: str | os.PathLike[str]) -> list[str]:
    """Document ids from a file, one per line (blank lines skipped), for ``keytok index delete --ids-file``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeytokError(f"cannot read ids file {path}: {exc.__class__.__name__}: {exc}") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise KeytokError(f"ids file {path} holds no document id")
    return ids


# ------------------------------------------------------------------------------------------- the folder
def _link_tree(src: Path, dst: Path) -> None:
    """``src``'s files hard-linked into the empty folder ``dst`` (symlinks copied as links): the new
    version starts as the old one at no cost, and every write replaces a file by rename, never in place."""
    shutil.copytree(src, dst, symlinks=True, copy_function=os.link, dirs_exist_ok=True)


def _write_docs(folder: Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_path(folder / DOCS_NAME) as p, open(p, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_info(folder: Path, info: dict[str, Any], docs: int, empty_docs: int) -> None:
    """``keytok.json`` with the new counts and the size and sha256 of every file it lists, re-sealed."""
    info = dict(info) | {"docs": docs, "empty_docs": empty_docs}
    info.pop("sha256", None)
    info["files"] = {
        role: {
            "name": e["name"],
            "bytes": (folder / e["name"]).stat().st_size,
            "sha256": sha256_file(folder / e["name"]),
        }
        for role, e in info["files"].items()
    }
    info["sha256"] = sha256_text(canonical(info))
    with atomic_path(folder / INFO_NAME) as p:
        p.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _open_checked(path: Path, encoder: Any, verify: bool) -> Any:
    """The folder opened as a search opens it, every engine and file checked (hashes with ``verify``):
    an update must not build on a damaged or crafted folder."""
    from keytok.pipeline.searcher import Searcher

    searcher = Searcher(path, encoder=encoder, verify=verify)
    searcher.check()
    return searcher


# ------------------------------------------------------------------------------------------------ add
@dataclass
class _NewDocs:
    """The documents being added and their vectors, made with the index's own encoder."""

    ids: list[str]
    records: list[dict[str, Any]]
    emb: np.ndarray
    texts: list[str]
    vectors: sp.csr_matrix | None = None

    @property
    def empty(self) -> np.ndarray:
        return np.abs(self.emb).sum(axis=1) == 0


def _load_new_docs(path: Path, corpus: str | os.PathLike[str], info: dict[str, Any]) -> list[Any]:
    """The corpus to add, read with the index's own empty-document policy."""
    from keytok.data.beir import load_corpus

    docs = load_corpus(corpus, on_empty=info["corpus"].get("on_empty", "error"))
    if not docs:
        raise KeytokError(f"{corpus}: no documents to add to index {path}")
    return docs


def _encode_new(searcher: Any, docs: list[Any], progress: bool) -> _NewDocs:
    """Embeddings (zeros for empty texts, as a build stores them) and sparse vectors of ``docs``."""
    # the model first: the sparse encoder then takes the model's own tokenizer, as a build does
    model = searcher.encoder
    enc = searcher.sparse_encoder
    texts = [d.full_text for d in docs]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    emb = np.zeros((len(docs), int(searcher.info["hidden_size"])), dtype=np.float32)
    if keep:
        emb[keep] = model.encode([texts[i] for i in keep], show_progress=progress)
    records = [
        {"id": d.id, "title": d.title, "snippet": " ".join(d.text.split())[:SNIPPET_CHARS]} for d in docs
    ]
    new = _NewDocs([d.id for d in docs], records, emb, texts)
    # the kinds whose queries the key-token df weights read the new key-token vectors (and update df.npy)
    if any(REGISTRY[k].df_file == DF_NAME for k in searcher.kinds):
        new.vectors = enc.encode_documents_from_embeddings(emb)
    return new


def _check_new_ids(path: Path, new_ids: list[str], existing: Iterable[str]) -> None:
    have = set(existing)
    dup = next((d for d in new_ids if d in have), None)
    if dup is not None:
        raise KeytokError(
            f"doc id {dup!r} is already in index {path}; add refused (delete it first to replace it)"
        )


def _add_engines(tmp: Path, searcher: Any, new: _NewDocs, summary: UpdateSummary) -> None:
    """Bring every engine of the new folder ``tmp`` up to date with the added documents (in build order:
    an engine rebuilt from another comes after it)."""
    import warnings

    from keytok.pipeline.kinds.sparse import add_document_frequency

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in BUILD_ORDER:
            if kind.name in searcher.kinds:
                summary.engines[kind.name] = kind.add(tmp, searcher, new)
    # SparseIndex.add warns "N weights of the added documents exceed ...": reported in the summary instead
    clipped = [str(w.message).split()[0] for w in caught if "clipped" in str(w.message)]
    summary.clipped_weights = sum(int(n) for n in clipped if n.isdigit())
    if DF_NAME in searcher.info["files"] and new.vectors is not None:
        add_document_frequency(tmp, DF_NAME, new.vectors)


def add_documents(
    path: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    *,
    encoder: Any = None,
    wait: float = DEFAULT_WAIT_S,
    verify: bool = True,
    progress: bool = False,
) -> UpdateSummary:
    """Add the documents of ``corpus`` (a BEIR folder or corpus.jsonl) to the index folder ``path``.

    They are encoded with the index's recorded model and settings (``encoder``: that model already
    loaded) and added to every engine in one atomic write under the folder's write lock (see the module
    doc). An id already in the index, or an engine that cannot be updated, is refused in one line before
    anything is written. ``wait``: seconds to wait for another writer. Returns an :class:`UpdateSummary`.
    """
    path = Path(path)
    info = read_info(path, verify=False)  # cheap refusals first: before the lock, the corpus, the model
    _check_updatable(path, info, "add")
    docs = _load_new_docs(path, corpus, info)
    with write_lock(path, wait=wait, what="add"):
        searcher = _open_checked(path, encoder, verify)
        try:
            _check_updatable(path, searcher.info, "add")  # another writer may have rebuilt it meanwhile
            old = _read_docs(path)
            _check_new_ids(path, [d.id for d in docs], (r["id"] for r in old))
            new = _encode_new(searcher, docs, progress)
            summary = UpdateSummary(path, "add", new.ids, len(old) + len(docs), list(searcher.kinds))
            with atomic_dir(path) as tmp:
                _link_tree(path, tmp)
                _add_engines(tmp, searcher, new, summary)
                _write_docs(tmp, old + new.records)
                empty = int(searcher.info["empty_docs"]) + int(new.empty.sum())
                _write_info(tmp, searcher.info, summary.docs, empty)
        finally:
            searcher.close()
    return summary


# --------------------------------------------------------------------------------------------- delete
def _delete_engines(tmp: Path, kinds: list[str], ids: list[str], docs: int, summary: UpdateSummary) -> None:
    """Take ``ids`` out of every engine of the new folder ``tmp`` (in build order)."""
    for kind in BUILD_ORDER:
        if kind.name in kinds:
            summary.engines[kind.name] = kind.delete(tmp, ids, docs)


def _check_targets(path: Path, doc_ids: Sequence[str], records: list[dict[str, Any]]) -> list[str]:
    """``doc_ids`` deduplicated in order, each checked to be in the index."""
    if isinstance(doc_ids, str):
        doc_ids = [doc_ids]
    ids = list(dict.fromkeys(doc_ids))
    if not ids:
        raise KeytokError(f"no document id to delete from index {path}")
    have = {r["id"] for r in records}
    missing = next((d for d in ids if d not in have), None)
    if missing is not None:
        raise KeytokError(f"doc id {missing!r} is not in index {path}; delete refused")
    if len(ids) == len(have):
        raise KeytokError(f"deleting every document of index {path} would leave it empty; delete refused")
    return ids


def delete_documents(
    path: str | os.PathLike[str],
    doc_ids: Sequence[str],
    *,
    wait: float = DEFAULT_WAIT_S,
    verify: bool = True,
) -> UpdateSummary:
    """Delete ``doc_ids`` from every engine of the index folder ``path``, in one atomic write under its
    write lock (see the module doc). An id not in the index is refused in one line, and then nothing
    changes. No model is loaded. Returns an :class:`UpdateSummary`."""
    path = Path(path)
    _check_updatable(path, read_info(path, verify=False), "delete")
    with write_lock(path, wait=wait, what="delete"):
        searcher = _open_checked(path, None, verify)
        try:
            _check_updatable(path, searcher.info, "delete")
            old = _read_docs(path)
            ids = _check_targets(path, doc_ids, old)
            gone = set(ids)
            kept = [r for r in old if r["id"] not in gone]
            summary = UpdateSummary(path, "delete", ids, len(kept), list(searcher.kinds))
            with atomic_dir(path) as tmp:
                _link_tree(path, tmp)
                _delete_engines(tmp, summary.kinds, ids, len(kept), summary)
                _write_docs(tmp, kept)
                _write_info(tmp, searcher.info, len(kept), sum(_is_empty(r) for r in kept))
        finally:
            searcher.close()
    return summary
