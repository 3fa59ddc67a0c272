"""Sharded builds merged against the index built in one go: the same top-10 on 1,000 queries?

One run on one machine: the whole corpus built once (``build_index``), then N shards (``shard=(I, N)``),
each encoding only its own documents into its own cache, then :func:`keytok.merge_indexes`. Every system of
the index searches the same 1,000 queries on the single and the merged folder, and the table counts the
queries whose top-10 lists are identical (ids and order) and the mean overlap of the two top-10 sets. The
queries are the collection's own, topped up to ``--queries`` with the queries of ``--extra-queries``
(another BEIR folder): probes of the index, not judged queries, so no qrels are used.

    python experiments/shard_merge.py ../shared/data/beir/cranfield --shards 2 --max-length 64 \
        --extra-queries ../shared/data/beir/scifact --out experiments/results/shard_merge.md
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import add_model_args, command, run_script, write_json, write_page

import keytok
from keytok.data.beir import load_queries
from keytok.engines.engine import folder_bytes
from keytok.engines.java import lucene_available

SYSTEMS = ("sparse", "sparse:llm-free", "impact", "dense", "lucene", "bm25", "bm25x", "bm25+keytok")


def _queries(folder: str, extra: str | None, n: int) -> dict[str, str]:
    queries = {f"{q}": t for q, t in load_queries(folder).items()}
    if extra and len(queries) < n:
        queries |= {f"x-{q}": t for q, t in load_queries(extra).items()}
    return dict(list(queries.items())[:n])


def _compare(single: Path, merged: Path, queries: dict[str, str], systems: list[str]) -> list[dict]:
    from keytok.pipeline.searcher import Searcher

    a, b = Searcher(single), Searcher(merged)
    rows = []
    try:
        for system in systems:
            t0 = time.perf_counter()
            ra = a.search_batch(queries, k=10, backend=system)
            rb = b.search_batch(queries, k=10, backend=system)
            la = {q: [h.doc_id for h in ra[q]] for q in queries}
            lb = {q: [h.doc_id for h in rb[q]] for q in queries}
            same = sum(la[q] == lb[q] for q in queries)
            # Two empty lists (a query of stopwords only, for BM25) agree fully.
            overlap = sum(
                len(set(la[q]) & set(lb[q])) / len(la[q]) if la[q] else float(not lb[q]) for q in queries
            ) / len(queries)
            rows.append(
                {"system": system, "equal": same, "overlap": overlap, "seconds": time.perf_counter() - t0}
            )
            print(f"{system}: {same}/{len(queries)} equal top-10, overlap {overlap:.4f}", flush=True)
    finally:
        a.close()
        b.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="a BEIR folder")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--extra-queries", default=None, help="a BEIR folder whose queries top the set up")
    ap.add_argument("--out", default="experiments/results/shard_merge.md")
    add_model_args(ap, max_length=64)
    args = ap.parse_args()

    kinds = ["sparse", "dense", "impact"] + (["lucene", "bm25", "bm25x"] if lucene_available() else [])
    systems = [s for s in SYSTEMS if s.split(":")[0].split("+")[0] in [*kinds, "bm25"]]
    queries = _queries(args.corpus, args.extra_queries, args.queries)
    # on_empty="keep": Cranfield ships two empty documents (471 and 995), and the bench keeps them too.
    settings = {
        "model": args.model, "method": args.method, "max_length": args.max_length, "kinds": kinds, "on_empty": "keep",
    }  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="keytok-shard-merge-"))
    cache = root / "cache"  # from nothing: the single build and the shards each encode their documents
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        keytok.build_index(args.corpus, root / "single", cache=cache, **settings).close()
        timings["single build"] = time.perf_counter() - t0
        shards = []
        for i in range(args.shards):
            t0 = time.perf_counter()
            out = root / f"shard{i}"
            keytok.build_index(args.corpus, out, cache=cache, shard=(i, args.shards), **settings).close()
            timings[f"shard {i}/{args.shards} build"] = time.perf_counter() - t0
            shards.append(out)
        t0 = time.perf_counter()
        keytok.merge_indexes(shards, root / "merged").close()
        timings["merge"] = time.perf_counter() - t0
        sizes = {name: folder_bytes(root / name) for name in ["single", "merged", *[s.name for s in shards]]}
        rows = _compare(root / "single", root / "merged", queries, systems)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n = len(queries)
    lines = [
        f"## Shards merged vs one build: {Path(args.corpus).name}, {args.shards} shards",
        "",
        f"Model {args.model} / {args.method}, documents at {args.max_length} tokens, engines {', '.join(kinds)}. "
        f"{n} queries ({min(n, len(load_queries(args.corpus)))} of the collection, the rest from "
        f"{args.extra_queries or 'nowhere'}); every system searched both folders, k = 10.",
        "",
        "| system | queries with equal top-10 | mean top-10 overlap |",
        "|---|---|---|",
        *[f"| {r['system']} | {r['equal']}/{n} | {r['overlap']:.4f} |" for r in rows],
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
        "Bytes on disk: "
        + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items())
        + " (a shard keeps its embeddings, float32, for the merge).",
    ]
    write_page(args.out, lines, __file__)
    write_json(
        Path(args.out).with_suffix(".json"),
        {"rows": rows, "timings": timings, "sizes": sizes, "queries": n, "kinds": kinds},
        command(__file__),
    )
    return 0


if __name__ == "__main__":
    run_script(main)
