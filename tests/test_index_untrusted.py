"""An index folder is untrusted input: crafted folders, re-sealed with correct hashes, are refused in one line.

The sha256 in ``keytok.json`` and the manifests only proves that a folder is what its own descriptions say;
whoever edits a file can rewrite the hashes too. Every test here edits a copy of one tiny index as an
attacker would, *re-seals* it (recomputes every size, sha256 and self-checksum, :func:`_reseal`), and then
checks that opening it (the API, the engines, the CLI) refuses it with a one-line :class:`KeytokError` that
names the file and the fault, never a traceback, a signal, or silently different hits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import WORDS

import keytok
from keytok.cli.main import main
from keytok.engines import manifest as manifest_module
from keytok.engines.dense import DenseIndex
from keytok.engines.java import lucene_available
from keytok.engines.manifest import canonical
from keytok.engines.sparse import SparseIndex
from keytok.errors import KeytokError
from keytok.pipeline.searcher import Searcher
from keytok.utils.hashing import sha256_file, sha256_text

LUCENE = lucene_available()
KINDS = ("sparse", "dense", "lucene", "bm25") if LUCENE else ("sparse", "dense")
N_DOCS = 30


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory) -> Path:
    docs = {f"d{i}": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(N_DOCS)}
    out = tmp_path_factory.mktemp("untrusted") / "index"
    keytok.build_index(docs, out, model=tiny_model_dir, kinds=KINDS, k_doc=16, m_query=4).close()
    return out


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built index, for one test to damage."""
    dest = tmp_path / "index"
    shutil.copytree(built, dest)
    return dest


# ------------------------------------------------------------------------------------------------ helpers
def _reseal_manifest(folder: Path) -> None:
    """Recompute the size and sha256 of every file ``folder/manifest.json`` lists, and its checksum."""
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    raw.pop("manifest_sha256")
    for name, entry in raw["files"].items():
        f = folder / name  # an attacker's name may lead anywhere: seal what it points at
        if f.is_file():
            entry["bytes"], entry["sha256"] = f.stat().st_size, sha256_file(f)
    raw["manifest_sha256"] = sha256_text(canonical(raw))
    path.write_text(json.dumps(raw))


def _reseal(index: Path, *parts: str) -> None:
    """Re-seal the engine folders ``parts`` and ``keytok.json`` as an attacker would: every recorded size,
    sha256 and self-checksum made to match the edited files."""
    for part in parts:
        _reseal_manifest(index / part)
    path = index / "keytok.json"
    raw = json.loads(path.read_text())
    raw.pop("sha256")
    for entry in raw["files"].values():
        f = index / entry["name"]
        if f.is_file():
            entry["bytes"], entry["sha256"] = f.stat().st_size, sha256_file(f)
    raw["sha256"] = sha256_text(canonical(raw))
    path.write_text(json.dumps(raw))


def _sign(index: Path) -> None:
    """Recompute only ``keytok.json``'s self-checksum (its recorded sizes left as edited)."""
    path = index / "keytok.json"
    raw = json.loads(path.read_text())
    raw.pop("sha256")
    raw["sha256"] = sha256_text(canonical(raw))
    path.write_text(json.dumps(raw))


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _edit_npy(path: Path, edit: Callable[[np.ndarray], np.ndarray | None]) -> None:
    arr = np.load(path).copy()
    out = edit(arr)
    np.save(path, arr if out is None else out, allow_pickle=False)


def _refused(fn: Callable[[], Any], *fragments: str) -> str:
    """Run ``fn``, expect a one-line KeytokError holding every fragment; return the message."""
    with pytest.raises(KeytokError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _search(index: Path, system: str = "sparse", verify: bool = True) -> Any:
    """Open as ``Retriever.open`` does and search (engines are opened on first use)."""
    with keytok.Retriever.open(index, verify=verify) as r:
        return r.search("cells gene cancer", k=5, system=system, query_mode="llm-free")


def _cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    """Exit code and the error line of the CLI run in this process (asserting it printed one, no traceback)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("keytok: error:")]
    assert len(errors) == (code != 0), err
    return code, errors[0] if errors else ""


def _cli_process(*argv: Any) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process: a segfault there shows as rc -11 instead of killing the test run."""
    return subprocess.run(
        [sys.executable, "-m", "keytok.cli.main", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _first_token_with(index: Path, n: int) -> tuple[int, int]:
    """(token, first posting position) of the first token of segment 0 with at least ``n`` postings."""
    indptr = np.load(index / "sparse" / "seg00000.indptr.npy").astype(np.int64)
    t = int(np.flatnonzero(np.diff(indptr) >= n)[0])
    return t, int(indptr[t])


# ------------------------------------------------------------------------------ 1. names leading outside
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the index, with a recognisable size (what an error must never reveal)."""
    secret = tmp_path / "secret" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(b"s" * 12345)
    return secret


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_info_names_leading_outside_are_refused_unread(
    index: Path, outside: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "../secret/shadow" if how == "relative" else str(outside)
    hashed: list[str] = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    _edit_json(index / "keytok.json", lambda d: d["files"][_role(d, "df.npy")].update(name=name) or d)
    _reseal(index)  # the attacker seals the outside file's true size and sha256
    message = _refused(
        lambda: Searcher(index), "keytok.json lists", "not a file name inside the folder: refused"
    )
    assert "12345" not in message
    assert not any("shadow" in h for h in hashed)
    # a wrong recorded size must not make the error tell the outside file's real size either
    _edit_json(index / "keytok.json", lambda d: d["files"][_role(d, name)].update(bytes=1) or d)
    _sign(index)
    message = _refused(lambda: Searcher(index, verify=False), "not a file name inside the folder")
    assert "12345" not in message


def _role(info: dict[str, Any], name: str) -> str:
    return next(role for role, e in info["files"].items() if e["name"] == name)


@pytest.mark.parametrize("part", ["", "sparse", "dense"])
def test_a_symlink_leading_outside_is_refused(index: Path, tmp_path: Path, part: str) -> None:
    name = {"": "df.npy", "sparse": "seg00000.docs.npy", "dense": "index.faiss"}[part]
    target = index / part / name
    copy = tmp_path / "elsewhere" / name
    copy.parent.mkdir()
    shutil.copy(target, copy)  # the same bytes: size and sha256 match, only the place is wrong
    target.unlink()
    target.symlink_to(copy)
    _refused(lambda: Searcher(index), f"file {name} is a link that leads outside the folder: refused")
    _refused(lambda: Searcher(index, verify=False), "leads outside the folder")
    if part:
        engine = SparseIndex if part == "sparse" else DenseIndex
        _refused(lambda: engine.open(index / part, verify=False), f"file {name} is a link that leads outside")


def test_a_symlink_inside_the_folder_is_followed(index: Path) -> None:
    (index / "keep").mkdir()
    (index / "df.npy").rename(index / "keep" / "df.npy")
    (index / "df.npy").symlink_to(Path("keep") / "df.npy")
    assert _search(index)


def test_engine_manifest_names_leading_outside_are_refused(index: Path, outside: Path) -> None:
    folder = index / "sparse"
    _edit_json(folder / "manifest.json", lambda m: m["files"].update({"../../secret/shadow": {}}) or m)
    _reseal(index, "sparse")
    message = _refused(
        lambda: SparseIndex.open(folder), "manifest.json lists '../../secret/shadow'", "refused"
    )
    assert "12345" not in message


def test_kinds_naming_another_folder_are_refused(index: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(index / "sparse", other)
    _edit_json(index / "keytok.json", lambda d: d.update(kinds=["../other"]) or d)
    _reseal(index)
    _refused(lambda: Searcher(index), "keytok.json lists bad engine kinds ['../other']")


def test_an_engine_reads_only_files_its_manifest_lists(index: Path) -> None:
    _edit_json(index / "sparse" / "manifest.json", lambda m: m["files"].pop("seg00000.docs.npy") and m)
    _reseal(index, "sparse")
    _refused(lambda: SparseIndex.open(index / "sparse"), "manifest.json does not list seg00000.docs.npy")


# ---------------------------------------------------------------------------- 2. structure of the engines
def _docs_past_segment(index: Path, value: int) -> None:
    _edit_npy(index / "sparse" / "seg00000.docs.npy", lambda a: a.__setitem__(0, value))


def _indptr_not_monotone(index: Path) -> None:
    t, _ = _first_token_with(index, 2)
    _edit_npy(
        index / "sparse" / "seg00000.indptr.npy", lambda a: a.__setitem__(t + 1, a[t] - 1 if a[t] else 5)
    )


def _indptr_past_postings(index: Path) -> None:
    _edit_npy(index / "sparse" / "seg00000.indptr.npy", lambda a: a.__setitem__(-1, a[-1] + 7))


def _postings_unsorted(index: Path) -> None:
    _, p = _first_token_with(index, 2)
    _edit_npy(index / "sparse" / "seg00000.docs.npy", lambda a: a.__setitem__([p, p + 1], a[[p + 1, p]]))


def _postings_repeated(index: Path) -> None:
    _, p = _first_token_with(index, 2)
    _edit_npy(index / "sparse" / "seg00000.docs.npy", lambda a: a.__setitem__(p + 1, a[p]))


def _ids(edit: Callable[[list[Any]], Any]) -> Callable[[Path], None]:
    return lambda index: _edit_json(index / "sparse" / "doc_ids.json", lambda ids: edit(ids) or ids)


def _params(**changes: Any) -> Callable[[Path], None]:
    return lambda index: _edit_json(
        index / "sparse" / "manifest.json", lambda m: m["params"].update(changes) or m
    )


def _header(shape: tuple[int, ...] | None = None, dtype: str | None = None) -> Callable[[Path], None]:
    """Rewrite seg00000.docs.npy's header (shape or dtype) and keep its data: a header that lies."""

    def edit(index: Path) -> None:
        path = index / "sparse" / "seg00000.docs.npy"
        arr = np.load(path)
        with open(path, "rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            data = fh.read()
        header = {"descr": dtype or arr.dtype.str, "fortran_order": False, "shape": shape or arr.shape}
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(data)

    return edit


# (id, edit of the sparse folder, fragments of the one-line refusal)
SPARSE_DAMAGE: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    (
        "doc-past-segment",
        lambda i: _docs_past_segment(i, N_DOCS),
        ("seg00000.docs.npy holds document number 30",),
    ),
    ("doc-65535", lambda i: _docs_past_segment(i, 65535), ("outside its segment of 30 documents",)),
    ("indptr-not-monotone", _indptr_not_monotone, ("seg00000.indptr.npy",)),
    ("indptr-past-postings", _indptr_past_postings, ("seg00000.indptr.npy spans postings",)),
    ("postings-unsorted", _postings_unsorted, ("seg00000.docs.npy: the postings of token", "not sorted")),
    ("postings-repeated", _postings_repeated, ("not sorted and unique",)),
    (
        "id-not-a-string",
        _ids(lambda ids: ids.__setitem__(3, 17)),
        ("doc_ids.json: id 3 is 17, not a string",),
    ),
    ("ids-repeated", _ids(lambda ids: ids.__setitem__(3, ids[2])), ("doc_ids.json: id 'd2' is there twice",)),
    (
        "ids-all-same",
        _ids(lambda ids: ids.__setitem__(slice(None), ["same"] * len(ids))),
        ("is there twice",),
    ),
    ("id-empty", _ids(lambda ids: ids.__setitem__(0, " ")), ("doc_ids.json: id 0 is empty",)),
    ("ids-fewer", _ids(lambda ids: ids.pop()), ("doc_ids.json does not hold a list of 30 ids",)),
    ("scale-huge", _params(scale=1e308), ("quantisation scale must be a positive finite number",)),
    ("scale-negative", _params(scale=-0.5), ("not -0.5",)),
    ("scale-string", _params(scale="1"), ("not '1'",)),
    ("bits-bool", _params(bits=True), ("params.bits is True",)),
    ("bits-below-impacts", _params(bits=2), ("seg00000.impacts.npy holds impact", "top level 3 of 2 bits")),
    ("header-longer", _header(shape=(10**6,)), ("seg00000.docs.npy is unreadable",)),
    ("header-shorter", _header(shape=(3,)), ("seg00000.impacts.npy holds", "impacts for 3 postings")),
    ("header-big-endian", _header(dtype=">u2"), ("seg00000.docs.npy has dtype >u2",)),
    ("header-2d", _header(shape=(1, -1)), ("seg00000.docs.npy",)),
]


def _apply(index: Path, damage: Callable[[Path], None]) -> None:
    damage(index)
    _reseal(index, "sparse")


@pytest.mark.parametrize(
    ("damage", "fragments"), [d[1:] for d in SPARSE_DAMAGE], ids=[d[0] for d in SPARSE_DAMAGE]
)
def test_resealed_sparse_damage_is_refused_on_open(
    index: Path, damage: Callable[[Path], None], fragments: tuple[str, ...]
) -> None:
    if fragments == ("seg00000.docs.npy",):  # the 2-D header: numbers of the real shape
        n = np.load(index / "sparse" / "seg00000.docs.npy").size
        damage = _header(shape=(1, n))
    _apply(index, damage)
    for verify in (True, False):  # the structure is checked whether or not the files are rehashed
        _refused(
            lambda v=verify: SparseIndex.open(index / "sparse", verify=v),
            f"index {index / 'sparse'}",
            *fragments,
        )
        _refused(lambda v=verify: _search(index, verify=v), *fragments)


def test_resealed_sparse_damage_is_refused_by_add_export_and_info(
    index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _apply(index, lambda i: _docs_past_segment(i, 65535))
    fragment = "seg00000.docs.npy holds document number 65535"
    import scipy.sparse as sp

    vocab = json.loads((index / "keytok.json").read_text())["vocab_size"]
    _refused(lambda: SparseIndex.open(index / "sparse").add(["new"], sp.csr_matrix((1, vocab))), fragment)
    code, err = _cli(capsys, "export", index, "--format", "safetensors", "--out", tmp_path / "x.safetensors")
    assert code == 1 and fragment in err, err
    code, err = _cli(capsys, "index", "info", index, "--verify")
    assert code == 1 and fragment in err, err
    code, err = _cli(capsys, "search", index, "cells", "--query-mode", "llm-free")
    assert code == 1 and fragment in err, err


def test_out_of_range_documents_give_no_signal_in_a_child_process(index: Path, tmp_path: Path) -> None:
    """What crashed with a segfault in scipy's tocsr (export, add) now exits 1 with one line."""
    _apply(index, lambda i: _docs_past_segment(i, 65535))
    for argv in (
        ["export", index, "--format", "ciff", "--out", tmp_path / "x.ciff"],
        ["index", "info", index, "--verify"],
    ):
        proc = _cli_process(*argv)
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1].startswith("keytok: error: index ")
        assert "Traceback" not in proc.stderr


def test_index_info_verify_says_verified_only_for_sound_structure(
    index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _cli(capsys, "index", "info", index, "--verify")
    assert code == 0
    _apply(index, _postings_unsorted)
    code, err = _cli(capsys, "index", "info", index, "--verify")
    assert code == 1 and "not sorted and unique" in err


DENSE_DAMAGE: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    (
        "id-not-a-string",
        lambda i: _edit_json(i / "dense" / "doc_ids.json", lambda ids: ids.__setitem__(0, None) or ids),
        ("dense: file doc_ids.json: id 0 is None, not a string",),
    ),
    (
        "ids-repeated",
        lambda i: _edit_json(i / "dense" / "doc_ids.json", lambda ids: ids.__setitem__(1, ids[0]) or ids),
        ("doc_ids.json: id 'd0' is there twice",),
    ),
    (
        "ids-fewer-than-vectors",
        lambda i: _edit_json(i / "dense" / "doc_ids.json", lambda ids: ids.pop() and ids),
        ("file index.faiss holds 30 vectors of dimension 32, doc_ids.json 29 ids",),
    ),
    (
        "dim-differs",
        lambda i: _edit_json(i / "dense" / "manifest.json", lambda m: m["params"].update(dim=16) or m),
        ("the manifest says 30 of dimension 16",),
    ),
    (
        "faiss-truncated-resealed",
        lambda i: (i / "dense" / "index.faiss").write_bytes((i / "dense" / "index.faiss").read_bytes()[:-64]),
        ("file index.faiss is not a readable faiss index",),
    ),
    (
        "faiss-ntotal-changed",
        lambda i: _faiss_ntotal(i / "dense" / "index.faiss", 31),
        ("file index.faiss",),
    ),
]


def _faiss_ntotal(path: Path, value: int) -> None:
    """Rewrite the ``ntotal`` field of a Flat index's header (after the 4-byte type and the int32 d)."""
    data = bytearray(path.read_bytes())
    data[8:16] = int(value).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "fragments"), [d[1:] for d in DENSE_DAMAGE], ids=[d[0] for d in DENSE_DAMAGE]
)
def test_resealed_dense_damage_is_refused_on_open(
    index: Path, damage: Callable[[Path], None], fragments: tuple[str, ...]
) -> None:
    damage(index)
    _reseal(index, "dense")
    _refused(lambda: DenseIndex.open(index / "dense", verify=False), *fragments)
    _refused(lambda: _search(index, system="dense"), *fragments)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.astype(np.float64) - 1, "file df.npy holds counts outside 0 to 30 documents"),
        (lambda a: a * 0 + 31, "outside 0 to 30"),
        (lambda a: a.astype(np.float32) * np.nan, "outside 0 to 30"),
        (lambda a: a[:-1], "file df.npy has dtype"),
        (lambda a: a.astype("U3"), "file df.npy has dtype <U3"),
    ],
    ids=["negative", "above-docs", "nan", "short", "strings"],
)
def test_resealed_document_frequencies_are_checked(
    index: Path, edit: Callable[[np.ndarray], np.ndarray], fragment: str
) -> None:
    _edit_npy(index / "df.npy", edit)
    _reseal(index)
    _refused(lambda: _search(index), fragment)


def test_resealed_info_counts_are_checked(index: Path) -> None:
    _edit_json(index / "keytok.json", lambda d: d.update(docs=True) or d)
    _reseal(index)
    _refused(lambda: Searcher(index), "keytok.json has a bad field (docs is True")


def test_a_sound_copy_still_opens_and_searches(index: Path) -> None:
    _reseal(index, *KINDS)  # re-sealing alone changes nothing
    assert [h.doc_id for h in _search(index)] == [h.doc_id for h in _search(index, verify=False)]


# ------------------------------------------------------------------------------------------ 3. bounded k
HUGE_K = 10**7


def _lucene(system: str) -> Any:
    return pytest.param(
        system, marks=[pytest.mark.lucene, pytest.mark.skipif(not LUCENE, reason="needs the lucene extra")]
    )


@pytest.mark.parametrize(
    "system", ["sparse", "dense", _lucene("lucene"), _lucene("bm25"), _lucene("bm25+keytok")]
)
def test_a_huge_k_is_capped_at_the_documents(built: Path, system: str) -> None:
    """A huge ``k`` answers at most the 30 documents, and allocates no more than ``-k 10`` does.

    10**7, not the issue's 10**9: without the cap this test should fail by its numbers (hundreds of MB
    traced), not take the machine down.
    """
    import tracemalloc

    with keytok.Retriever.open(built) as r:
        queries = {f"q{i}": w for i, w in enumerate(["cells gene", "cancer patients", "study results"])}
        kwargs = {"system": system} | (
            {} if system.startswith("bm25") or system == "dense" else {"query_mode": "llm-free"}
        )
        r.search_batch(queries, k=10, **kwargs)  # warm: model, JVM, kernels
        peaks = {}
        for k in (10, HUGE_K):
            tracemalloc.start()
            hits = r.search_batch(queries, k=k, **kwargs)
            peaks[k] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert all(len(h) <= N_DOCS for h in hits.values())
    assert peaks[HUGE_K] < peaks[10] + 2**20, peaks  # numpy allocations, all traced: within 1 MiB


def test_k_below_one_is_refused_everywhere(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sparse = SparseIndex.open(built / "sparse")
    dense = DenseIndex.open(built / "dense")
    for k in (0, -1, True, 2.5):
        _refused(lambda k=k: sparse.search({5: 1.0}, k=k), "k must be a positive integer")
        _refused(
            lambda k=k: dense.search(np.ones(dense.dim, np.float32), k=k), "k must be a positive integer"
        )
    code, err = _cli(capsys, "search", built, "cells", "-k", 0)
    assert code == 1 and "-k must be at least 1" in err


def test_the_cli_answers_a_huge_k_with_every_matching_document(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["search", str(built), "cells", "-k", str(HUGE_K), "--json", "--query-mode", "llm-free"])
    out = capsys.readouterr().out
    assert code == 0
    hits = json.loads(out)["hits"]
    assert 0 < len(hits) <= N_DOCS


# ------------------------------------------------------------------------- 4. keytok search verifies
def test_keytok_search_rehashes_by_default(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A same-size edit of df.npy (counts still in range, so no structural check can see it) is caught by
    the sha256 that ``keytok search`` now checks by default, as ``Retriever.open`` does."""
    _edit_npy(index / "df.npy", lambda a: a.__setitem__(slice(None), (a + 1) % (N_DOCS + 1)))
    argv = ["search", index, "cells gene", "--query-mode", "llm-free"]
    code, err = _cli(capsys, *argv)
    assert code == 1 and "file df.npy is corrupted (sha256 differs from keytok.json)" in err
    code, _ = _cli(capsys, *argv, "--no-verify")
    assert code == 0
    code, err = _cli(capsys, *argv, "--verify")
    assert code == 1 and "df.npy is corrupted" in err


# ------------------------------------------------------------------------------- 5. concurrent writers
WRITER = """
import sys, time
from pathlib import Path
import numpy as np, scipy.sparse as sp
from keytok.engines.sparse import SparseIndex

folder, prefix, batches, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
index = SparseIndex.open(folder)  # opened once, before the other writer has written anything
print("ready", flush=True)
while not start.exists():
    time.sleep(0.01)
rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
for b in range(batches):
    rows = []
    for _ in range(5):
        row = np.zeros(index.vocab_size, np.float32)
        row[rng.choice(index.vocab_size, 3, replace=False)] = index.scale * rng.integers(1, 200, 3)
        rows.append(row)
    index.add([f"{prefix}-{b}-{i}" for i in range(5)], sp.csr_matrix(np.stack(rows)))
print("done", index.n_docs)
"""


def _writer(folder: Path, prefix: str, batches: int, start: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), prefix, str(batches), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_adding_lose_no_document(index: Path, tmp_path: Path) -> None:
    folder, start, batches = index / "sparse", tmp_path / "go", 8
    writers = [_writer(folder, p, batches, start) for p in ("a", "b")]
    for w in writers:  # both have opened the index before either writes
        assert w.stdout is not None and w.stdout.readline().strip() == "ready", w.communicate()[1][-3000:]
    start.touch()
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    merged = SparseIndex.open(folder)
    expected = {f"{p}-{b}-{i}" for p in ("a", "b") for b in range(batches) for i in range(5)}
    assert expected <= set(merged.doc_ids)
    assert merged.n_live == merged.n_docs == N_DOCS + len(expected)
    assert not list(index.glob(".sparse*"))  # no lock file, no temporary folder left


HOLDER = """
import sys, time
from keytok.engines.lock import write_lock
with write_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_held_lock_refuses_in_one_line_and_a_killed_holder_frees_it(index: Path) -> None:
    import scipy.sparse as sp

    folder = index / "sparse"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        sparse = SparseIndex.open(folder)
        row = sp.csr_matrix(([sparse.scale * 3], ([0], [5])), shape=(1, sparse.vocab_size))
        _refused(
            lambda: sparse.add(["new"], row, wait=0.3),
            f"another process is writing {folder}",
            "after waiting 0.3 s; add refused",
        )
        holder.kill()  # kill -9: the kernel releases the flock
        holder.wait()
        sparse.add(["new"], row, wait=10)
        assert "new" in SparseIndex.open(folder)
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_starts_from_what_another_wrote(index: Path) -> None:
    """Two objects on one folder (as two processes would have): the second adds on top of the first."""
    import scipy.sparse as sp

    first, second = SparseIndex.open(index / "sparse"), SparseIndex.open(index / "sparse")
    row = sp.csr_matrix(([first.scale * 3], ([0], [5])), shape=(1, first.vocab_size))
    first.add(["x"], row)
    second.add(["y"], row)
    assert second.delete(["x"]) == 1  # second sees x, which it never added itself
    assert {"y"} <= set(SparseIndex.open(index / "sparse").doc_ids)
    assert "x" not in SparseIndex.open(index / "sparse")


# -------------------------------------------------------------------------------------------- 6. Lucene
def _flip_lucene(index: Path, part: str, suffix: str) -> str:
    """Flip one byte in the middle of ``part``'s first file ending in ``suffix``, re-seal; return its name."""
    f = next(p for p in sorted((index / part).iterdir()) if p.name.endswith(suffix))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _reseal(index, part)
    return f.name


@pytest.mark.lucene
@pytest.mark.skipif(not LUCENE, reason="needs the lucene extra")
@pytest.mark.parametrize(
    ("part", "suffix"), [("bm25", ".doc"), ("lucene", ".doc"), ("bm25", ".tim"), ("lucene", ".fdt")]
)
def test_a_resealed_flipped_lucene_file_is_refused_in_one_line(
    index: Path, part: str, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _flip_lucene(index, part, suffix)
    _refused(
        lambda: _search(index, system=part),
        f"index {index / part}: Lucene cannot read it (CorruptIndexException",
    )
    code, err = _cli(capsys, "search", index, "cells gene", "--system", part, "--query-mode", "llm-free")
    assert code == 1 and "Lucene cannot read it" in err


@pytest.mark.lucene
@pytest.mark.skipif(not LUCENE, reason="needs the lucene extra")
def test_lucene_searches_keep_the_jvm_warnings_off_stderr(built: Path) -> None:
    """In a fresh process (the JVM's options are set when it starts): stderr holds nothing at all."""
    for system in ("bm25", "lucene"):
        proc = _cli_process("search", built, "cells gene", "--system", system, "--query-mode", "llm-free")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == "", proc.stderr


# ----------------------------------------------------------------------------- 7. no orphan JVM on kill -9
FAKE_JAVA = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep 600
"""

INDEXER = """
import sys
import time
from pathlib import Path
import keytok.engines.java as java
java.java_executable = lambda: Path(sys.argv[1])
java.anserini_jar = lambda: Path("unused.jar")
java.run_index_collection(["-collection", "JsonCollection"])
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_indexing_jvm_dies_with_a_killed_build(tmp_path: Path) -> None:
    """``run_index_collection``'s child (a stand-in ``java`` that sleeps) is killed with its parent."""
    import os
    import signal

    pidfile = tmp_path / "java.pid"
    fake = tmp_path / "java"
    fake.write_text(FAKE_JAVA.format(pidfile=pidfile))
    fake.chmod(0o755)
    build = subprocess.Popen([sys.executable, "-c", INDEXER, str(fake)])
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert _alive(child)
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.05)
        assert not _alive(child), "the child JVM outlived the killed build"
    finally:
        build.kill()
        build.wait()


def test_the_next_writer_removes_what_a_killed_one_left(index: Path) -> None:
    """A kill -9 mid-write leaves atomic_dir's temporary folder, a swap's old copy and the lock file; the
    next writer of that folder (an update here, a build for a whole index folder) deletes them."""
    import scipy.sparse as sp

    leftovers = [index / ".sparse.k9x2ab7q.tmp", index / ".sparse.old.12345"]
    for d in leftovers:
        (d / "sub").mkdir(parents=True)
    (index / ".sparse.lock").write_text("")
    keep = index / ".sparse.notmine"  # not a name keytok gives: left alone
    keep.mkdir()
    sparse = SparseIndex.open(index / "sparse")
    sparse.add(["new"], sp.csr_matrix(([sparse.scale], ([0], [5])), shape=(1, sparse.vocab_size)))
    assert not any(d.exists() for d in leftovers)
    assert not (index / ".sparse.lock").exists() and keep.is_dir()
