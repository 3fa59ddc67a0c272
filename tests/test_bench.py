"""keytok bench end to end on a small BEIR folder with the tiny model (every row, the report files), and the
report written from hand-made rows."""

import json
import math

import numpy as np
import pytest
from conftest import WORDS

from keytok.evaluation.bench import BenchResult, BenchRow, format_table, write_report
from keytok.evaluation.metrics import Latency


@pytest.fixture
def small_beir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "small"
    (root / "qrels").mkdir(parents=True)
    docs, queries, qrels = [], [], []
    for i in range(40):
        words = rng.choice(WORDS, size=12)
        docs.append({"_id": f"d{i}", "title": f"doc {i}", "text": " ".join(words)})
        if i % 5 == 0:
            queries.append({"_id": f"q{i}", "text": " ".join(words[:3])})
            qrels.append(f"q{i}\td{i}\t1")
    queries.append({"_id": "d3", "text": docs[3]["text"]})  # its id is a document id: self-hit must go
    qrels.append("d3\td4\t1")
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return root


def test_bench_writes_every_row(small_beir, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("pyserini")
    from keytok.evaluation.bench import run_bench

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    result = run_bench(
        small_beir,
        out,
        model=str(tiny_model_dir),
        method="mean",
        dtype="fp32",
        progress=False,
        encode_sample=3,
    )
    systems = [r.system for r in result.rows]
    for prefix in (
        "dense",
        "sparse native, llm-free",
        "sparse native, expanded",
        "lucene impact",
        "bm25 (lucene)",
        "bm25x (lucene)",
        "impact (model-weighted terms), llm-free",
        "impact (model-weighted terms), expanded",
        "sparse native, feedback queries",
        "dense+sparse (",
        "bm25+sparse feedback+sparse (",
        "bm25+sparse llm-free (",
        "bm25+keytok-free = ",
        "bm25+keytok = ",
        "bm25x+sparse (",
    ):
        assert any(s.startswith(prefix) for s in systems), (prefix, systems)
    for r in result.rows:
        assert r.search.queries == 9
        assert r.index_bytes > 0
    # Native sparse and Lucene score the same integer vectors: same quality.
    by = {r.system: r for r in result.rows}
    # HNSW32 over 40 vectors links every node to every other: its search is exact.
    assert by["dense (FAISS HNSW32)"].notes.startswith("recall@10 against Flat 1.000;")
    assert by["dense (FAISS HNSW32)"].quality == by["dense (FAISS Flat)"].quality
    assert by["sparse native, expanded queries"].quality["nDCG@10"] == pytest.approx(
        by["lucene impact, expanded queries"].quality["nDCG@10"], abs=0.02
    )
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("|")]
    assert table == format_table(result.rows).splitlines() and len(table) == len(result.rows) + 2
    saved = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["system"], r["quality"]) for r in saved] == [(r.system, r.quality) for r in result.rows]
    assert (out / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_rerun_reuses_document_and_query_embeddings(small_beir, tiny_model_dir, tmp_path, monkeypatch):
    from keytok.evaluation.bench import run_bench

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    args = dict(model=str(tiny_model_dir), method="mean", dtype="fp32", progress=False, encode_sample=2)
    first = run_bench(small_beir, tmp_path / "a", kinds=("sparse", "dense"), **args)
    again = run_bench(small_beir, tmp_path / "b", kinds=("sparse", "dense"), **args)
    assert first.context["query_embeddings_from_cache"] is False
    assert again.context["query_embeddings_from_cache"] is True
    assert again.context["build"]["tokens_encoded"] == 0  # documents: every chunk from the cache
    assert [r.quality for r in again.rows] == [r.quality for r in first.rows]


def _row(system: str, ndcg: float, ms: float, encode_ms: float = 0.0) -> BenchRow:
    quality = {"nDCG@10": ndcg, "R@100": ndcg + 0.25, "RR@10": ndcg / 2}
    return BenchRow(system, quality, Latency.from_seconds([ms / 1000] * 4), encode_ms, 3 * 2**20, 1.5)


def test_report_of_hand_made_rows(tmp_path):
    rows = [
        _row("dense (FAISS Flat)", 0.2, 1.0, encode_ms=10.0),
        _row("sparse native, expanded queries", 0.3, 2.0, encode_ms=10.0),
        _row("bm25 (lucene)", 0.4, 4.0),
        _row("bm25+keytok = bm25+sparse (minmax, weights 1/0.1)", 0.5, 6.0, encode_ms=10.0),
    ]
    ctx = {"corpus": "/data/mini", "split": "test", "queries": 4, "model": "m", "method": "mean"}
    ctx |= {"precision": "fp32 weights on cpu", "build_seconds": 1.5}
    write_report(BenchResult(rows, ctx), tmp_path)
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[0] == "# keytok bench: mini (test, 4 queries)"
    assert (
        md[2]
        == "Model m, method mean, fp32 weights on cpu. Index built in 1.5 s (embeddings from the cache when present)."
    )
    assert md[7] == (
        "| sparse native, expanded queries | 0.3000 | 0.5500 | 0.1500 | 2.00 | 2.00 | 500 | 10.0 | 12.0 | 3.00 | 1.50 |"
    )
    assert (
        md[9]
        == "| bm25+keytok = bm25+sparse (minmax, weights 1/0.1) | 0.5000 | 0.7500 | 0.2500 | 6.00 | 6.00 | 167 | 10.0 | 16.0 | 3.00 | 1.50 |"
    )
    # ratios: sparse rows against dense, fused BM25 rows against BM25
    assert "- sparse native, expanded queries: 1.50 × dense nDCG@10" in md
    assert "- bm25+keytok = bm25+sparse (minmax, weights 1/0.1): 1.250 × BM25 nDCG@10" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["context"] == ctx
    assert saved["rows"][2]["end_to_end_p50_ms"] == pytest.approx(4.0)
    assert math.isclose(saved["rows"][3]["search"]["qps"], 1000 / 6.0)
    assert (tmp_path / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_ann_recall_on_hand_made_runs():
    from keytok.evaluation.bench import ann_recall

    exact = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 1.0, "b": 1.0}, "q3": {}}
    approx = {"q1": {"a": 3.0, "c": 2.5, "d": 2.0}, "q2": {"b": 1.0, "a": 0.5}}
    # q1: top-2 {a, b} against {a, c}: 1/2; q2: {a, b} against {a, b}: 1; q3 has no exact hits and is left out
    assert ann_recall(approx, exact, 2) == pytest.approx(0.75)
    assert ann_recall({}, exact, 2) == 0.0
