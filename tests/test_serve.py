"""``keytok serve`` as its clients use it: a real server on a free loopback port, real HTTP, a real browser.

The server runs ``keytok serve`` in a child process over an index of the tiny random model (sparse, dense
and, with the lucene extra, BM25). Its answers are checked against the library's own (``Retriever``,
``KeyTokenModel``), every bad request against its 4xx and one-line message, the page in headless Chromium
(Debian's, through Selenium and chromedriver), and a short load against errors and memory growth.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_index_pipeline import _write_corpus

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from keytok import KeyTokenModel, Retriever  # noqa: E402
from keytok.cli.main import main  # noqa: E402
from keytok.engines.java import lucene_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOAD = ROOT / "experiments" / "load_serve.py"
LIMIT_FLAGS = ["--max-k", "20", "--max-query-chars", "200", "--max-body-bytes", "4096", "--max-batch", "8"]
FUSED = "bm25+keytok"
TOKENS_TEXT = (
    "the study of this gene in cancer cells, and of that protein: results were not as linked to risk"
)


def _load_module():
    spec = importlib.util.spec_from_file_location("load_serve", LOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load_serve = _load_module()


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    """An isolated KEYTOK_CACHE and one CPU for this module and the servers it starts (see conftest)."""
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def kinds() -> list[str]:
    return ["sparse", "dense", "bm25"] if lucene_available() else ["sparse", "dense"]


@pytest.fixture(scope="module")
def index(tiny_model_dir, tmp_path_factory, kinds) -> Path:
    corpus = _write_corpus(tmp_path_factory.mktemp("beir") / "mini", 40)
    out = tmp_path_factory.mktemp("indexes") / "mini"
    rc = main(
        [str(a) for a in ("index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", ",".join(kinds),
                          "-K", 16, "-M", 4, "--chunk-size", 16, "--no-progress", "--dtype", "fp32")]
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def server(index):
    """The index served with small limits (so each limit is easy to pass) and a wide batching window."""
    with load_serve.Server(index, *LIMIT_FLAGS, "--batch-wait-ms", "30", timeout=300) as s:
        yield s


@pytest.fixture(scope="module")
def url(server) -> str:
    return server.url


@pytest.fixture(scope="module")
def retriever(index, tiny_model_dir):
    with Retriever.open(index) as r:
        yield r


def _post(url: str, path: str, body) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=60)


# ------------------------------------------------------------------------------------------ answers
def test_binds_loopback_and_is_healthy(url, index) -> None:
    assert urlsplit(url).hostname == "127.0.0.1"
    r = requests.get(f"{url}health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "index": str(index)}


def test_info_is_the_describe_record_and_the_limits(url, retriever, kinds) -> None:
    info = requests.get(f"{url}info", timeout=10).json()
    assert info["index"] == json.loads(json.dumps(retriever.describe()))
    assert info["index"]["engines"] == kinds
    assert info["systems"][: len(kinds)] == kinds
    assert (FUSED in info["systems"]) == ("bm25" in kinds)
    assert info["limits"] | {"batch_wait_ms": 0} == {
        "max_k": 20, "max_query_chars": 200, "max_body_bytes": 4096, "max_batch": 8, "batch_wait_ms": 0,
    }  # fmt: skip
    assert info["model"]["method"] == "prompteol"


@pytest.mark.parametrize("system", ["sparse", "dense", "bm25", "sparse:llm-free"])
def test_search_answers_what_the_library_answers(url, retriever, kinds, system) -> None:
    if system.partition(":")[0] not in kinds:
        pytest.skip(f"the index has no {system}")
    query = "vitamin d deficiency and bone loss"
    r = _post(url, "search", {"query": query, "k": 5, "system": system})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["query"] == query and got["system"] == system and got["k"] == 5
    want = [h.as_dict() for h in retriever.search(query, k=5, system=system)]
    assert [h["doc_id"] for h in got["hits"]] == [h["doc_id"] for h in want]
    for g, w in zip(got["hits"], want, strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-4)
        assert (g["rank"], g["title"], g["snippet"]) == (w["rank"], w["title"], w["snippet"])
        assert [m["token"] for m in g["matched"]] == [m["token"] for m in w["matched"]]
    if system != "dense":
        assert any(h["matched"] for h in got["hits"])


def test_fused_search_gives_each_engines_share(url, retriever, kinds) -> None:
    if "bm25" not in kinds:
        pytest.skip("needs the lucene extra for bm25")
    r = _post(url, "search", {"query": "aspirin reduces heart attack risk", "k": 4, "system": FUSED})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["parts"] == ["bm25", "sparse:expanded"] and got["fusion"] in ("minmax", "zscore", "rrf")
    for hit in got["hits"]:
        assert set(hit["sources"]) == {"bm25", "sparse:expanded"}
        assert hit["score"] == pytest.approx(sum(hit["sources"].values()), rel=1e-6)
    labels = {m["token"].rsplit("(", 1)[1].rstrip(")") for h in got["hits"] for m in h["matched"]}
    assert labels == {"bm25", "sparse:expanded"}
    weighted = _post(url, "search", {"query": "aspirin", "k": 3, "system": FUSED, "weights": {"bm25": 0}})
    assert weighted.status_code == 200
    assert all(h["sources"]["bm25"] == 0 for h in weighted.json()["hits"])


def test_queries_are_answered_in_order(url) -> None:
    queries = ["cat sat on the mat", "gene expression in cancer cells", "older adults"]
    got = _post(url, "search", {"queries": queries, "k": 3, "system": "sparse:llm-free"}).json()
    assert [r["query"] for r in got["results"]] == queries
    for q, res in zip(queries, got["results"], strict=True):
        alone = _post(url, "search", {"query": q, "k": 3, "system": "sparse:llm-free"}).json()
        assert res["hits"] == alone["hits"]


def test_tokens_are_the_models_with_marks_where_they_occur(url, tiny_model_dir) -> None:
    text = TOKENS_TEXT
    r = _post(url, "tokens", {"text": text, "k": 20})
    assert r.status_code == 200, r.text
    got = r.json()["tokens"]
    want = KeyTokenModel(str(tiny_model_dir), "prompteol", dtype="fp32").key_tokens(text, k=20)
    assert [t["token_id"] for t in got] == [t.token_id for t in want]
    assert [t["score"] for t in got] == pytest.approx([t.score for t in want], rel=1e-4)
    assert [t["in_input"] for t in got] == [t.in_input for t in want]
    marked = [t for t in got if t["spans"]]
    for t in got:
        for a, b in t["spans"]:
            assert text[a:b] == t["text"].strip()  # the word-level tokenizer: the span is the token
        assert bool(t["spans"]) == (t["in_input"] and not t["special"])
    assert marked, "no key token of the text occurs in it: the check above checked nothing"
    several = _post(url, "tokens", {"texts": [text, "the cat sat"], "k": 3}).json()["results"]
    assert [r["text"] for r in several] == [text, "the cat sat"]
    assert [t["token_id"] for t in several[0]["tokens"]] == [t.token_id for t in want[:3]]


# ------------------------------------------------------------------------------------------ marks
def test_marks_are_real_positions_not_letters_that_happen_to_match() -> None:
    from keytok.representations.marks import mark_words

    text = "there at a bone, speeds hypersonic"
    # cut as a GPT-2 style tokenizer cuts it (offsets without the space a word-start token carries)
    pieces = [(0, 5, "▁there"), (6, 8, "▁at"), (9, 10, "▁a"), (11, 15, "▁bone"), (15, 16, ","),
              (17, 22, "▁speed"), (22, 23, "s"), (24, 27, "▁hyp"), (27, 32, "erson"), (32, 34, "ic")]  # fmt: skip
    wanted = {"ther", "▁a", "a", "▁bone", ",", "▁speed", "s", "ic"}
    got = mark_words(text, pieces, wanted)
    # not "ther" in "there", nor "a" in "at" (the old page's letter matching marked both), nor the lone
    # "a", nor "ic" in a word whose first piece (▁hyp) did not match, nor punctuation
    assert [(text[a:b], label) for a, b, label in got] == [("bone", "▁bone"), ("speed", "▁speed"), ("s", "s")]
    assert mark_words(text, pieces, wanted, min_chars=1)[0] == (9, 10, "▁a")  # a lone letter, when asked


def test_hits_mark_the_words_that_matched_and_only_those(url, kinds) -> None:
    import re

    system = FUSED if "bm25" in kinds else "sparse"
    query = "a gene of the cancer cells and d vitamin at the bone"
    got = _post(url, "search", {"query": query, "k": 10, "system": system}).json()
    seen = {"kt": 0, "bm25": 0}
    for h in got["hits"]:
        matched = {m["token"] for m in h["matched"]}
        for field in ("title", "snippet"):
            text, marks = h[field], h["marks"][field]
            spans = {(m["start"], m["end"]) for m in marks}
            for m in marks:
                a, b, term, part = m["start"], m["end"], m["term"], m["part"]
                assert (term if system == "sparse" else f"{term} ({part})") in matched
                word = text[a:b]
                # whole words (the tiny tokenizer cuts text into words), never a lone letter
                assert (a == 0 or not text[a - 1].isalnum()) and (b == len(text) or not text[b].isalnum()), (
                    word
                )
                assert len(word) >= 2, (word, term)
                if part.startswith("bm25"):
                    seen["bm25"] += 1
                    assert word.lower()[:3] == term[:3], (word, term)  # a Porter stem of the word
                else:
                    seen["kt"] += 1
                    assert word == term.removeprefix("▁")
            for token in matched:  # every whole-word occurrence of a matched key token is marked
                t, _, part = token.partition(" (")
                if part.startswith("bm25") or len(t.removeprefix("▁")) < 2:
                    continue
                for occ in re.finditer(rf"(?<![^\W_]){re.escape(t.removeprefix('▁'))}(?![^\W_])", text):
                    assert occ.span() in spans, (t, text)
    assert seen["kt"] > 0
    assert seen["bm25"] > 0 or system == "sparse"


def test_lucene_names_each_term_with_the_word_it_came_from(index, kinds) -> None:
    if "bm25" not in kinds:
        pytest.skip("needs the lucene extra for bm25")
    from keytok.engines.lucene import LuceneBM25Index

    engine = LuceneBM25Index.open(index / "bm25")
    try:
        text = "🙂 The bodies at hypersonic speeds: flows"  # the emoji is 2 UTF-16 units to Java, 1 character here
        got = [(text[a:b], t) for a, b, t in engine.terms_at(text) if t.isalpha()]
    finally:
        engine.close()
    assert got == [("bodies", "bodi"), ("hypersonic", "hyperson"), ("speeds", "speed"), ("flows", "flow")]


def test_a_search_gives_its_querys_key_tokens_from_the_same_forward(url) -> None:
    query = "vitamin d deficiency and bone loss in older adults"
    alone = _post(url, "tokens", {"text": query, "k": 8}).json()["tokens"]
    before = requests.get(f"{url}info", timeout=10).json()["batches"]
    got = _post(url, "search", {"query": query, "k": 3, "system": "sparse", "tokens": 8}).json()
    after = requests.get(f"{url}info", timeout=10).json()["batches"]
    assert after["calls"] - before["calls"] == 1  # the search and its key tokens: one model call
    assert len(got["hits"]) == 3 and len(got["tokens"]) == 8
    assert [t["token_id"] for t in got["tokens"]] == [t["token_id"] for t in alone]
    assert [t["score"] for t in got["tokens"]] == pytest.approx(
        [t["score"] for t in alone], rel=1e-3, abs=1e-4
    )
    assert [t["spans"] for t in got["tokens"]] == [t["spans"] for t in alone]
    assert "tokens" not in _post(url, "search", {"query": query, "k": 3}).json()  # only when asked
    _one_line_refusal(_post(url, "search", {"query": query, "tokens": 0}), 400, "tokens")


def test_query_key_tokens_reuse_the_embeddings_of_the_last_search(retriever, tiny_model_dir) -> None:
    encoder = retriever.searcher.encoder
    forwards = []
    real = encoder.encode

    def counted(*args, **kwargs):  # the real forward, counted
        forwards.append(1)
        return real(*args, **kwargs)

    queries = ["vitamin d and bone loss", "the cat sat on the mat"]
    encoder.encode = counted
    try:
        retriever.search_batch(queries, k=2, system="sparse")
        searched = len(forwards)
        got = retriever.query_key_tokens(queries, k=5)
        assert len(forwards) == searched  # no forward of its own
        retriever.query_key_tokens(["gene expression"], k=5)
        assert len(forwards) == searched + 1  # other texts: one
    finally:
        del encoder.encode
    want = KeyTokenModel(str(tiny_model_dir), "prompteol", dtype="fp32").key_tokens(queries, k=5)
    assert [[t.token_id for t in row] for row in got] == [[t.token_id for t in row] for row in want]


def test_explain_sums_to_the_sparse_score(url) -> None:
    query = "protein and gene in cells"
    hit = _post(url, "search", {"query": query, "k": 1, "system": "sparse"}).json()["hits"][0]
    got = _post(url, "explain", {"query": query, "doc_id": hit["doc_id"]}).json()
    assert got["doc_id"] == hit["doc_id"] and got["title"] == hit["title"]
    assert sum(m["contribution"] for m in got["matched"]) == pytest.approx(hit["score"], rel=1e-4)
    assert got["score"] == pytest.approx(hit["score"], rel=1e-4)


def test_concurrent_requests_share_forwards(url) -> None:
    texts = [
        f"the {w} study results" for w in ("cat", "dog", "gene", "cancer", "heart", "bone", "cell", "risk")
    ]
    before = requests.get(f"{url}info", timeout=10).json()["batches"]
    alone = {t: _post(url, "tokens", {"text": t, "k": 5}).json()["tokens"] for t in texts}
    mid = requests.get(f"{url}info", timeout=10).json()["batches"]
    assert mid["calls"] - before["calls"] == len(texts)  # one after another: a forward each
    got: dict[str, list] = {}
    barrier = threading.Barrier(len(texts))

    def ask(t: str) -> None:
        barrier.wait()
        got[t] = _post(url, "tokens", {"text": t, "k": 5}).json()["tokens"]

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    after = requests.get(f"{url}info", timeout=10).json()["batches"]
    assert after["jobs"] - mid["jobs"] == len(texts)
    assert after["calls"] - mid["calls"] < len(texts)  # at the same time: fewer forwards than requests
    assert after["largest"] > 1
    for t in texts:  # each caller got its own text's tokens
        assert [x["token_id"] for x in got[t]] == [x["token_id"] for x in alone[t]]
        assert [x["score"] for x in got[t]] == pytest.approx(
            [x["score"] for x in alone[t]], rel=1e-3, abs=1e-4
        )


def test_the_batcher_hands_memory_back_after_each_call() -> None:
    import asyncio
    import platform

    from keytok.serve import memory
    from keytok.serve.batching import Batcher

    after: list[int] = []

    async def go() -> tuple[list[int], int]:
        batcher = Batcher(4, 20.0, after=lambda: after.append(batcher.stats.calls))
        await batcher.start()
        try:
            double = lambda payloads: [2 * p for p in payloads]  # noqa: E731
            got = await asyncio.gather(*(batcher.submit("g", double, i) for i in range(6)))
        finally:
            await batcher.stop()
        return list(got), batcher.stats.calls

    got, calls = asyncio.run(go())
    assert got == [0, 2, 4, 6, 8, 10]
    assert calls >= 2 and after == list(range(1, calls + 1))  # once after each call, in order
    memory.release()  # malloc_trim on glibc, nothing elsewhere
    assert platform.libc_ver()[0] != "glibc" or memory._glibc() is not None


def test_the_servers_jvm_has_a_small_fixed_young_generation(kinds) -> None:
    if "bm25" not in kinds:
        pytest.skip("needs the lucene extra")
    import subprocess
    import sys

    code = (
        "from keytok.serve import memory; from keytok.engines.java import jclass; "
        "assert memory.settle(); "
        "bean = jclass('java.lang.management.ManagementFactory').getRuntimeMXBean(); "
        "print(list(bean.getInputArguments().toArray())); assert not memory.settle()"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    from keytok.serve.memory import JVM_YOUNG

    assert JVM_YOUNG in out.stdout  # started with it; once the JVM runs, settle() can do nothing


def test_the_public_api_the_server_uses(retriever, kinds) -> None:
    from keytok import KeytokError

    assert retriever.systems[: len(kinds)] == kinds
    assert retriever.check_system("sparse") == {"parts": ["sparse"], "fusion": None, "weights": None}
    fused = retriever.check_system("sparse+dense", fusion="rrf", weights={"dense": 0.5})
    assert (fused["parts"], fused["fusion"], set(fused["weights"])) == (
        ["sparse", "dense"],
        "rrf",
        {"sparse", "dense"},
    )
    assert fused["weights"]["dense"] == 0.5  # given; sparse's is the index's or the default
    for bad in (
        {"system": "nope"},
        {"system": "sparse+dense", "fusion": "max"},
        {"system": "sparse", "weights": {"x": 1}},
    ):
        with pytest.raises(KeytokError):
            retriever.check_system(bad.pop("system"), **bad)
    hit = retriever.search("cat", k=1, system="sparse:llm-free")[0]
    assert retriever.document(hit.doc_id) == {
        "doc_id": hit.doc_id,
        "title": hit.title,
        "snippet": hit.snippet,
    }
    with pytest.raises(KeytokError, match="not in index"):
        retriever.document("no-such-doc")


# ------------------------------------------------------------------------------------------ refusals
BAD = [
    # (name, path, body, status, field)
    ("unknown system", "search", {"query": "cat", "system": "nope"}, 400, "system"),
    ("unknown engine in a fusion", "search", {"query": "cat", "system": "sparse+nope"}, 400, "system"),
    ("unknown fusion", "search", {"query": "cat", "system": "sparse+dense", "fusion": "max"}, 400, "fusion"),
    ("weight of no part", "search", {"query": "cat", "system": "sparse+dense", "weights": {"bm9": 1}}, 400, "weights"),
    ("negative weight", "search", {"query": "cat", "system": "sparse+dense", "weights": {"dense": -1}}, 400, "weights"),
    ("k zero", "search", {"query": "cat", "k": 0}, 400, "k"),
    ("k over --max-k", "search", {"query": "cat", "k": 21}, 400, "k"),
    ("k as a string", "search", {"query": "cat", "k": "5"}, 422, "k"),
    ("k as a float", "search", {"query": "cat", "k": 2.5}, 422, "k"),
    ("k as a bool", "search", {"query": "cat", "k": True}, 422, "k"),
    ("empty query", "search", {"query": ""}, 400, "query"),
    ("blank query", "search", {"query": "  \n "}, 400, "query"),
    ("query over --max-query-chars", "search", {"query": "cat " * 51}, 400, "query"),
    ("query as a number", "search", {"query": 7}, 422, "query"),
    ("query and queries", "search", {"query": "cat", "queries": ["dog"]}, 400, "query"),
    ("neither query nor queries", "search", {"k": 3}, 400, "query"),
    ("queries not strings", "search", {"queries": ["cat", 3]}, 422, "queries.1"),
    ("an empty query among queries", "search", {"queries": ["cat", ""]}, 400, "queries[1]"),
    ("more queries than --max-batch", "search", {"queries": ["cat"] * 9}, 400, "queries"),
    ("empty queries", "search", {"queries": []}, 400, "queries"),
    ("weights not numbers", "search", {"query": "cat", "system": "sparse+dense", "weights": {"dense": "x"}}, 422, "weights.dense"),
    ("unknown field", "search", {"query": "cat", "sytem": "sparse"}, 422, "sytem"),
    ("body not an object", "search", ["cat"], 422, "body"),
    ("tokens k over --max-k", "tokens", {"text": "cat", "k": 50}, 400, "k"),
    ("tokens empty text", "tokens", {"text": ""}, 400, "text"),
    ("tokens texts not a list", "tokens", {"texts": "cat"}, 422, "texts"),
    ("explain unknown doc id", "explain", {"query": "cat", "doc_id": "no-such-doc"}, 404, "doc_id"),
    ("explain without doc id", "explain", {"query": "cat"}, 422, "doc_id"),
    ("explain empty query", "explain", {"query": "", "doc_id": "doc1"}, 400, "query"),
]  # fmt: skip


def _one_line_refusal(r: requests.Response, status: int, field: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    assert message.startswith(f"{field}: "), message
    return message


@pytest.mark.parametrize("name,path,body,status,field", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_a_4xx_naming_the_field(url, name, path, body, status, field) -> None:
    _one_line_refusal(_post(url, path, body), status, field)


def test_limits_are_named_with_their_flags(url) -> None:
    assert "--max-k" in _post(url, "search", {"query": "cat", "k": 21}).json()["error"]
    assert "--max-query-chars" in _post(url, "search", {"query": "c" * 201}).json()["error"]
    assert "--max-batch" in _post(url, "tokens", {"texts": ["cat"] * 9}).json()["error"]
    ok = _post(url, "search", {"query": "c" * 200, "k": 20})  # at the limits: answered
    assert ok.status_code == 200, ok.text


def test_invalid_json_is_a_422(url) -> None:
    r = requests.post(
        f"{url}search", data=b'{"query": "cat",', headers={"content-type": "application/json"}, timeout=10
    )
    assert "JSON" in _one_line_refusal(r, 422, "body")


def test_a_body_over_the_limit_is_refused_declared_or_chunked(url) -> None:
    big = json.dumps({"query": "cat", "pad": "x" * 5000}).encode()
    assert "--max-body-bytes" in _one_line_refusal(
        requests.post(f"{url}search", data=big, headers={"content-type": "application/json"}, timeout=10),
        413,
        "body",
    )
    chunked = requests.post(
        f"{url}search",
        data=iter([big[:3000], big[3000:]]),
        headers={"content-type": "application/json"},
        timeout=10,
    )  # a generator body is sent chunked, with no Content-Length
    _one_line_refusal(chunked, 413, "body")


def test_no_file_is_served_outside_the_static_folder(url) -> None:
    parts = urlsplit(url)
    assert requests.get(f"{url}static/index.html", timeout=10).status_code == 200
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/../../api.py",
                 "/static/%2e%2e/%2e%2e/api.py", "/../setup.cfg", "/static//etc/passwd", "/app.py"):  # fmt: skip
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", path)  # sent as written: no client-side normalisation
        r = conn.getresponse()
        body = r.read().decode("utf-8", "replace")
        conn.close()
        assert r.status == 404, (path, r.status)
        assert "import" not in body and "root:" not in body and "[metadata]" not in body


def test_unknown_paths_and_methods_are_one_line_4xx(url) -> None:
    _one_line_refusal(requests.get(f"{url}nowhere", timeout=10), 404, "/nowhere")
    _one_line_refusal(requests.get(f"{url}search", timeout=10), 405, "/search")


# ------------------------------------------------------------------------------------------ model only, CLI
def test_model_only_serves_tokens_and_refuses_search(tiny_model_dir) -> None:
    with load_serve.Server(None, "--model", str(tiny_model_dir), "--dtype", "fp32", timeout=300) as s:
        info = requests.get(f"{s.url}info", timeout=10).json()
        assert info["index"] is None and info["systems"] == []
        r = _post(s.url, "tokens", {"text": "the cat sat on the mat", "k": 3})
        assert r.status_code == 200 and len(r.json()["tokens"]) == 3
        _one_line_refusal(_post(s.url, "search", {"query": "cat"}), 404, "search")
        _one_line_refusal(_post(s.url, "explain", {"query": "cat", "doc_id": "d"}), 404, "explain")


def test_cli_refusals_are_one_line(index, tmp_path, capsys) -> None:
    assert main(["serve"]) == 1
    assert "INDEX" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["serve", str(index), "--port", str(taken.getsockname()[1])]) == 1
        err = capsys.readouterr().err
        assert "cannot listen" in err and err.count("\n") == 1
    assert main(["serve", str(index), "--max-batch", "0"]) == 1
    assert "--max-batch" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ load, browser
def test_short_load_has_no_errors_and_no_memory_growth(server) -> None:
    texts = [
        "vitamin d deficiency",
        "cat sat on the mat",
        "aspirin heart attack risk",
        "gene expression cells",
    ]
    system = "bm25+keytok" if "bm25" in server.info()["systems"] else "sparse"
    run_load = load_serve.run_load
    run_load(server.url, texts, clients=4, seconds=1.5, system=system)  # warm
    start = server.rss()
    row = run_load(server.url, texts, clients=4, seconds=3, system=system, max_requests=2000)
    end = server.rss()
    print(f"\nshort load: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
          f"{row['requests']} requests, RSS {start / 2**20:.0f} -> {end / 2**20:.0f} MiB")  # fmt: skip
    assert row["errors"] == 0, row["error_examples"]
    assert row["search"] > 0 and row["tokens"] > 0
    assert end <= start * 1.10


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (test extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@contextlib.contextmanager
def open_page(url: str) -> Iterator[Any]:
    """Headless Chromium on the page at ``url``, once it has read ``/info``."""
    browser, driver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    page = webdriver.Chrome(service=Service(driver), options=options)
    try:
        page.get(url)
        WebDriverWait(page, 30).until(
            lambda p: p.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
        )
        yield page
    finally:
        page.quit()


def search_on_page(page: Any, query: str, system: str | None = None) -> list[Any]:
    """Type ``query`` in the search box (with ``system`` selected), submit, and wait for the hits."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if system is not None:
        Select(page.find_element(By.ID, "system")).select_by_value(system)
    box = page.find_element(By.ID, "q")
    box.clear()
    box.send_keys(query)
    page.execute_script("document.getElementById('hits').innerHTML = ''")
    page.find_element(By.ID, "search-btn").click()
    WebDriverWait(page, 30).until(
        lambda p: (
            p.find_elements(By.CSS_SELECTOR, "#hits .hit")
            or p.find_element(By.ID, "search-error").is_displayed()
        )
    )
    return page.find_elements(By.CSS_SELECTOR, "#hits .hit")


def inspect_on_page(page: Any, text: str, k: int) -> list[Any]:
    """Type ``text`` in the inspector, ask for ``k`` key tokens, and wait for the bars."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    area = page.find_element(By.ID, "text")
    area.clear()
    area.send_keys(text)
    page.find_element(By.ID, "inspect-k").clear()
    page.find_element(By.ID, "inspect-k").send_keys(str(k))
    page.execute_script("document.getElementById('bars').innerHTML = ''")
    page.find_element(By.ID, "inspect-btn").click()
    WebDriverWait(page, 30).until(lambda p: p.find_elements(By.CSS_SELECTOR, "#bars .bar"))
    return page.find_elements(By.CSS_SELECTOR, "#bars .bar")


def test_the_page_searches_and_inspects_in_a_real_browser(url, kinds, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with open_page(url) as page:
        systems = [o.get_attribute("value") for o in Select(page.find_element(By.ID, "system")).options]
        assert systems[: len(kinds)] == kinds
        system = FUSED if FUSED in systems else "sparse"
        hits = search_on_page(page, "vitamin bone loss", system)
        assert len(hits) == 10
        marks = page.find_elements(By.CSS_SELECTOR, "#hits .doc mark")
        assert marks, "no highlight in any hit"
        kinds_marked = {m.get_attribute("class") for m in marks}
        assert kinds_marked & {"kt", "both"}  # key tokens shared with the query
        if system == FUSED:
            assert kinds_marked & {"bm25", "both"}  # and BM25's terms
            assert page.find_elements(By.CSS_SELECTOR, "#hits .shares span")
        for m in marks:  # each highlight is a word the query's terms match
            assert (
                m.text.strip().lower().startswith(("vitamin", "bone", "loss"))
                or m.get_attribute("class") == "kt"
            )
        around = page.execute_script(
            "return [...document.querySelectorAll('#hits .doc mark')].map((m) => ["
            "  m.previousSibling && m.previousSibling.nodeType === 3 ? m.previousSibling.textContent.slice(-1) : '',"
            "  m.textContent,"
            "  m.nextSibling && m.nextSibling.nodeType === 3 ? m.nextSibling.textContent.slice(0, 1) : '']);"
        )
        for before, word, after in around:  # whole words (the tiny tokenizer's tokens), never a lone letter
            assert len(word) >= 2 and not before.isalnum() and not after.isalnum(), (before, word, after)
        bars = inspect_on_page(page, TOKENS_TEXT, 20)
        assert len(bars) == 20
        marked = page.find_elements(By.CSS_SELECTOR, "#text-marked mark")
        in_text = {
            b.find_element(By.CLASS_NAME, "tok").text.removeprefix("▁")
            for b in bars
            if "in" in b.get_attribute("class").split()
        }
        assert marked and in_text
        assert {m.text for m in marked} <= in_text  # each mark is a key token that occurs in the text
        assert search_on_page(page, "c" * 201) == []
        assert page.find_element(By.ID, "search-error").text.startswith("query: ")
        assert len(search_on_page(page, "vitamin bone loss")) == 10
        shot = Path(os.environ.get("KEYTOK_SCREENSHOT") or tmp_path / "serve.png")
        assert page.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        severe = [
            e for e in page.get_log("browser") if e["level"] == "SEVERE" and "/search" not in e["message"]
        ]
        assert severe == [], severe  # no script error (the 400 of the refused query is expected)
