"""Data readers on the real shared data sets and on deliberately broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keytok.data import (
    Document,
    corpus_checksum,
    join_title,
    load_corpus,
    load_qrels,
    load_queries,
    load_sts,
    load_texts,
    resolve_beir,
    sts12_smtnews_high,
)
from keytok.errors import KeytokError
from keytok.utils.hashing import sha256_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
BEIR = DATA / "beir"
STS = DATA / "sts"

needs_data = pytest.mark.skipif(not (BEIR / "scifact").is_dir(), reason="shared data not present")


# --- real data -------------------------------------------------------------------------------------------


@needs_data
def test_scifact_counts_and_content():
    docs = load_corpus(BEIR / "scifact")
    assert len(docs) == 5183
    assert len({d.id for d in docs}) == 5183
    assert docs[0].id == "4983"
    assert docs[0].full_text.startswith("Microstructural development of human newborn cerebral white matter")
    # SciFact titles end in "." so no second full stop is added.
    assert ".. " not in docs[0].full_text
    queries = load_queries(BEIR / "scifact")
    assert len(queries) == 1109  # the file holds train and test queries together
    test = load_qrels(BEIR / "scifact", "test")
    assert len(test) == 300
    assert sum(len(v) for v in test.values()) == 339
    assert set(test) <= set(queries)
    assert len(load_qrels(BEIR / "scifact", "train")) == 809
    ids = {d.id for d in docs}
    assert all(did in ids for judged in test.values() for did in judged)


@needs_data
def test_scifact_corpus_file_and_checksum():
    paths = resolve_beir(BEIR / "scifact")
    assert paths.corpus.name == "corpus.jsonl"
    assert paths.qrels("test") == BEIR / "scifact" / "qrels" / "test.tsv"
    assert len(load_corpus(paths.corpus)) == 5183
    assert corpus_checksum(BEIR / "scifact") == sha256_file(paths.corpus)
    assert corpus_checksum(paths.corpus) == corpus_checksum(BEIR / "scifact")


@needs_data
def test_cranfield_has_two_empty_documents():
    # Cranfield ships documents 471 and 995 empty; the strict default reports the first one.
    with pytest.raises(KeytokError, match=r"corpus\.jsonl line 471: .*empty"):
        load_corpus(BEIR / "cranfield")
    docs = load_corpus(BEIR / "cranfield", on_empty="keep")
    assert len(docs) == 1400
    assert len(load_corpus(BEIR / "cranfield", on_empty="skip")) == 1398
    # Cranfield bodies repeat the title: it is not prepended a second time.
    assert docs[0].full_text == docs[0].text
    assert len(load_queries(BEIR / "cranfield")) == 225
    qrels = load_qrels(BEIR / "cranfield")
    assert len(qrels) == 225
    assert {g for j in qrels.values() for g in j.values()} == {1, 2, 3, 4}


@needs_data
def test_sts_sets():
    high = sts12_smtnews_high(STS)
    assert len(high) == 291
    assert all(p.score > 4.0 and p.s1 and p.s2 and p.label is None for p in high)
    assert high == [p for p in load_sts("STS12/surprise.SMTnews", STS) if p.score > 4.0]
    stsb = load_sts("STSB-test", STS)
    assert len(stsb) == 1379
    assert stsb[0].s1 == "A girl is styling her hair." and stsb[0].score == 2.5
    assert all(0.0 <= p.score <= 5.0 for p in stsb)
    # Rows with quotes must not swallow the following lines (QUOTE_NONE).
    assert len(load_sts("STSB-train", STS)) == 5749
    sick = load_sts("SICK-R-test", STS)
    assert len(sick) == 4927
    assert {p.label for p in sick} == {"NEUTRAL", "ENTAILMENT", "CONTRADICTION"}
    assert all(1.0 <= p.score <= 5.0 for p in sick)
    assert not any(p.s1.endswith("\r") or p.s2.endswith("\r") for p in sick)
    # SentEval's counts; STS15/16 gold files leave unscored pairs empty, STS13 SMT has no input file.
    counts = {n: len(load_sts(n, STS)) for n in ("STS12", "STS13", "STS14", "STS15", "STS16")}
    assert counts == {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186}


def test_sts_unknown_name(tmp_path):
    with pytest.raises(KeytokError, match="unknown STS set 'STS99'"):
        load_sts("STS99", tmp_path)


def test_sts_misaligned_gold(tmp_path):
    year = tmp_path / "STS12-en-test"
    year.mkdir()
    (year / "STS.input.x.txt").write_text("a b\tc d\ne f\tg h\n")
    (year / "STS.gs.x.txt").write_text("4.0\n")
    with pytest.raises(KeytokError, match=r"STS\.gs\.x\.txt: 1 lines but"):
        load_sts("STS12", tmp_path)
    (year / "STS.gs.x.txt").write_text("\nhigh\n")
    with pytest.raises(KeytokError, match=r"STS\.gs\.x\.txt line 2: score 'high'"):
        load_sts("STS12", tmp_path)
    (year / "STS.gs.x.txt").write_text("\n3.5\n")
    assert [(p.s1, p.score) for p in load_sts("STS12/x", tmp_path)] == [("e f", 3.5)]


# --- broken inputs ---------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"_id": "a", "title": "T", "text": "body"})


@pytest.mark.parametrize(
    ("bad_line", "fault"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"title": "x", "text": "y"}), "missing field '_id'"),
        (json.dumps({"_id": "a", "text": "again"}), "duplicate _id 'a'"),
        (json.dumps({"_id": "b", "title": " ", "text": ""}), "empty text"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"_id": "b", "text": 3}), "field 'text' must be a string"),
    ],
)
def test_corpus_bad_line_names_file_and_line(tmp_path, bad_line, fault):
    # Line 2 is blank and skipped, so the fault is on line 3.
    _write_lines(tmp_path / "corpus.jsonl", [GOOD, "", bad_line])
    with pytest.raises(KeytokError, match=rf"corpus\.jsonl line 3: .*{fault}") as err:
        load_corpus(tmp_path)
    assert "\n" not in str(err.value)


def test_corpus_non_utf8(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_bytes(GOOD.encode() + b"\n" + b'{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(KeytokError, match=r"corpus\.jsonl line 2: not valid UTF-8"):
        load_corpus(f)


def test_corpus_empty_and_missing(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("\n  \n")
    with pytest.raises(KeytokError, match=r"corpus\.jsonl: corpus file is empty"):
        load_corpus(tmp_path / "corpus.jsonl")
    with pytest.raises(KeytokError, match=r"nothing\.jsonl: corpus file not found"):
        load_corpus(tmp_path / "nothing.jsonl")
    empty_dir = tmp_path / "beir"
    empty_dir.mkdir()
    with pytest.raises(KeytokError, match="not a BEIR folder"):
        load_corpus(empty_dir)
    with pytest.raises(KeytokError, match="no such file or folder"):
        resolve_beir(tmp_path / "absent")


def test_corpus_title_only(tmp_path):
    f = _write_lines(tmp_path / "c.jsonl", [json.dumps({"_id": "7", "title": "Only a title"})])
    assert load_corpus(f) == [Document(id="7", text="", title="Only a title")]
    assert load_corpus(f)[0].full_text == "Only a title"


def test_queries_validation(tmp_path):
    f = _write_lines(tmp_path / "queries.jsonl", [json.dumps({"_id": "q1", "text": "what"})])
    assert load_queries(tmp_path) == {"q1": "what"}
    _write_lines(f, [json.dumps({"_id": "q1", "text": "what"}), json.dumps({"_id": "q2", "text": "  "})])
    with pytest.raises(KeytokError, match=r"queries\.jsonl line 2: query 'q2' has empty text"):
        load_queries(f)
    _write_lines(f, [json.dumps({"_id": "q1", "text": "a"}), json.dumps({"_id": "q1", "text": "b"})])
    with pytest.raises(KeytokError, match=r"queries\.jsonl line 2: duplicate _id 'q1' \(first on line 1\)"):
        load_queries(f)


def test_qrels_validation(tmp_path):
    qdir = tmp_path / "qrels"
    qdir.mkdir()
    f = qdir / "test.tsv"
    _write_lines(f, ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t2.0", "q2\td1\t0"])
    assert load_qrels(tmp_path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}
    _write_lines(f, ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1 d2 1"])
    with pytest.raises(KeytokError, match=r"test\.tsv line 3: expected 3 tab-separated columns"):
        load_qrels(f)
    _write_lines(f, ["query-id\tcorpus-id\tscore", "q1\td1\t0.5"])
    with pytest.raises(KeytokError, match=r"test\.tsv line 2: score '0\.5' is not an integer"):
        load_qrels(tmp_path)
    _write_lines(f, ["q1\td1\t1", "q1\td1\t2"])
    with pytest.raises(KeytokError, match=r"test\.tsv line 2: query 'q1' judges document 'd1' twice"):
        load_qrels(f)
    with pytest.raises(KeytokError, match="no qrels for split 'dev'"):
        load_qrels(tmp_path, "dev")
    _write_lines(f, ["query-id\tcorpus-id\tscore"])
    with pytest.raises(KeytokError, match="no judgements"):
        load_qrels(f)


def test_join_title_rules():
    assert join_title("A title", "Body.") == "A title. Body."
    assert join_title("A title.", "Body.") == "A title. Body."
    assert join_title("Why?", "Because.") == "Why? Because."
    assert join_title("wing flow .", "wing flow . more text") == "wing flow . more text"
    assert join_title("", "Body") == "Body"
    assert join_title("Title", "  ") == "Title"


def test_load_texts_formats_and_faults(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("first text\n\n  second text  \n")
    assert load_texts(txt) == ["first text", "second text"]
    jl = _write_lines(
        tmp_path / "t.jsonl", [json.dumps({"text": "body", "title": "Head"}), json.dumps({"text": "x"})]
    )
    assert load_texts(jl) == ["Head. body", "x"]
    _write_lines(jl, [json.dumps({"text": "ok"}), json.dumps({"title": "no text"})])
    with pytest.raises(KeytokError, match=r"t\.jsonl line 2: missing field 'text'"):
        load_texts(jl)
    _write_lines(jl, [json.dumps({"text": "ok"}), "[broken"])
    with pytest.raises(KeytokError, match=r"t\.jsonl line 2: not valid JSON"):
        load_texts(jl)
    _write_lines(jl, [json.dumps({"text": ""}), json.dumps({"text": "kept"})])
    with pytest.raises(KeytokError, match=r"t\.jsonl line 1: empty text"):
        load_texts(jl)
    assert load_texts(jl, skip_empty=True) == ["kept"]
    txt.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(KeytokError, match=r"t\.txt line 2: not valid UTF-8"):
        load_texts(txt)
    txt.write_text("\n\n")
    with pytest.raises(KeytokError, match=r"t\.txt: texts file is empty"):
        load_texts(txt)
    with pytest.raises(KeytokError, match=r"gone\.txt: no such file"):
        load_texts(tmp_path / "gone.txt")
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(KeytokError, match=r"unsupported file type '\.csv'"):
        load_texts(tmp_path / "t.csv")


@needs_data
def test_load_texts_beir_folder():
    texts = load_texts(BEIR / "scifact")
    assert len(texts) == 5183
    assert texts[0] == load_corpus(BEIR / "scifact")[0].full_text
    assert len(load_texts(BEIR / "cranfield", skip_empty=True)) == 1398


def test_the_sts_folder_is_given_or_named_by_the_environment(tmp_path, monkeypatch) -> None:
    """No STS folder is assumed: without sts_root and $KEYTOK_STS_ROOT the error says how to give one."""
    from keytok.data.sts import STS_ROOT_ENV, load_sts

    monkeypatch.delenv(STS_ROOT_ENV, raising=False)
    with pytest.raises(KeytokError, match=r"--sts-root DIR.*KEYTOK_STS_ROOT"):
        load_sts("STS12")
    monkeypatch.setenv(STS_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(KeytokError, match="nowhere: STS data folder not found"):
        load_sts("STS12")
