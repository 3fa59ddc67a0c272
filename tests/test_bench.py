"""keytok bench end to end on a small BEIR folder with the tiny model (every row, the report files)."""

import json

import numpy as np
import pytest

WORDS = [
    "vitamin",
    "deficiency",
    "bone",
    "loss",
    "cat",
    "sat",
    "mat",
    "dog",
    "ran",
    "park",
    "aspirin",
    "risk",
    "heart",
    "attack",
    "protein",
    "cell",
    "gene",
    "cancer",
]


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
        assert 0.0 <= r.quality["nDCG@10"] <= 1.0
        assert r.search.queries == 9
        assert r.index_bytes > 0
    # Native sparse and Lucene score the same integer vectors: same quality.
    by = {r.system: r for r in result.rows}
    assert by["sparse native, expanded queries"].quality["nDCG@10"] == pytest.approx(
        by["lucene impact, expanded queries"].quality["nDCG@10"], abs=0.02
    )
    assert (out / "report.md").read_text().count("|") > 50
    assert json.loads((out / "results.json").read_text())["rows"]
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
