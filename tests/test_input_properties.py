"""Property-based tests of the input contract (:mod:`keytok.data.contract`) with hypothesis.

The property, for every reader and for ``keytok index build`` / ``keytok search`` on the tiny model: a
generated input (random bytes, random JSON, wrong types, huge or deeply nested values, invalid UTF-8, lone
surrogates, ids with any characters) either gives a clean result or a :class:`KeytokError` whose message is
one line naming the file; never another exception, never a half-written output. Accepted ids must survive a
TREC run file, and inputs the contract allows must be read back unchanged.

The suite runs a bounded number of examples (the ``ci`` profile, derandomised so a run is reproducible). The
long run of the closing note::

    HYPOTHESIS_PROFILE=long KEYTOK_EXAMPLES=20000 .venv/bin/pytest -q tests/test_input_properties.py -m "not slow"
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keytok import Hit, write_trec_run
from keytok.cli.main import main
from keytok.data import load_corpus, load_qrels, load_queries, load_sts, load_texts
from keytok.data.beir import check_beir
from keytok.errors import KeytokError
from keytok.representations.calibration import Calibration
from keytok.training.data import read_pairs

EXAMPLES = int(os.environ.get("KEYTOK_EXAMPLES", "0")) or None
settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _examples(n: int, *, uses_fixtures: bool = False) -> Callable:
    """``n`` examples in the ci profile; the profile's (or KEYTOK_EXAMPLES) count in a long run."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if uses_fixtures:  # module-scoped fixtures and capfd, which is reset per example by _command_outcome
        checks.append(HealthCheck.function_scoped_fixture)
    if EXAMPLES is not None:
        n = EXAMPLES
    elif os.environ.get("HYPOTHESIS_PROFILE") == "long":
        n = settings.default.max_examples
    return settings(max_examples=n, suppress_health_check=checks)


# ------------------------------------------------------------------------------------------- strategies
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
# Any character, lone surrogates included (hypothesis leaves those out of st.text by default).
ANY_CHAR = st.one_of(st.characters(), SURROGATES, st.sampled_from([" ", "\t", "\x00", "\u200b", "\u2028"]))
ANY_TEXT = st.text(ANY_CHAR, max_size=12)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(ANY_TEXT, inner, max_size=3)),
    max_leaves=8,
)
GOOD_ID = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Zs", "Zl", "Zp")), min_size=1, max_size=8
).filter(lambda s: not any(c.isspace() for c in s))
GOOD_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(lambda s: s.strip() != "")


def _dumps(obj: Any, ascii_only: bool) -> bytes:
    # json.dumps writes lone surrogates as \udXXX escapes (ensure_ascii) or as the raw code point, which
    # "surrogatepass" turns into the bytes a sloppy exporter would write.
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def record_lines(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    """One line of a JSON-lines file, from a well-formed record to garbage."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:  # a plausible record, each field possibly of the wrong type or missing
        obj: dict[str, Any] = {}
        for name in fields:
            choice = draw(st.integers(0, 5))
            if choice <= 2:
                obj[name] = draw(GOOD_ID if name == "_id" else GOOD_TEXT)
            elif choice == 3:
                obj[name] = draw(JSON_VALUES)
            elif choice == 4:
                obj[name] = draw(ANY_TEXT)
        return _dumps(obj, draw(st.booleans()))
    if kind == 4:
        return _dumps(draw(JSON_VALUES), draw(st.booleans()))
    if kind == 5:
        return draw(st.binary(max_size=40))
    if kind == 6:  # deep nesting, inside a field or bare
        n = draw(st.integers(50, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * n + "1" + closer * n
        return (f'{{"_id": "x", "text": {inner}}}' if draw(st.booleans()) else inner).encode()
    if kind == 7:  # an integer literal too long to convert
        return b'{"_id": ' + b"9" * draw(st.integers(4000, 6000)) + b', "text": "t"}'
    if kind == 8:  # the same key twice, or an escaped lone surrogate
        return draw(
            st.sampled_from(
                [
                    b'{"_id": "a", "_id": "b", "text": "t"}',
                    b'{"_id": "s", "text": "x\\ud800y"}',
                    b'{"_id": "s\\udfff", "text": "t"}',
                    b'{"_id": "n", "text": null}',
                    b'{"_id": 17, "text": "t"}',
                    b'{"_id": "a b", "text": "t"}',
                ]
            )
        )
    return b""  # a blank line


def _jsonl_file(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return st.lists(record_lines(fields), max_size=6).map(lambda lines: b"\n".join(lines) + b"\n")


@st.composite
def mostly_valid_files(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    """Good records with at most one faulty line among them: half the commands' inputs should get through."""
    lines = [
        _dumps({name: draw(GOOD_ID if name == "_id" else GOOD_TEXT) for name in fields}, draw(st.booleans()))
        for _ in range(draw(st.integers(1, 4)))
    ]
    ids = [json.loads(line)["_id"] for line in lines]
    if len(set(ids)) < len(ids) or draw(st.integers(0, 2)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(record_lines(fields)))
    return b"\n".join(lines) + b"\n"


@st.composite
def qrels_files(draw: st.DrawFn) -> bytes:
    lines = [b"query-id\tcorpus-id\tscore"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        if kind <= 1:
            q, d = draw(GOOD_ID), draw(GOOD_ID)
            score = draw(st.sampled_from(["0", "1", "2", "-1", "1.0", "0.5", "x", "nan", "1e400", ""]))
            lines.append(f"{q}\t{d}\t{score}".encode())
        elif kind == 2:
            cols = draw(st.lists(ANY_TEXT, min_size=1, max_size=5))
            lines.append("\t".join(cols).encode("utf-8", "surrogatepass"))
        elif kind == 3:
            lines.append(draw(st.binary(max_size=30)))
        else:
            lines.append(b"")
    return b"\n".join(lines) + b"\n"


TEXT_LINES = st.lists(
    st.one_of(st.binary(max_size=30), ANY_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))), max_size=6
).map(lambda lines: b"\n".join(lines))


# ------------------------------------------------------------------------------------------- the property
def _clean_or_one_line(path: Path, read: Callable[[], Any]) -> Any:
    """``read()``'s result, or None after a one-line KeytokError naming ``path``; any other exception fails."""
    try:
        return read()
    except KeytokError as exc:
        message = str(exc)
        assert "\n" not in message and message.strip() == message, repr(message)
        assert str(path) in message, message
        return None


def _valid_id(value: str) -> bool:
    return (
        bool(value)
        and not any(c.isspace() for c in value)
        and all(unicodedata.category(c) not in ("Cc", "Cf", "Cs") for c in value)
    )


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ids_survive_a_trec_run(ids: list[str], where: Path) -> None:
    run = where / "run.trec"
    write_trec_run(run, {ids[0]: [Hit(doc_id=i, score=1.0, rank=r + 1) for r, i in enumerate(ids)]})
    read_back = [line.split() for line in run.read_text(encoding="utf-8").splitlines()]
    assert all(len(cols) == 6 for cols in read_back)
    assert [cols[2] for cols in read_back] == ids and {cols[0] for cols in read_back} == {ids[0]}


# ------------------------------------------------------------------------------------------- readers
@_examples(300)
@given(data=_jsonl_file(("_id", "title", "text")))
def test_corpus_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_bytes(data)
        docs = _clean_or_one_line(path, lambda: load_corpus(path, on_empty="keep"))
        if docs:
            assert len({d.id for d in docs}) == len(docs)
            assert all(_valid_id(d.id) and _utf8(d.text) and _utf8(d.title) for d in docs)
            _ids_survive_a_trec_run([d.id for d in docs], Path(tmp))


@_examples(300)
@given(data=_jsonl_file(("_id", "text")))
def test_queries_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "queries.jsonl"
        path.write_bytes(data)
        queries = _clean_or_one_line(path, lambda: load_queries(path))
        if queries:
            assert all(
                _valid_id(q) and isinstance(t, str) and t.strip() and _utf8(t) for q, t in queries.items()
            )
            _ids_survive_a_trec_run(list(queries), Path(tmp))


@_examples(300)
@given(data=qrels_files())
def test_qrels_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.tsv"
        path.write_bytes(data)
        qrels = _clean_or_one_line(path, lambda: load_qrels(path))
        if qrels:
            for qid, judged in qrels.items():
                assert _valid_id(qid) and judged
                assert all(_valid_id(d) and type(g) is int for d, g in judged.items())


@_examples(200)
@given(data=st.one_of(_jsonl_file(("text", "title")), TEXT_LINES), suffix=st.sampled_from([".jsonl", ".txt"]))
def test_text_list_reader(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"texts{suffix}"
        path.write_bytes(data)
        texts = _clean_or_one_line(path, lambda: load_texts(path))
        if texts:
            assert all(isinstance(t, str) and _utf8(t) for t in texts)


@_examples(200)
@given(inputs=TEXT_LINES, golds=TEXT_LINES)
def test_sts_reader(inputs: bytes, golds: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        year = Path(tmp) / "STS12-en-test"
        year.mkdir()
        (year / "STS.input.x.txt").write_bytes(inputs)
        (year / "STS.gs.x.txt").write_bytes(golds)
        pairs = _clean_or_one_line(year, lambda: load_sts("STS12/x", tmp))
        if pairs:
            assert all(np.isfinite(p.score) and p.s1 and p.s2 for p in pairs)


@_examples(200)
@given(data=TEXT_LINES, header=st.booleans())
def test_stsb_and_sick_readers(data: bytes, header: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "STSBenchmark").mkdir()
        (Path(tmp) / "SICK").mkdir()
        stsb = Path(tmp) / "STSBenchmark" / "sts-test.csv"
        stsb.write_bytes(b"main-news\tfile\t2012\t1\t2.5\tA cat.\tA dog.\n" + data)
        sick = Path(tmp) / "SICK" / "SICK_test_annotated.txt"
        head = b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n" if header else b""
        sick.write_bytes(head + data)
        for name, path in (("STSB-test", stsb), ("SICK-R-test", sick)):
            pairs = _clean_or_one_line(path, lambda name=name: load_sts(name, tmp))
            if pairs:
                assert all(np.isfinite(p.score) and p.s1 and p.s2 and _utf8(p.s1 + p.s2) for p in pairs)


@_examples(200)
@given(data=TEXT_LINES)
def test_training_pairs_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.tsv"
        path.write_bytes(data)
        pairs = _clean_or_one_line(path, lambda: read_pairs(str(path), tmp))
        if pairs:
            assert all(0.0 <= s <= 1.0 for s in pairs.scores)


@_examples(200)
@given(data=st.binary(max_size=300), keep=st.integers(0, 400), flip=st.integers(0, 10_000))
def test_calibration_reader(data: bytes, keep: int, flip: int) -> None:
    """Random bytes, and a real calibration file cut short or with one byte flipped."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cal.safetensors"
        real = Path(tmp) / "real.safetensors"
        Calibration(np.ones(8, dtype=np.float32), 0.5, meta={"model": "m", "method": "x"}).save(real)
        good, reference = real.read_bytes(), Calibration.load(real)
        for candidate in (data, good[: keep % len(good)], _flip(good, flip)):
            path.write_bytes(candidate)
            cal = _clean_or_one_line(path, lambda: Calibration.load(path))
            if cal is not None:  # a flip in a byte nothing reads (padding) is harmless; the content must hold
                assert np.array_equal(cal.direction, reference.direction), candidate
                assert cal.coefficient == reference.coefficient and cal.meta == reference.meta


def _flip(data: bytes, at: int) -> bytes:
    i = at % len(data)
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@_examples(150)
@given(
    corpus=_jsonl_file(("_id", "title", "text")), queries=_jsonl_file(("_id", "text")), qrels=qrels_files()
)
def test_beir_folder_check(corpus: bytes, queries: bytes, qrels: bytes) -> None:
    """check_beir refuses a folder when any part is bad, whichever part it is."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "corpus.jsonl").write_bytes(corpus)
        (root / "queries.jsonl").write_bytes(queries)
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_bytes(qrels)
        parts_ok = all(
            _clean_or_one_line(p, read) is not None
            for p, read in (
                (root / "corpus.jsonl", lambda: load_corpus(root, on_empty="keep")),
                (root / "queries.jsonl", lambda: load_queries(root)),
                (root / "qrels" / "test.tsv", lambda: load_qrels(root)),
            )
        )
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = _clean_or_one_line(root, lambda: check_beir(root))
        assert (summary is not None) == parts_ok


# ------------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def tiny_index(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import WORDS

    corpus = tmp_path_factory.mktemp("props-corpus")
    with open(corpus / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(12):
            fh.write(json.dumps({"_id": f"d{i}", "text": " ".join(WORDS[i : i + 6])}) + "\n")
    out = tmp_path_factory.mktemp("props-index") / "idx"
    argv = ["index", "build", str(corpus), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main([*argv, "--kind", "sparse", "--no-progress", "--dtype", "fp32", "-K", "16"]) == 0
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_cpu(isolated_cache_one_cpu: Path) -> Path:
    return isolated_cache_one_cpu


def _command_outcome(argv: list[str], out: Path, capfd: pytest.CaptureFixture[str]) -> int:
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: a usage error, exit 2
        rc = int(exc.code or 0)
    err = capfd.readouterr().err
    event("accepted" if rc == 0 else "refused")
    errors = [line for line in err.splitlines() if line.startswith("keytok: error:")]
    if rc == 0:
        assert not errors and out.exists()
    else:
        assert rc == 1, err
        assert len(errors) == 1 and errors == [line for line in err.splitlines() if "error" in line], err
        assert not out.exists(), "a failed command left its output behind"
    return rc


@_examples(12, uses_fixtures=True)
@given(corpus=st.one_of(mostly_valid_files(("_id", "title", "text")), _jsonl_file(("_id", "title", "text"))))
def test_index_build_command(corpus: bytes, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "beir"
        folder.mkdir()
        (folder / "corpus.jsonl").write_bytes(corpus)
        out = Path(tmp) / "idx"
        argv = ["index", "build", str(folder), "--model", str(tiny_model_dir), "--out", str(out)]
        argv += [
            "--kind",
            "sparse",
            "--no-progress",
            "--dtype",
            "fp32",
            "-K",
            "8",
            "--cache",
            str(Path(tmp) / "c"),
        ]
        rc = _command_outcome(argv, out, capfd)
        assert (rc == 0) == (_clean_or_one_line(folder, lambda: load_corpus(folder)) is not None)


@_examples(40, uses_fixtures=True)
@given(queries=st.one_of(mostly_valid_files(("_id", "text")), _jsonl_file(("_id", "text"))))
def test_search_command(queries: bytes, tiny_index: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "queries.jsonl"
        qfile.write_bytes(queries)
        run = Path(tmp) / "run.trec"
        argv = [
            "search",
            str(tiny_index),
            "--queries",
            str(qfile),
            "--run",
            str(run),
            "--query-mode",
            "llm-free",
        ]
        rc = _command_outcome(argv, run, capfd)
        expected = _clean_or_one_line(qfile, lambda: load_queries(qfile))
        assert (rc == 0) == (expected is not None)
        if rc == 0:
            lines = [line.split() for line in run.read_text(encoding="utf-8").splitlines()]
            assert all(len(cols) == 6 and cols[0] in expected for cols in lines)


# ------------------------------------------------------------------------------------------- round trip
@_examples(200)
@given(
    docs=st.dictionaries(
        GOOD_ID,
        st.tuples(GOOD_TEXT, st.text(st.characters(codec="utf-8"), max_size=10)),
        min_size=1,
        max_size=6,
    ),
    ascii_only=st.booleans(),
)
def test_valid_corpus_reads_back_unchanged(docs: dict[str, tuple[str, str]], ascii_only: bool) -> None:
    """What the contract allows is accepted, not over-refused, and read back exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_bytes(
            b"\n".join(_dumps({"_id": i, "text": t, "title": ti}, ascii_only) for i, (t, ti) in docs.items())
        )
        got = load_corpus(path)
        assert [(d.id, d.text, d.title) for d in got] == [(i, t, ti) for i, (t, ti) in docs.items()]
