"""The public Python API (``import keytok``) on the tiny random Llama (fast) and the packaged SmolLM2 (slow).

Each check compares the API with the inner code it wraps, or with what ``keytok index build`` writes, so the
two cannot drift.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import keytok
from keytok import KeytokError

TEXTS = [
    "the cat sat on the mat",
    "vitamin d deficiency is linked to bone loss",
    "aspirin reduces the risk of heart attack in older adults",
    "the dog ran in the park",
    "protein in cells and genes of cancer patients",
    "results of the study increased the effect of treatment",
]
IDS = [f"d{i}" for i in range(len(TEXTS))]
QUERIES = ["cat on a mat", "bone loss and vitamin d", "heart attack risk"]
SMALL = {"k_doc": 12, "m_query": 6}  # sparse settings small enough for the 68-token tiny vocabulary


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    """A temporary embedding cache, and one CPU (two threads on two shared cores spin-wait on each other).

    Only the embedding cache moves: the packaged model is read from keytok's cache, where ``make setup``
    converted it (a fresh cache would convert it again, a minute).
    """
    root = tmp_path_factory.mktemp("embedding-cache")
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("keytok.encoding.cache.default_cache_root", lambda: root)
            yield root
    finally:
        os.sched_setaffinity(0, cpus)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> keytok.KeyTokenModel:
    return keytok.KeyTokenModel(tiny_model_dir, "mean", dtype="fp32", device="cpu", **SMALL)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> keytok.Retriever:
    """An index folder of TEXTS built through the API (sparse + dense)."""
    out = tmp_path_factory.mktemp("indexes") / "api"
    fresh = keytok.KeyTokenModel(model, "mean", dtype="fp32", device="cpu", **SMALL)
    return keytok.build_index(dict(zip(IDS, TEXTS, strict=True)), out, model=fresh, kinds="sparse,dense")


# ----------------------------------------------------------------------------------------------- the package
def test_import_is_cheap_and_names_the_public_api() -> None:
    code = (
        "import sys, keytok\n"
        "assert not {'torch', 'transformers', 'faiss'} & set(sys.modules), sorted(sys.modules)\n"
        "print(','.join(keytok.__all__))\n"
        "keytok.KeyTokenModel, keytok.Retriever, keytok.build_index\n"
        "assert 'torch' not in sys.modules  # not even then: torch loads when a model is made\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names = set(out.strip().split(","))
    assert names == {
        "KeyTokenModel", "KeyToken", "Calibration", "SparseIndex", "DenseIndex", "Retriever", "Hit",
        "build_index", "merge_indexes", "add_documents", "delete_documents", "write_trec_run", "KeytokError",
        "export_model", "train",
    }  # fmt: skip
    assert set(dir(keytok)) >= names | {"__version__"}
    with pytest.raises(AttributeError):
        keytok.no_such_name  # noqa: B018


def test_public_names_are_the_inner_objects() -> None:
    from keytok.engines.sparse import SparseIndex
    from keytok.errors import KeytokError as Inner
    from keytok.pipeline.searcher import Hit, write_trec_run
    from keytok.representations.projection import KeyToken

    assert keytok.KeyToken is KeyToken and keytok.Hit is Hit and keytok.SparseIndex is SparseIndex
    assert keytok.write_trec_run is write_trec_run and keytok.KeytokError is Inner


# ----------------------------------------------------------------------------------------------- the model
def test_encode_is_the_encoders_embedding(model, tiny_model_dir: Path) -> None:
    from keytok.encoding.encoder import Encoder

    inner = Encoder(str(tiny_model_dir), "mean", dtype="fp32", device="cpu").encode(TEXTS)
    emb = model.encode(TEXTS)
    assert emb.shape == (len(TEXTS), model.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, inner, rtol=1e-5, atol=1e-5)
    one = model.encode(TEXTS[1])
    assert one.shape == (model.dim,)
    np.testing.assert_allclose(one, emb[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.encode(TEXTS, normalize=True), axis=1), 1.0, rtol=1e-5)
    assert model.last_stats is not None and model.last_stats.texts == len(TEXTS)
    assert model.name == str(tiny_model_dir) and model.method.name == "mean" and "fp32" in model.precision
    with pytest.raises(KeytokError, match="empty"):
        model.encode(["fine", "  "])


def test_key_tokens_are_the_projection_codes(model) -> None:
    from keytok.representations.projection import key_tokens

    rows = model.key_tokens(TEXTS[:3], k=5)
    assert rows == key_tokens(model.encoder, TEXTS[:3], k=5)
    alone = model.key_tokens(TEXTS[0], k=5)  # one text alone embeds as in a batch, up to float rounding
    assert [t.token_id for t in alone] == [t.token_id for t in rows[0]]
    assert [t.score for t in alone] == pytest.approx([t.score for t in rows[0]], rel=1e-5)
    top = rows[1]
    assert [t.rank for t in top] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(top))
    own = set(model.tokenizer(TEXTS[1])["input_ids"])
    assert all(t.in_input == (t.token_id in own) for t in top)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(KeytokError, match="k must be"):
            model.key_tokens("the cat", k=bad)


def test_document_vectors_are_what_the_index_stores(model, built) -> None:
    docs = keytok.KeyTokenModel(model, "mean", dtype="fp32", device="cpu", **SMALL).encode_document(TEXTS)
    assert sp.isspmatrix_csr(docs) and docs.shape == (len(TEXTS), model.vocab_size)
    assert docs.dtype == np.float32 and (docs.data > 0).all()
    assert (np.diff(docs.indptr) <= SMALL["k_doc"]).all()
    special = set(model.tokenizer.all_special_ids)
    assert not special & set(docs.indices.tolist())
    native = built.searcher.engine("sparse")
    for i, doc_id in enumerate(IDS):
        tokens, impacts = native.doc_vector(doc_id)
        row = docs[i]
        stored = dict(zip(tokens.tolist(), (impacts * native.scale).tolist(), strict=True))
        mine = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        assert set(stored) <= set(mine)  # weights that round to 0 are dropped from the index
        for t, w in stored.items():
            assert abs(w - mine[t]) <= native.scale / 2 + 1e-4


def test_query_vectors_are_the_searchers(built) -> None:
    m = built.model
    s = built.searcher
    for expand, mode in ((True, "expanded"), (False, "llm-free")):
        mine = m.encode_query(QUERIES, expand=expand, idf=s.idf)
        inner = s.query_vectors(QUERIES, mode)
        assert mine.shape == inner.shape and abs(mine - inner).max() < 1e-6
    one = m.encode_query(QUERIES[0], idf=s.idf)
    assert one.shape == (1, m.vocab_size)


def test_idf_from_document_vectors(model) -> None:
    from keytok.representations.sparse import document_frequency, idf_weights

    docs = model.encode_document(TEXTS)
    idf = idf_weights(document_frequency(docs), docs.shape[0])
    a = model.encode_query(QUERIES, idf=docs)
    b = model.encode_query(QUERIES, idf=idf)
    assert abs(a - b).max() == 0
    plain = model.encode_query(QUERIES, expand=False)
    assert set(plain.data.tolist()) == {1.0}  # without idf every own token weighs 1


def test_centred_queries_need_the_corpus_mean_first(tiny_model_dir: Path) -> None:
    m = keytok.KeyTokenModel(tiny_model_dir, "mean", dtype="fp32", device="cpu", center=0.5, **SMALL)
    with pytest.raises(KeytokError, match="corpus mean"):
        m.encode_query("cat")
    assert m.encode_query("cat", expand=False).nnz > 0  # LLM-free queries do not project
    mean = m.fit_center(TEXTS)
    np.testing.assert_allclose(mean, m.encode(TEXTS).mean(axis=0), rtol=1e-4, atol=1e-5)
    assert m.encode_query("cat").nnz > 0
    uncentred = keytok.KeyTokenModel(m, "mean", dtype="fp32", device="cpu", center=0.0, **SMALL)
    assert uncentred.encode_query("cat").nnz > 0 and uncentred.center_mean is None


def test_first_document_batch_fixes_the_mean(tiny_model_dir: Path) -> None:
    m = keytok.KeyTokenModel(tiny_model_dir, "mean", dtype="fp32", device="cpu", **SMALL)
    first = m.encode_document(TEXTS[:3])
    mean = m.center_mean.copy()
    np.testing.assert_allclose(mean, m.encode(TEXTS[:3]).mean(axis=0), rtol=1e-4, atol=1e-5)
    m.encode_document(TEXTS[3:])
    np.testing.assert_array_equal(m.center_mean, mean)  # later batches and queries share it
    again = m.encode_document(TEXTS[:3])
    assert abs(first - again).max() < 1e-5


def test_decode_lists_tokens_by_weight(model) -> None:
    docs = model.encode_document(TEXTS)
    row = docs[1]
    decoded = model.decode(row)
    assert len(decoded) == row.nnz
    weights = [w for _, w in decoded]
    assert weights == sorted(weights, reverse=True)
    assert sorted(weights) == pytest.approx(sorted(row.data.tolist()))
    from keytok.representations.sparse import token_display

    top_id = int(row.indices[np.argmax(row.data)])
    assert decoded[0][0] == token_display(model.tokenizer, top_id)
    assert model.decode(row.toarray()[0]) == decoded
    assert model.decode(dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))) == decoded
    assert model.decode(row, k=2) == decoded[:2]
    with pytest.raises(KeytokError, match="one vector"):
        model.decode(docs)
    with pytest.raises(KeytokError, match="vocabulary"):
        model.decode({model.vocab_size + 5: 1.0})


def test_align_is_the_alignment_report(model) -> None:
    from keytok.analyses.alignment import alignment_report

    report = model.align(TEXTS, ks=(1, 3))
    inputs = [model.encoder.input_token_ids(t) for t in TEXTS]
    _, ranked = model.encoder.logits_topk(model.encode(TEXTS), max(len(x) for x in inputs))
    assert report == pytest.approx(alignment_report(inputs, [list(r) for r in ranked], ks=(1, 3)))
    assert set(report) == {"n", "n_skipped", "hit@1", "hit@3", "lar", "gar"}
    with pytest.raises(KeytokError):
        model.align(TEXTS, ks=(0,))


def test_calibration_fit_save_and_apply(model, tiny_model_dir: Path, tmp_path: Path) -> None:
    from keytok.representations.projection import key_tokens

    messages: list[str] = []
    cal = model.calibrate(TEXTS, embedder="last", report=messages.append)
    assert isinstance(cal, keytok.Calibration) and cal.mode == "add" and cal.dim == model.dim
    assert cal.meta["model"] == model.fingerprint and cal.meta["method"] == model.method.key()
    assert len(messages) == 3 and messages[-1].startswith("variation along the first components: v1=")
    path = cal.save(tmp_path / "cal.safetensors")
    calibrated = keytok.KeyTokenModel(tiny_model_dir, "mean", dtype="fp32", device="cpu", calibration=path)
    assert calibrated.calibration.sha256 == cal.sha256 and calibrated.meta["calibration_sha256"] == cal.sha256
    assert calibrated.key_tokens(TEXTS[:2], k=4) == key_tokens(model.encoder, TEXTS[:2], k=4, calibration=cal)
    with pytest.raises(KeytokError, match="method"):
        keytok.KeyTokenModel(tiny_model_dir, "last", dtype="fp32", device="cpu", calibration=path)
    removal = model.calibrate(TEXTS, mode="remove", strength=0.5)
    assert removal.mode == "remove" and removal.strength == 0.5


# ----------------------------------------------------------------------------------------------- indexes
def test_sparse_index_over_api_vectors_is_exact(model, tmp_path: Path) -> None:
    docs = model.encode_document(TEXTS)
    index = keytok.SparseIndex.build(tmp_path / "sp", IDS, docs, model.meta)
    assert index.meta["model_sha256"] == model.fingerprint
    q = model.encode_query(QUERIES, idf=docs)
    ints = sp.csr_matrix((np.rint(docs.data / index.scale), docs.indices, docs.indptr), shape=docs.shape)
    for r in range(len(QUERIES)):
        hits = index.search(q[r], k=len(IDS))
        brute = (ints @ q[r].T).toarray().ravel() * index.scale
        best = [IDS[i] for i in np.lexsort((np.arange(len(IDS)), -brute)) if brute[i] > 0]
        assert [d for d, _ in hits] == best
    reopened = keytok.SparseIndex.open(tmp_path / "sp", expected_meta=model.meta)
    assert len(reopened) == len(IDS)


def test_dense_index_over_api_embeddings(model) -> None:
    index = keytok.DenseIndex.build(None, IDS, model.encode(TEXTS), model.meta)
    for i, text in enumerate(TEXTS):
        assert index.search(model.encode(text), k=1)[0][0] == IDS[i]


def test_retriever_search_is_the_searchers(built) -> None:
    from keytok.pipeline.searcher import Searcher

    inner = Searcher(built.path)
    for system in ("sparse", "dense"):
        for q in QUERIES:
            mine = built.search(q, k=3, system=system)
            theirs = inner.search(q, k=3, backend=system)
            assert [(h.doc_id, h.score, h.matched) for h in mine] == [
                (h.doc_id, h.score, h.matched) for h in theirs
            ]
    assert all(isinstance(h, keytok.Hit) for h in built.search(QUERIES[0]))
    batch = built.search_batch(QUERIES, k=2)
    assert list(batch) == ["0", "1", "2"]
    assert [h.doc_id for h in batch["1"]] == [h.doc_id for h in built.search(QUERIES[1], k=2)]
    assert list(built.search_batch({"q9": QUERIES[2]}, k=1)) == ["q9"]
    with pytest.raises(KeytokError, match="no-such-system"):  # the searcher's own check of system names
        built.search(QUERIES[0], system="no-such-system")
    with pytest.raises(KeytokError, match="lucene"):
        built.search(QUERIES[0], system="lucene")


def test_explain_sums_to_the_sparse_score(built) -> None:
    hit = built.search(QUERIES[1], k=1)[0]
    parts = built.explain(QUERIES[1], hit.doc_id)
    assert parts and sum(c for _, c in parts) == pytest.approx(hit.score, rel=1e-5)
    assert parts == hit.matched
    with pytest.raises(KeytokError, match="not in index"):
        built.explain(QUERIES[1], "no-such-doc")


def test_build_index_records_the_models_settings(built, model) -> None:
    info = built.info
    assert info["docs"] == len(TEXTS) and info["kinds"] == ["sparse", "dense"]
    assert info["model_sha256"] == model.fingerprint and info["method"] == model.method.key()
    assert info["sparse"]["K"] == SMALL["k_doc"] and info["sparse"]["M"] == SMALL["m_query"]
    assert built.summary is not None and built.summary.docs == len(TEXTS)
    assert "6 documents" in repr(built)


def test_build_index_from_a_list_a_file_or_titles(tiny_model_dir: Path, tmp_path: Path) -> None:
    r = keytok.build_index(
        TEXTS[:3], tmp_path / "a", model=tiny_model_dir, method="mean", kinds="sparse", dtype="fp32", k_doc=8
    )
    assert r.searcher.engine("sparse").doc_ids == ["0", "1", "2"] and r.info["sparse"]["K"] == 8
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"_id": "x", "title": "cat", "text": "the cat sat"}\n{"_id": "y", "title": "", "text": "a dog ran"}\n'
    )
    r2 = keytok.build_index(corpus, tmp_path / "b", model=tiny_model_dir, method="mean", kinds="sparse")
    assert r2.searcher.engine("sparse").doc_ids == ["x", "y"]
    docs = {"x": {"title": "cat", "text": "the cat sat"}, "y": {"text": "a dog ran"}}
    r3 = keytok.build_index(docs, tmp_path / "c", model=tiny_model_dir, method="mean", kinds="dense")
    assert {h.doc_id: h.title for h in r3.search("cat", k=2, system="dense")} == {"x": "cat", "y": ""}
    with pytest.raises(KeytokError, match="already exists"):
        keytok.build_index(docs, tmp_path / "c", model=tiny_model_dir, method="mean", kinds="dense")
    with pytest.raises(KeytokError, match="document 'z'"):
        keytok.build_index({"z": 3}, tmp_path / "d", model=tiny_model_dir, kinds="sparse")
    assert not (tmp_path / "d").exists()


def test_retriever_open_checks_the_model(built, tiny_model_dir: Path) -> None:
    same = keytok.KeyTokenModel(tiny_model_dir, "mean", dtype="fp32", device="cpu")
    with keytok.Retriever.open(built.path, model=same) as r:
        assert r.model.encoder is same.encoder
        assert [h.doc_id for h in r.search(QUERIES[0], k=2)] == [
            h.doc_id for h in built.search(QUERIES[0], k=2)
        ]
    other = keytok.KeyTokenModel(same, "last", dtype="fp32", device="cpu")
    with pytest.raises(KeytokError, match="built with method"):
        keytok.Retriever.open(built.path, model=other)
    with pytest.raises(KeytokError, match="does not exist"):
        keytok.Retriever.open(built.path.parent / "missing")


def test_trec_run_of_a_search_batch(built, tmp_path: Path) -> None:
    results = built.search_batch({"q1": QUERIES[0], "q2": QUERIES[1]}, k=3)
    path = keytok.write_trec_run(tmp_path / "run.txt", results, tag="api")
    lines = [line.split() for line in path.read_text().splitlines()]
    assert [(q, d, int(r)) for q, _, d, r, _, _ in lines] == [
        (q, h.doc_id, h.rank) for q, hits in results.items() for h in hits
    ]
    assert all(tag == "api" for *_, tag in lines)


# ----------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_packaged_model_key_tokens_and_sparse_vectors(smollm2) -> None:
    from keytok.encoding.encoder import Encoder
    from keytok.representations.projection import key_tokens

    text = "Vitamin D deficiency is linked to bone loss."
    m = keytok.KeyTokenModel(smollm2, dtype="fp32", device="cpu")
    assert m.method.name == "prompteol" and m.dim == 576 and m.vocab_size == 49152
    top = m.key_tokens(text, k=10)
    assert top == key_tokens(Encoder(smollm2, "prompteol", dtype="fp32", device="cpu"), [text], k=10)[0]
    assert top[0].display == "Vitamin" and top[0].in_input
    docs = m.encode_document([text, "Aspirin reduces the risk of heart attack."])
    q = m.encode_query("low vitamin D and bones", idf=docs)
    tokens = [t for t, _ in m.decode(q, k=20)]
    assert {"vitamin", "▁vitamin"} & set(tokens)
    scores = (docs @ q.T).toarray().ravel()
    assert scores[0] > scores[1]
