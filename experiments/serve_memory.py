"""Where the memory of a busy ``keytok serve`` goes: the server's work, in one process, batch shape by batch shape.

It opens INDEX as ``keytok serve`` does, warms it as the server warms it, then runs what a loaded server
runs on its worker thread: ``key_tokens`` and ``search_batch`` (``--system``, explained) over batches of
growing size (1, 2, 4, ... up to ``--max-batch`` texts of the collection's queries, then the largest
again), and prints the RSS after each call. Each variant runs in a fresh child process, so that what one leaves in the
allocator does not hide another's:

* ``default``: as the server ran before;
* ``arena2``: ``MALLOC_ARENA_MAX=2`` (glibc keeps one heap per thread otherwise);
* ``mmap``: ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks always from mmap, returned on free; glibc
  otherwise raises the threshold as large blocks are freed, and then keeps them in its heap);
* ``trim``: ``malloc_trim(0)`` after each call (heap tops and free pages handed back);
* ``tokens-only`` / ``search-bm25-only``: one part of the work alone (the model's forwards / Lucene's);
* ``bm25-young32m``: Lucene's work alone, the JVM's young generation fixed at 32 MiB (``-Xmn32m``);
* ``server``: what ``keytok serve`` does now (:mod:`keytok.serve.memory`): ``-Xmn32m`` and a trim after
  each call.

    python experiments/serve_memory.py INDEX --queries ../shared/data/beir/cranfield/queries.jsonl

Growth is measured from after the warm-up ("start", what the load test calls start) to the end; "end after
malloc_trim" is the end once glibc has handed back the free memory it kept: what it recovers was free.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "mmap": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "trim": {},
    "tokens-only": {},
    "search-bm25-only": {},
    # the JVM's young generation fixed small: its pages are all touched early, then reused
    "bm25-young32m": {"JAVA_TOOL_OPTIONS": "-Xmn32m"},
    # what keytok serve does now: keytok.serve.memory.settle() at start, release() after each call
    "server": {},
}


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> dict:
    from keytok import Retriever
    from keytok.serve.app import Service
    from keytok.serve.limits import Limits

    with open(args.queries, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    rng = random.Random(0)
    libc = ctypes.CDLL("libc.so.6")
    if args.variant == "server":
        from keytok.serve import memory

        memory.settle()
    retriever = Retriever.open(args.index)
    service = Service(retriever, None, Limits(max_batch=args.max_batch))
    service.warm()
    ready = rss_mib()
    start = rss_mib()
    sizes = [s for s in (1, 2, 4, 8, 11, 16, 24, 32) if s <= args.max_batch]
    trace = []
    for size in [*sizes, sizes[-1]]:  # growing shapes, then the largest again
        batch = rng.sample(texts, size)
        if not args.variant.startswith(("search-bm25-only", "bm25-")):
            service.model.key_tokens(batch, k=10)
        if args.variant != "tokens-only":
            system = "bm25" if args.variant.startswith(("search-bm25-only", "bm25-")) else args.system
            retriever.search_batch(batch, k=10, system=system, explain=True)
        if args.variant in ("trim", "server"):
            libc.malloc_trim(0)
        trace.append(round(rss_mib()))
    end = rss_mib()
    libc.malloc_trim(0)  # what of the growth was free memory glibc kept
    trimmed = rss_mib()
    return {
        "variant": args.variant,
        "ready": round(ready),
        "start": round(start),
        "end": round(end),
        "growth": round(100 * (end / start - 1), 1),
        "end_trimmed": round(trimmed),
        "trace": trace,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index")
    p.add_argument("--queries", required=True)
    p.add_argument("--system", default="bm25+keytok")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # the child's
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args)), flush=True)
        return 0
    rows = []
    for v in args.variants.split(","):
        env = dict(os.environ, **VARIANTS[v])
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", v],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| variant | RSS ready MiB | RSS start MiB | RSS end MiB | growth | end after malloc_trim | RSS after each call (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ready']} | {r['start']} | {r['end']} | {r['growth']:+.1f} % | {r['end_trimmed']} | {r['trace']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
