"""EmbeddingCache: chunked, validated, resumable corpus embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder
from keytok.errors import KeytokError

TEXTS = [
    "vitamin d deficiency is linked to bone loss",
    "the cat sat on the mat",
    "aspirin reduces the risk of heart attack",
    "cancer patients in the study",
    "the dog ran in the park",
    "protein cells and genes",
    "treatment effect was decreased",
    "older adults have increased risk",
    "a gene for cancer",
    "",
    "results of the study were not linked to the treatment",
]
IDS = [f"d{i}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def encoder(tiny_model) -> Encoder:
    return Encoder(tiny_model, "prompteol", dtype="fp32", device="cpu", threads=1)


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk*.json"))


def test_encodes_by_chunk_and_reuses_every_chunk(encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    a = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    first = cache.last_report
    assert first.computed == first.chunks == 3 and first.reused == 0
    assert a.shape == (len(TEXTS), encoder.model.hidden_size) and a.dtype == np.float32
    # each chunk is encoded on its own, so the rows equal an encode() of exactly that chunk
    np.testing.assert_array_equal(a[:4], encoder.encode(TEXTS[:4]))
    # the empty text is a zero row, never run through the model
    assert not a[9].any() and a[8].any()
    b = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.reused == 3 and cache.last_report.computed == 0
    np.testing.assert_array_equal(a, b)
    key = json.loads((first.folder / "key.json").read_text())
    assert key["model_sha256"] == encoder.model.fingerprint and key["chunk_size"] == 4
    assert key["precision"] == encoder.precision.describe()


def test_missing_chunk_is_computed_and_result_identical(encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    a = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    folder = cache.last_report.folder
    # as after a kill between two chunks: the last chunk's record never got written
    (folder / "chunk000002.json").unlink()
    b = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    assert (cache.last_report.reused, cache.last_report.computed) == (2, 1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["flip", "truncate", "bad-record", "other-ids"])
def test_corrupted_chunk_is_recomputed_with_a_warning(encoder, tmp_path: Path, caplog, damage: str) -> None:
    cache = EmbeddingCache(tmp_path)
    a = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    folder = cache.last_report.folder
    npy, rec = folder / "chunk000001.npy", folder / "chunk000001.json"
    if damage == "flip":
        data = bytearray(npy.read_bytes())
        data[-3] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:100])
    elif damage == "bad-record":
        rec.write_text("{not json")
    else:
        r = json.loads(rec.read_text())
        r["ids_sha256"] = "0" * 64
        rec.write_text(json.dumps(r))
    with caplog.at_level(logging.WARNING, logger="keytok.encoding.cache"):
        b = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.recomputed_bad == 1 and cache.last_report.reused == 2
    assert any("chunk 1" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(a, b)
    # and it was rewritten: a third pass reuses everything
    cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.reused == 3


def test_key_separates_corpora_settings_and_models(encoder, tiny_model, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    f1 = cache.last_report.folder
    cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=5, progress=False)
    assert cache.last_report.folder != f1
    changed = [*TEXTS[:-1], "a different last text"]
    cache.encode_corpus(encoder, IDS, changed, chunk_size=4, progress=False)
    assert cache.last_report.folder != f1
    other = Encoder(tiny_model, "mean", dtype="fp32", device="cpu", threads=1)
    cache.encode_corpus(other, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.folder != f1 and cache.last_report.computed == 3
    short = Encoder(tiny_model, "prompteol", dtype="fp32", device="cpu", max_length=16, threads=1)
    cache.encode_corpus(short, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.folder != f1


def test_same_checksum_but_other_documents_never_reuses_stale_chunks(encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.encode_corpus(encoder, IDS, TEXTS, corpus_checksum="x" * 64, chunk_size=4, progress=False)
    swapped = [TEXTS[1], TEXTS[0], *TEXTS[2:]]
    b = cache.encode_corpus(encoder, IDS, swapped, corpus_checksum="x" * 64, chunk_size=4, progress=False)
    assert cache.last_report.recomputed_bad == 1 and cache.last_report.reused == 2
    np.testing.assert_array_equal(b[:4], encoder.encode(swapped[:4]))


def test_bad_arguments(encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeytokError, match="doc ids for"):
        cache.encode_corpus(encoder, IDS[:2], TEXTS, progress=False)
    with pytest.raises(KeytokError, match="no documents"):
        cache.encode_corpus(encoder, [], [], progress=False)
    with pytest.raises(KeytokError, match="chunk_size"):
        cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=0, progress=False)


def test_default_root_follows_keytok_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path))
    assert EmbeddingCache().root == tmp_path / "embeddings"


def test_embeddings_made_elsewhere_are_cached_after_a_sampled_check(encoder, tmp_path: Path) -> None:
    # What another machine computed (here: a second cache) goes in without the model running on every text,
    # and a later encode_corpus reads it back as cached chunks.
    made = EmbeddingCache(tmp_path / "elsewhere").encode_corpus(
        encoder, IDS, TEXTS, chunk_size=4, progress=False
    )
    given = made.copy()
    given[9] = 5.0  # an empty text's row is stored as zeros whatever the file says
    cache = EmbeddingCache(tmp_path / "here")
    report = cache.add_embeddings(encoder, IDS, TEXTS, given, chunk_size=4, verify=3)
    assert report.computed == 3 and report.reused == 0
    back = cache.encode_corpus(encoder, IDS, TEXTS, chunk_size=4, progress=False)
    assert cache.last_report.reused == 3 and cache.last_report.computed == 0
    np.testing.assert_array_equal(back[:9], made[:9])
    assert not back[9].any()


def test_embeddings_of_another_model_or_shape_are_refused(encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    dim = encoder.model.hidden_size
    other = np.random.default_rng(0).normal(size=(len(TEXTS), dim)).astype(np.float32)
    with pytest.raises(KeytokError, match=r"cosine .* with this encoder's"):
        cache.add_embeddings(encoder, IDS, TEXTS, other, verify=len(TEXTS))
    with pytest.raises(KeytokError, match="expected"):
        cache.add_embeddings(encoder, IDS, TEXTS, other[:, :-1])
    missing = encoder.encode(TEXTS[:1] * len(TEXTS))
    missing[3] = 0.0  # a row the source lacked: a non-empty text with no embedding
    with pytest.raises(KeytokError, match=r"no embedding for 1 non-empty texts \(first: 'd3'\)"):
        cache.add_embeddings(encoder, IDS, TEXTS, missing)
    nan = other.copy()
    nan[0, 0] = np.nan
    with pytest.raises(KeytokError, match="NaN"):
        cache.add_embeddings(encoder, IDS, TEXTS, nan)
    assert not list(tmp_path.rglob("chunk*"))  # nothing written by a refused call


def test_a_chunk_stopped_mid_way_resumes_at_batch_grain(tiny_model, tmp_path: Path) -> None:
    enc = Encoder(tiny_model, "prompteol", dtype="fp32", device="cpu", threads=1, batch_tokens=40)
    reference = EmbeddingCache(tmp_path / "a").encode_corpus(enc, IDS, TEXTS, chunk_size=64, progress=False)
    whole_batches = enc.last_stats.batches
    assert whole_batches >= 5  # one chunk, many batches: the grain this test is about

    cache = EmbeddingCache(tmp_path / "b")
    plan = cache.plan(enc, IDS, TEXTS, chunk_size=64)
    done = []

    def stop_after_three(n: int, _tokens: int) -> None:
        done.append(n)
        if len(done) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does mid-chunk

    with pytest.raises(KeyboardInterrupt):
        cache.encode_chunk(enc, plan.folder, plan.todo[0], TEXTS, on_batch=stop_after_three)
    partial = plan.folder / "chunk000000.partial"
    assert len(list(partial.glob("batch-*.npy"))) == 3 and not _chunks(plan.folder)

    resumed = cache.encode_corpus(enc, IDS, TEXTS, chunk_size=64, progress=False)
    assert enc.last_stats.batches == whole_batches - 3  # only the batches not saved were run
    np.testing.assert_array_equal(resumed, reference)
    assert not partial.exists()


def test_texts_cut_to_max_length_are_counted_when_encoded_and_when_reused(tiny_model, tmp_path: Path) -> None:
    enc = Encoder(tiny_model, "prompteol", dtype="fp32", device="cpu", threads=1, max_length=24)
    texts = [*TEXTS, " ".join(["a long document about vitamin d and bone loss"] * 6)]
    ids = [f"d{i}" for i in range(len(texts))]
    cut = sum(enc.tokenize([t for t in texts if t.strip()]).truncated)
    assert 0 < cut < len(texts)
    cache = EmbeddingCache(tmp_path)
    cache.encode_corpus(enc, ids, texts, chunk_size=4, progress=False)
    assert (
        cache.last_report.truncated == cut and f"{cut} texts cut to max_length" in cache.last_report.summary()
    )
    cache.encode_corpus(enc, ids, texts, chunk_size=4, progress=False)
    assert cache.last_report.computed == 0 and cache.last_report.truncated == cut
