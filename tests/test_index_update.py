"""``keytok index add`` / ``delete`` (:mod:`keytok.pipeline.update`): an index folder updated in place, one
writer at a time, atomically.

A tiny index (the random tiny model, sparse + dense + impact, 30 documents) is copied for each test. Added
documents must be found by every engine, deleted ones by none; a duplicate or unknown id, or an engine that
cannot be updated, is refused in one line with nothing changed; two ``keytok index add`` processes at once
lose no document; and a writer killed with SIGKILL at a random point leaves the index either before or
after its write, never between, and always opening with every hash and structure checked.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import WORDS

import keytok
from keytok.cli.main import main
from keytok.engines.dense import DenseIndex
from keytok.engines.manifest import canonical
from keytok.engines.sparse import SparseIndex
from keytok.pipeline.searcher import Searcher
from keytok.utils.hashing import sha256_text

KINDS = ("sparse", "dense", "impact")
N_DOCS = 30
#: Random-point kill trials (see test_kill_9_at_a_random_point_leaves_old_or_new). Each takes ~4.7 s on the
#: shared 2-core machine (a writer process imports torch and loads the tiny model before its write), so 12
#: by default; KEYTOK_KILL_TRIALS=50 runs the issue's 50.
KILL_TRIALS = int(os.environ.get("KEYTOK_KILL_TRIALS", "12"))


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12))


@pytest.fixture(scope="module")
def built(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = {f"d{i}": _text(i) for i in range(N_DOCS)}
    out = tmp_path_factory.mktemp("update") / "index"
    keytok.build_index(docs, out, model=tiny_model_dir, kinds=KINDS, k_doc=16, m_query=4).close()
    return out


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built index, for one test to update."""
    dest = tmp_path / "index"
    shutil.copytree(built, dest)
    return dest


def _corpus(path: Path, docs: dict[str, str]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    return path


def _new_docs(prefix: str, n: int) -> dict[str, str]:
    """Texts unlike the built ones (other strides through the words), so each finds itself first."""
    return {
        f"{prefix}{i}": " ".join(WORDS[(i * 13 + j * 5 + 3) % len(WORDS)] for j in range(10))
        for i in range(n)
    }


def _cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """Exit code, error line and stdout of the CLI run in this process (asserting one error line at most,
    no traceback)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("keytok: error:")]
    assert len(errors) == (code != 0), err
    return code, errors[0] if errors else "", out


def _state(index: Path) -> dict[str, set[str]]:
    """The document ids each part of the folder holds, the folder opened with every hash and structure
    checked (an update must leave it so at every instant)."""
    searcher = Searcher(index, verify=True)
    try:
        searcher.check()
        docs = set(searcher._doc_info())
        assert searcher.info["docs"] == len(docs)
    finally:
        searcher.close()
    sparse = SparseIndex.open(index / "sparse", verify=False)
    impact = SparseIndex.open(index / "impact", verify=False)
    live = {d for d in sparse.doc_ids if d in sparse}
    return {
        "docs": docs,
        "sparse": live,
        "impact": {d for d in impact.doc_ids if d in impact},
        "dense": set(DenseIndex.open(index / "dense", verify=False).doc_ids),
    }


def _queries(index: Path, doc_ids: list[str], text: dict[str, str]) -> dict[tuple[str, str], Any]:
    """For each doc and engine, the query that must find it: its own text for dense (the query encoding of
    a text is its document encoding), its own stored vector for the native engines (the tiny model is
    random, so a text's key tokens need not be its words)."""
    queries: dict[tuple[str, str], Any] = {}
    for kind in ("sparse", "impact"):
        engine = SparseIndex.open(index / kind)
        for d in doc_ids:
            tokens, weights = engine.doc_vector(d)
            queries[(d, kind)] = dict(zip(tokens.tolist(), weights.astype(float).tolist(), strict=True))
    for d in doc_ids:
        queries[(d, "dense")] = text[d]
    return queries


def _found(index: Path, queries: dict[tuple[str, str], Any]) -> dict[tuple[str, str], bool]:
    """Whether each query's document is among the top 3 of the dense engine, or among the hits of a native
    engine (the tiny model's impact weights rank many documents above a document's own: a random model)."""
    found = {}
    with keytok.Retriever.open(index) as r:
        for (d, kind), q in queries.items():
            if kind == "dense":
                hits = [h.doc_id for h in r.search(q, k=3, system="dense")]
            else:
                hits = [doc for doc, _ in r.searcher.engine(kind).search(q, k=1000)]
            found[(d, kind)] = d in hits
    return found


# ------------------------------------------------------------------------------------------- add, delete
def test_add_then_search_finds_the_new_documents(index: Path, tmp_path: Path, capsys) -> None:
    new = _new_docs("n", 3)
    code, _, _ = _cli(capsys, "index", "add", index, _corpus(tmp_path / "new.jsonl", new), "--no-progress")
    assert code == 0
    state = _state(index)
    expected = {f"d{i}" for i in range(N_DOCS)} | set(new)
    assert all(ids == expected for ids in state.values()), state
    found = _found(index, _queries(index, list(new), new))
    assert all(found.values()), found
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".index")]  # no lock, no temp left


def test_add_through_the_api_with_documents_in_memory(index: Path, tiny_model_dir: Path) -> None:
    model = keytok.KeyTokenModel(str(tiny_model_dir), "prompteol")
    with pytest.raises(keytok.KeytokError, match="index"):  # another method: not the index's encoder
        keytok.add_documents(index, {"m0": "x y"}, model=keytok.KeyTokenModel(str(tiny_model_dir), "mean"))
    summary = keytok.add_documents(index, {"m0": _text(3) + " extra words"}, model=model)
    assert summary.docs == N_DOCS + 1 and summary.engines == {"sparse": 31, "impact": 31, "dense": 31}
    assert "m0" in _state(index)["sparse"]


def test_delete_then_search_does_not_find_them(index: Path, tmp_path: Path, capsys) -> None:
    gone = ["d3", "d4", "d5"]
    queries = _queries(index, gone, {d: _text(int(d[1:])) for d in gone})
    assert all(_found(index, queries).values())
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("d4\n\nd5\n")
    code, _, out = _cli(capsys, "index", "delete", index, "d3", "--ids-file", ids_file, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["doc_ids"] == ["d3", "d4", "d5"] and summary["docs"] == N_DOCS - 3
    state = _state(index)
    expected = {f"d{i}" for i in range(N_DOCS)} - {"d3", "d4", "d5"}
    assert all(ids == expected for ids in state.values()), state
    assert not any(_found(index, queries).values())
    # a deleted id may be added again
    code, _, _ = _cli(
        capsys, "index", "add", index, _corpus(tmp_path / "again.jsonl", {"d3": _text(3)}), "--no-progress"
    )
    assert code == 0 and _found(index, {k: q for k, q in queries.items() if k[0] == "d3"}) == {
        ("d3", kind): True for kind in ("sparse", "impact", "dense")
    }


def test_a_duplicate_or_unknown_id_is_refused_in_one_line(index: Path, tmp_path: Path, capsys) -> None:
    before = (index / "keytok.json").read_bytes()
    corpus = _corpus(tmp_path / "dup.jsonl", {"x0": "new words here", "d7": "again"})
    code, err, _ = _cli(capsys, "index", "add", index, corpus, "--no-progress")
    assert code == 1 and f"doc id 'd7' is already in index {index}; add refused" in err
    code, err, _ = _cli(capsys, "index", "delete", index, "d1", "nope")
    assert code == 1 and f"doc id 'nope' is not in index {index}; delete refused" in err
    code, err, _ = _cli(capsys, "index", "delete", index)
    assert code == 1 and "give the ids to delete" in err
    assert (index / "keytok.json").read_bytes() == before
    assert "d1" in _state(index)["sparse"]


def test_an_engine_that_cannot_be_updated_is_refused_in_one_line(index: Path, tmp_path: Path, capsys) -> None:
    info = json.loads((index / "keytok.json").read_text())
    info["kinds"] = [*info["kinds"], "bm25"]  # as a build with bm25 records it
    info.pop("sha256")
    info["sha256"] = sha256_text(canonical(info))
    (index / "keytok.json").write_text(json.dumps(info))
    code, err, _ = _cli(capsys, "index", "delete", index, "d1")
    assert code == 1 and "holds bm25, which index the full texts" in err and "delete refused" in err
    code, err, _ = _cli(capsys, "index", "add", index, _corpus(tmp_path / "c.jsonl", {"x": "y z"}))
    assert code == 1 and "add refused" in err


@pytest.mark.parametrize("command", ["add", "delete"])
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["index", command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "atomic write" in out and "--wait" in out


# ------------------------------------------------------------------------------------ concurrent writers
def test_two_concurrent_index_add_processes_lose_no_document(index: Path, tmp_path: Path) -> None:
    batches = {p: _new_docs(p, 4) for p in ("a", "b")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keytok.cli.main",
                "index",
                "add",
                str(index),
                str(_corpus(tmp_path / f"{p}.jsonl", docs)),
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p, docs in batches.items()
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    state = _state(index)
    expected = {f"d{i}" for i in range(N_DOCS)} | set(batches["a"]) | set(batches["b"])
    assert all(ids == expected for ids in state.values()), state
    for docs in batches.values():
        found = _found(index, _queries(index, list(docs), docs))
        assert all(found.values()), found


# --------------------------------------------------------------------------------------- kill -9 at random
WRITER = """
import sys
from keytok.pipeline.update import add_documents, delete_documents
op, index, arg = sys.argv[1:4]
encoder = None
if op == "add":
    from keytok.pipeline.searcher import Searcher
    encoder = Searcher(index, verify=False).encoder  # the model loaded before the go: the kill hits the write
print("ready", flush=True)
sys.stdin.readline()
if op == "add":
    add_documents(index, arg, encoder=encoder, wait=60)
else:
    delete_documents(index, arg.split(","), wait=60)
print("done", flush=True)
"""


def _start_writer(op: str, index: Path, arg: str) -> subprocess.Popen[str]:
    """A writer process, started and waiting (imports done, model loaded) for a line on stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, op, str(index), arg],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.communicate()[1][
        -3000:
    ]
    return proc


def _run_writer(op: str, index: Path, arg: str, kill_after: float | None) -> tuple[bool, float]:
    """Run one write; kill it with SIGKILL ``kill_after`` seconds after the go (None: let it finish).
    Returns (whether it finished, seconds from the go to its end)."""
    proc = _start_writer(op, index, arg)
    assert proc.stdin is not None
    started = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        proc.wait(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    finished = proc.returncode == 0
    assert finished or proc.returncode == -signal.SIGKILL, err[-3000:]
    return finished, time.perf_counter() - started


@pytest.mark.slow
def test_kill_9_at_a_random_point_leaves_old_or_new(index: Path, tmp_path: Path) -> None:
    """Add (when the batch is absent) or delete it (when present), killed with SIGKILL after a random delay
    up to the write's own duration: after every kill the index opens, verifies, and holds the old set of
    documents or the new one in every part, never a mix."""
    batch = _new_docs("k", 3)
    corpus = str(_corpus(tmp_path / "k.jsonl", batch))
    old = {f"d{i}" for i in range(N_DOCS)}
    sets = {"old": old, "new": old | set(batch)}

    def step(kill_after: float | None) -> tuple[str, bool, float]:
        before = "new" if "k0" in _state(index)["docs"] else "old"
        op, arg = ("delete", ",".join(batch)) if before == "new" else ("add", corpus)
        finished, seconds = _run_writer(op, index, arg, kill_after)
        state = _state(index)
        after = next((name for name, ids in sets.items() if all(v == ids for v in state.values())), None)
        assert after is not None, f"a mix after {op} killed at {kill_after}: {state}"
        assert after != before or not finished, (op, before, after)
        return op, finished, seconds

    durations = {op: step(None)[2] for op in ("add", "delete")}  # the full writes, timed
    rng = random.Random(24)
    outcomes = {"killed": 0, "finished": 0}
    started = time.perf_counter()
    for _ in range(KILL_TRIALS):
        op = "delete" if "k0" in _state(index)["docs"] else "add"
        _, finished, _ = step(rng.uniform(0, durations[op] * 1.1))
        outcomes["finished" if finished else "killed"] += 1
    per_trial = (time.perf_counter() - started) / max(1, KILL_TRIALS)
    print(f"kill -9 trials: {KILL_TRIALS}, {outcomes}, write {durations}, {per_trial:.2f} s per trial")
    assert outcomes["killed"] >= KILL_TRIALS // 2


# ------------------------------------------------------------------------------------------ the swap itself
def test_the_swap_is_one_exchange_and_a_cut_two_rename_swap_is_undone(index: Path) -> None:
    """atomic_dir trades the folders in one step where the kernel can (the folder exists at every
    instant); where it cannot, a writer killed between its two renames leaves the old folder aside, and the
    next writer's lock puts it back."""
    from keytok.engines.lock import write_lock
    from keytok.utils.atomic import _exchange

    a, b = index.parent / "a", index.parent / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    assert _exchange(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()
    before = _state(index)
    index.rename(index.parent / ".index.old.4242")  # the first rename done, the second never came
    with write_lock(index):
        pass
    assert _state(index) == before and not (index.parent / ".index.old.4242").exists()
