"""``keytok bench``: dense vs sparse retrieval benchmark on a BEIR folder."""

from __future__ import annotations

import argparse

from keytok.cli.common import add_model_options, info, method_from_args
from keytok.engines.fusion import DEFAULT_FUSION, FUSIONS
from keytok.pipeline.kinds import KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark dense, sparse, Lucene, BM25 and hybrid retrieval on a BEIR folder",
        description="Build (or reuse, via the embedding cache) the indexes of a BEIR collection and run dense "
        "(FAISS), sparse native (LLM-free and expanded queries), Lucene impact, BM25 and a dense+sparse hybrid on "
        "its qrels: nDCG@10, Recall@100, MRR@10, latency p50/p95, QPS, model cost, index size. Every row runs through "
        "the search that 'keytok search' runs, and its spec in results.json is the --system (with its --fusion and "
        "--weight settings) that reproduces its run. Writes report.md, results.json and quality_vs_latency.png to "
        "--out and prints the table.",
    )
    p.add_argument("corpus", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--out", default="results/bench", help="report folder (default: results/bench)")
    p.add_argument("--index", default=None, help="index folder to build or reuse (default: OUT/index)")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"engines to build and run (default: all {len(KINDS)})",
    )
    p.add_argument("--calibration", default=None, metavar="FILE", help="a fitted PC1 adjustment")
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=None,
        help=f"fusion of the fused rows (default: the index's, {DEFAULT_FUSION})",
    )
    p.add_argument("--depth", type=int, default=100, help="hits per query (default: 100)")
    p.add_argument(
        "--ann",
        default="HNSW32",
        metavar="FACTORY",
        help="an approximate FAISS index (factory string, e.g. HNSW32, IVF64,Flat) benchmarked against the exact "
        "dense index, with its recall@10; 'none' to skip (default: HNSW32)",
    )
    p.add_argument(
        "-K", "--k-doc", type=int, default=None, help="key tokens per document (default: the index's)"
    )
    p.add_argument("--m-query", type=int, default=None, help="expansion tokens per query")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keytok.data.beir import check_beir
    from keytok.evaluation.bench import format_table, run_bench

    # Every part the bench reads (corpus, queries, qrels) is checked before the model loads.
    check_beir(args.corpus, queries=True, on_empty="keep")

    build_options = {}
    if args.k_doc:
        build_options["k_doc"] = args.k_doc
    if args.m_query:
        build_options["m_query"] = args.m_query
    if args.batch_tokens:
        info("note: --batch-tokens is not used by bench")
    result = run_bench(
        args.corpus,
        args.out,
        model=args.model,
        method=method_from_args(args),
        head=args.head,
        dtype=args.dtype,
        backend=args.backend,  # documents and queries: the queries as keytok search --model-backend runs them
        device=args.device,
        max_length=args.max_length,
        calibration=args.calibration,
        index=args.index,
        kinds=args.kinds,  # checked by the bench's build config
        split=args.split,
        depth=args.depth,
        fusion=args.fusion,
        ann=None if args.ann.lower() == "none" else args.ann,
        build_options=build_options,
    )
    print(format_table(result.rows))
    info(f"report: {args.out}/report.md")
    return 0
