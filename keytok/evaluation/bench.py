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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from keytok.errors import KeytokError
from keytok.evaluation.metrics import DEFAULT_MEASURES, Latency, evaluate, model_flops, non_embedding_params
from keytok.indexes.build import BuildConfig, build_config, build_index
from keytok.indexes.engine import folder_bytes
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


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run measures: the index it builds (a :class:`~keytok.indexes.build.BuildConfig`: model,
    method, precision, kinds, sparse settings, ...), the qrels ``split``, the run ``depth`` (hits per query),
    the ``fusion`` of the fused rows (default: the index's) and how many queries are encoded alone to time
    the model (``encode_sample``). ``ann``: an approximate FAISS index (a factory string; None: none) built
    from the exact one's vectors, whose row gives its recall@10 against the exact search."""

    build: BuildConfig = field(default_factory=lambda: BuildConfig(on_empty="keep"))
    split: str = "test"
    depth: int = 100
    fusion: str | None = None
    encode_sample: int = 30
    ann: str | None = "HNSW32"


_BENCH_FIELDS = ("split", "depth", "fusion", "encode_sample", "ann")


def bench_config(config: BenchConfig | None = None, **settings: Any) -> BenchConfig:
    """``config`` with keyword ``settings`` replacing its fields; build settings (``model``, ``kinds``,
    ``k_doc``, ...) may be given flat, or as ``build_options`` (a dict), and go into ``config.build``."""
    base = config if config is not None else BenchConfig()
    own = {k: settings.pop(k) for k in list(settings) if k in _BENCH_FIELDS}
    settings |= dict(settings.pop("build_options", None) or {})
    build = build_config(base.build, **settings) if settings else base.build
    return replace(base, build=build, **own)


@dataclass
class _Bench:
    """One bench run in progress: the opened index, the queries, the runs measured so far."""

    searcher: Any
    info: dict[str, Any]
    index_path: Path
    qrels: Any
    qids: list[str]
    texts: list[str]
    config: BenchConfig
    emb: np.ndarray | None = None
    encode_ms: float = 0.0
    gflops_dense: float = 0.0
    gflops_expanded: float = 0.0
    runs: dict[str, dict] = field(default_factory=dict)
    run_rows: dict[str, BenchRow] = field(default_factory=dict)
    rows: list[BenchRow] = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.config.depth + 1  # one spare for a removed self-hit

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.config.build.kinds

    def add(self, name: str, system: str, run: dict, seconds: list[float], **figures: Any) -> None:
        """Evaluate ``run`` and keep it as row ``system`` (``name``: how fused rows refer to it)."""
        engine = name.partition(":")[0]
        row = BenchRow(
            system,
            evaluate(run, self.qrels),
            Latency.from_seconds(seconds),
            figures.pop("encode_ms", 0.0),
            figures.pop("index_bytes", None) or folder_bytes(self.index_path / engine),
            figures.pop("gflops", 0.0),
            figures.pop("notes", ""),
        )
        self.runs[name], self.run_rows[name] = run, row
        self.rows.append(row)


def run_bench(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: BenchConfig | None = None,
    *,
    index: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **settings: Any,
) -> BenchResult:
    """Build (or reuse) the index of ``corpus``, run every system on its ``split`` queries, and write the report.

    ``config``: a :class:`BenchConfig`; its fields and the build's (``model``, ``kinds``, ``k_doc``, ...) may
    also be given as keywords. ``index``: an index folder to reuse or to build (default ``OUT/index``); an
    index whose corpus, model or method differ is rebuilt. Embeddings come from the embedding cache, so a
    rerun costs the queries only.
    """
    from keytok.indexes.searcher import Searcher

    cfg = bench_config(config, **settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root, qrels, queries = _load_queries(corpus, cfg.split)
    index_path = Path(index) if index else out / "index"
    started = time.perf_counter()
    summary = build_index(root, index_path, cfg.build, overwrite=True, progress=progress)
    build_seconds = time.perf_counter() - started
    b = cfg.build
    searcher = Searcher(index_path, dtype=b.dtype, device=b.device)
    bench = _Bench(searcher, searcher.info, index_path, qrels, list(queries), list(queries.values()), cfg)
    context: dict[str, Any] = {
        "corpus": str(root),
        "split": cfg.split,
        "queries": len(bench.qids),
        "model": b.model,
        # The method as built (a preset's name, or the method a checkpoint recorded when none was given).
        "method": bench.info.get("method_name") or b.method,
        "build_seconds": round(build_seconds, 1),
        "build": summary.as_dict(),
        "index": str(index_path),
    }
    context |= _encode_queries(bench, progress)
    context["corpus_encoding"] = bench.info.get("encoding", {})
    with _single_thread():
        for step in (_dense_rows, _ann_rows, _sparse_rows, _lucene_rows, _bm25_rows):
            step(bench)
    _hybrid_rows(bench)
    searcher.close()
    result = BenchResult(bench.rows, context)
    write_report(result, out)
    return result


def _load_queries(corpus: str | os.PathLike[str], split: str) -> tuple[Path, Any, dict[str, str]]:
    from keytok.data.beir import load_qrels, load_queries, resolve_beir

    paths = resolve_beir(corpus)
    qrels = load_qrels(paths.root, split)
    all_queries = load_queries(paths.root)
    queries = {q: all_queries[q] for q in qrels if q in all_queries}
    if not queries:
        raise KeytokError(f"{paths.root}: no queries of the {split} qrels are in queries.jsonl")
    return paths.root, qrels, queries


def _encode_queries(bench: _Bench, progress: bool) -> dict[str, Any]:
    """Query embeddings (through the embedding cache), the model's time per query alone, and its FLOPs."""
    if not {"dense", "sparse", "lucene", "impact"} & set(bench.kinds):
        return {}
    from keytok.encoding.cache import EmbeddingCache

    enc, texts = bench.searcher.encoder, bench.texts
    # Query embeddings go through the embedding cache too (keyed by model, method, precision and the
    # queries' ids and texts), so a rerun runs the model only for the per-query latency sample.
    cache = EmbeddingCache()
    t0 = time.perf_counter()
    bench.emb = cache.encode_corpus(enc, bench.qids, texts, progress=progress)
    batch_seconds = time.perf_counter() - t0
    per_query = []
    for t in texts[: max(1, bench.config.encode_sample)]:  # latency of a query arriving alone
        t1 = time.perf_counter()
        enc.encode([t], show_progress=False)
        per_query.append(time.perf_counter() - t1)
    bench.encode_ms = float(np.median(per_query) * 1000)
    params = non_embedding_params(enc.model.model)
    tokens = np.mean([len(x) for x in enc.tokenize(texts).ids])
    bench.gflops_dense = model_flops(params, tokens) / 1e9
    bench.gflops_expanded = model_flops(params, tokens, enc.model.hidden_size, enc.vocab_size) / 1e9
    return {
        "precision": enc.precision.describe(),
        "query_encode_batch_seconds": round(batch_seconds, 2),
        "query_embeddings_from_cache": cache.last_report.computed == 0,
        "query_encode_ms_alone_p50": round(bench.encode_ms, 1),
        "non_embedding_params": params,
    }


def _dense_rows(bench: _Bench) -> None:
    if "dense" not in bench.kinds:
        return
    eng, k = bench.searcher.engine("dense"), bench.k
    run, secs = _timed_search(dict(zip(bench.qids, bench.emb, strict=True)), lambda v: eng.search(v, k))
    factory = str(bench.info.get("dense", {}).get("factory", "Flat"))
    bench.add(
        "dense", f"dense (FAISS {factory})", run, secs, encode_ms=bench.encode_ms, gflops=bench.gflops_dense
    )


def _ann_rows(bench: _Bench) -> None:
    """An approximate index (HNSW, IVF, ...) over the exact index's vectors: what it costs in recall@10."""
    ann = bench.config.ann
    if not ann or "dense" not in bench.kinds or "dense" not in bench.runs:
        return
    import faiss

    from keytok.indexes.dense import DenseIndex

    exact = bench.searcher.engine("dense")
    if exact.manifest.params.get("factory") != "Flat":
        return  # recall is measured against an exact search
    started = time.perf_counter()
    approx = DenseIndex.build(
        None, exact.doc_ids, exact.index.reconstruct_n(0, len(exact)), exact.meta, factory=ann,
        metric=exact.metric, normalize=exact.normalize,
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    k = bench.k
    run, secs = _timed_search(dict(zip(bench.qids, bench.emb, strict=True)), lambda v: approx.search(v, k))
    recall = ann_recall(run, bench.runs["dense"], 10)
    bench.add(
        "dense-ann", f"dense (FAISS {ann})", run, secs, encode_ms=bench.encode_ms, gflops=bench.gflops_dense,
        index_bytes=int(faiss.serialize_index(approx.index).nbytes) + len(json.dumps(exact.doc_ids)),
        notes=f"recall@10 against Flat {recall:.3f}; built in {build_seconds:.1f} s from the Flat vectors",
    )  # fmt: skip


def ann_recall(
    approx: Mapping[str, Mapping[str, float]], exact: Mapping[str, Mapping[str, float]], k: int
) -> float:
    """Mean over queries of the share of the exact top-``k`` that the approximate top-``k`` holds."""
    shares = []
    for qid, hits in exact.items():
        want = set(sorted(hits, key=lambda d: (-hits[d], d))[:k])
        if not want:
            continue
        got = approx.get(qid, {})
        shares.append(len(want & set(sorted(got, key=lambda d: (-got[d], d))[:k])) / len(want))
    return float(np.mean(shares)) if shares else 0.0


def _sparse_rows(bench: _Bench) -> None:
    """The native key-token and impact engines, with each query mode."""
    searcher, k = bench.searcher, bench.k
    for engine in ("sparse", "impact"):
        if engine not in bench.kinds:
            continue
        eng = searcher.engine(engine)
        label = "sparse native" if engine == "sparse" else "impact (model-weighted terms)"
        modes = ["llm-free", "expanded"] + (["feedback"] if "bm25" in bench.kinds else [])
        for mode in modes:
            emb = bench.emb if mode == "expanded" else None
            qv = searcher.query_vectors(bench.texts, mode, embeddings=emb, backend=engine)
            run, secs = _timed_search(
                {q: qv[i] for i, q in enumerate(bench.qids)}, lambda v, e=eng: e.search(v, k)
            )
            if mode == "feedback":
                # the first pass (BM25, top feedback_docs) is part of every feedback query's cost
                t0 = time.perf_counter()
                searcher.feedback_vectors(bench.texts, engine)
                secs = [x + (time.perf_counter() - t0) / len(bench.qids) for x in secs]
            expanded = mode == "expanded"
            bench.add(
                f"{engine}:{mode}",
                f"{label}, {mode} queries" + (" (BM25 first pass)" if mode == "feedback" else ""),
                run,
                secs,
                encode_ms=bench.encode_ms if expanded else 0.0,
                gflops=bench.gflops_expanded if expanded else 0.0,
                notes="" if expanded else "no model at query time",
            )


def _lucene_rows(bench: _Bench) -> None:
    if "lucene" not in bench.kinds:
        return
    from keytok.indexes.searcher import Searcher

    eng, k = bench.searcher.engine("lucene"), bench.k
    qv_exp = bench.searcher.query_vectors(bench.texts, "expanded", embeddings=bench.emb)
    doc_scale = float(eng.meta.get("scale", 1.0))
    int_queries = {q: Searcher._int_query(qv_exp[i]) for i, q in enumerate(bench.qids)}
    eng.search(int_queries[bench.qids[0]][0], k)  # JIT warm-up
    run, secs = _timed_search(
        int_queries, lambda qs: [(d, s * qs[1] * doc_scale) for d, s in eng.search(qs[0], k)]
    )
    bench.add(
        "lucene",
        "lucene impact, expanded queries",
        run,
        secs,
        encode_ms=bench.encode_ms,
        gflops=bench.gflops_expanded,
    )


def _bm25_rows(bench: _Bench) -> None:
    for engine in ("bm25", "bm25x"):
        if engine not in bench.kinds:
            continue
        eng, k = bench.searcher.engine(engine), bench.k
        eng.search(bench.texts[0], k)
        run, secs = _timed_search(
            dict(zip(bench.qids, bench.texts, strict=True)), lambda t, e=eng, k=k: e.search(t, k)
        )
        words = bench.info.get("bm25x", {}).get("expansion_words", "?")
        note = "k1=0.9, b=0.4" + (f"; text + top {words} key-token words" if engine == "bm25x" else "")
        bench.add(engine, f"{engine} (lucene)", run, secs, notes=note)


def _hybrid_rows(bench: _Bench) -> None:
    """Each row of :data:`HYBRID_ROWS` whose runs were measured, fused per query."""
    method, _ = bench.searcher.fusion_settings([], bench.config.fusion)
    n = len(bench.qids)
    for name, parts in HYBRID_ROWS:
        if not all(p in bench.runs for p in parts):
            continue
        _, weights = bench.searcher.fusion_settings(parts, method)
        t0 = time.perf_counter()
        hybrid = fuse([bench.runs[p] for p in parts], method, weights, depth=bench.config.depth)
        fuse_s = (time.perf_counter() - t0) / n
        comps = [bench.run_rows[p] for p in parts]
        lat = Latency.from_seconds([sum(c.search.mean_ms for c in comps) / 1000 + fuse_s] * n)
        bench.rows.append(
            BenchRow(
                f"{name} ({method}, weights {'/'.join(f'{w:g}' for w in weights)})",
                evaluate(hybrid, bench.qrels),
                lat,
                max(c.encode_ms for c in comps),
                sum(c.index_bytes for c in comps),
                max(c.gflops_per_query for c in comps),
                "latency = sum of the searches' means; one model pass serves every part",
            )
        )


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
        *[f"- {r.system}: {r.notes}" for r in result.rows if r.notes.startswith("recall@")],
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
