"""Export round trip on a built index: Anserini JsonVectorCollection -> Anserini impact index -> top-10
against the native index, for every query of a BEIR split
CIFF write + read-back equality
timings.

    python experiments/check_interop.py INDEX ../shared/data/beir/scifact test > experiments/results/check_interop_scifact.json

``exact_int``: queries whose exported-index top-10 (ids and scores) equals the native index's for the same
8-bit integer query
``*_float``: against the native index searched with keytok's float query.
"""

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import command, run_script

from keytok.data.beir import load_queries
from keytok.engines.sparse import SparseIndex
from keytok.interop import export_index, load_source
from keytok.interop.anserini import anserini_query, index_jsonvector, write_jsonvector
from keytok.interop.ciff import read_ciff
from keytok.interop.opensearch import check_bulk
from keytok.interop.safetensors_io import read_csr
from keytok.interop.source import parse_token_key
from keytok.pipeline.searcher import Searcher


def main() -> None:
    index_dir, beir = Path(sys.argv[1]), Path(sys.argv[2])
    split = sys.argv[3] if len(sys.argv) > 3 else "test"
    work = Path(tempfile.mkdtemp(prefix="interop-measure-"))
    qids_split = []
    with open(beir / "qrels" / f"{split}.tsv") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if row and row[0] != "query-id" and row[0] not in qids_split:
                qids_split.append(row[0])
    allq = load_queries(beir)
    queries = {q: allq[q] for q in qids_split if q in allq}
    out = {"index": str(index_dir), "queries": len(queries)}

    t = time.perf_counter()
    src = load_source(index_dir)
    out["load_s"] = round(time.perf_counter() - t, 2)
    out["docs"], out["postings"] = src.n_docs, int(src.vectors.nnz)
    t = time.perf_counter()
    write_jsonvector(src, work / "coll", shards=2)
    out["jsonvector_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    exported = index_jsonvector(work / "coll", work / "lucene", src.meta | {"scale": src.scale}, threads=2)
    out["anserini_index_s"] = round(time.perf_counter() - t, 2)
    native = SparseIndex.open(index_dir / "sparse")
    searcher = Searcher(index_dir)
    qids = list(queries)
    t = time.perf_counter()
    qv = searcher.query_vectors([queries[q] for q in qids])
    out["query_encode_s"] = round(time.perf_counter() - t, 2)
    k = 10
    stats = dict(
        exact_int=0, tie_aware_int=0, same_list_float=0, same_set_float=0, overlap_float=0.0, empty=0
    )
    for r in range(len(qids)):
        terms, _ = anserini_query(qv[r])
        if not terms:
            stats["empty"] += 1
            continue
        iq = {parse_token_key(tk): w for tk, w in terms.items()}
        hits = exported.search(iq, k)
        nat_int = [(d, float(round(s / native.scale))) for d, s in native.search(iq, k)]
        stats["exact_int"] += [d for d, _ in nat_int] == [d for d, _ in hits] and [s for _, s in nat_int] == [
            s for _, s in hits
        ]
        kth = nat_int[-1][1] if nat_int else 0
        stats["tie_aware_int"] += [s for _, s in nat_int] == [s for _, s in hits] and {
            d for d, s in nat_int if s > kth
        } == {d for d, s in hits if s > kth}
        nat_f = [d for d, _ in native.search(qv[r], k)]
        a = [d for d, _ in hits]
        stats["same_list_float"] += nat_f == a
        stats["same_set_float"] += set(nat_f) == set(a)
        stats["overlap_float"] += len(set(nat_f) & set(a)) / max(len(nat_f), len(a), 1)
    n = len(qids) - stats["empty"]
    stats["overlap_float"] = round(stats["overlap_float"] / max(n, 1), 4)
    out["top10"] = stats
    exported.close()
    searcher.close()
    for fmt, name in [("ciff", "x.ciff"), ("safetensors", "x.safetensors"), ("opensearch", "os")]:
        s = export_index(index_dir, fmt, work / name)
        out[f"{fmt}_export_s"], out[f"{fmt}_bytes"] = round(s.seconds, 2), s.bytes
    t = time.perf_counter()
    c = read_ciff(work / "x.ciff")
    ids, m = c.to_csr(src.vocab_size)
    out["ciff_read_s"] = round(time.perf_counter() - t, 2)
    out["ciff_same_postings"] = ids == src.doc_ids and (m != src.vectors).nnz == 0
    v = read_csr(work / "x.safetensors")
    out["safetensors_same"] = v.doc_ids == src.doc_ids and (v.matrix != src.vectors).nnz == 0
    out["opensearch_check"] = check_bulk(work / "os")
    print(json.dumps({"command": command(__file__), **out}, indent=2))


if __name__ == "__main__":
    run_script(main)
