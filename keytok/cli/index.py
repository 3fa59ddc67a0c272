"""``keytok index build`` / ``merge`` / ``add`` / ``delete`` / ``info`` / ``describe``: build an index
folder (or a shard of one), merge shards, update an index in place, show or summarise an index."""

from __future__ import annotations

import argparse
from pathlib import Path

from keytok.cli.common import (
    add_model_options,
    add_sparse_options,
    cli_flags,
    info,
    model_from_args,
    print_json,
    sparse_config_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from keytok.pipeline.kinds import DEFAULT_KINDS, kinds_help
    from keytok.representations.expansion import DEFAULT_EXPANSION_WORDS
    from keytok.representations.impact import DEFAULT_IMPACT_EXPANSION

    p = sub.add_parser(
        "index",
        help="build or describe a keytok index folder",
        description="Build a keytok index folder (sparse key tokens, dense FAISS, Lucene impact, BM25) from a "
        "corpus, or describe one.",
    )
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    b = isub.add_parser(
        "build",
        help="build an index folder from a corpus",
        description="Encode a corpus (a BEIR folder or a corpus.jsonl) with a model and method, and write an index "
        "folder holding the engines asked for with --kind. Embeddings are cached in chunks "
        "($KEYTOK_CACHE/embeddings): a build stopped by Ctrl-C or kill -9 resumes when run again and ends with the "
        "same index. The folder is written atomically: it appears complete or not at all.",
    )
    b.add_argument("corpus", metavar="CORPUS", help="a BEIR folder or a corpus.jsonl")
    b.add_argument(
        "--out", required=True, metavar="DIR", help="the index folder to write, e.g. indexes/scifact"
    )
    b.add_argument(
        "--kind",
        default=",".join(DEFAULT_KINDS),
        help=f"comma-separated engines: {kinds_help()} (default: {','.join(DEFAULT_KINDS)})",
    )
    g = b.add_argument_group("sparse key tokens")
    add_sparse_options(g)
    g.add_argument(
        "--calibration", default=None, metavar="FILE", help="a PC1 calibration to apply before projection"
    )
    g.add_argument("--bits", type=int, default=8, help="bits per integer impact (default: 8)")
    g.add_argument(
        "--expansion-words",
        type=int,
        default=DEFAULT_EXPANSION_WORDS,
        help=f"bm25x: key-token words appended to each document (default: {DEFAULT_EXPANSION_WORDS})",
    )
    g.add_argument(
        "--impact-expansion",
        type=int,
        default=DEFAULT_IMPACT_EXPANSION,
        help=f"impact: expansion tokens per document (default: {DEFAULT_IMPACT_EXPANSION})",
    )
    d = b.add_argument_group("dense, Lucene and build")
    d.add_argument("--factory", default="Flat", help="FAISS index_factory string for dense (default: Flat)")
    d.add_argument(
        "--on-empty",
        choices=["error", "skip", "keep"],
        default="error",
        help="a document with empty title and text: stop with an error, skip it, or keep it with no tokens "
        "(default: error)",
    )
    d.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="embedding cache folder (default: $KEYTOK_CACHE/embeddings)",
    )
    d.add_argument("--chunk-size", type=int, default=1024, help="documents per cached chunk (default: 1024)")
    d.add_argument("--threads", type=int, default=2, help="Lucene indexing threads (default: 2)")
    _add_runner_options(b)
    d.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_options(b)
    b.set_defaults(run=run_build)

    _add_merge(isub)
    _add_update(isub)
    _add_info_and_describe(isub)


def _add_runner_options(b: argparse.ArgumentParser) -> None:
    """Where the encoding runs (here, on Ray) and which part of the corpus (``--shard``)."""
    r = b.add_argument_group("where the encoding runs")
    r.add_argument(
        "--runner",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: an actor pool of encoders on a Ray cluster (the ray extra) fills the "
        "embedding cache, then the build goes on here (default: local)",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster (auto, ray://host:10001); default: start a local one for the build",
    )
    r.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="encoder actors (default: one per GPU on a CUDA build, else one per CPU core of the cluster)",
    )
    r.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build only the I-th (0 to N-1) of N parts of the corpus, chosen by a stable hash of the doc id; "
        "the shard keeps its embeddings so that 'keytok index merge' can join the N shards into the index of "
        "the whole corpus",
    )


def _add_merge(isub: argparse._SubParsersAction) -> None:
    """``keytok index merge``."""
    m = isub.add_parser(
        "merge",
        help="merge the N shards of a corpus into one index folder",
        description="Join the N shard folders of one corpus (built with 'keytok index build --shard I/N', on one "
        "machine or several) into the index folder a single build of the whole corpus gives: the same engines "
        "and the same search results. No document is encoded again: the shards' embeddings are centred on the "
        "whole corpus's mean and projected once, and every engine is rebuilt from them (see "
        "keytok.pipeline.merge for why postings are not simply joined). The corpus is read again for the texts "
        "BM25 needs; its checksum must be the shards'.",
    )
    m.add_argument(
        "shards", metavar="SHARD", nargs="+", help="the shard folders, all N of them, in any order"
    )
    m.add_argument("--out", required=True, help="the merged index folder")
    m.add_argument(
        "--corpus",
        default=None,
        help="the corpus, if it moved from the path the shards record (checksum checked)",
    )
    m.add_argument("--model", default=None, help="the model, if it moved from the path the shards record")
    m.add_argument("--threads", type=int, default=2, help="Lucene indexing threads (default: 2)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    m.add_argument("--json", action="store_true", help="print the summary as JSON")
    m.set_defaults(run=run_merge)


_UPDATE_NOTE = (
    "The update is one atomic write of the whole folder under its write lock, as a build is: a second writer "
    "waits (--wait seconds, then is refused in one line) and then starts from what the first wrote, and a "
    "kill -9 leaves the index as it was before or after, never between. sparse and impact are updated in "
    "place, dense has vectors appended (or is rebuilt from its own vectors on delete), lucene is rebuilt from "
    "the native index's integers; an index holding bm25 or bm25x (which index the full texts) is refused."
)


def _add_update(isub: argparse._SubParsersAction) -> None:
    """``keytok index add`` and ``keytok index delete``."""
    a = isub.add_parser(
        "add",
        help="add the documents of a corpus to an index folder",
        description="Encode the documents of CORPUS with the index's own recorded model and settings (method, "
        "precision, max length, calibration, corpus mean, sparse settings) and add them to every engine of "
        "INDEX. An id already in the index is refused. " + _UPDATE_NOTE,
    )
    a.add_argument("path", metavar="INDEX", help="an index folder")
    a.add_argument("corpus", metavar="CORPUS", help="a BEIR folder or a corpus.jsonl of the new documents")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_update_options(a)
    a.set_defaults(run=run_add)

    d = isub.add_parser(
        "delete",
        help="delete documents from an index folder",
        description="Delete documents, by id, from every engine of INDEX (no model is loaded). An id that is "
        "not in the index is refused and nothing changes. " + _UPDATE_NOTE,
    )
    d.add_argument("path", metavar="INDEX", help="an index folder")
    d.add_argument("ids", metavar="ID", nargs="*", help="document ids to delete")
    d.add_argument("--ids-file", default=None, metavar="FILE", help="more ids, one per line")
    _add_update_options(d)
    d.set_defaults(run=run_delete)


def _add_update_options(p: argparse.ArgumentParser) -> None:
    """The options ``add`` and ``delete`` share."""
    from keytok.engines.lock import DEFAULT_WAIT_S

    p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to wait for another writer of the index before refusing (default: {DEFAULT_WAIT_S:g})",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="check file sizes only, not their sha256, before updating"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _print_update(summary: object, as_json: bool) -> None:
    """An :class:`~keytok.pipeline.update.UpdateSummary` as JSON or lines."""
    if as_json:
        print_json(summary.as_dict())  # type: ignore[attr-defined]
    else:
        print("\n".join(summary.lines()))  # type: ignore[attr-defined]


@cli_flags()
def run_add(args: argparse.Namespace) -> int:
    """Run ``keytok index add``: :func:`keytok.add_documents`."""
    from keytok.api import add_documents

    info(f"adding {args.corpus} to {args.path}")
    summary = add_documents(
        args.path, args.corpus, wait=args.wait, verify=not args.no_verify, progress=not args.no_progress
    )
    _print_update(summary, args.json)
    return 0


@cli_flags()
def run_delete(args: argparse.Namespace) -> int:
    """Run ``keytok index delete``: :func:`keytok.delete_documents`."""
    from keytok.api import delete_documents
    from keytok.errors import KeytokError
    from keytok.pipeline.update import read_ids_file

    ids = list(args.ids) + (read_ids_file(args.ids_file) if args.ids_file else [])
    if not ids:
        raise KeytokError("give the ids to delete (ID ... or --ids-file FILE)")
    summary = delete_documents(args.path, ids, wait=args.wait, verify=not args.no_verify)
    _print_update(summary, args.json)
    return 0


def _add_info_and_describe(isub: argparse._SubParsersAction) -> None:
    """``keytok index info`` and ``keytok index describe``."""
    i = isub.add_parser(
        "info",
        help="describe an index folder",
        description="Print an index folder's keytok.json and a summary of each engine's manifest.",
    )
    i.add_argument("path", metavar="INDEX", help="an index folder")
    i.add_argument(
        "--verify",
        action="store_true",
        help="rehash every file against the manifests and open every engine, checking its structure",
    )
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(run=run_info)

    s = isub.add_parser(
        "describe",
        help="summarise an index: model, method, counts, vocabulary coverage, size",
        description="Print an index's model, method, precision, document counts, vocabulary coverage (the share "
        "of the vocabulary that occurs in the documents' key tokens), average key tokens per document and size "
        "on disk. INDEX is a keytok index folder or a native sparse index folder.",
    )
    s.add_argument("path", metavar="INDEX", help="an index folder")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(run=run_describe)


@cli_flags()
def run_build(args: argparse.Namespace) -> int:
    from keytok.api import build_index
    from keytok.errors import KeytokError
    from keytok.pipeline.build import build_config

    # The settings are checked by the config they make, before the model loads (errors name the flags).
    flags = {
        "K": "-K",
        "M": "-M",
        "kinds": "--kind",
        "chunk_size": "--chunk-size",
        "expansion_words": "--expansion-words",
    }
    with cli_flags(**flags, impact_expansion="--impact-expansion", shard="--shard", on_empty="--on-empty"):
        config = build_config(
            kinds=args.kind,
            shard=args.shard,
            sparse=sparse_config_from_args(args),
            factory=args.factory,
            bits=args.bits,
            expansion_words=args.expansion_words,
            impact_expansion=args.impact_expansion,
            on_empty=args.on_empty,
            chunk_size=args.chunk_size,
            threads=args.threads,
        )
    kinds = list(config.kinds)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise KeytokError(f"index {out} already exists (use --overwrite to replace it)")
    # Validate the input before loading the model: a bad line should fail in a second, not after 20. A BEIR
    # folder is checked whole (queries and qrels too): they are what the index will be evaluated on.
    from keytok.data.beir import check_beir

    whole_folder = Path(args.corpus).is_dir()
    check_beir(
        args.corpus,
        on_empty=args.on_empty,
        queries=None if whole_folder else False,
        splits=None if whole_folder else [],
    )
    if args.calibration:  # a bad calibration file, too, should fail before the model loads
        from keytok.representations.calibration import Calibration

        Calibration.load(args.calibration)
    model = model_from_args(args)
    encoder = model.encoder
    info(
        f"building {out} ({', '.join(kinds)}) with {encoder.model.name} / {encoder.method.describe()}, "
        f"{encoder.precision.describe()}"
    )
    retriever = build_index(
        args.corpus,
        out,
        model=model,
        kinds=kinds,
        sparse=config.sparse,
        calibration=args.calibration,
        factory=config.factory,
        bits=config.bits,
        expansion_words=config.expansion_words,
        impact_expansion=config.impact_expansion,
        on_empty=config.on_empty,
        cache=args.cache,
        chunk_size=config.chunk_size,
        threads=config.threads,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        runner=args.runner,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        shard=config.shard,
    )
    summary = retriever.summary
    retriever.close()
    if args.json:
        print_json(summary.as_dict())
    else:
        print("\n".join(summary.lines()))
    return 0


@cli_flags()
def run_merge(args: argparse.Namespace) -> int:
    from keytok.api import merge_indexes

    info(f"merging {len(args.shards)} shards into {args.out}")
    with merge_indexes(
        args.shards,
        args.out,
        corpus=args.corpus,
        model=args.model,
        threads=args.threads,
        overwrite=args.overwrite,
    ) as retriever:
        summary = retriever.summary
    if args.json:
        print_json(summary.as_dict())
    else:
        print("\n".join(summary.lines()))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from keytok.engines.manifest import Manifest
    from keytok.pipeline.folder import read_info

    meta = read_info(args.path, verify=args.verify)
    manifests = {}
    for kind in meta["kinds"]:
        m = Manifest.load(Path(args.path) / kind, verify=args.verify)
        manifests[kind] = {
            "kind": m.kind,
            "created": m.created,
            "counts": m.counts,
            "params": m.params,
            "files": len(m.files),
            "bytes": sum(f.bytes for f in m.files.values()),
        }
    if args.verify:
        _check_structure(Path(args.path))
    if args.json:
        print_json({"index": meta, "engines": manifests})
        return 0
    from keytok.models.methods import EmbeddingMethod
    from keytok.pipeline.kinds import VECTOR_SETTINGS

    s = meta[VECTOR_SETTINGS]
    print(f"index {args.path} (keytok {meta['keytok_version']}, created {meta['created']})")
    print(f"  model      {meta['model']} (sha256 {meta['model_sha256'][:12]}…), {meta['precision']}")
    print(
        f"  method     {EmbeddingMethod.from_key(meta['method']).describe()}, max length {meta['max_length']}"
    )
    print(
        f"  corpus     {meta['corpus']['path']} (sha256 {meta['corpus']['checksum'][:12]}…), "
        f"{meta['docs']:,} docs, {meta['empty_docs']} empty"
    )
    cal = meta["calibration_sha256"]
    print(
        f"  sparse     K={s['K']} transform={s['transform']} center={s['center']} M={s['M']} "
        f"expansion_weight={s['expansion_weight']} query_mode={s['query_mode']} "
        f"calibration={cal[:12] + '…' if cal else 'none'}"
    )
    for kind, m in manifests.items():
        counts = ", ".join(f"{k} {v:,}" for k, v in m["counts"].items())
        print(f"  {kind:<10} {m['bytes'] / 2**20:8.2f} MiB in {m['files']} files; {counts}")
    if args.verify:
        print("  verified: every file matches its manifest, and every engine's structure checks out")
    return 0


def _check_structure(path: Path) -> None:
    """Open every engine of ``path`` and read its files as a search would: a re-sealed file (hashes
    rewritten to match) passes the sha256 check but not the engines' own structural checks."""
    from keytok.pipeline.searcher import Searcher

    searcher = Searcher(path, verify=False)  # just rehashed by read_info and the manifests
    try:
        searcher.check()
    finally:
        searcher.close()


def run_describe(args: argparse.Namespace) -> int:
    """Run ``keytok index describe``: :func:`keytok.pipeline.describe.describe_index`, as text or JSON."""
    from keytok.pipeline.describe import describe_index, describe_lines

    d = describe_index(args.path)
    if args.json:
        print_json(d)
    else:
        print("\n".join(describe_lines(d)))
    return 0
