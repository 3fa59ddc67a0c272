"""``keytok search``: query an index folder, one query on the terminal or a query set into a TREC run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keytok.cli.common import info, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from keytok.encoding.backends import BACKENDS
    from keytok.encoding.precision import DTYPE_CHOICES
    from keytok.engines.fusion import DEFAULT_FUSION, FUSIONS
    from keytok.pipeline.kinds import DEFAULT_SYSTEM, KINDS, SYSTEM_ALIASES
    from keytok.representations.sparse import QUERY_MODES

    p = sub.add_parser(
        "search",
        help="search an index folder",
        description="Search an index folder built by 'keytok index build'. With a QUERY: print the top hits with "
        "title, score and what matched (key tokens, or BM25's analysed terms), each with its contribution to the score; a fused system (--system bm25+keytok) also shows each engine's share. With --queries "
        "and --run: search a query set and write a TREC run file (qid Q0 docid rank score tag).",
    )
    p.add_argument("index", metavar="INDEX", help="an index folder (indexes/NAME)")
    p.add_argument("query", nargs="?", default=None, metavar="QUERY", help="the query text (quote it)")
    p.add_argument("-k", type=int, default=10, help="hits per query (default: 10)")
    p.add_argument(
        "--system",
        "--backend",
        dest="backend",
        default=DEFAULT_SYSTEM,
        metavar="SYSTEM",
        help=f"an engine ({', '.join(KINDS)}), or engines joined by + and fused per query "
        "(e.g. bm25+sparse:feedback; engine:mode sets a sparse engine's query mode); "
        f"{', '.join(SYSTEM_ALIASES)}: the fusions keytok recommends (default: {DEFAULT_SYSTEM})",
    )
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=None,
        help=f"how a fused system combines its runs (default: the index's record, else {DEFAULT_FUSION})",
    )
    p.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="PART=W",
        help="fusion weight of one part, e.g. --weight sparse:expanded=0.5 (repeatable)",
    )
    p.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=None,
        help="sparse queries: expanded (own tokens + top-M key tokens, runs the model), llm-free (own tokens "
        "only) or feedback (own tokens + the key tokens of the top BM25 documents, no model); default: the one "
        "recorded in the index",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--queries", default=None, metavar="FILE", help="a queries.jsonl or a BEIR folder")
    p.add_argument(
        "--run", dest="run_file", default=None, metavar="OUT", help="write a TREC run file (with --queries)"
    )
    p.add_argument(
        "--qrels-split",
        default=None,
        metavar="SPLIT",
        help="keep only the queries judged in this qrels split (qrels/SPLIT.tsv beside the queries)",
    )
    p.add_argument("--tag", default="keytok", help="run tag, the 6th column (default: keytok)")
    p.add_argument(
        "--model", default=None, help="load the query model from here instead of the index's record"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="query encoder precision (default: the one the index was built with)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--model-backend",
        default="auto",
        choices=BACKENDS,
        help="where the query model runs: torch, or its exported graph in ONNX Runtime (onnx, onnx-int8). "
        "auto (default) is torch here: one command encodes its queries in one call, where the graph is no "
        "faster and opening it takes seconds; keytok serve and the Python API run queries one at a time in "
        "the graph where 'keytok models prepare' exported it",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rehash (sha256) every file of the index against its manifests before searching, as "
        "keytok.Retriever.open does (default); --no-verify checks their sizes only, for a large index "
        "(hashing reads every byte: about 1 s per GB). Each engine's structure is checked either way",
    )
    p.set_defaults(run=run)


def _load_query_set(args: argparse.Namespace) -> dict[str, str]:
    from keytok.data.beir import check_beir, load_qrels, load_queries
    from keytok.errors import KeytokError

    src = Path(args.queries)
    folder = src if src.is_dir() else src.parent
    queries = load_queries(args.queries)
    if src.is_dir():
        # A BEIR folder: its qrels are checked too, before the index and its model are opened.
        check_beir(
            folder, corpus=False, queries=False, splits=None if not args.qrels_split else [args.qrels_split]
        )
    if args.qrels_split:
        qrels = load_qrels(folder, args.qrels_split)
        queries = {q: t for q, t in queries.items() if q in qrels}
        if not queries:
            raise KeytokError(f"{args.queries}: no query is judged in qrels split '{args.qrels_split}'")
    return queries


def run(args: argparse.Namespace) -> int:
    from keytok.api import Retriever
    from keytok.errors import KeytokError
    from keytok.pipeline.searcher import write_trec_run

    if args.k < 1:
        raise KeytokError(f"-k must be at least 1, got {args.k}")
    if (args.query is None) == (args.queries is None):
        raise KeytokError("give either a QUERY or --queries FILE")
    if args.queries is not None and args.run_file is None and not args.json:
        raise KeytokError("--queries needs --run OUT (or --json)")
    if args.query is not None and args.run_file is not None:
        raise KeytokError("--run takes --queries, not a single QUERY")
    if args.query is not None:
        from keytok.data.contract import check_text

        if not args.query.strip():
            raise KeytokError("the query is empty")
        check_text(args.query, "the query", "the command line")
    weights = {}
    for item in args.weight:
        part, _, value = item.partition("=")
        try:
            weights[part.strip()] = float(value)
        except ValueError:
            raise KeytokError(f"--weight {item!r}: expected PART=NUMBER, e.g. sparse:expanded=0.5") from None
    queries = _load_query_set(args) if args.queries is not None else None
    searcher = Retriever.open(
        args.index,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        verify=args.verify,
        # One process, one batch of queries: opening the graph's session (2-4 s) costs more than it saves.
        # The graph pays in processes that answer queries one at a time (keytok serve, the Python API).
        backend="torch" if args.model_backend == "auto" else args.model_backend,
    )
    fused = {"fusion": args.fusion, "weights": weights or None}
    try:
        if args.query is not None:
            hits = searcher.search(
                args.query, k=args.k, system=args.backend, query_mode=args.query_mode, **fused
            )
            if args.json:
                print_json(
                    {"query": args.query, "backend": args.backend, "hits": [h.as_dict() for h in hits]}
                )
            else:
                _print_hits(args.query, hits)
            return 0
        assert queries is not None
        info(f"searching {len(queries)} queries ({args.backend})")
        results = searcher.search_batch(
            queries, k=args.k, system=args.backend, query_mode=args.query_mode, **fused
        )
        if args.run_file:
            write_trec_run(args.run_file, results, tag=args.tag)
            info(
                f"wrote {sum(len(h) for h in results.values())} lines for {len(results)} queries to {args.run_file}"
            )
        if args.json:
            print_json({q: [h.as_dict() for h in hits] for q, hits in results.items()})
        return 0
    finally:
        searcher.close()


def _print_hits(query: str, hits: list) -> None:
    out = sys.stdout
    out.write(f"query: {query}\n")
    if not hits:
        out.write("no document matched\n")
        return
    for h in hits:
        label = h.title or h.snippet
        if len(label) > 100:
            label = label[:99] + "…"
        out.write(f"{h.rank:>3}. {h.doc_id:<12} {h.score:10.4f}  {label}\n")
        if h.sources:
            out.write("     from: " + ", ".join(f"{p} {v:.3f}" for p, v in h.sources.items()) + "\n")
        if h.matched:
            shown = ", ".join(f"{t} {c:.3f}" for t, c in h.matched[:10])
            more = f" (+{len(h.matched) - 10} more)" if len(h.matched) > 10 else ""
            out.write(f"     matched: {shown}{more}\n")
