"""Encode BEIR corpora and queries into keytok's embedding cache (run once, in the background).

    nohup python experiments/encode_beir.py --max-length 256 cranfield scifact > encode.log 2>&1 &

The sparse-retrieval sweep (``experiments/sweep_sparse.py``) then reads the cached embeddings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import add_model_args, run_script

from keytok.data.beir import corpus_checksum, load_corpus, load_queries
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+")
    add_model_args(ap)
    args = ap.parse_args()
    enc = Encoder(args.model, args.method, max_length=args.max_length)
    cache = EmbeddingCache()
    for name in args.datasets:
        root = DATA / name
        queries = load_queries(root)
        t = time.time()
        cache.encode_corpus(enc, list(queries), list(queries.values()), progress=False)
        print(name, "queries", cache.last_report.summary(), f"{time.time() - t:.0f}s", flush=True)
        docs = load_corpus(root, on_empty="keep")
        t = time.time()
        cache.encode_corpus(
            enc,
            [d.id for d in docs],
            [d.full_text for d in docs],
            corpus_checksum=corpus_checksum(root),
            progress=False,
        )
        print(name, "corpus", cache.last_report.summary(), f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    run_script(main)
