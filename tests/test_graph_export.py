"""The encoder as an ONNX graph: export, the graph's outputs against keytok's, and the onnx backends."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = [
    "vitamin d deficiency is linked to bone loss",
    "the cat sat on the mat",
    "aspirin reduces the risk of heart attack in older adults",
    "protein",
]


@pytest.fixture(autouse=True, scope="module")
def _one_cpu(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


def _run_graph(folder, texts):
    """Tokenise as keytok-export.json says, with the exported tokenizer, and run the graph in ONNX Runtime:
    what another runtime does (nothing from keytok's encoder)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    rec = json.loads((folder / "keytok-export.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    t = rec["tokens"]
    rows, spans = [], []
    for text in texts:
        body = tok(text, add_special_tokens=False)["input_ids"][: t["max_text_tokens"]]
        head = t["lead"] + t["prefix"]
        rows.append(head + body + t["suffix"] + t["trail"])
        spans.append((len(head), len(head) + len(body)))
    n = max(map(len, rows))
    ids = np.full((len(rows), n), t["pad_id"], dtype=np.int64)
    mask = np.zeros((len(rows), n), dtype=np.int64)
    pool = np.zeros((len(rows), n), dtype=np.int64)
    for r, (row, (a, b)) in enumerate(zip(rows, spans, strict=True)):
        ids[r, : len(row)], mask[r, : len(row)], pool[r, a:b] = row, 1, 1
    feeds = {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {k: feeds[k] for k in rec["inputs"]}), rec


def _cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("method", ["instruct", "bellm:bidirectional=2"])
def test_exported_graph_gives_keytoks_embeddings_and_key_tokens(tiny_model, tmp_path, method):
    from keytok.encoding.encoder import Encoder
    from keytok.encoding.graph import export_onnx

    enc = Encoder(tiny_model, method, dtype="fp32", backend="torch")
    out = export_onnx(enc, tmp_path / "graph", top_k=10)
    (emb, scores, ids), rec = _run_graph(out, TEXTS)
    want = enc.encode(TEXTS)
    assert _cosines(emb, want).min() >= 0.9999
    want_scores, want_ids = enc.logits_topk(want, 10)
    assert (ids == want_ids).all()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert rec["method"] == enc.method.key() and rec["model_sha256"] == tiny_model.fingerprint
    assert "{text}" in rec["prompt_template"]


def test_cli_export_model_writes_a_graph_that_reproduces_key_tokens(tiny_model_dir, tmp_path, capsys):
    from keytok import KeyTokenModel
    from keytok.cli.main import main

    out = tmp_path / "exported"
    assert main(["export-model", str(tiny_model_dir), "--out", str(out), "--top-k", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"model.onnx", "keytok-export.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    (emb, _, ids), rec = _run_graph(out, TEXTS)
    model = KeyTokenModel(str(tiny_model_dir), dtype="fp32")
    want = model.encode(TEXTS)
    assert _cosines(emb, want).min() >= 0.9999
    assert (ids == model.encoder.logits_topk(want, 10)[1]).all()
    assert rec["method_name"] == "prompteol" and rec["pooling"] == "last"


def test_cli_export_model_bad_top_k_is_one_line(tiny_model_dir, tmp_path, capsys):
    from keytok.cli.main import main

    assert main(["export-model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--top-k", "0"]) == 1
    assert "--top-k must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_exported_default_model_reproduces_keytok(tmp_path):
    import keytok

    model = keytok.KeyTokenModel(dtype="fp32")  # the default, smollm2-135m-keytok
    out = keytok.export_model(model, tmp_path / "smollm2", top_k=32)
    (emb, _, ids), _ = _run_graph(out, TEXTS)
    want = model.encode(TEXTS)
    assert _cosines(emb, want).min() >= 0.9999
    assert (ids[:, :10] == model.encoder.logits_topk(want, 10)[1]).all()


def test_onnx_backend_matches_torch_and_reuses_the_graphs_top_k(tiny_model):
    from keytok.encoding.encoder import Encoder

    torch_enc = Encoder(tiny_model, "prompteol", dtype="fp32", backend="torch")
    onnx_enc = Encoder(tiny_model, "prompteol", dtype="fp32", backend="onnx")
    assert "ONNX Runtime" in onnx_enc.describe() and "ONNX Runtime" in onnx_enc.stats.precision
    a, b = torch_enc.encode(TEXTS), onnx_enc.encode(TEXTS)
    assert _cosines(a, b).min() >= 0.9999
    assert (torch_enc.logits_topk(a, 5)[1] == onnx_enc.logits_topk(b, 5)[1]).all()
    one = onnx_enc.encode(TEXTS[:1])
    assert onnx_enc.runner.top_for(one, 5) is not None  # the query's top-k came with its embedding
    assert onnx_enc.runner.top_for(one + 1.0, 5) is None  # an adjusted row is projected anew


def test_onnx_int8_backend_keeps_the_key_tokens_close(tiny_model):
    from keytok.encoding.encoder import Encoder

    a = Encoder(tiny_model, "mean", dtype="fp32", backend="torch").encode(TEXTS)
    enc = Encoder(tiny_model, "mean", dtype="fp32", backend="onnx-int8")
    b = enc.encode(TEXTS)
    assert enc.runner.path.name == "model.int8.onnx"
    assert _cosines(a, b).min() > 0.99


def test_auto_runs_queries_in_the_prepared_graph_and_documents_in_torch(tiny_model, tmp_path, monkeypatch):
    from keytok.encoding.encoder import Encoder
    from keytok.encoding.graph import cached_graph

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    fresh = Encoder(tiny_model, "prompteol", dtype="fp32")
    # no graph in the cache yet: torch, with no first-use export of minutes
    assert fresh.query_backend == "torch" and fresh.prompt_cache_applies(1)
    fresh.encode(TEXTS, queries=True)
    assert not (tmp_path / "cache" / "graphs").exists()
    cached_graph(fresh)  # what keytok models prepare does
    enc = Encoder(tiny_model, "prompteol", dtype="fp32")
    torch_enc = Encoder(tiny_model, "prompteol", dtype="fp32", backend="torch")
    assert enc.backend == "torch" and enc.query_backend == "onnx" and torch_enc.query_backend == "torch"
    assert "ONNX Runtime" in enc.describe(queries=True) and not enc.prompt_cache_applies(1)
    queries = enc.encode(TEXTS, queries=True)
    assert "ONNX Runtime" in enc.last_stats.precision
    want = torch_enc.encode(TEXTS, queries=True)
    assert _cosines(queries, want).min() >= 0.9999
    assert (enc.logits_topk(queries, 10)[1] == torch_enc.logits_topk(want, 10)[1]).all()
    documents = enc.encode(TEXTS)  # documents keep torch's plain forward pass, bit for bit (embedding cache)
    assert "ONNX" not in enc.last_stats.precision
    np.testing.assert_array_equal(documents, torch_enc.encode(TEXTS))
    bf16 = Encoder(tiny_model, "prompteol", dtype="bf16")  # where queries are bf16, torch keeps them
    assert bf16.query_backend == "torch"


def test_prepare_exports_the_query_graph_where_queries_run_in_fp32(tiny_model_dir, tmp_path, monkeypatch):
    from keytok.encoding.encoder import Encoder
    from keytok.encoding.graph import graph_is_cached, prepare_query_graph
    from keytok.encoding.precision import resolve_precision

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    folder = prepare_query_graph(str(tiny_model_dir))
    enc = Encoder(str(tiny_model_dir), None, dtype="auto")
    if resolve_precision("auto").name == "fp32":  # this machine's queries run in fp32: in the graph
        assert folder is not None and graph_is_cached(enc) and enc.query_backend == "onnx"
    else:
        assert folder is None and enc.query_backend == "torch"


def test_search_and_the_bench_record_use_the_query_graph(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    import keytok
    from keytok.encoding.graph import cached_graph
    from keytok.evaluation.bench import query_model_record
    from keytok.pipeline.searcher import Searcher

    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    model = keytok.KeyTokenModel(str(tiny_model_dir), "prompteol", dtype="fp32", device="cpu")
    docs = {f"d{i}": f"{t} number {i}" for i, t in enumerate(TEXTS * 3)}
    keytok.build_index(docs, tmp_path / "index", model=model, kinds="sparse,dense")
    before = Searcher(tmp_path / "index", dtype="fp32")
    assert before.encoder.query_backend == "torch"
    cached_graph(before.encoder)
    torch_side = Searcher(tmp_path / "index", dtype="fp32", backend="torch")
    graph_side = Searcher(tmp_path / "index", dtype="fp32")
    assert query_model_record(graph_side.encoder)["backend"] == "onnx"
    assert query_model_record(torch_side.encoder)["backend"] == "torch"
    queries = {f"q{i}": t for i, t in enumerate(TEXTS)}
    for system in ("dense", "sparse"):
        a = graph_side.search_batch(queries, k=5, backend=system)
        b = torch_side.search_batch(queries, k=5, backend=system)
        assert {q: [h.doc_id for h in hits] for q, hits in a.items()} == {
            q: [h.doc_id for h in hits] for q, hits in b.items()
        }
    assert "ONNX Runtime" in graph_side.encoder.last_stats.precision
    retriever = keytok.Retriever.open(tmp_path / "index", dtype="fp32")  # the API: long-lived, the graph
    retriever.search("the cat", k=3, system="dense")
    assert retriever.searcher.encoder.query_backend == "onnx"
    # keytok search encodes its queries in one call and ends: auto keeps torch there (no session to open)
    from keytok.cli.main import main

    opened = []
    real_open = keytok.Retriever.open.__func__

    def open_and_keep(cls, *args, **kwargs):
        opened.append(real_open(cls, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(keytok.Retriever, "open", classmethod(open_and_keep))
    assert main(["search", str(tmp_path / "index"), "the cat", "--backend", "dense", "--dtype", "fp32"]) == 0
    assert opened[0].searcher.encoder.query_backend == "torch"
    assert (
        main(["search", str(tmp_path / "index"), "the cat", "--backend", "dense", "--model-backend", "onnx"])
        == 0
    )
    assert opened[1].searcher.encoder.query_backend == "onnx"


def test_backend_errors_are_one_line(tiny_model):
    from keytok.encoding.encoder import Encoder
    from keytok.errors import KeytokError

    with pytest.raises(KeytokError, match="unknown backend 'tpu'"):
        Encoder(tiny_model, "mean", backend="tpu")
    with pytest.raises(KeytokError, match="computes in fp32"):
        Encoder(tiny_model, "mean", dtype="bf16", backend="onnx")


@pytest.mark.parametrize(
    "backend,says", [("torch", "backend torch: fp32 weights on cpu"), ("onnx", "ONNX Runtime")]
)
def test_tokens_verbose_says_which_backend(tiny_model_dir, capsys, backend, says):
    from keytok.cli.main import main

    argv = [
        "tokens",
        "the cat sat on the mat",
        "--model",
        str(tiny_model_dir),
        "-k",
        "3",
        "--backend",
        backend,
    ]
    assert main([*argv, "--verbose"]) == 0
    assert says in capsys.readouterr().err
    assert main(argv) == 0
    assert says not in capsys.readouterr().err
