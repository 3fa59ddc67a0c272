"""Seed keytok's embedding cache with a BEIR collection's embeddings computed on another machine.

``experiments/bench_gpu.py --save-embeddings DIR`` writes ``<name>_corpus.npz`` and ``<name>_queries.npz``
(ids + float32 embeddings, fp32 on the GPU). This script puts them where ``keytok index build``,
``keytok bench`` and the sweeps look for them (:meth:`EmbeddingCache.add_embeddings`): the corpus in file
order keyed by its checksum, and the queries in each order those commands ask for them (the queries of
every qrels split, in qrels order, and all queries in file order). Each list is checked first by encoding a
sample here (cosine >= 0.9999 with the given rows), so a file from another model, method or max_length is
refused rather than cached.

    python experiments/import_embeddings.py ../shared/data/beir/scifact /work/gpu_emb --max-length 512
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import add_model_args, npz_rows, run_script

from keytok.data.beir import corpus_checksum, load_corpus, load_qrels, load_queries
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="a BEIR folder")
    ap.add_argument("embeddings", help="folder with <name>_corpus.npz and <name>_queries.npz")
    ap.add_argument("--verify", type=int, default=8, help="texts of each list re-encoded here as the check")
    add_model_args(ap, max_length=512)
    args = ap.parse_args()
    root = Path(args.corpus)
    folder = Path(args.embeddings)
    enc = Encoder(args.model, args.method, dtype="auto", max_length=args.max_length)
    cache = EmbeddingCache()
    docs = load_corpus(root, on_empty="keep")
    ids, texts = [d.id for d in docs], [d.full_text for d in docs]
    # A document the file lacks gets a zero row, which add_embeddings refuses unless its text is empty.
    emb = npz_rows(folder / f"{root.name}_corpus.npz", ids)
    rep = cache.add_embeddings(
        enc, ids, texts, emb, corpus_checksum=corpus_checksum(root), verify=args.verify
    )
    print(f"corpus: {rep.summary()}")
    allq = load_queries(root)
    lists = {"all queries": list(allq)}
    for split in ("train", "dev", "test"):
        if (root / "qrels" / f"{split}.tsv").is_file():
            lists[f"{split} queries"] = [q for q in load_qrels(root, split) if q in allq]
    for name, qids in lists.items():
        q_emb = npz_rows(folder / f"{root.name}_queries.npz", qids)
        rep = cache.add_embeddings(enc, qids, [allq[q] for q in qids], q_emb, verify=args.verify)
        print(f"{name}: {rep.summary()}")
    return 0


if __name__ == "__main__":
    run_script(main)
