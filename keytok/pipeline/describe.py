"""``describe_index``: what an index folder holds, in one dict (``keytok index describe``).

Reads only metadata and the small arrays: ``keytok.json``, each engine's ``manifest.json``, and the native
index's per-segment ``indptr`` arrays (one entry per vocabulary token), so describing a million-document
index costs milliseconds. Fields:

* ``model``, ``model_sha256``, ``method`` (described), ``precision``, ``max_length``, ``engines``;
* ``docs``, ``empty_docs``, ``live_docs`` and ``deleted_docs`` (native index), ``postings``;
* ``vocab_size``, ``tokens_occurring`` (vocabulary tokens with a posting in a live document) and
  ``vocab_coverage`` = ``tokens_occurring / vocab_size``. From the native index's postings when it is
  there; otherwise from ``df.npy`` (the document frequencies of the float vectors, before quantisation);
  ``coverage_from`` says which; ``null`` when the folder has neither (dense or BM25 only);
* ``avg_key_tokens`` = key tokens stored per live document (postings / live documents; fewer than K
  when weights quantise to 0), ``K``, ``bits``, ``scale``;
* ``bytes`` (the whole folder on disk) and ``engine_bytes`` per engine.

``path`` may be a keytok index folder or a native sparse index folder on its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from keytok.engines.sparse import KIND as NATIVE_FORMAT
from keytok.errors import KeytokError
from keytok.pipeline.kinds import NATIVE_KIND, REGISTRY, VECTOR_SETTINGS

__all__ = ["describe_index", "describe_lines"]


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _method_text(key: str | None) -> str | None:
    if not key:
        return None
    from keytok.models.methods import EmbeddingMethod

    try:
        return EmbeddingMethod.from_key(key).describe()
    except (KeytokError, ValueError, TypeError, KeyError):
        return str(key)


def _native_stats(folder: Path) -> dict[str, Any]:
    """Counts of a native sparse index: documents, postings, tokens that occur, live key tokens per doc."""
    from keytok.engines.sparse import SparseIndex

    index = SparseIndex.open(folder)
    used = np.zeros(index.vocab_size, dtype=bool)
    for name in sorted(n for n in index.manifest.files if n.endswith(".indptr.npy")):
        try:
            indptr = np.load(folder / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise KeytokError(f"index {folder}: file {name} is unreadable ({exc})") from None
        used |= np.diff(np.asarray(indptr, dtype=np.int64)) > 0
    postings = int(index.manifest.counts.get("postings", 0))
    live = int(index.n_live)
    live_postings = postings
    if live != index.n_docs:
        # Tombstoned documents keep their postings until compact(): count the live documents' only.
        vectors = index.int_vectors()[1]
        live_postings = int(vectors.nnz)
        used = np.zeros(index.vocab_size, dtype=bool)
        used[np.unique(vectors.indices)] = True
    return {
        "meta": dict(index.meta),
        "docs": int(index.n_docs),
        "live_docs": live,
        "deleted_docs": int(index.n_docs - live),
        "postings": postings,
        "tokens_occurring": int(used.sum()),
        "avg_key_tokens": live_postings / live if live else 0.0,
        "bits": int(index.bits),
        "scale": float(index.scale),
    }


def describe_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready description of the index at ``path`` (fields in the module doc).

    Raises :class:`KeytokError` when ``path`` is not an index or fails the index's own checks.
    """
    path = Path(path)
    if not path.exists():
        raise KeytokError(f"index {path} does not exist")
    if (path / "keytok.json").is_file():
        from keytok.engines.manifest import Manifest
        from keytok.pipeline.folder import read_info

        info = read_info(path)
        kinds = list(info.get("kinds", []))
        native = _native_stats(path / NATIVE_KIND) if NATIVE_KIND in kinds else None
        counts = {k: Manifest.load(path / k).counts for k in kinds}
        sparse = info.get(VECTOR_SETTINGS, {})
        out: dict[str, Any] = {
            "path": str(path),
            "format": "keytok-index-folder",
            "created": info.get("created"),
            "keytok_version": info.get("keytok_version"),
            "model": info.get("model"),
            "model_sha256": info.get("model_sha256"),
            "method": _method_text(info.get("method")),
            "precision": info.get("precision"),
            "max_length": info.get("max_length"),
            "engines": kinds,
            "docs": int(info.get("docs", 0)),
            "empty_docs": int(info.get("empty_docs", 0)),
            "K": sparse.get("K"),
            "M": sparse.get("M"),
            "transform": sparse.get("transform"),
            "bits": sparse.get("bits"),
            "vocab_size": int(info["vocab_size"]),
            "engine_counts": counts,
        }
        if native is not None:
            out.update({k: v for k, v in native.items() if k != "meta"})
            out["coverage_from"] = f"{NATIVE_KIND} postings"
        else:
            df_entry = info.get("files", {}).get("df.npy")
            out.update({"live_docs": None, "deleted_docs": None, "postings": None, "avg_key_tokens": None})
            out["scale"] = None
            if df_entry is not None:
                try:
                    df = np.load(path / df_entry["name"], allow_pickle=False)
                except (OSError, ValueError, EOFError) as exc:
                    raise KeytokError(f"index {path}: df.npy is unreadable ({exc})") from None
                out["tokens_occurring"] = int(np.count_nonzero(df))
                out["coverage_from"] = "df.npy"
                copy = next((k for k in kinds if REGISTRY[k].built_from == NATIVE_KIND), None)
                if copy is not None:  # an engine of the same integer vectors counts their postings
                    out["postings"] = counts[copy].get("postings")
                    indexed = counts[copy].get("docs")
                    if out["postings"] is not None and indexed:
                        out["avg_key_tokens"] = out["postings"] / indexed
            else:
                out["tokens_occurring"] = None
                out["coverage_from"] = None
        out["engine_bytes"] = {k: _folder_bytes(path / k) for k in kinds}
    elif (path / "manifest.json").is_file():
        native = _native_stats(path)
        meta = native.pop("meta")
        out = {
            "path": str(path),
            "format": NATIVE_FORMAT,
            "model": meta.get("model"),
            "model_sha256": meta.get("model_sha256"),
            "method": _method_text(meta.get("method")),
            "precision": meta.get("precision"),
            "max_length": meta.get("max_length"),
            "engines": [NATIVE_KIND],
            "empty_docs": None,
            "K": meta.get("K"),
            "transform": meta.get("transform"),
            "vocab_size": int(meta["vocab_size"]),
            **native,
            "coverage_from": f"{NATIVE_KIND} postings",
            "engine_bytes": {NATIVE_KIND: _folder_bytes(path)},
        }
    else:
        raise KeytokError(f"{path} is not a keytok index folder (no keytok.json) nor a native sparse index")
    used = out.get("tokens_occurring")
    out["vocab_coverage"] = None if used is None else used / out["vocab_size"]
    out["bytes"] = _folder_bytes(path)
    return out


def _mib(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.1f} KiB"
    if n < 2**30:
        return f"{n / 2**20:,.2f} MiB"
    return f"{n / 2**30:,.2f} GiB"


def describe_lines(d: dict[str, Any]) -> list[str]:
    """The human-readable form of a :func:`describe_index` dict, one fact per line."""
    sha = d.get("model_sha256")
    lines = [
        f"index {d['path']}"
        + (f" (keytok {d['keytok_version']}, created {d['created']})" if d.get("created") else "")
    ]
    lines.append(f"  model       {d.get('model') or 'unknown'}" + (f" (sha256 {sha[:12]}…)" if sha else ""))
    lines.append(
        f"  method      {d.get('method') or 'unknown'}"
        + (f", max length {d['max_length']}" if d.get("max_length") else "")
    )
    lines.append(f"  precision   {d.get('precision') or 'unknown'}")
    docs = f"{d['docs']:,}"
    extra = []
    if d.get("empty_docs"):
        extra.append(f"{d['empty_docs']:,} empty")
    if d.get("deleted_docs"):
        extra.append(f"{d['deleted_docs']:,} deleted")
    lines.append(
        f"  documents   {docs}"
        + (f" ({', '.join(extra)})" if extra else "")
        + f"; engines {', '.join(d['engines'])}"
    )
    if d.get("vocab_coverage") is not None:
        lines.append(
            f"  vocabulary  {d['tokens_occurring']:,} of {d['vocab_size']:,} tokens occur "
            f"({100 * d['vocab_coverage']:.1f} % coverage, from {d['coverage_from']})"
        )
    else:
        lines.append(f"  vocabulary  {d['vocab_size']:,} tokens (no sparse vectors: coverage unknown)")
    if d.get("avg_key_tokens") is not None:
        k = f" of K = {d['K']}" if d.get("K") is not None else ""
        post = f", {d['postings']:,} postings" if d.get("postings") is not None else ""
        q = f", {d['bits']}-bit impacts" if d.get("bits") else ""
        lines.append(f"  key tokens  {d['avg_key_tokens']:.1f} per document on average{k}{post}{q}")
    parts = ", ".join(f"{k} {_mib(v)}" for k, v in d.get("engine_bytes", {}).items())
    lines.append(f"  size        {_mib(d['bytes'])} on disk" + (f" ({parts})" if parts else ""))
    return lines
