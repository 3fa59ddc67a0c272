"""Single-query latency of the query path: one text -> its pooled embedding and its top-M key-token logits.

Every way runs keytok's :class:`~keytok.encoding.encoder.Encoder` on the same weights, warm (no per-call
setup), one query at a time, interleaved query by query (fair under a changing load on a shared machine):

* ``torch, plain forward, T threads (today)``: the query path before this script (all cores, the prompt's
  tokens run with the text);
* ``torch, plain forward, 1 thread``; ``torch, prompt cached, 1 thread``: the prompt prefix's keys/values
  computed once and reused (:meth:`Encoder.prompt_cache_applies`): the query runs only its own tokens and the
  suffix;
* ``onnx fp32, T threads, spinning / no spin``: the exported graph in ONNX Runtime (``--backend onnx``), its
  intra-op threads spin-waiting between operators (ORT's default) or sleeping (keytok's session now);
* ``keytok search's query path (defaults)``: the encoder as ``keytok search`` makes it (``backend auto``):
  the exported graph in ONNX Runtime where :func:`~keytok.encoding.backends.graph_for_queries` picks it (fp32
  on the CPU, the graph prepared), else torch with the prompt cached, on the cores the load average leaves idle
  (:func:`short_call_threads`).

For each way: model time per query, p50 and p90 (embedding + LM-head top-M, ``M`` = 128 expansion tokens + the
special tokens and the threshold row, as :meth:`SparseEncoder.topk` asks), its ratio to today's path measured in
the same run, and agreement with today's path (min cosine, share of queries with the same top-10 key tokens).
A profile of today's path splits a query into tokenizer, forward pass and LM-head top-M.

    python experiments/bench_query.py --queries 30

Ends with ``query p50 ms: N.N``: keytok search's query path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import command, run_script, write_json, write_page

from keytok.data.beir import load_queries
from keytok.encoding.backends import OnnxRunner, onnx_available
from keytok.encoding.encoder import Encoder
from keytok.models.loading import load_model
from keytok.models.registry import DEFAULT_MODEL

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = next(
    (p / "shared/data/beir/cranfield" for p in HERE.parents if (p / "shared/data/beir/cranfield").is_dir()),
    HERE.parent.parent / "shared" / "data" / "beir" / "cranfield",
)
TODAY = "torch, plain forward, {cores} threads (today)"
DEFAULT = "keytok search's query path (defaults)"


def make_ways(model: str, cores: int, want_onnx: bool) -> dict[str, tuple[Encoder, int | None]]:
    """Each way's encoder and the torch threads it runs with (None: the encoder's own rule)."""
    loaded = load_model(model)
    ways: dict[str, tuple[Encoder, int | None]] = {}

    def torch_way(threads: int, cached: bool) -> Encoder:
        enc = Encoder(loaded, None, dtype="fp32", backend="torch", threads=threads)
        enc.reuse_prompt = cached
        return enc

    ways[TODAY.format(cores=cores)] = (torch_way(cores, False), cores)
    if cores > 1:
        ways["torch, plain forward, 1 thread"] = (torch_way(1, False), 1)
        ways["torch, prompt cached, 1 thread"] = (torch_way(1, True), 1)
    if want_onnx:
        for threads, spin in ((cores, True), (cores, False), (1, False)):
            if threads == 1 and cores == 1:
                continue
            enc = Encoder(loaded, None, dtype="fp32", backend="onnx", threads=threads)
            enc._runner = OnnxRunner(enc, threads=threads, spin=spin)
            name = f"onnx fp32, {threads} thread{'s' if threads > 1 else ''}, {'spinning' if spin else 'no spin'}"
            ways[name] = (enc, threads)
    torch.set_num_threads(cores)
    ways[DEFAULT] = (Encoder(loaded, None), None)
    return ways


def top_m(enc: Encoder, m: int = 128) -> int:
    """What :meth:`SparseEncoder.topk` asks the LM head for: M + 1 + the special tokens."""
    return m + 1 + len(enc.model.tokenizer.all_special_ids)


def query_path(enc: Encoder, text: str, want: int) -> tuple[np.ndarray, np.ndarray]:
    """One query alone: its embedding and the LM head's top-``want`` token ids."""
    emb = enc.encode([text], show_progress=False, queries=True)
    return emb[0], enc.logits_topk(emb, want)[1][0]


def profile(enc: Encoder, queries: list[str], want: int) -> dict[str, float]:
    """Median ms of each part of ``enc``'s query path: tokenizer, forward pass (with pooling), LM-head top-M."""
    parts: dict[str, list[float]] = {"tokenizer": [], "forward + pooling": [], "LM-head top-M": []}
    for q in queries:
        t0 = time.perf_counter()
        tok = enc.tokenize([q])
        t1 = time.perf_counter()
        with enc._threads_for(1):
            graph = enc.query_backend != "torch"
            emb = enc._encode_batch(tok.ids, tok.text_spans, enc.prompt_cache_applies(1), graph).numpy()
        t2 = time.perf_counter()
        enc.logits_topk(emb, want)
        t3 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[name].append(dt)
    return {k: float(np.median(v) * 1000) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="BEIR folder whose queries are timed")
    p.add_argument("--queries", type=int, default=20, help="queries, each timed alone in every way")
    p.add_argument("--no-onnx", action="store_true", help="torch ways only")
    p.add_argument("--out", default=str(HERE / "results" / "bench_query_avx2.md"))
    args = p.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    queries = list(load_queries(args.corpus).values())[: args.queries]
    load_before = os.getloadavg()
    want_onnx = onnx_available() and not args.no_onnx
    ways = make_ways(args.model, cores, want_onnx)
    names = list(ways)
    today_name = TODAY.format(cores=cores)
    want = top_m(ways[today_name][0])

    def call(name: str, text: str) -> tuple[float, np.ndarray, np.ndarray]:
        enc, threads = ways[name]
        if threads is not None:
            torch.set_num_threads(threads)
        else:
            torch.set_num_threads(cores)  # as the encoder that keytok search makes sets it
        t0, c0 = time.perf_counter(), time.process_time()
        emb, ids = query_path(enc, text, want)
        return time.perf_counter() - t0, time.process_time() - c0, emb, ids

    for name in names:  # warm-up: the prompt's cache, the ORT session's first run, allocations
        for q in queries[:1]:
            call(name, q)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    embs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, q in enumerate(queries):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            dt, dc, emb, _ = call(name, q)
            seconds[name].append(dt)
            cpu[name].append(dc)
            embs[name].append(emb)
    load_after = os.getloadavg()

    ref_enc = ways[today_name][0]
    torch.set_num_threads(cores)
    ref = np.stack(embs[today_name])
    ref_top = ref_enc.logits_topk(ref, 10)[1]
    rows = []
    base = float(np.median(seconds[today_name]) * 1000)
    for name in names:
        e = np.stack(embs[name])
        cos = np.sum(e * ref, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        top = ref_enc.logits_topk(e, 10)[1]
        same = float(np.mean([set(a) == set(b) for a, b in zip(top, ref_top, strict=True)]))
        p50 = float(np.median(seconds[name]) * 1000)
        p90 = float(np.percentile(seconds[name], 90) * 1000)
        cpu_ms = float(np.median(cpu[name]) * 1000)
        rows.append({"way": name, "p50_ms": p50, "p90_ms": p90, "ratio": p50 / base, "cpu_ms": cpu_ms,
                     "min_cos": float(cos.min()), "same_top10": same})  # fmt: skip
        print(f"{name}: p50 {p50:.1f} ms ({p50 / base:.2f}x today), min cos {cos.min():.6f}, same top-10 {same:.3f}",
              file=sys.stderr, flush=True)  # fmt: skip
    default_enc = ways[DEFAULT][0]
    torch.set_num_threads(cores)
    prof = profile(default_enc, queries, want)
    tokens = np.mean([len(x) for x in ref_enc.tokenize(queries).ids])
    default = rows[-1]
    lines = [
        f"# Single-query latency: {args.model}, {len(queries)} {Path(args.corpus).name} queries, one at a time",
        "",
        f"Model time per query (text -> embedding -> LM-head top-{want}), warm, ways interleaved query by query; "
        f"{tokens:.1f} tokens per query on average with the prompt. Machine: {cores} cores shared with other "
        f"jobs: load average {' / '.join(f'{x:.1f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.1f}' for x in load_after)} after. Compare ratios within this run.",
        "",
        "| way | query p50 ms | query p90 ms | x today's torch path (p50) | CPU ms/query p50 (all threads) | "
        "min cosine with today's | same top-10 key tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['way']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['ratio']:.2f} | {r['cpu_ms']:.1f} | "
            f"{r['min_cos']:.6f} | "
            f"{r['same_top10']:.3f} |"
        )
    lines += [
        "",
        "keytok search's query path, median of each part (a second pass over the queries): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in prof.items())
        + ".",
        "",
        f"keytok search's query path here: backend {default_enc.query_backend} "
        f"({default_enc.describe(queries=True)}), "
        f"prompt cache {'on' if default_enc.prompt_cache_applies(1) else 'off'}, "
        f"{default_enc.call_threads(1) or torch.get_num_threads()} thread(s) for a query at the end "
        "(the cores the load average leaves idle).",
    ]
    write_page(args.out, lines, __file__, argv)
    write_json(
        Path(args.out).with_suffix(".json"),
        {"rows": rows, "profile_ms": prof, "load_before": load_before, "load_after": load_after},
        command(__file__, argv),
    )
    print(f"query p50 ms: {default['p50_ms']:.1f}")
    return 0


if __name__ == "__main__":
    run_script(main)
