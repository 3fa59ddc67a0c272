"""The Ray runner's throughput against the local encoder, both measured here in one run.

Each row encodes the same documents from nothing into a fresh cache: the local loop (one process, every
core), then the Ray runner with a few pool shapes (workers x cores each). Ray's time includes starting its
local cluster and loading the model in each worker, which is what a user pays for a build; the table also
gives the time inside the map stage alone. On two cores Ray cannot be faster than the local loop: the
point of the table is its overhead, and that the embeddings are the ones the local loop gives.

    python experiments/bench_ray.py ../shared/data/beir/cranfield --docs 200 --out experiments/results/bench_ray.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_model_args, run_script, write_page

from keytok.data.beir import load_corpus
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="a BEIR folder")
    ap.add_argument("--docs", type=int, default=200, help="the first N documents")
    ap.add_argument("--shapes", default="1x2,2x1", help="Ray pools, WORKERSxCORES, comma-separated")
    ap.add_argument("--out", default="experiments/results/bench_ray.md")
    add_model_args(ap, max_length=256)
    args = ap.parse_args()

    import ray

    from keytok.encoding.ray_runner import encode_on_ray

    docs = [d for d in load_corpus(args.corpus, on_empty="skip")][: args.docs]
    ids, texts = [d.id for d in docs], [d.full_text for d in docs]
    cores = len(os.sched_getaffinity(0))
    encoder = Encoder(args.model, args.method, dtype="fp32", max_length=args.max_length, threads=cores)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = EmbeddingCache(Path(tmp) / "local")
        local = cache.encode_corpus(encoder, ids, texts, chunk_size=16, progress=False)
        seconds = time.perf_counter() - started
        tokens = cache.last_report.tokens
        rows.append(("local loop", f"1 x {cores}", seconds, seconds, tokens, 0.0))
        for shape in args.shapes.split(","):
            workers, per = (int(x) for x in shape.split("x"))
            started = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
            cache = EmbeddingCache(Path(tmp) / f"ray-{shape}")
            report = encode_on_ray(
                encoder, ids, texts, chunk_size=16, cache=cache, workers=workers, cpus_per_worker=per
            )
            ray.shutdown()
            total = time.perf_counter() - started
            emb = cache.encode_corpus(encoder, ids, texts, chunk_size=16, progress=False)
            diff = float(np.abs(emb - local).max())
            rows.append(
                (f"ray, {workers} workers", f"{workers} x {per}", total, report.seconds, report.tokens, diff)
            )
    base = rows[0][4] / rows[0][2]
    lines = [
        f"# Ray runner against the local encoder ({args.model}, fp32, {len(docs)} documents of "
        f"{Path(args.corpus).name}, max_length {args.max_length}, {cores} cores)",
        "",
        "| runner | workers x cores | wall s (incl. cluster start, model loads) | map stage s | tokens | "
        "tokens/s (wall) | × local | max abs diff from local |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, shape, total, inner, tokens, diff in rows:
        rate = tokens / total
        lines.append(
            f"| {name} | {shape} | {total:.1f} | {inner:.1f} | {tokens:,} | {rate:,.0f} | {rate / base:.2f} | {diff:.1e} |"
        )
    write_page(args.out, lines, __file__)
    return 0


if __name__ == "__main__":
    run_script(main)
