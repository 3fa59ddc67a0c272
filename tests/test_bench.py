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
        assert r.spec
    # Native sparse and Lucene score the same integer vectors: same quality.
    by = {r.system: r for r in result.rows}
    assert by["bm25 (lucene)"].spec == "bm25"
    fused = next(r for r in result.rows if r.system.startswith("bm25+keytok = "))
    assert fused.spec == "bm25+keytok --fusion minmax --weight bm25=1 --weight sparse:expanded=0.1"
    # HNSW32 over 40 vectors links every node to every other: its search is exact. It is no system of the
    # index (keytok search cannot run it), so it is measured in the context, not as a row.
    assert not any("HNSW" in s for s in systems)
    ann = result.context["ann"]
    assert (
        ann["recall@10_against_flat"] == 1.0 and ann["nDCG@10"] == by["dense (FAISS Flat)"].quality["nDCG@10"]
    )
    assert by["sparse native, expanded queries"].quality["nDCG@10"] == pytest.approx(
        by["lucene impact, expanded queries"].quality["nDCG@10"], abs=0.02
    )
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("|")]
    assert table == format_table(result.rows).splitlines() and len(table) == len(result.rows) + 2
    saved = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["system"], r["quality"]) for r in saved] == [(r.system, r.quality) for r in result.rows]
    assert (out / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_rerun_reuses_document_embeddings(small_beir, tiny_model_dir, tmp_path, monkeypatch):
    from keytok.evaluation.bench import run_bench

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    args = dict(model=str(tiny_model_dir), method="mean", dtype="fp32", progress=False, encode_sample=2)
    first = run_bench(small_beir, tmp_path / "a", kinds=("sparse", "dense"), **args)
    again = run_bench(small_beir, tmp_path / "b", kinds=("sparse", "dense"), **args)
    # Queries are encoded by search itself, as keytok search encodes them, so they are not cached.
    assert again.context["build"]["tokens_encoded"] == 0  # documents: every chunk from the cache
    assert [r.quality for r in again.rows] == [r.quality for r in first.rows]


def _row(system: str, ndcg: float, ms: float, encode_ms: float = 0.0, spec: str = "") -> BenchRow:
    quality = {"nDCG@10": ndcg, "R@100": ndcg + 0.25, "RR@10": ndcg / 2}
    latency = Latency.from_seconds([ms / 1000] * 4)
    return BenchRow(system, quality, latency, encode_ms, 3 * 2**20, 1.5, spec=spec)


def test_report_of_hand_made_rows(tmp_path):
    rows = [
        _row("dense (FAISS Flat)", 0.2, 1.0, encode_ms=10.0, spec="dense"),
        _row("sparse native, expanded queries", 0.3, 2.0, encode_ms=10.0, spec="sparse:expanded"),
        _row("bm25 (lucene)", 0.4, 4.0, spec="bm25"),
        _row(
            "bm25+keytok = bm25+sparse (minmax, weights 1/0.1)",
            0.5,
            6.0,
            encode_ms=10.0,
            spec="bm25+keytok --fusion minmax --weight bm25=1 --weight sparse:expanded=0.1",
        ),
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


@pytest.fixture(scope="module")
def judged_beir(tmp_path_factory):
    """A handful of documents and queries with hand-written graded qrels: every query shares words with
    some document (so each system returns hits for each), and no query id is a document id."""
    root = tmp_path_factory.mktemp("judged")
    (root / "qrels").mkdir()
    rng = np.random.default_rng(7)
    topics = WORDS[27:]
    docs = []
    for i in range(24):
        words = list(rng.choice(topics, size=6)) + list(rng.choice(WORDS[:27], size=6))
        rng.shuffle(words)
        docs.append({"_id": f"doc{i}", "title": f"doc {i}", "text": " ".join(words)})
    queries = {
        "q1": "vitamin d deficiency bone loss",
        "q2": "aspirin reduces risk of heart attack",
        "q3": "cancer patients treatment study",
        "q4": "gene protein cell",
        "q5": "the cat sat on the mat",
        "q6": "dog ran in the park",
    }
    qrels = ["q1\tdoc0\t2", "q1\tdoc5\t1", "q2\tdoc3\t1", "q2\tdoc9\t2", "q3\tdoc1\t1", "q3\tdoc14\t1"]
    qrels += ["q4\tdoc7\t2", "q4\tdoc20\t1", "q5\tdoc11\t1", "q6\tdoc2\t1", "q6\tdoc23\t2"]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, t in queries.items()) + "\n"
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return root


def test_every_row_is_the_run_keytok_search_writes(judged_beir, tiny_model_dir, tmp_path, monkeypatch):
    """Bench = search: each row's nDCG@10 in results.json is the ir-measures score of the TREC run that
    ``keytok search INDEX --queries … --system SPEC --run FILE`` writes on the bench's own index."""
    pytest.importorskip("pyserini")
    import shlex

    import ir_measures

    from keytok.cli.main import main
    from keytok.evaluation.bench import run_bench

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    run_bench(
        judged_beir, out, model=str(tiny_model_dir), method="mean", dtype="fp32", progress=False,
        encode_sample=2, depth=20, fusion="zscore", ann=None,
    )  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    rows, ctx = saved["rows"], saved["context"]
    assert len(rows) == 19  # every row of SYSTEM_ROWS: the index holds every engine
    qrels: dict[str, dict[str, int]] = {}
    for line in (judged_beir / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, grade = line.split("\t")
        qrels.setdefault(q, {})[d] = int(grade)
    for n, row in enumerate(rows):
        run_file = tmp_path / f"run{n}.trec"
        argv = ["search", ctx["index"], "--queries", str(judged_beir), "--qrels-split", "test"]
        argv += ["-k", str(ctx["depth"]), "--run", str(run_file), "--system", *shlex.split(row["spec"])]
        assert main(argv) == 0, row["spec"]
        run = list(ir_measures.read_trec_run(str(run_file)))
        assert {r.query_id for r in run} == {"q1", "q2", "q3", "q4", "q5", "q6"}, row["spec"]
        score = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
        assert row["quality"]["nDCG@10"] == pytest.approx(score, rel=0, abs=1e-12), (
            row["system"],
            row["spec"],
        )
    assert {r["spec"].split()[0] for r in rows if "--fusion" in r["spec"]} >= {
        "bm25+keytok",
        "bm25+keytok-free",
    }
    assert all("--fusion zscore" in r["spec"] for r in rows if "+" in r["spec"].split()[0])


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_bench_times_the_query_path_keytok_search_runs(
    small_beir, tiny_model_dir, tmp_path, monkeypatch, backend
):
    """The model column runs queries as keytok search does: results.json and the header name the backend and
    precision of the encoder that search (``--model-backend``) opens on the bench's index."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from keytok import Retriever
    from keytok.cli.main import main
    from keytok.evaluation.bench import query_model_record

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    argv = [
        "bench",
        str(small_beir),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--method",
        "prompteol",
    ]
    argv += ["--dtype", "fp32", "--kinds", "sparse,dense", "--ann", "none", "--backend", backend]
    assert main(argv) == 0
    ctx = json.loads((out / "results.json").read_text())["context"]
    searcher = Retriever.open(ctx["index"], backend=backend).searcher  # as keytok search opens it
    want = query_model_record(searcher.encoder)
    same = ("backend", "precision", "prompt_cache")  # the threads follow the load average at the time
    assert {k: ctx["query_model"][k] for k in same} == {k: want[k] for k in same}
    assert want["backend"] == ("torch" if backend == "auto" else "onnx")
    assert want["prompt_cache"] == (backend == "auto")  # prompteol on torch: the prompt's keys/values cached
    assert ctx["query_encode_ms_alone_p50"] > 0
    header = (out / "report.md").read_text().splitlines()[4]
    assert header.startswith(f"Queries: model backend {want['backend']} ({want['precision']}, ")
    assert ("--model-backend onnx" in ctx["reproduce"]) == (backend == "onnx")


def test_without_matplotlib_the_report_is_written_and_says_why_there_is_no_picture(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(
        sys.modules, "matplotlib", None
    )  # what `import matplotlib` meets where it is not installed
    ctx = {"corpus": "/data/mini", "split": "test", "queries": 4, "model": "m", "method": "mean"}
    ctx |= {"precision": "fp32 weights on cpu", "build_seconds": 1.5}
    write_report(BenchResult([_row("bm25 (lucene)", 0.4, 4.0, spec="bm25")], ctx), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "No picture: matplotlib is not installed (pip install 'keytok[plot]')." in report
    assert "quality_vs_latency.png" not in report and not (tmp_path / "quality_vs_latency.png").exists()
    assert (tmp_path / "results.json").exists()
