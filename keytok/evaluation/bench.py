"""``keytok bench``: dense vs sparse retrieval on a BEIR collection, in one run on the same embeddings.

Rows (each on the test qrels, self-retrieval removed):

==============================  ==============================================================
dense                           FAISS index of the pooled embeddings (cosine)
sparse (llm-free)               native key-token index; queries = own tokens x idf, no model run
sparse (expanded)               native key-token index; queries = own tokens + top-M key tokens
lucene impact                   Lucene impact index of the same integer vectors, expanded queries
bm25 (lucene)                   Anserini BM25 over the raw text, the lexical baseline
bm25x (lucene)                  BM25 over the text + its top key tokens as words (doc expansion)
impact (llm-free / expanded)    model-weighted terms: own tokens re-weighted by the LM head
A+B (fusion)                    per-query fusion of the runs named (:mod:`keytok.indexes.fusion`)
==============================  ==============================================================

Latency is measured per query, single-threaded search, and split into the model's part (one query
encoded alone, measured on a sample) and the index's part (every query). One model pass serves both
the dense query and the expanded sparse query, so the hybrid pays the model once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keytok.errors import KeytokError
from keytok.evaluation.metrics import DEFAULT_MEASURES, Latency, evaluate, model_flops, non_embedding_params
from keytok.indexes.fusion import fuse
from keytok.utils.atomic import atomic_write_text

# Fused rows of the report: (row name, the runs it fuses). Runs are named as the parts of a system
# (``Searcher.resolve_system``): an engine, with its query mode for the sparse ones; each run's fusion
# weight is that part's (DEFAULT_FUSION_WEIGHTS or the index's record).
HYBRID_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dense+sparse", ("dense", "sparse:expanded")),
    ("bm25+sparse llm-free", ("bm25", "sparse:llm-free")),
    ("bm25+keytok-free = bm25+sparse feedback", ("bm25", "sparse:feedback")),
    ("bm25+keytok = bm25+sparse", ("bm25", "sparse:expanded")),
    ("bm25+sparse feedback+sparse", ("bm25", "sparse:feedback", "sparse:expanded")),
    ("bm25+dense", ("bm25", "dense")),
    ("bm25+sparse+dense", ("bm25", "sparse:expanded", "dense")),
    ("bm25+impact", ("bm25", "impact:llm-free")),
    ("bm25x+sparse", ("bm25x", "sparse:expanded")),
)


@dataclass
class BenchRow:
    """One system's figures."""

    system: str
    quality: dict[str, float]
    search: Latency
    encode_ms: float  # model time per query (0 for systems without a model at query time)
    index_bytes: int
    gflops_per_query: float
    notes: str = ""

    @property
    def end_to_end_p50_ms(self) -> float:
        return self.search.p50_ms + self.encode_ms

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["end_to_end_p50_ms"] = self.end_to_end_p50_ms
        return d


@dataclass
class BenchResult:
    """All rows plus the run's context (model, method, precision, encoding cost, commands)."""

    rows: list[BenchRow]
    context: dict[str, Any] = field(default_factory=dict)


def _single_thread() -> Any:
    """Search single-threaded (BLAS, OpenMP and FAISS), as the latency columns promise."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    return threadpool_limits(1)


def _timed_search(
    queries: Mapping[str, Any], search: Callable[[Any], list[tuple[str, float]]]
) -> tuple[dict, list]:
    run, seconds = {}, []
    # One untimed search first: the first call pays one-off costs (numba compiling the native kernel,
    # the JVM's JIT, FAISS allocations) that would otherwise dominate the mean and so the QPS column.
    for q in list(queries.values())[:1]:
        search(q)
    for qid, q in queries.items():
        t0 = time.perf_counter()
        hits = search(q)
        seconds.append(time.perf_counter() - t0)
        run[qid] = {d: float(s) for d, s in hits}
    return run, seconds


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_bench(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "smollm2-135m",
    method: str = "prompteol",
    dtype: str = "auto",
    device: str | None = None,
    max_length: int = 512,
    calibration: str | None = None,
    index: str | os.PathLike[str] | None = None,
    kinds: tuple[str, ...] = ("sparse", "dense", "lucene", "bm25", "bm25x", "impact"),
    split: str = "test",
    depth: int = 100,
    fusion: str | None = None,
    encode_sample: int = 30,
    build_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Build (or reuse) the index of ``corpus``, run every system on its ``split`` queries, and write the report.

    ``index``: an index folder to reuse or to build (default ``OUT/index``); an index whose corpus, model
    or method differ is rebuilt. Embeddings come from the embedding cache, so a rerun costs the queries only.
    """
    from keytok.data.beir import load_qrels, load_queries, resolve_beir
    from keytok.indexes.build import build_index, read_info
    from keytok.indexes.searcher import Searcher

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = resolve_beir(corpus)
    qrels = load_qrels(paths.root, split)
    all_queries = load_queries(paths.root)
    queries = {q: all_queries[q] for q in qrels if q in all_queries}
    if not queries:
        raise KeytokError(f"{paths.root}: no queries of the {split} qrels are in queries.jsonl")
    index_path = Path(index) if index else out / "index"
    started = time.perf_counter()
    summary = build_index(
        paths.root,
        index_path,
        model=model,
        method=method,
        dtype=dtype,
        device=device,
        max_length=max_length,
        kinds=kinds,
        calibration=calibration,
        on_empty="keep",
        overwrite=True,
        progress=progress,
        **dict(build_options or {}),
    )
    build_seconds = time.perf_counter() - started
    info = read_info(index_path)
    searcher = Searcher(index_path, dtype=dtype, device=device)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    rows: list[BenchRow] = []
    context: dict[str, Any] = {
        "corpus": str(paths.root),
        "split": split,
        "queries": len(qids),
        "model": model,
        # The method as built (a preset's name, or the method a checkpoint recorded when none was given).
        "method": info.get("method_name") or method,
        "build_seconds": round(build_seconds, 1),
        "build": summary.as_dict(),
        "index": str(index_path),
    }

    needs_model = {"dense", "sparse", "lucene", "impact"} & set(kinds)
    enc = searcher.encoder if needs_model else None
    emb = None
    encode_ms = 0.0
    gflops_dense = gflops_expanded = 0.0
    if enc is not None:
        from keytok.encoding.cache import EmbeddingCache

        # Query embeddings go through the embedding cache too (keyed by model, method, precision and the
        # queries' ids and texts), so a rerun runs the model only for the per-query latency sample.
        cache = EmbeddingCache()
        t0 = time.perf_counter()
        emb = cache.encode_corpus(enc, qids, texts, progress=progress)
        batch_seconds = time.perf_counter() - t0
        query_report = cache.last_report
        sample = texts[: max(1, encode_sample)]
        per_query = []
        for t in sample:  # latency of a query arriving alone
            t1 = time.perf_counter()
            enc.encode([t], show_progress=False)
            per_query.append(time.perf_counter() - t1)
        encode_ms = float(np.median(per_query) * 1000)
        params = non_embedding_params(enc.model.model)
        tokens = np.mean([len(x) for x in enc.tokenize(texts).ids])
        gflops_dense = model_flops(params, tokens) / 1e9
        gflops_expanded = model_flops(params, tokens, enc.model.hidden_size, enc.vocab_size) / 1e9
        context |= {
            "precision": enc.precision.describe(),
            "query_encode_batch_seconds": round(batch_seconds, 2),
            "query_embeddings_from_cache": query_report.computed == 0,
            "query_encode_ms_alone_p50": round(encode_ms, 1),
            "non_embedding_params": params,
        }
    context["corpus_encoding"] = info.get("encoding", {})
    k = depth + 1  # one spare for a removed self-hit

    runs: dict[str, dict] = {}
    run_rows: dict[str, BenchRow] = {}

    def add(name: str, row: BenchRow, run: dict) -> None:
        runs[name] = run
        run_rows[name] = row
        rows.append(row)

    with _single_thread():
        if "dense" in kinds:
            eng = searcher.engine("dense")
            run, secs = _timed_search(dict(zip(qids, emb, strict=True)), lambda v, e=eng: e.search(v, k))
            add(
                "dense",
                BenchRow(
                    "dense (FAISS " + str(info.get("dense", {}).get("factory", "Flat")) + ")",
                    evaluate(run, qrels),
                    Latency.from_seconds(secs),
                    encode_ms,
                    _bytes(index_path / "dense"),
                    gflops_dense,
                ),
                run,
            )
        for engine in ("sparse", "impact"):
            if engine not in kinds:
                continue
            eng = searcher.engine(engine)
            label = "sparse native" if engine == "sparse" else "impact (model-weighted terms)"
            modes = ["llm-free", "expanded"] + (["feedback"] if "bm25" in kinds else [])
            for mode in modes:
                qv = searcher.query_vectors(
                    texts, mode, embeddings=emb if mode == "expanded" else None, backend=engine
                )
                run, secs = _timed_search(
                    {q: qv[i] for i, q in enumerate(qids)}, lambda v, e=eng: e.search(v, k)
                )
                if mode == "feedback":
                    # the first pass (BM25, top feedback_docs) is part of every feedback query's cost
                    t0 = time.perf_counter()
                    searcher.feedback_vectors(texts, engine)
                    secs = [x + (time.perf_counter() - t0) / len(qids) for x in secs]
                add(
                    f"{engine}:{mode}",
                    BenchRow(
                        f"{label}, {mode} queries" + (" (BM25 first pass)" if mode == "feedback" else ""),
                        evaluate(run, qrels),
                        Latency.from_seconds(secs),
                        encode_ms if mode == "expanded" else 0.0,
                        _bytes(index_path / engine),
                        gflops_expanded if mode == "expanded" else 0.0,
                        "no model at query time" if mode != "expanded" else "",
                    ),
                    run,
                )
        if "lucene" in kinds:
            eng = searcher.engine("lucene")
            qv_exp = searcher.query_vectors(texts, "expanded", embeddings=emb)
            doc_scale = float(eng.meta.get("scale", 1.0))
            int_queries = {q: Searcher._int_query(qv_exp[i]) for i, q in enumerate(qids)}
            eng.search(int_queries[qids[0]][0], k)  # JIT warm-up
            run, secs = _timed_search(
                int_queries, lambda qs: [(d, s * qs[1] * doc_scale) for d, s in eng.search(qs[0], k)]
            )
            add(
                "lucene",
                BenchRow(
                    "lucene impact, expanded queries",
                    evaluate(run, qrels),
                    Latency.from_seconds(secs),
                    encode_ms,
                    _bytes(index_path / "lucene"),
                    gflops_expanded,
                ),
                run,
            )
        for engine in ("bm25", "bm25x"):
            if engine not in kinds:
                continue
            eng = searcher.engine(engine)
            eng.search(texts[0], k)
            run, secs = _timed_search(dict(zip(qids, texts, strict=True)), lambda t, e=eng: e.search(t, k))
            note = "k1=0.9, b=0.4" + (
                f"; text + top {info.get('bm25x', {}).get('expansion_words', '?')} key-token words"
                if engine == "bm25x"
                else ""
            )
            add(
                engine,
                BenchRow(
                    f"{engine} (lucene)",
                    evaluate(run, qrels),
                    Latency.from_seconds(secs),
                    0.0,
                    _bytes(index_path / engine),
                    0.0,
                    note,
                ),
                run,
            )
    method, _ = searcher.fusion_settings([], fusion)
    for name, parts in HYBRID_ROWS:
        if not all(p in runs for p in parts):
            continue
        _, weights = searcher.fusion_settings(parts, method)
        t0 = time.perf_counter()
        hybrid = fuse([runs[p] for p in parts], method, weights, depth=depth)
        fuse_s = (time.perf_counter() - t0) / len(qids)
        comps = [run_rows[p] for p in parts]
        lat = Latency.from_seconds([sum(c.search.mean_ms for c in comps) / 1000 + fuse_s] * len(qids))
        rows.append(
            BenchRow(
                f"{name} ({method}, weights {'/'.join(f'{w:g}' for w in weights)})",
                evaluate(hybrid, qrels),
                lat,
                max(c.encode_ms for c in comps),
                sum(c.index_bytes for c in comps),
                max(c.gflops_per_query for c in comps),
                "latency = sum of the searches' means; one model pass serves every part",
            )
        )
    searcher.close()
    result = BenchResult(rows, context)
    write_report(result, out)
    return result


def format_table(rows: list[BenchRow]) -> str:
    head = (
        "| system | nDCG@10 | Recall@100 | MRR@10 | search p50 ms | search p95 ms | search QPS | "
        "model ms/query | end-to-end p50 ms | index MiB | model GFLOPs/query |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        q = r.quality
        lines.append(
            f"| {r.system} | {q[DEFAULT_MEASURES[0]]:.4f} | {q[DEFAULT_MEASURES[1]]:.4f} | {q[DEFAULT_MEASURES[2]]:.4f} "
            f"| {r.search.p50_ms:.2f} | {r.search.p95_ms:.2f} | {r.search.qps:,.0f} | {r.encode_ms:.1f} "
            f"| {r.end_to_end_p50_ms:.1f} | {r.index_bytes / 2**20:.2f} | {r.gflops_per_query:.2f} |"
        )
    return "\n".join(lines)


def write_report(result: BenchResult, out: Path) -> None:
    """report.md, results.json and quality_vs_latency.png in ``out`` (each written atomically)."""
    ctx = result.context
    table = format_table(result.rows)
    dense = next((r for r in result.rows if r.system.startswith("dense")), None)
    bm25 = next((r for r in result.rows if r.system.startswith("bm25 (")), None)
    ratios = []
    if dense is not None and dense.quality["nDCG@10"] > 0:
        for r in result.rows:
            if r.system.startswith(("sparse", "lucene", "impact")):
                ratios.append(
                    f"- {r.system}: {r.quality['nDCG@10'] / dense.quality['nDCG@10']:.2f} × dense nDCG@10"
                )
    if bm25 is not None and bm25.quality["nDCG@10"] > 0:
        for r in result.rows:
            if r.system.startswith("bm25") and r is not bm25:
                ratios.append(
                    f"- {r.system}: {r.quality['nDCG@10'] / bm25.quality['nDCG@10']:.3f} × BM25 nDCG@10"
                )
    md = [
        f"# keytok bench: {Path(ctx['corpus']).name} ({ctx['split']}, {ctx['queries']} queries)",
        "",
        f"Model {ctx['model']}, method {ctx['method']}, {ctx.get('precision', '')}. "
        f"Index built in {ctx['build_seconds']} s (embeddings from the cache when present).",
        "",
        table,
        "",
        "Search latency: one query at a time, single thread. Model ms/query: one query encoded alone (median).",
        "",
        *ratios,
        "",
        "![quality against latency](quality_vs_latency.png)",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(md))
    payload = {"context": ctx, "rows": [r.as_dict() for r in result.rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    _plot(result.rows, out / "quality_vs_latency.png", f"{Path(ctx['corpus']).name}: {ctx['model']}")


def _plot(rows: list[BenchRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keytok.utils.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        x = max(r.end_to_end_p50_ms, 1e-3)
        ax.scatter([x], [r.quality["nDCG@10"]], s=40)
        ax.annotate(
            r.system, (x, r.quality["nDCG@10"]), textcoords="offset points", xytext=(5, 3), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency per query, p50 (ms, log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
