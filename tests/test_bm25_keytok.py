"""BM25 + key tokens on the tiny model: document expansion, model-weighted terms, feedback queries, fusion.

Real engines throughout (Lucene BM25, the native index); the reference values are computed here from the
definitions, by brute force.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_index_pipeline import QUERIES, _cli, _write_corpus

from keytok.engines.java import lucene_available
from keytok.engines.sparse import SparseIndex
from keytok.errors import KeytokError
from keytok.pipeline.searcher import Searcher

pytestmark = pytest.mark.skipif(not lucene_available(), reason="the lucene extra is not installed")
KINDS = "sparse,bm25,bm25x,impact"


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    """An isolated KEYTOK_CACHE and one CPU for this module (see conftest)."""
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("beir") / "mini", 60)


@pytest.fixture(scope="module")
def built(corpus, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "mini"
    rc = _cli(
        "index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", KINDS,
        "-K", 24, "-M", 8, "--impact-expansion", 12, "--expansion-words", 8, "--chunk-size", 16, "--no-progress", "--dtype", "fp32",
    )  # fmt: skip
    assert rc == 0
    return out


def _docs(corpus: Path) -> dict[str, str]:
    from keytok.data.beir import load_corpus

    return {d.id: d.full_text for d in load_corpus(corpus)}


def _expansions(searcher: Searcher, corpus: Path) -> dict[str, list[str]]:
    """Each document's expansion words, recomputed from the stored key-token vectors and the word rules."""
    from keytok.representations.expansion import corpus_words, key_token_words, token_words

    native = searcher.engine("sparse")
    enc = searcher.sparse_encoder
    texts = _docs(corpus)
    words = token_words(enc.tokenizer, enc.vocab_size, corpus_words(texts.values()))
    n = int(searcher.info["bm25x"]["expansion_words"])
    out = {}
    for d in texts:
        tok, imp = native.doc_vector(d)
        out[d] = [w for w, _ in key_token_words(tok, imp.astype(np.float64), words, n)]
    return out


def test_expanded_document_is_found_by_a_word_it_lacks(built: Path, corpus: Path) -> None:
    searcher = Searcher(built)
    texts = _docs(corpus)
    found = 0
    for doc_id, words in _expansions(searcher, corpus).items():
        own = {w.lower() for w in re.findall(r"\w+", texts[doc_id])}
        for w in words:
            # "lacks": not the word, nor any form the analyzer stems to the same term
            if w in own or not w.isalpha() or searcher.engine("bm25").explain(w, doc_id):
                continue
            plain = [h.doc_id for h in searcher.search_batch({"q": w}, k=60, backend="bm25")["q"]]
            expanded = searcher.search_batch({"q": w}, k=60, backend="bm25x", explain=True)["q"]
            if not expanded or doc_id not in [h.doc_id for h in expanded]:
                continue  # e.g. a stopword, dropped by the analyzer
            assert doc_id not in plain  # BM25 over the text alone cannot find it
            hit = next(h for h in expanded if h.doc_id == doc_id)
            assert hit.matched and hit.matched[0][1] > 0  # the analysed word and its BM25 weight
            found += 1
            break
    assert found >= 3


def test_impact_index_equals_brute_force(built: Path, corpus: Path) -> None:
    import torch

    from keytok.representations.impact import model_weighted_terms

    searcher = Searcher(built)
    enc = searcher.sparse_encoder
    texts = _docs(corpus)
    ids = list(texts)
    emb = searcher.encoder.encode([texts[d] for d in ids], show_progress=False)
    vectors = model_weighted_terms(
        enc, emb, [texts[d] for d in ids], expansion=int(searcher.info["impact"]["expansion"])
    )
    # 1. one document's weights from the definition: softplus(logit - the (X+1)-th logit), own tokens kept
    x = int(searcher.info["impact"]["expansion"])
    adj = enc.adjust(emb[:1])
    logits = (torch.as_tensor(adj) @ enc.encoder.head_model.lm_head_weight.float().T).numpy()[0]
    special = sorted(enc.special_ids)
    logits_ns = np.delete(logits, special)
    tau = np.sort(logits_ns)[::-1][x]
    own = enc.own_tokens(texts[ids[0]])
    row = vectors[0].toarray()[0]
    np.testing.assert_allclose(row[own], np.logaddexp(0, logits[own] - tau), rtol=1e-4, atol=1e-5)
    assert np.all(row[own] > 0)  # every own token kept, however low its logit
    # 2. the impact engine's top-10 == brute force over its stored integer vectors
    native = SparseIndex.open(built / "impact")
    doc_ids, ints = native.int_vectors()
    stored = ints.toarray().astype(np.float64) * native.scale
    np.testing.assert_allclose(stored[doc_ids.index(ids[0])], row, atol=native.scale / 2 + 1e-6)
    qv = searcher.query_vectors(list(QUERIES.values()), "llm-free", backend="impact")
    for r in range(qv.shape[0]):
        q = qv[r].toarray()[0].astype(np.float64)
        ref = stored @ q
        order = np.lexsort((np.arange(ref.size), -ref))
        want = [doc_ids[i] for i in order[:10] if ref[i] > 0]
        got = native.search(qv[r], 10)
        assert [d for d, _ in got] == want
        np.testing.assert_allclose([s for _, s in got], ref[order[: len(want)]], rtol=2e-5, atol=1e-6)


def test_feedback_query_is_own_tokens_plus_bm25_documents_key_tokens(built: Path) -> None:
    searcher = Searcher(built)
    enc = searcher.sparse_encoder
    text = QUERIES["q1"]
    got = searcher.query_vectors([text], "feedback").toarray()[0]
    own = enc.encode_queries([text], searcher.idf, mode="llm-free").toarray()[0]
    top = [d for d, _ in searcher.engine("bm25").search(text, enc.feedback_docs)]
    native = searcher.engine("sparse")
    fb = np.zeros_like(own)
    for d in top:
        tok, imp = native.doc_vector(d)
        fb[tok] += imp * native.scale
    fb = fb / len(top) * searcher.idf
    keep = np.argsort(-fb, kind="stable")[: enc.feedback_terms]
    cut = np.zeros_like(fb)
    cut[keep] = fb[keep]
    want = own / own.max() + cut / cut.max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # no model was loaded: feedback queries are LLM-free
    assert searcher._encoder is None


def test_fused_system_matches_fusing_its_runs(built: Path) -> None:
    from keytok.engines.fusion import fuse
    from keytok.pipeline.kinds import SYSTEM_ALIASES

    searcher = Searcher(built)
    parts = searcher.resolve_system("bm25+keytok")
    assert "+".join(parts) == SYSTEM_ALIASES["bm25+keytok"]
    # this index has no dense engine: the alias names its parts, and the missing one is a one-line error
    assert SYSTEM_ALIASES["bm25+keytok+dense"] == "bm25+sparse:expanded+dense"
    with pytest.raises(KeytokError, match="has no dense index"):
        searcher.resolve_system("bm25+keytok+dense")
    method, weights = searcher.fusion_settings(parts)
    runs = [
        {h.doc_id: h.score for h in searcher.search_batch({"q": QUERIES["q2"]}, 100, backend=p)["q"]}
        for p in parts
    ]
    want = list(fuse([{"q": r} for r in runs], method, weights, depth=10)["q"].items())
    hits = searcher.search(QUERIES["q2"], 10, backend="bm25+keytok")
    assert [(h.doc_id, round(h.score, 9)) for h in hits] == [(d, round(s, 9)) for d, s in want]
    top = hits[0]
    assert set(top.sources) == set(parts) and sum(top.sources.values()) == pytest.approx(top.score)
    labels = {t.rsplit("(", 1)[1].rstrip(")") for t, _ in top.matched}
    assert labels <= set(parts) and "bm25" in labels  # BM25's terms and the key tokens, each labelled


def test_search_cli_fused_system_prints_sources_and_writes_trec(
    built: Path, corpus: Path, tmp_path, capsys
) -> None:
    assert _cli("search", built, QUERIES["q1"], "--system", "bm25+keytok", "-k", 3) == 0
    out = capsys.readouterr().out
    assert "from: bm25" in out and "matched:" in out and "(bm25)" in out
    run = tmp_path / "run.trec"
    rc = _cli(
        "search", built, "--queries", corpus, "--system", "bm25+sparse:feedback", "--fusion", "rrf",
        "--weight", "sparse:feedback=0.5", "--run", run, "-k", 5,
    )  # fmt: skip
    assert rc == 0
    lines = run.read_text().splitlines()
    assert lines and all(len(x.split()) == 6 for x in lines)
    assert {x.split()[0] for x in lines} == set(QUERIES)
    assert _cli("search", built, "q", "--system", "bm25+nonsense") == 1
    assert "not an engine" in capsys.readouterr().err
    assert _cli("search", built, "q", "--system", "bm25+dense") == 1
    assert "has no dense index" in capsys.readouterr().err


def test_lucene_engines_open_by_a_relative_path_after_chdir(built: Path, monkeypatch) -> None:
    # The JVM resolves relative paths against the directory it started in, not Python's current one.
    Searcher(built).search("vitamin", 1, backend="bm25")  # the JVM is running from here on
    monkeypatch.chdir(built.parent)
    searcher = Searcher(built.name)
    assert searcher.search("vitamin bone", 3, backend="bm25") == Searcher(built).search(
        "vitamin bone", 3, backend="bm25"
    )
    assert searcher.engine("bm25").explain(
        "vitamin bone", searcher.search("vitamin bone", 1, backend="bm25")[0].doc_id
    )
