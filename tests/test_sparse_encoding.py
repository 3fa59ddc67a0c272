"""SparseEncoder: document key-token vectors and query vectors, checked against full-vocabulary logits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from keytok.encoding.encoder import Encoder
from keytok.errors import KeytokError
from keytok.representations.calibration import Calibration
from keytok.representations.sparse import (
    SparseEncoder,
    document_frequency,
    idf_weights,
    token_display,
    transform_weights,
)

DOCS = [
    "vitamin d deficiency is linked to bone loss",
    "the cat sat on the mat",
    "aspirin reduces the risk of heart attack in older adults",
    "cancer patients in the study had increased gene effect",
    "the dog ran in the park with a cat",
]


@pytest.fixture(scope="module")
def encoder(tiny_model) -> Encoder:
    return Encoder(tiny_model, "prompteol", dtype="fp32", device="cpu", threads=1)


@pytest.fixture(scope="module")
def doc_emb(encoder: Encoder) -> np.ndarray:
    return encoder.encode(DOCS)


def _full_logits(encoder: Encoder, x: np.ndarray) -> np.ndarray:
    w = encoder.head_model.lm_head_weight.detach().float().numpy()
    return x.astype(np.float64) @ w.T.astype(np.float64)


def _brute_top(encoder: Encoder, x: np.ndarray, k: int) -> list[list[int]]:
    special = set(encoder.model.tokenizer.all_special_ids)
    logits = _full_logits(encoder, x)
    out = []
    for row in logits:
        order = [int(t) for t in np.argsort(-row, kind="stable") if int(t) not in special]
        out.append(order[:k])
    return out


@pytest.mark.parametrize("transform", ["log1p", "relu", "raw"])
def test_document_vectors_are_the_top_k_non_special_tokens(encoder, doc_emb, transform) -> None:
    k = 12
    enc = SparseEncoder(encoder, k_doc=k, transform=transform, center=0.0)
    m = enc.encode_documents_from_embeddings(doc_emb)
    assert isinstance(m, sp.csr_matrix) and m.dtype == np.float32
    assert m.shape == (len(DOCS), encoder.vocab_size)
    assert m.nnz and m.data.min() > 0
    special = set(encoder.model.tokenizer.all_special_ids)
    logits = _full_logits(encoder, doc_emb)
    for r, top in enumerate(_brute_top(encoder, doc_emb, k + 1)):
        row = m.getrow(r)
        got = set(row.indices.tolist())
        assert not got & special
        if transform == "raw":
            # shifted by the (K+1)-th logit: every kept token is positive, differences are raw differences
            assert got == set(top[:k])
            thr = logits[r, top[k]]
            np.testing.assert_allclose(
                row.toarray()[0, top[:k]], logits[r, top[:k]] - thr, rtol=1e-4, atol=1e-4
            )
        else:
            assert got <= set(top[:k])
            expect = np.maximum(logits[r, top[:k]], 0)
            if transform == "log1p":
                expect = np.log1p(expect)
            np.testing.assert_allclose(row.toarray()[0, top[:k]], expect, rtol=1e-4, atol=1e-4)


def test_center_and_calibration_are_applied_before_projection(encoder, doc_emb) -> None:
    rng = np.random.default_rng(0)
    cal = Calibration(rng.normal(size=doc_emb.shape[1]), coefficient=0.0, mode="remove", strength=1.0)
    enc = SparseEncoder(encoder, k_doc=8, transform="raw", center=0.5, calibration=cal)
    mean = enc.fit_center(doc_emb)
    adjusted = cal.apply(doc_emb) - 0.5 * cal.apply(doc_emb).mean(0)
    np.testing.assert_allclose(mean, cal.apply(doc_emb).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.adjust(doc_emb), adjusted, rtol=1e-5, atol=1e-5)
    m = enc.encode_documents_from_embeddings(doc_emb)
    for r, top in enumerate(_brute_top(encoder, adjusted, 8)):
        assert set(m.getrow(r).indices.tolist()) == set(top)
    # without the adjustment the tokens differ for at least one document
    plain = SparseEncoder(encoder, k_doc=8, transform="raw", center=0.0).encode_documents_from_embeddings(
        doc_emb
    )
    assert any(
        set(m.getrow(r).indices.tolist()) != set(plain.getrow(r).indices.tolist()) for r in range(len(DOCS))
    )


def test_center_without_mean_is_an_error(encoder, doc_emb) -> None:
    with pytest.raises(KeytokError, match="fit_center"):
        SparseEncoder(encoder, center=0.5).encode_documents_from_embeddings(doc_emb)


def test_empty_embedding_rows_give_empty_vectors(encoder, doc_emb) -> None:
    x = doc_emb.copy()
    x[1] = 0
    m = SparseEncoder(encoder, k_doc=5, center=0.0).encode_documents_from_embeddings(x)
    assert m.getrow(1).nnz == 0 and m.getrow(0).nnz > 0


def test_document_frequency_and_idf() -> None:
    m = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 0, 3], [0.5, 0, 0]], dtype=np.float32))
    df = document_frequency(m)
    assert df.tolist() == [2, 0, 2]
    idf = idf_weights(df, 3)
    np.testing.assert_allclose(idf, np.log1p((3 - df + 0.5) / (df + 0.5)), rtol=1e-6)
    assert idf[1] > idf[0] > 0


def test_llm_free_queries_need_only_the_tokenizer(tiny_model) -> None:
    tok = tiny_model.tokenizer
    vocab = tiny_model.vocab_size
    enc = SparseEncoder(None, tokenizer=tok, vocab_size=vocab, query_mode="llm-free", center=0.0)
    idf = np.linspace(1, 2, vocab).astype(np.float32)
    q = enc.encode_queries(["vitamin deficiency, bone!"], idf)
    want = {tok.convert_tokens_to_ids(w) for w in ("vitamin", "deficiency", "bone", ",", "!")} - {
        tok.unk_token_id
    }
    assert set(q.indices.tolist()) == want
    np.testing.assert_allclose(q.toarray()[0, sorted(want)], idf[sorted(want)])
    with pytest.raises(KeytokError, match="needs the model"):
        enc.encode_queries(["vitamin"], idf, mode="expanded")
    with pytest.raises(KeytokError, match="empty"):
        enc.encode_queries(["  "], idf)


def test_query_word_variants_cover_leading_space_forms(smollm2_tokenizer) -> None:
    enc = SparseEncoder(None, tokenizer=smollm2_tokenizer, vocab_size=49152, center=0.0)
    ids = enc.own_tokens("Vitamin deficiency")
    pieces = set(smollm2_tokenizer.convert_ids_to_tokens(ids))
    assert {"Vitamin", "ĠVitamin", "Ġdeficiency"} <= pieces
    # a form that is not one token contributes its pieces
    assert set(smollm2_tokenizer("deficiency", add_special_tokens=False)["input_ids"]) <= set(ids)
    assert "Ġvitamin" not in pieces
    cased = SparseEncoder(None, tokenizer=smollm2_tokenizer, vocab_size=49152, center=0.0, case_variants=True)
    pieces = set(smollm2_tokenizer.convert_ids_to_tokens(cased.own_tokens("Vitamin DNA")))
    assert {"Vitamin", "ĠVitamin", "vitamin", "Ġvitamin", "ĠDNA"} <= pieces


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from keytok.models.loading import cached_conversion_dir
    from keytok.models.registry import PACKAGED_MODELS

    folder = cached_conversion_dir(PACKAGED_MODELS["smollm2-135m"].sha256)
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("SmolLM2 conversion not cached")
    return AutoTokenizer.from_pretrained(folder)


def test_expanded_queries_add_weighted_top_m_tokens(encoder) -> None:
    queries = ["vitamin deficiency", "heart attack risk"]
    q_emb = encoder.encode(queries)
    vocab = encoder.vocab_size
    idf = np.linspace(0.5, 3, vocab).astype(np.float32)
    beta = 0.7
    enc = SparseEncoder(encoder, m_query=6, transform="log1p", center=0.0, expansion_weight=beta)
    q = enc.encode_queries(queries, idf, embeddings=q_emb).toarray()
    own = enc.encode_queries(queries, idf, mode="llm-free").toarray()
    exp = SparseEncoder(encoder, k_doc=6, transform="log1p", center=0.0).encode_documents_from_embeddings(
        q_emb
    )
    np.testing.assert_allclose(q, own + beta * exp.toarray() * idf[None, :], rtol=1e-5, atol=1e-6)
    # one model pass when the embeddings are not given
    np.testing.assert_allclose(enc.encode_queries(queries, idf).toarray(), q, rtol=1e-4, atol=1e-5)
    assert (enc.encode_queries(queries, idf, m_query=0).toarray() == own).all()


def test_bad_settings_are_one_line_errors(encoder) -> None:
    with pytest.raises(KeytokError, match="transform"):
        SparseEncoder(encoder, transform="sqrt")
    with pytest.raises(KeytokError, match="query mode"):
        SparseEncoder(encoder, query_mode="dense")
    with pytest.raises(KeytokError, match="K must be"):
        SparseEncoder(encoder, k_doc=0)
    with pytest.raises(KeytokError, match="transform"):
        transform_weights(np.zeros((1, 2)), "exp")


def test_token_display(tiny_model) -> None:
    tok = tiny_model.tokenizer
    special = set(tok.all_special_ids)
    assert token_display(tok, tok.convert_tokens_to_ids("bone"), special) == "bone"
    assert token_display(tok, tok.pad_token_id, special) == "[<pad>]"
    assert token_display(tok, tok.convert_tokens_to_ids("\n"), special) == "\\n"


def test_projection_batches_agree(encoder, doc_emb) -> None:
    enc = SparseEncoder(encoder, k_doc=7, center=0.0)
    a = enc.topk(doc_emb, 7, batch=2)
    b = enc.topk(doc_emb, 7, batch=512)
    assert (a.ids == b.ids).all()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
