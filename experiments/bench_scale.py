#!/usr/bin/env python
"""Streaming index builds at 1 M and 10 M synthetic documents: peak RSS, build time, bytes, search latency.

The corpus is ``experiments/bench_sparse.py``'s (:func:`bench_sparse.zipf_csr`: 128 distinct Zipf(1.1) token ids
per document over a 49,152-id vocabulary, Gamma(2, 1) weights), generated chunk by chunk (``--chunk-docs``
rows, chunk ``j`` with its own seed drawn from ``SeedSequence([--seed, j])``) into ``.npz`` chunk files, so that
no process ever holds the whole corpus. Then, each step in its own child process so that its peak resident
set size is its own (the child's ``VmHWM``; for a Lucene build also the Anserini JVM's ``ru_maxrss``, listed
apart, never summed):

1. **native build**: :meth:`keytok.engines.sparse.SparseIndex.build_from_chunks` over the chunk files (two passes:
   the first finds the largest weight for the default scale, the second writes the segments);
2. **native search**: the index opened (``np.load(mmap_mode="r")``) and ``--queries`` 80-token queries timed one
   at a time on one thread, after ``--warmup`` untimed ones;
3. **Lucene build**: :meth:`keytok.engines.lucene.LuceneImpactIndex.build_from_chunks` over the same chunk
   files quantised with the native index's scale (the same integers), ``--lucene-build-threads`` threads;
4. **Lucene search**: the same queries, one at a time, one search thread.

Queries are quantised to integers (Lucene takes integer weights only) and both engines get the same ones, so
their scores are equal and their top-10 must agree; ``--exact-queries`` queries are also checked against a
brute-force pass over the chunk files. ``--whole-max-docs``: for sizes up to it, the native index is also built
by :meth:`SparseIndex.build` from the whole matrix (all chunks stacked in memory), for contrast.

Lucene at 10 M is slow to build (≈ 320 s per million documents on the 2-core development machine):
``--lucene-max-docs`` skips it above a size, ``--lucene-timeout`` stops a build that runs longer (the table
then says so, with the time it had run). The tables of every size run so far are kept in ``--out``'s ``.json``
twin, so sizes can be run separately (1 M first, 10 M later); ``--out`` is rewritten from all of them.
"""

from __future__ import annotations

import os

# Pin every thread pool to one thread before numpy, faiss or numba load them (children inherit this).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import command, run_script, write_json, write_text  # noqa: E402
from bench_sparse import fmt_bytes, loadavg, zipf_csr  # noqa: E402

from keytok.engines.engine import folder_bytes  # noqa: E402
from keytok.engines.sparse import SparseIndex, quantize  # noqa: E402

META = {"model": "bench-scale", "method": "synthetic"}
K = 10


# --------------------------------------------------------------------------------------------- chunk files


def chunk_seed(seed: int, j: int) -> int:
    return int(np.random.SeedSequence([seed, j]).generate_state(1)[0])


def doc_id(i: int) -> str:
    return f"d{i:08d}"  # zero-padded: Lucene orders ties by id string, the native index by insertion order


def generate(folder: Path, n: int, args: argparse.Namespace) -> float:
    """Write ``n`` synthetic documents as chunk files into ``folder``; returns the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for j, start in enumerate(range(0, n, args.chunk_docs)):
        m = min(args.chunk_docs, n - start)
        x = zipf_csr(m, args.doc_tokens, args.vocab, args.zipf, seed=chunk_seed(args.seed, j))
        np.savez(
            folder / f"chunk{j:05d}.npz",
            data=x.data,
            indices=x.indices.astype(np.uint16 if args.vocab <= 65536 else np.int32),
            indptr=x.indptr,
            start=start,
            shape=np.asarray(x.shape),
        )
        if j % 10 == 9:
            print(f"    {start + m:,} documents generated ({time.perf_counter() - t:.0f} s)", flush=True)
    return time.perf_counter() - t


def read_chunks(folder: Path) -> Iterator[tuple[list[str], sp.csr_matrix]]:
    """``(doc ids, float CSR)`` for each chunk file of ``folder``, in order, one at a time."""
    for f in sorted(folder.glob("chunk*.npz")):
        with np.load(f) as z:
            start, shape = int(z["start"]), tuple(int(s) for s in z["shape"])
            x = sp.csr_matrix((z["data"], z["indices"].astype(np.int32), z["indptr"]), shape=shape)
        yield [doc_id(i) for i in range(start, start + shape[0])], x
        del x  # freed before the next file is read


# --------------------------------------------------------------------------------------------- children


def vm_hwm() -> int:
    """This process's peak resident set size in bytes (``VmHWM``)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def time_each(fn: Callable[[Any], Any], queries: list[Any], warmup: int) -> tuple[list[Any], np.ndarray]:
    """Results of ``fn`` on every query and the seconds of each call (after ``warmup`` untimed calls)."""
    for q in queries[:warmup]:
        fn(q)
    out, times = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        out.append(fn(q))
        times[i] = time.perf_counter() - t
    return out, times


def load_queries(path: Path) -> list[sp.csr_matrix]:
    with np.load(path) as z:
        q = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    return [q[i] for i in range(q.shape[0])]


def child_generate(spec: dict[str, Any]) -> dict[str, Any]:
    args = argparse.Namespace(**spec["args"])
    return {"generate_s": generate(Path(spec["chunks"]), spec["docs"], args)}


def child_brute_force(spec: dict[str, Any]) -> dict[str, Any]:
    queries = load_queries(Path(spec["queries"]))[: spec["n"]]
    return {"top": brute_force_top(Path(spec["chunks"]), spec["scale"], sp.vstack(queries, format="csr"), K)}


def child_native_build(spec: dict[str, Any]) -> dict[str, Any]:
    chunks = Path(spec["chunks"])
    t = time.perf_counter()
    index = SparseIndex.build_from_chunks(spec["index"], lambda: read_chunks(chunks), META)
    seconds = time.perf_counter() - t
    return {"build_s": seconds, "scale": index.scale, "postings": int(index.manifest.counts["postings"])}


def child_native_whole(spec: dict[str, Any]) -> dict[str, Any]:
    ids: list[str] = []
    parts = []
    for chunk_ids, x in read_chunks(Path(spec["chunks"])):
        ids += chunk_ids
        parts.append(x)
    x = sp.vstack(parts, format="csr")
    del parts
    t = time.perf_counter()
    SparseIndex.build(spec["index"], ids, x, META)
    return {"build_s": time.perf_counter() - t}


def child_native_search(spec: dict[str, Any]) -> dict[str, Any]:
    t = time.perf_counter()
    index = SparseIndex.open(spec["index"], verify=False)
    open_s = time.perf_counter() - t
    queries = load_queries(Path(spec["queries"]))
    hits, times = time_each(lambda q: index.search(q, K), queries, spec["warmup"])
    return {"open_s": open_s, "times": times.tolist(), "top": [[d for d, _ in h] for h in hits]}


def child_lucene_build(spec: dict[str, Any]) -> dict[str, Any]:
    from keytok.engines.lucene import LuceneImpactIndex

    scale = float(spec["scale"])

    def int_chunks() -> Iterator[tuple[list[str], sp.csr_matrix]]:
        for ids, x in read_chunks(Path(spec["chunks"])):
            yield ids, quantize(x, scale)[0]

    t = time.perf_counter()
    index = LuceneImpactIndex.build_from_chunks(spec["index"], int_chunks(), META, threads=spec["threads"])
    seconds = time.perf_counter() - t
    java = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"build_s": seconds, "java_rss": java, "indexed": int(index.manifest.counts["indexed"])}


def child_lucene_search(spec: dict[str, Any]) -> dict[str, Any]:
    from keytok.engines.lucene import LuceneImpactIndex

    index = LuceneImpactIndex.open(spec["index"], verify=False)
    queries = load_queries(Path(spec["queries"]))
    t = time.perf_counter()
    index.search(queries[0], K)  # starts the JVM
    open_s = time.perf_counter() - t
    queries = queries[: spec["limit"]] if spec.get("limit") else queries
    hits, times = time_each(lambda q: index.search(q, K), queries, spec["warmup"])
    return {"open_s": open_s, "times": times.tolist(), "top": [[d for d, _ in h] for h in hits]}


CHILDREN = {
    "generate": child_generate,
    "brute-force": child_brute_force,
    "native-build": child_native_build,
    "native-whole": child_native_whole,
    "native-search": child_native_search,
    "lucene-build": child_lucene_build,
    "lucene-search": child_lucene_search,
}


def child_main(role: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = CHILDREN[role](spec)
    out["self_rss"] = vm_hwm()
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def run_child(role: str, spec: dict[str, Any], work: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run step ``role`` in a child process; its result plus ``peak_rss`` (bytes) and ``wall_s``.

    ``peak_rss`` is the child's own ``VmHWM`` (reset by ``exec``), or its largest child's (the JVM of a Lucene
    build) if larger. ``os.wait4``'s ``ru_maxrss`` is kept as ``wait4_maxrss``, but it is no lower than this
    process's RSS when the child was forked, so it cannot measure a child smaller than its parent.
    On ``timeout`` the child's process group (the JVM included) is killed and ``{"timeout": seconds}`` returned.
    """
    spec = {**spec, "result": str(work / f"{role}.result.json")}
    spec_path = work / f"{role}.spec.json"
    spec_path.write_text(json.dumps(spec))
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", role, str(spec_path)], start_new_session=True
    )
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout is not None and time.perf_counter() - t > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            return {"timeout": round(time.perf_counter() - t, 1)}
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"step {role} failed (exit {proc.returncode})")
    out = json.loads(Path(spec["result"]).read_text())
    out.update(
        peak_rss=max(out["self_rss"], out.get("java_rss", 0)),
        wait4_maxrss=usage.ru_maxrss * 1024,
        wall_s=wall,
    )
    return out


# --------------------------------------------------------------------------------------------- checks


def brute_force_top(chunks: Path, scale: float, queries: sp.csr_matrix, k: int) -> list[list[str]]:
    """Exact top-``k`` doc ids of ``queries`` against the quantised chunk files (score desc, then doc order)."""
    nq = queries.shape[0]
    best_s = [np.zeros(0) for _ in range(nq)]
    best_i = [np.zeros(0, np.int64) for _ in range(nq)]
    q = queries.astype(np.float64)
    base = 0
    for ids, x in read_chunks(chunks):
        ints, _ = quantize(x, scale)
        scores = (q @ ints.T.astype(np.float64)).toarray()
        for r in range(nq):
            s = np.concatenate([best_s[r], scores[r]])
            i = np.concatenate([best_i[r], base + np.arange(len(ids))])
            keep = s > 0
            s, i = s[keep], i[keep]
            order = np.lexsort((i, -s))[:k]
            best_s[r], best_i[r] = s[order], i[order]
        base += len(ids)
    return [[doc_id(i) for i in row.tolist()] for row in best_i]


def summarize(step: dict[str, Any]) -> dict[str, Any]:
    times = np.asarray(step.pop("times"))
    step["p50_ms"] = float(np.median(times) * 1e3)
    step["p95_ms"] = float(np.percentile(times, 95) * 1e3)
    return step


# --------------------------------------------------------------------------------------------- one size


def run_size(n: int, args: argparse.Namespace, base: Path, q_int: sp.csr_matrix) -> dict[str, Any]:
    work = base / f"syn{n}"
    work.mkdir(parents=True)
    chunks = work / "chunks"
    load_start = loadavg()
    print(f"\n== {n:,} documents: generating chunk files (load {load_start})", flush=True)
    gen_args = {k: getattr(args, k) for k in ("chunk_docs", "doc_tokens", "vocab", "zipf", "seed")}
    gen_s = run_child("generate", {"chunks": str(chunks), "docs": n, "args": gen_args}, work)["generate_s"]
    qpath = work / "queries.npz"
    np.savez(
        qpath, data=q_int.data, indices=q_int.indices, indptr=q_int.indptr, shape=np.asarray(q_int.shape)
    )
    run: dict[str, Any] = {
        "docs": n,
        "command": command(__file__, args.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "generate_s": gen_s,
        "chunk_bytes": folder_bytes(chunks),
        "queries": q_int.shape[0],
        "warmup": args.warmup,
        "lucene_warmup": args.lucene_warmup,
    }
    common = {"chunks": str(chunks), "queries": str(qpath), "warmup": args.warmup}

    print("  native build (streamed) ...", flush=True)
    native = work / "native"
    build = run_child("native-build", {**common, "index": str(native)}, work)
    build["bytes"] = folder_bytes(native)
    run["native_build"] = build
    print(
        f"    {build['build_s']:.1f} s, peak RSS {fmt_bytes(build['peak_rss'])}, {fmt_bytes(build['bytes'])}"
    )
    print("  native search ...", flush=True)
    search = summarize(run_child("native-search", {**common, "index": str(native)}, work))
    native_top = search.pop("top")
    run["native_search"] = search
    print(f"    p50 {search['p50_ms']:.2f} ms, p95 {search['p95_ms']:.2f} ms")
    if args.exact_queries:
        print(f"  brute force on {args.exact_queries} queries ...", flush=True)
        spec = {**common, "scale": build["scale"], "n": args.exact_queries}
        want = run_child("brute-force", spec, work)["top"]
        run["exact"] = [sum(a == b for a, b in zip(want, native_top, strict=False)), len(want)]
    if n <= args.whole_max_docs:
        print("  native build (whole matrix, for contrast) ...", flush=True)
        whole = run_child("native-whole", {**common, "index": str(work / "native-whole")}, work)
        whole["identical"] = same_folder(native, work / "native-whole")
        run["native_whole"] = whole
        shutil.rmtree(work / "native-whole")
    if not args.keep:
        shutil.rmtree(native)

    if args.no_lucene or n > args.lucene_max_docs:
        run["lucene"] = {
            "skipped": "--no-lucene"
            if args.no_lucene
            else f"above --lucene-max-docs {args.lucene_max_docs:,}"
        }
    else:
        run_lucene(run, common, work, build["scale"], native_top, args)
    run["load"] = [load_start, loadavg()]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return run


def run_lucene(
    run: dict[str, Any],
    common: dict[str, Any],
    work: Path,
    scale: float,
    native_top: list,
    args: argparse.Namespace,
) -> None:
    print("  Lucene build ...", flush=True)
    lucene = work / "lucene"
    spec = {**common, "index": str(lucene), "scale": scale, "threads": args.lucene_build_threads}
    build = run_child("lucene-build", spec, work, timeout=args.lucene_timeout)
    if "timeout" in build:
        run["lucene"] = {"skipped": f"build stopped after {build['timeout']:.0f} s (--lucene-timeout)"}
        print(f"    {run['lucene']['skipped']}")
        return
    build["bytes"] = folder_bytes(lucene)
    run["lucene_build"] = build
    print(
        f"    {build['build_s']:.1f} s, peak RSS {fmt_bytes(build['peak_rss'])}, {fmt_bytes(build['bytes'])}"
    )
    print("  Lucene search ...", flush=True)
    spec = {**common, "index": str(lucene), "warmup": args.lucene_warmup, "limit": args.lucene_queries}
    search = summarize(run_child("lucene-search", spec, work))
    top = search.pop("top")
    search["queries"] = len(top)
    run["lucene_search"] = search
    run["agree"] = [sum(a == b for a, b in zip(native_top, top, strict=False)), len(top)]
    print(
        f"    p50 {search['p50_ms']:.2f} ms, p95 {search['p95_ms']:.2f} ms; top-{K} agree on {run['agree']}"
    )
    if not args.keep:
        shutil.rmtree(lucene)


def same_folder(a: Path, b: Path) -> bool:
    """Whether two index folders hold the same bytes (manifest's creation time and hash aside)."""
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    for name in names:
        if name == "manifest.json":
            ma, mb = (json.loads((p / name).read_text()) for p in (a, b))
            for m in (ma, mb):
                m.pop("created"), m.pop("manifest_sha256")
            if ma != mb:
                return False
        elif subprocess.run(["cmp", "-s", a / name, b / name], check=False).returncode:
            return False
    return True


# --------------------------------------------------------------------------------------------- report


def report(runs: dict[str, dict[str, Any]], header: list[str]) -> list[str]:
    lines = [
        *header,
        "| documents | engine | build s | peak RSS (build) | on disk | peak RSS / on disk | peak RSS (search) "
        "| p50 ms | p95 ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for key in sorted(runs, key=int):
        r = runs[key]
        n = r["docs"]
        nb, ns = r["native_build"], r["native_search"]
        lines.append(row(n, "native sparse (streamed)", nb, ns, f"{nb['postings']:,} postings"))
        if "native_whole" in r:
            w = r["native_whole"]
            same = "byte-identical folder" if w["identical"] else "FOLDER DIFFERS"
            lines.append(row(n, "native sparse (whole matrix)", {**w, "bytes": nb["bytes"]}, None, same))
        if "lucene_build" in r:
            lb, ls = r["lucene_build"], r["lucene_search"]
            note = (
                f"JVM {fmt_bytes(lb['java_rss'])}, Python (JSON export) {fmt_bytes(lb['self_rss'])}; "
                f"search: {ls['queries']} queries"
            )
            lines.append(row(n, "Lucene impact (streamed)", lb, ls, note))
        else:
            lines.append(f"| {n:,} | Lucene impact | – | – | – | – | – | – | – | {r['lucene']['skipped']} |")
        ratio = nb["peak_rss"] / nb["bytes"]
        sentence = [
            f"**{n:,}**: native build peak RSS = {ratio:.2f} x its index on disk "
            f"({'within' if ratio <= 2 else 'ABOVE'} the 2x bound)",
            f"chunk files {fmt_bytes(r['chunk_bytes'])} generated in {r['generate_s']:.0f} s",
        ]
        if "exact" in r:
            sentence.append(f"native top-{K} = brute force on {r['exact'][0]}/{r['exact'][1]} queries")
        if "agree" in r:
            luc = r["lucene_search"]
            sentence.append(
                f"native top-{K} = Lucene top-{K} on {r['agree'][0]}/{r['agree'][1]} queries; native is "
                f"{luc['p50_ms'] / ns['p50_ms']:.1f}x faster at p50, Lucene's index is "
                f"{nb['bytes'] / r['lucene_build']['bytes']:.2f}x smaller"
            )
        timed = f"{r['queries']} queries timed after {r['warmup']} warm-up ones"
        if "lucene_search" in r and r["lucene_search"]["queries"] != r["queries"]:
            timed += f" (Lucene: the first {r['lucene_search']['queries']}, after {r['lucene_warmup']} warm-up ones)"
        sentence.append(timed)
        sentence.append(
            f"load average start {r['load'][0]}, end {r['load'][1]}; run {r['date']}: `{r['command']}`"
        )
        notes.append("- " + "; ".join(sentence) + ".")
    return [*lines, "", *notes, ""]


def row(n: int, engine: str, build: dict[str, Any], search: dict[str, Any] | None, note: str) -> str:
    s50 = f"{search['p50_ms']:.2f}" if search else "–"
    s95 = f"{search['p95_ms']:.2f}" if search else "–"
    srss = fmt_bytes(search["peak_rss"]) if search else "–"
    return (
        f"| {n:,} | {engine} | {build['build_s']:.1f} | {fmt_bytes(build['peak_rss'])} | {fmt_bytes(build['bytes'])} "
        f"| {build['peak_rss'] / build['bytes']:.2f} | {srss} | {s50} | {s95} | {note} |"
    )


HEADER_TEXT = (
    "Each build and each search runs in its own child process; peak RSS is that process's peak resident set "
    "(`VmHWM`), for a Lucene build the larger of the Python process (which exports the JSON collection) and the "
    "Anserini JVM it starts (its `ru_maxrss`): the two are listed in the note, they are not summed. Streamed builds read the chunk files one at a time (`build_from_chunks`); the whole-matrix row "
    "stacks all chunks in memory first and calls `SparseIndex.build`. The native index is searched through "
    "`mmap`, so its search RSS counts the index pages the queries touched. Search: one query at a time, one "
    "thread, exact top-10, the same integer queries for both engines (80 tokens each). Timings on a shared "
    "2-core machine: expect noise."
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="See the module docstring for details."
    )
    ap.add_argument(
        "--docs", type=int, nargs="+", default=[1_000_000], help="corpus sizes (default 1,000,000)"
    )
    ap.add_argument("--chunk-docs", type=int, default=100_000, help="documents per chunk file")
    ap.add_argument("--queries", type=int, default=200, help="timed queries (default 200)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed queries first (the JVM needs them)")
    ap.add_argument("--exact-queries", type=int, default=20, help="queries checked by brute force (0: none)")
    ap.add_argument("--doc-tokens", type=int, default=128)
    ap.add_argument("--query-tokens", type=int, default=80)
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--whole-max-docs",
        type=int,
        default=1_000_000,
        help="also build from the whole matrix up to this size",
    )
    ap.add_argument("--no-lucene", action="store_true")
    ap.add_argument("--lucene-max-docs", type=int, default=10**12, help="skip Lucene above this size")
    ap.add_argument("--lucene-timeout", type=float, help="stop a Lucene build after this many seconds")
    ap.add_argument("--lucene-build-threads", type=int, default=2)
    ap.add_argument(
        "--lucene-queries", type=int, default=0, help="time Lucene on the first N queries only (0: all)"
    )
    ap.add_argument("--lucene-warmup", type=int, help="untimed Lucene queries first (default: --warmup)")
    ap.add_argument("--workdir", type=Path, help="where chunks and indexes go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the chunk files and indexes")
    ap.add_argument(
        "--fresh", action="store_true", help="forget the sizes recorded in the .json twin of --out"
    )
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "bench_scale.md")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.lucene_warmup is None:
        args.lucene_warmup = args.warmup
    out_json = args.out.with_suffix(".json")
    runs: dict[str, Any] = {}
    if out_json.exists() and not args.fresh:
        runs = json.loads(out_json.read_text()).get("runs", {})

    q_float = zipf_csr(args.queries, args.query_tokens, args.vocab, args.zipf, seed=args.seed + 1)
    q_int, _ = quantize(q_float)
    base = Path(tempfile.mkdtemp(prefix="bench_scale.", dir=args.workdir))
    try:
        for n in args.docs:
            runs[str(n)] = run_size(n, args, base, q_int)
            write_results(runs, args, out_json)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def write_results(runs: dict[str, Any], args: argparse.Namespace, out_json: Path) -> None:
    import scipy

    header = [
        "## Streaming builds at scale: native sparse index vs Lucene impact (synthetic corpus)",
        "",
        f"Corpus of `experiments/bench_sparse.py` ({args.doc_tokens} Zipf(s = {args.zipf}) tokens per document over "
        f"{args.vocab:,} ids, uint8 impacts), written as chunk files of {args.chunk_docs:,} documents. "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}, scipy {scipy.__version__}. " + HEADER_TEXT,
        "",
    ]
    text = "\n".join(report(runs, header))
    print("\n" + text)
    write_text(args.out, text)
    write_json(out_json, {"runs": runs}, command(__file__, args.argv))
    print(f"wrote {args.out} and {out_json}")


if __name__ == "__main__":
    run_script(main)
