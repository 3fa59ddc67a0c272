"""The four kinds of input fault of issue 16, each through the commands: one line, exit 1, nothing written.

1. malformed JSON lines (an unpaired surrogate inside a string, pathological nesting, a huge integer, a key
   given twice);
2. fields of the wrong type (``null`` text, a number where the BEIR layout wants an id string);
3. an id a TREC run file cannot hold (whitespace or a control character inside);
4. a BEIR folder whose qrels are malformed, refused by every command that reads the folder before any model
   is loaded (the tests pass a model path that does not exist: the qrels fault must be what is reported).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keytok.cli.main import main
from keytok.data.contract import parse_json_object
from keytok.errors import KeytokError

GOOD = b'{"_id": "d1", "title": "Cats", "text": "the cat sat on the mat"}\n'
NO_MODEL = "/nonexistent/model"


@pytest.fixture(autouse=True)
def _one_cpu(isolated_cache_one_cpu: Path) -> Path:
    return isolated_cache_one_cpu


def _beir(root: Path, corpus: bytes = GOOD, queries: bytes | None = None, qrels: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries or b'{"_id": "q1", "text": "cat"}\n')
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_bytes(qrels or b"query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def _fails_cleanly(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keytok: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


FAULTY_LINES = {
    "surrogate": (b'{"_id": "d2", "text": "caf\\ud800"}', "unpaired surrogate"),
    "deep-nesting": (
        b'{"_id": "d2", "text": "x", "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "nested deeper",
    ),
    "huge-integer": (b'{"_id": "d2", "text": "x", "n": ' + b"7" * 5000 + b"}", "unreadable JSON value"),
    "key-twice": (b'{"_id": "d2", "_id": "d3", "text": "x"}', "key '_id' appears twice"),
    "null-text": (b'{"_id": "d2", "text": null}', "field 'text' must be a string, got null"),
    "numeric-id": (b'{"_id": 7, "text": "x"}', "field '_id' must be a string, got a number (7)"),
    "space-in-id": (b'{"_id": "d 2", "text": "x"}', "contains whitespace (U+0020)"),
    "tab-in-id": (b'{"_id": "d\\t2", "text": "x"}', "contains whitespace (U+0009)"),
    "control-in-id": (b'{"_id": "d\\u00002", "text": "x"}', "contains a control character (U+0000)"),
}


@pytest.mark.parametrize("fault", list(FAULTY_LINES))
def test_faulty_corpus_line_stops_the_build_before_the_model(tmp_path, capsys, fault):
    line, message = FAULTY_LINES[fault]
    folder = _beir(tmp_path / "beir", corpus=GOOD + line + b"\n")
    out = tmp_path / "idx"
    _fails_cleanly(
        capsys, ["index", "build", folder, "--model", NO_MODEL, "--out", out], "corpus.jsonl line 2", message
    )
    assert not out.exists()


@pytest.mark.parametrize("fault", ["surrogate", "null-text", "numeric-id", "space-in-id"])
def test_faulty_query_line_writes_no_run(tmp_path, capsys, fault, tiny_model_dir):
    line, message = FAULTY_LINES[fault]
    folder = _beir(tmp_path / "beir")
    index = tmp_path / "idx"
    assert main(["index", "build", str(folder), "--model", str(tiny_model_dir), "--out", str(index),
                 "--kind", "sparse", "--no-progress", "--dtype", "fp32", "-K", "8"]) == 0  # fmt: skip
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b'{"_id": "q1", "text": "cat"}\n' + line.replace(b'"d2"', b'"q2"') + b"\n")
    run = tmp_path / "run.trec"
    _fails_cleanly(
        capsys, ["search", index, "--queries", queries, "--run", run], "queries.jsonl line 2", message
    )
    assert not run.exists()


BAD_QRELS = {
    "two-columns": (b"query-id\tcorpus-id\tscore\nq1\td1\n", "expected 3 tab-separated columns"),
    "fractional-grade": (b"q1\td1\t0.5\n", "score '0.5' is not an integer"),
    "judged-twice": (b"q1\td1\t1\nq1\td1\t2\n", "judges document 'd1' twice"),
    "space-in-id": (b"q 1\td1\t1\n", "query-id 'q 1' contains whitespace"),
    "not-utf8": (b"q1\td\xff\t1\n", "not valid UTF-8"),
}


@pytest.mark.parametrize("fault", list(BAD_QRELS))
def test_malformed_qrels_refused_by_every_command_that_reads_the_folder(tmp_path, capsys, fault):
    qrels, message = BAD_QRELS[fault]
    folder = _beir(tmp_path / "beir", qrels=qrels)
    where = "test.tsv line"
    out = tmp_path / "out"
    _fails_cleanly(capsys, ["index", "build", folder, "--model", NO_MODEL, "--out", out], where, message)
    _fails_cleanly(capsys, ["bench", folder, "--model", NO_MODEL, "--out", out], where, message)
    # search checks the folder's queries and qrels before it opens the index (which does not exist either)
    _fails_cleanly(
        capsys,
        ["search", tmp_path / "no-index", "--queries", folder, "--run", out / "run.trec"],
        where,
        message,
    )
    _fails_cleanly(
        capsys,
        [
            "search",
            tmp_path / "no-index",
            "--queries",
            folder,
            "--run",
            out / "r.trec",
            "--qrels-split",
            "test",
        ],
        where,
        message,
    )
    assert not out.exists()


def test_judgements_outside_the_folder_are_a_warning_not_a_refusal(tmp_path, capsys, tiny_model_dir):
    folder = _beir(tmp_path / "beir", qrels=b"q1\td1\t1\nq1\tgone\t1\nq9\td1\t1\n")
    out = tmp_path / "idx"
    argv = [
        "index",
        "build",
        folder,
        "--model",
        tiny_model_dir,
        "--out",
        out,
        "--kind",
        "sparse",
        "--no-progress",
    ]
    assert main([str(a) for a in argv]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("keytok: warning:")]
    assert warnings == [
        f"keytok: warning: {folder / 'qrels' / 'test.tsv'}: 1 judged queries are not in queries.jsonl "
        "(first: 'q9'); they cannot be searched",
        f"keytok: warning: {folder / 'qrels' / 'test.tsv'}: 1 judged documents are not in the corpus "
        "(first: 'gone'); they count as never retrieved",
    ]


def test_command_line_text_must_be_text(capsys):
    # A terminal passing bytes that are not UTF-8 reaches Python as lone surrogates (surrogateescape).
    _fails_cleanly(capsys, ["tokens", "caf\udce9", "--model", NO_MODEL], "text 1", "unpaired surrogate")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"a": 1, "a": 2}', "key 'a' appears twice in one object"),
        ('{"a": {"b": 1, "b": 1}}', "key 'b' appears twice in one object"),
        ("[" * 101 + "]" * 101, "JSON nested deeper than 100 levels"),
        ('"just a string"', "expected a JSON object, got a string"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ("null", "expected a JSON object, got null"),
        ('{"a": 1', "not valid JSON (Expecting ',' delimiter at column 8)"),
    ],
)
def test_json_line_faults(line, message):
    with pytest.raises(KeytokError) as err:
        parse_json_object(line, "f.jsonl", 3)
    assert str(err.value) == f"f.jsonl line 3: {message}"


def test_nesting_at_the_limit_and_brackets_in_strings_are_fine():
    assert parse_json_object('{"a": ' + "[" * 99 + "]" * 99 + "}", "f", 1) == {
        "a": json.loads("[" * 99 + "]" * 99)
    }
    text = "[" * 500  # brackets inside a string do not nest
    assert parse_json_object(json.dumps({"text": text}), "f", 1) == {"text": text}
