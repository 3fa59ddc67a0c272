"""``keytok bench``: every system of one index, measured through the search that ``keytok search`` runs.

Each row is one call of :meth:`Searcher.search_batch <keytok.pipeline.searcher.Searcher.search_batch>` (what
:meth:`keytok.Retriever.search_batch` and ``keytok search --queries`` call) on the ``split`` queries, scored
as the TREC run file that search writes would be (scores to its 6 decimals; self-retrieval removed). Each
row of ``results.json`` carries ``spec``, its ``--system`` with the fusion settings spelled out, so that
``keytok search INDEX --queries CORPUS --qrels-split SPLIT -k DEPTH --system SPEC --run FILE`` writes the
run the row scored:

=================================================  =====================================================
dense (FAISS Flat)                                 ``dense``: FAISS index of the pooled embeddings
sparse native, llm-free / expanded / feedback      ``sparse:MODE``: the key-token index, each query mode
impact (model-weighted terms), each mode           ``impact:MODE``: own tokens re-weighted by the LM head
lucene impact, expanded queries                    ``lucene:expanded``: the same integer vectors in Lucene
bm25 (lucene), bm25x (lucene)                      ``bm25``, ``bm25x``: Anserini BM25 over the text (+ words)
fused rows (bm25+keytok = bm25+sparse, ...)        ``A+B --fusion F --weight A=W ...``: fused per query
=================================================  =====================================================

Latency: each query searched alone through the same call, single-threaded, after one untimed search; the
model's part is measured apart, since every row reuses the batch's query embeddings
(:meth:`Searcher.query_embeddings` remembers them), as one model pass serves every part of a fused system.
"Model ms/query" is the median over a sample of queries, each run alone through that same
:meth:`Searcher.query_embeddings` (the call ``keytok search`` makes to run the model on a query) on the bench's
searcher, warm, with the model backend a long-lived searcher picks for the bench's ``backend`` (``auto``
by default: the exported ONNX graph where it is prepared and queries run in fp32 on the CPU, as in ``keytok
serve`` and :class:`keytok.Retriever`; ``keytok search`` runs ``auto`` in torch, since one command encodes its
queries in one call); the header and ``results.json`` (``query_model``) name the backend and the precision.
Either way the hits are the same (nDCG@10 equal to 4 decimals on every Cranfield row). The LM-head top-M of expanded queries runs in the search column. An approximate
FAISS index (``ann``) is not a system ``keytok search`` can run: its recall against the exact index is
reported in the context, not as a row.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from keytok.engines.engine import batch_lists, folder_bytes
from keytok.errors import KeytokError
from keytok.evaluation.metrics import DEFAULT_MEASURES, Latency, evaluate, model_flops, non_embedding_params
from keytok.pipeline.build import BuildConfig, build_config, build_index
from keytok.pipeline.kinds import (
    BENCH_SYSTEMS,
    KINDS,
    LEXICAL_BASELINE,
    REGISTRY,
    engines_read,
    needs_model,
    system_parts,
)
from keytok.pipeline.kinds.dense import DenseKind
from keytok.utils.atomic import atomic_write_text

# The rows, in report order: the registry's systems (keytok.pipeline.kinds.BENCH_SYSTEMS); a row runs when
# the index holds every engine it reads. A fused row's fusion method and weights are the bench's ``fusion``
# or the index's record, written into its spec.
SYSTEM_ROWS = BENCH_SYSTEMS
DENSE = DenseKind.name


def _number(x: float) -> str:
    """A weight as the shortest text that parses back to the same float (``1``, ``0.1``)."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class SystemSpec:
    """A system as ``keytok search`` takes it: ``--system``, and for a fused system ``--fusion`` and one
    ``--weight PART=W`` per part. The fusion settings are written out rather than left to the index's
    record, so a spec still names the same run if a default changes."""

    system: str
    fusion: str | None = None
    weights: tuple[tuple[str, float], ...] = ()

    def search_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Searcher.search_batch`` that run this system, as the CLI passes them."""
        return {"backend": self.system, "fusion": self.fusion, "weights": dict(self.weights) or None}

    def __str__(self) -> str:
        """``bm25+keytok --fusion zscore --weight bm25=1 --weight sparse:expanded=0.5``: what follows
        ``--system`` on the command line."""
        words = [self.system] + (["--fusion", self.fusion] if self.fusion else [])
        return " ".join(words + [f"--weight {p}={_number(w)}" for p, w in self.weights])


@dataclass
class BenchRow:
    """One system's figures; ``spec``: the ``--system`` (with its fusion settings) that reproduces it."""

    system: str
    quality: dict[str, float]
    search: Latency
    encode_ms: float  # model time per query (0 for systems without a model at query time)
    index_bytes: int
    gflops_per_query: float
    notes: str = ""
    spec: str = ""

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


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run measures: the index it builds (a :class:`~keytok.pipeline.build.BuildConfig`: model,
    method, precision, kinds, sparse settings, ...), the qrels ``split``, the run ``depth`` (hits per query,
    search's ``-k``), the ``fusion`` of the fused rows (default: the index's) and how many queries are
    encoded alone to time the model (``encode_sample``). ``ann``: an approximate FAISS index (a factory
    string; None: none) built from the exact one's vectors, whose recall@10 against the exact search goes
    into the context."""

    # the bench measures every kind
    build: BuildConfig = field(default_factory=lambda: BuildConfig(on_empty="keep", kinds=KINDS))
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
    """One bench run in progress: the opened index, its queries, the model's cost per query."""

    searcher: Any
    index_path: Path
    qrels: Any
    queries: dict[str, str]
    config: BenchConfig
    encode_ms: float = 0.0
    gflops_dense: float = 0.0
    gflops_expanded: float = 0.0

    @property
    def info(self) -> dict[str, Any]:
        return self.searcher.info

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.searcher.kinds)


def run_bench(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: BenchConfig | None = None,
    *,
    index: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **settings: Any,
) -> BenchResult:
    """Build (or reuse) the index of ``corpus``, search it with every system on its ``split`` queries, and
    write the report.

    ``config``: a :class:`BenchConfig`; its fields and the build's (``model``, ``kinds``, ``k_doc``, ...) may
    also be given as keywords. ``index``: an index folder to reuse or to build (default ``OUT/index``); an
    index whose corpus, model or method differ is rebuilt. Document embeddings come from the embedding
    cache, so a rerun costs the queries only.
    """
    from keytok.pipeline.searcher import Searcher

    cfg = bench_config(config, **settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root, qrels, queries = _load_queries(corpus, cfg.split)
    index_path = Path(index) if index else out / "index"
    started = time.perf_counter()
    summary = build_index(root, index_path, cfg.build, overwrite=True, progress=progress)
    build_seconds = time.perf_counter() - started
    # Opened as keytok search opens it: the precision and the model the index records, files verified.
    # reuse_query_rows: each query is timed through search with the model apart
    searcher = Searcher(index_path, device=cfg.build.device, reuse_query_rows=True, backend=cfg.build.backend)
    bench = _Bench(searcher, index_path, qrels, queries, cfg)
    context: dict[str, Any] = {
        "corpus": str(root),
        "split": cfg.split,
        "queries": len(queries),
        "depth": cfg.depth,
        "model": cfg.build.model,
        # The method as built (a preset's name, or the method a checkpoint recorded when none was given).
        "method": bench.info.get("method_name") or cfg.build.method,
        "build_seconds": round(build_seconds, 1),
        "build": summary.as_dict(),
        "index": str(index_path),
        "reproduce": f"keytok search {index_path} --queries {root} --qrels-split {cfg.split} -k {cfg.depth} "
        + ("" if cfg.build.backend == "auto" else f"--model-backend {cfg.build.backend} ")
        + "--run RUN --system SPEC",
    }
    try:
        context |= _encode_queries(bench)
        context["corpus_encoding"] = bench.info.get("encoding", {})
        rows = [_measure(bench, label, system) for label, system in _systems(bench)]
        context |= _ann_context(bench)
    finally:
        searcher.close()
    result = BenchResult(rows, context)
    write_report(result, out)
    return result


def _load_queries(corpus: str | os.PathLike[str], split: str) -> tuple[Path, Any, dict[str, str]]:
    """The judged queries of ``split``, in the order of queries.jsonl: the order ``keytok search
    --qrels-split`` keeps, so the model encodes the same batch."""
    from keytok.data.beir import load_qrels, load_queries, resolve_beir

    paths = resolve_beir(corpus)
    qrels = load_qrels(paths.root, split)
    queries = {q: t for q, t in load_queries(paths.root).items() if q in qrels}
    if not queries:
        raise KeytokError(f"{paths.root}: no queries of the {split} qrels are in queries.jsonl")
    return paths.root, qrels, queries


def _encode_queries(bench: _Bench) -> dict[str, Any]:
    """Encode the query batch once, as search encodes it (every row then reuses it), and measure the model:
    one query alone through search's own call (median over a sample, warm) and its FLOPs."""
    if all(REGISTRY[k].query_form == "text" for k in bench.kinds):
        return {}  # no engine takes what the model makes of a query
    searcher = bench.searcher
    enc, texts = searcher.encoder, list(bench.queries.values())
    t0 = time.perf_counter()
    searcher.query_embeddings(texts)
    batch_seconds = time.perf_counter() - t0
    sample = texts[: max(1, bench.config.encode_sample)]
    searcher.query_embeddings(sample[:1], remember=False)  # warm: the prompt's cached keys, first allocations
    per_query = []
    for t in sample:  # latency of a query arriving alone, through the call search makes
        t1 = time.perf_counter()
        searcher.query_embeddings([t], remember=False)
        per_query.append(time.perf_counter() - t1)
    bench.encode_ms = float(np.median(per_query) * 1000)
    params = non_embedding_params(enc.model.model)
    tokens = np.mean([len(x) for x in enc.tokenize(texts).ids])
    bench.gflops_dense = model_flops(params, tokens) / 1e9
    bench.gflops_expanded = model_flops(params, tokens, enc.model.hidden_size, enc.vocab_size) / 1e9
    return {
        "precision": enc.describe(),
        "query_model": query_model_record(enc),
        "query_encode_batch_seconds": round(batch_seconds, 2),
        "query_encode_ms_alone_p50": round(bench.encode_ms, 1),
        "query_encode_sample": len(sample),
        "non_embedding_params": params,
    }


def query_model_record(encoder: Any) -> dict[str, Any]:
    """How a query alone runs through ``encoder``: the backend, the precision, the torch threads, and
    whether it starts from the prompt's cached keys and values."""
    import torch

    backend = encoder.query_backend
    if backend != "torch":
        threads = encoder.runner.threads
    else:
        threads = encoder.call_threads(1) or torch.get_num_threads()
    return {
        "backend": backend,
        "precision": encoder.describe(queries=True),
        "threads": threads,
        "prompt_cache": encoder.prompt_cache_applies(1),
    }


def _systems(bench: _Bench) -> list[tuple[str, str]]:
    """The rows of :data:`SYSTEM_ROWS` whose engines the index holds, labels filled in."""
    factory = str(bench.info.get(DENSE, {}).get("factory", "Flat"))
    return [
        (label.format(factory=factory), system)
        for label, system in SYSTEM_ROWS
        if engines_read(system_parts(system)) <= set(bench.kinds)
    ]


def system_spec(searcher: Any, system: str, fusion: str | None = None) -> SystemSpec:
    """``system`` with the fusion method and weights ``searcher`` would use for it (``fusion``, else the
    index's record, else the defaults) written out; a single engine needs none."""
    parts = searcher.resolve_system(system)
    if len(parts) == 1:
        return SystemSpec(system)
    method, weights = searcher.fusion_settings(parts, fusion)
    return SystemSpec(system, method, tuple(zip(parts, weights, strict=True)))


def trec_scores(results: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Search hits as the run that :func:`~keytok.pipeline.searcher.write_trec_run` writes reads back:
    scores to its 6 decimals, so ties that the file makes are scored as ties here too."""
    return {q: {h.doc_id: float(f"{h.score:.6f}") for h in hits} for q, hits in results.items()}


def _measure(bench: _Bench, label: str, system: str) -> BenchRow:
    """One row: the query batch through search (quality), then each query alone through it (latency)."""
    spec = system_spec(bench.searcher, system, bench.config.fusion)
    parts = bench.searcher.resolve_system(system)
    results = bench.searcher.search_batch(bench.queries, bench.config.depth, **spec.search_options())
    seconds = _time_each(bench, spec)
    model = needs_model(parts)
    if spec.fusion:
        label += f" ({spec.fusion}, weights {'/'.join(_number(w) for _, w in spec.weights)})"
    return BenchRow(
        label,
        evaluate(trec_scores(results), bench.qrels),
        Latency.from_seconds(seconds),
        bench.encode_ms if model else 0.0,
        sum(folder_bytes(bench.index_path / e) for e in sorted(engines_read(parts))),
        _gflops(bench, parts),
        _notes(bench, system, parts),
        str(spec),
    )


def _gflops(bench: _Bench, parts: list[str]) -> float:
    """The model's FLOPs per query of a system: the LM head's product too when a part expands queries."""
    if any(p.partition(":")[2] == "expanded" for p in parts):
        return bench.gflops_expanded
    return bench.gflops_dense if needs_model(parts) else 0.0


def _time_each(bench: _Bench, spec: SystemSpec) -> list[float]:
    """Seconds of each query searched alone through the call that gave the row's run, single-threaded.

    One untimed search first: it pays one-off costs (numba compiling the native kernel, the JVM's JIT,
    FAISS allocations) that would otherwise dominate the mean and so the QPS column. The model does not
    run: the searcher serves each query's embedding from the batch (its time is the model column)."""
    options, k = spec.search_options(), bench.config.depth
    items = list(bench.queries.items())
    seconds = []
    with _single_thread():
        bench.searcher.search_batch(dict(items[:1]), k, **options)
        for qid, text in items:
            t0 = time.perf_counter()
            bench.searcher.search_batch({qid: text}, k, **options)
            seconds.append(time.perf_counter() - t0)
    return seconds


def _ann_context(bench: _Bench) -> dict[str, Any]:
    """An approximate index (HNSW, IVF, ...) over the exact index's vectors: what it costs in recall@10.

    Not a row: the index holds no such engine, so ``keytok search`` cannot run it."""
    ann = bench.config.ann
    if not ann or DENSE not in bench.kinds:
        return {}
    import faiss

    from keytok.engines.dense import DenseIndex

    exact = bench.searcher.engine(DENSE)
    if exact.manifest.params.get("factory") != "Flat":
        return {}  # recall is measured against an exact search
    started = time.perf_counter()
    approx = DenseIndex.build(
        None, exact.doc_ids, exact.index.reconstruct_n(0, len(exact)), exact.meta, factory=ann,
        metric=exact.metric, normalize=exact.normalize,
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    emb = bench.searcher.query_embeddings(list(bench.queries.values()))
    qids, k = list(bench.queries), bench.config.depth

    def as_run(engine: Any) -> dict[str, dict[str, float]]:
        return {q: dict(h) for q, h in zip(qids, batch_lists(engine.search_batch(emb, k)), strict=True)}

    with _single_thread():
        approx.search(emb[0], k)
        seconds = []
        for v in emb:
            t0 = time.perf_counter()
            approx.search(v, k)
            seconds.append(time.perf_counter() - t0)
    approx_run = as_run(approx)
    return {
        "ann": {
            "factory": ann,
            "recall@10_against_flat": round(ann_recall(approx_run, as_run(exact), 10), 4),
            "nDCG@10": evaluate(approx_run, bench.qrels)["nDCG@10"],
            "search_p50_ms": Latency.from_seconds(seconds).p50_ms,
            "build_seconds": round(build_seconds, 2),
            "index_bytes": int(faiss.serialize_index(approx.index).nbytes) + len(json.dumps(exact.doc_ids)),
        }
    }


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


def _notes(bench: _Bench, system: str, parts: list[str]) -> str:
    """What a row's figures leave unsaid: BM25's settings, whether the model runs at query time."""
    if len(parts) == 1 and REGISTRY[parts[0].partition(":")[0]].note(bench.info):
        return REGISTRY[parts[0].partition(":")[0]].note(bench.info)
    if not needs_model(parts):
        return "no model at query time"
    return "one model pass serves every part" if len(parts) > 1 else ""


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


def _forms(row: BenchRow) -> list[str]:
    """The query form of each part of a row's system (from its spec)."""
    return [REGISTRY[p.partition(":")[0]].query_form for p in system_parts(row.spec.split(" ")[0])]


def _ratios(rows: list[BenchRow]) -> list[str]:
    """Sparse rows' nDCG@10 as a multiple of dense's, fused BM25 rows' as a multiple of BM25's."""
    rows = [r for r in rows if r.spec]
    dense = next((r for r in rows if _forms(r) == ["embedding"]), None)
    bm25 = next((r for r in rows if r.spec == LEXICAL_BASELINE), None)
    out = []
    if dense is not None and dense.quality["nDCG@10"] > 0:
        base = dense.quality["nDCG@10"]
        out += [
            f"- {r.system}: {r.quality['nDCG@10'] / base:.2f} × dense nDCG@10"
            for r in rows
            if len(_forms(r)) == 1 and _forms(r)[0].endswith("sparse vector")
        ]
    if bm25 is not None and bm25.quality["nDCG@10"] > 0:
        base = bm25.quality["nDCG@10"]
        out += [
            f"- {r.system}: {r.quality['nDCG@10'] / base:.3f} × BM25 nDCG@10"
            for r in rows
            if _forms(r)[0] == "text" and r is not bm25
        ]
    return out


def _ann_line(ctx: dict[str, Any]) -> list[str]:
    """The approximate dense index's measurement, when the bench made one."""
    ann = ctx.get("ann")
    if not ann:
        return []
    return [
        f"- dense (FAISS {ann['factory']}, built in memory from the Flat vectors in {ann['build_seconds']} s, "
        f"not a system of the index): recall@10 against Flat {ann['recall@10_against_flat']:.3f}, nDCG@10 "
        f"{ann['nDCG@10']:.4f}, search p50 {ann['search_p50_ms']:.2f} ms",
        "",
    ]


def _spec_lines(result: BenchResult) -> list[str]:
    """How to get each row's run from ``keytok search``: the command, and each row's SPEC."""
    specs = [f"- {r.system}: `{r.spec}`" for r in result.rows if r.spec]
    if not specs or "reproduce" not in result.context:
        return []
    return [f"Each row is the run of `{result.context['reproduce']}` with its SPEC:", "", *specs, ""]


def _query_model_line(ctx: dict[str, Any]) -> list[str]:
    """The header line that says how the model column's queries ran."""
    q = ctx.get("query_model")
    if not q:
        return []
    cached = ", prompt prefix's keys/values cached" if q.get("prompt_cache") else ""
    return [
        "",
        f"Queries: model backend {q['backend']} ({q['precision']}, {q['threads']} "
        f"thread{'' if q['threads'] == 1 else 's'}{cached}), "
        f"as keytok serve and keytok.Retriever run them (keytok search, one batch per command: torch); "
        f"model ms/query p50 over {ctx.get('query_encode_sample', '?')} queries.",
    ]


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(result: BenchResult, out: Path) -> None:
    """report.md, results.json and quality_vs_latency.png in ``out`` (each written atomically). The picture
    needs matplotlib (the ``plot`` extra); without it the report says how to get one."""
    ctx = result.context
    can_plot = _can_plot()
    picture = (
        "![quality against latency](quality_vs_latency.png)"
        if can_plot
        else "No picture: matplotlib is not installed (pip install 'keytok[plot]')."
    )
    md = [
        f"# keytok bench: {Path(ctx['corpus']).name} ({ctx['split']}, {ctx['queries']} queries)",
        "",
        f"Model {ctx['model']}, method {ctx['method']}, {ctx.get('precision', '')}. "
        f"Index built in {ctx['build_seconds']} s (embeddings from the cache when present).",
        *_query_model_line(ctx),
        "",
        format_table(result.rows),
        "",
        "Search latency: each query alone through the search call, single thread. "
        "Model ms/query: one query alone through the call keytok search makes to run the model "
        "(Searcher.query_embeddings), warm (median).",
        "",
        *_ratios(result.rows),
        "",
        *_ann_line(ctx),
        *_spec_lines(result),
        picture,
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(md))
    payload = {"context": ctx, "rows": [r.as_dict() for r in result.rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    if can_plot:
        from keytok.evaluation.bench_plot import plot_rows

        plot_rows(
            payload["rows"], out / "quality_vs_latency.png", f"{Path(ctx['corpus']).name}: {ctx['model']}"
        )
