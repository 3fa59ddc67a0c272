"""Merge the N shard folders of one corpus into the index folder the whole corpus gives in one build.

A shard (``keytok index build --shard I/N``, :func:`keytok.pipeline.build.build_index` with ``shard=``)
holds the documents whose id hashes to bucket I of N (:func:`keytok.pipeline.build.shard_of`), their
engines, and their pooled embeddings (``embeddings.npy``). The shards can be encoded on N machines at once;
:func:`merge_indexes` then joins them on one.

**Why the merge re-projects instead of joining postings.** The key tokens of a document are not a function
of the document alone. With centring (the default removes half the corpus mean embedding before the LM
head) they depend on the mean of *all* embeddings; the integer impacts depend on the quantisation scale,
the largest weight of the whole corpus; and the idf of queries on the document frequencies of the whole
corpus. Concatenating the shards' postings would give an index whose scores differ from the one-go build
(each shard centred on its own mean, quantised on its own scale). So the merge keeps what is expensive and
independent, the embeddings (the model's forward passes, >99 % of a build's time), and redoes the rest once
over all of them, in the corpus's order: the mean, the projection, the quantisation, every engine. The
result is the folder a single build writes, up to the last bits of embeddings computed in other batches.

BM25 does not depend on the model and could be joined by Lucene's own ``addIndexes``; it is rebuilt from
the text instead, so that its internal document order, and with it the order of tied scores, is the
single build's too. Its cost (Lucene indexes SciFact's 5,183 documents in seconds) is small next to the
encoding the shards spread out.

The merge reads the corpus again (recorded in the shards' ``keytok.json``, or ``corpus=``) for the texts
that BM25 and the model-weighted terms need, and checks its checksum against the shards'.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keytok.errors import KeytokError
from keytok.pipeline.build import (
    BuildConfig,
    BuildJob,
    BuildSummary,
    build_lock,
    check_destination,
    engine_meta,
    load_calibration,
    load_docs,
    require_java,
    shard_of,
    write_folder,
)
from keytok.pipeline.folder import DOCS_NAME, EMBEDDINGS_NAME, INFO_NAME, read_info
from keytok.pipeline.kinds import REGISTRY
from keytok.representations.sparse import SparseEncoder
from keytok.utils.hashing import sha256_file

__all__ = ["merge_indexes"]

# keytok.json entries every shard of one corpus must share for the merge to be the one-go build
SHARED_ENTRIES = (
    "model_sha256",
    "method",
    "precision",
    "max_length",
    "vocab_size",
    "hidden_size",
    "calibration_sha256",
    *(name for name, kind in REGISTRY.items() if kind.recorded),  # each kind's settings
    "kinds",
)


def merge_indexes(
    shards: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    model: str | None = None,
    encoder: Any = None,
    overwrite: bool = False,
    threads: int = 2,
) -> BuildSummary:
    """Merge the shard folders ``shards`` (all N of one corpus, any order) into the index folder ``out``.

    ``corpus``: the corpus the shards were built from, when it is no longer at the path they record (its
    checksum must match). ``model``: a model spec to load instead of the recorded one (e.g. moved); or an
    ``encoder`` already loaded. Either must be the shards' model (sha256 checked). ``out`` is written
    atomically and replaces an existing index only with ``overwrite=True``. ``threads``: Lucene indexing
    threads. Returns the :class:`~keytok.pipeline.build.BuildSummary` of the merged folder.
    """
    started = time.perf_counter()
    out = Path(out)
    check_destination(out, overwrite)
    paths = [Path(p) for p in shards]
    infos = _check_shards(paths)
    first, first_info = paths[0], infos[0]
    cfg = _config(first, first_info, threads)
    require_java(cfg)
    source = corpus if corpus is not None else first_info["corpus"]["path"]
    docs, checksum = load_docs(source, cfg.on_empty)
    if checksum != first_info["corpus"]["checksum"]:
        raise KeytokError(
            f"corpus {source} is not the one the shards were built from (checksum {checksum[:12]}… vs "
            f"{first_info['corpus']['checksum'][:12]}…)"
        )
    emb = _gather_embeddings(paths, infos, docs, source)
    encoder = encoder if encoder is not None else _shard_encoder(first, model)
    if encoder.model.fingerprint != first_info["model_sha256"]:
        raise KeytokError(
            f"shards were built with model {first_info['model']} (sha256 {first_info['model_sha256'][:12]}…), "
            f"not {encoder.model.name} (sha256 {encoder.model.fingerprint[:12]}…)"
        )
    cal = load_calibration(cfg.calibration, encoder)
    sparse_enc = SparseEncoder(encoder, cfg.sparse, calibration=cal)
    merged_from = [
        {
            "path": str(p.resolve()),
            "shard": f"{i['shard']['index']}/{i['shard']['count']}",
            "keytok_json_sha256": sha256_file(p / INFO_NAME),
        }
        for p, i in zip(paths, infos, strict=True)
    ]
    job = BuildJob(
        out, cfg, docs, checksum, emb, sparse_enc, engine_meta(encoder, cfg, cal),
        extra={"merged_from": merged_from},
    )  # fmt: skip
    with build_lock(out):
        write_folder(job, source, encoder)
    line = f"embeddings from {len(paths)} shards, no document encoded"
    return job.summary(0, line, time.perf_counter() - started)


def _check_shards(paths: list[Path]) -> list[dict[str, Any]]:
    """Each shard's checked ``keytok.json``; refuses a folder that is no shard, shards of other builds or
    corpora, a shard given twice, and a missing one."""
    if not paths:
        raise KeytokError("no shard to merge")
    infos = []
    for p in paths:
        info = read_info(p)
        if "shard" not in info or EMBEDDINGS_NAME not in {e["name"] for e in info["files"].values()}:
            raise KeytokError(f"index {p} is not a shard (build it with --shard I/N) and cannot be merged")
        infos.append(info)
    count = infos[0]["shard"]["count"]
    seen: dict[int, Path] = {}
    for p, info in zip(paths, infos, strict=True):
        s = info["shard"]
        if s["count"] != count:
            raise KeytokError(
                f"index {p} is shard {s['index']}/{s['count']}, not one of {count} like {paths[0]}"
            )
        if s["index"] in seen:
            raise KeytokError(f"shard {s['index']}/{count} given twice: {seen[s['index']]} and {p}")
        seen[s["index"]] = p
        for key in SHARED_ENTRIES:
            if info.get(key) != infos[0].get(key):
                raise KeytokError(f"index {p} differs from {paths[0]} in {key}: not shards of one build")
        for key in ("checksum", "on_empty"):
            if info["corpus"][key] != infos[0]["corpus"][key]:
                raise KeytokError(
                    f"index {p} differs from {paths[0]} in corpus {key}: not shards of one corpus"
                )
    missing = [i for i in range(count) if i not in seen]
    if missing:
        raise KeytokError(f"shard {missing[0]}/{count} is missing ({len(seen)} of {count} given)")
    return infos


def _config(first: Path, info: dict[str, Any], threads: int) -> BuildConfig:
    """The build settings the shards share, as the :class:`BuildConfig` of the merged folder."""
    cal = info["files"].get("calibration")
    return BuildConfig(
        model=info["model"],
        method=info["method_name"],
        dtype=info["dtype"],
        max_length=int(info["max_length"]),
        kinds=tuple(info["kinds"]),
        calibration=None if cal is None else str(first / cal["name"]),
        on_empty=info["corpus"]["on_empty"],
        threads=threads,
        **{
            field: value
            for name, kind in REGISTRY.items()
            if kind.recorded
            for field, value in kind.settings(info[name]).items()
        },
    )


def _shard_ids(path: Path) -> list[str]:
    with open(path / DOCS_NAME, encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


def _gather_embeddings(
    paths: list[Path], infos: list[dict[str, Any]], docs: list[Any], corpus: Any
) -> np.ndarray:
    """The shards' embeddings in the corpus's document order; each shard must hold exactly the documents
    the corpus gives its bucket, in corpus order (as a shard build takes them)."""
    count = infos[0]["shard"]["count"]
    bucket = np.fromiter((shard_of(d.id, count) for d in docs), dtype=np.int64, count=len(docs))
    ids = np.array([d.id for d in docs], dtype=object)
    emb: np.ndarray | None = None
    for p, info in zip(paths, infos, strict=True):
        index = info["shard"]["index"]
        rows = np.flatnonzero(bucket == index)
        if _shard_ids(p) != ids[rows].tolist():
            raise KeytokError(
                f"index {p} does not hold the documents of shard {index}/{count} of {corpus}: "
                f"built from another version of the corpus?"
            )
        part = np.load(p / EMBEDDINGS_NAME, mmap_mode="r", allow_pickle=False)
        if part.ndim != 2 or part.shape[0] != rows.size or part.shape[1] != int(info["hidden_size"]):
            raise KeytokError(
                f"index {p}: {EMBEDDINGS_NAME} has shape {part.shape}, not ({rows.size}, hidden size)"
            )
        if emb is None:
            emb = np.empty((len(docs), part.shape[1]), dtype=np.float32)
        emb[rows] = part
    assert emb is not None  # paths is not empty
    return emb


def _shard_encoder(first: Path, model: str | None) -> Any:
    """The shards' encoder, loaded as a search of the first shard would load it (model sha256 checked)."""
    from keytok.pipeline.searcher import Searcher

    searcher = Searcher(first, model=model, verify=False)  # read_info has just verified it
    try:
        return searcher.encoder
    finally:
        searcher.close()
