"""A damaged index file is caught on open, by the manifests' sizes and sha256, with the file named.

One index folder is built with the tiny model; each test copies it and damages one file three ways
(truncated by a byte, deleted, one byte flipped), then opens the copy as a user would
(:class:`keytok.Retriever`, the :class:`~keytok.pipeline.searcher.Searcher`, each engine's ``open``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import WORDS

import keytok
from keytok.engines import manifest as manifest_module
from keytok.engines.dense import DenseIndex
from keytok.engines.java import lucene_available
from keytok.engines.sparse import SparseIndex
from keytok.errors import KeytokError
from keytok.pipeline.searcher import Searcher

LUCENE = lucene_available()
KINDS = ("sparse", "dense", "lucene", "bm25") if LUCENE else ("sparse", "dense")
DAMAGES = ("truncate", "delete", "flip")


@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory) -> Path:
    docs = {f"d{i}": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(30)}
    out = tmp_path_factory.mktemp("damage") / "index"
    keytok.build_index(docs, out, model=tiny_model_dir, kinds=KINDS, k_doc=16, m_query=4).close()
    return out


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:-1])
    elif how == "delete":
        path.unlink()
    else:
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0x01]) + data[mid + 1 :])


def _copy(built: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "index"
    shutil.copytree(built, dest)
    return dest


def _first(folder: Path, suffix: str) -> str:
    """The name of the first file of ``folder``'s manifest ending in ``suffix``."""
    names = sorted(json.loads((folder / "manifest.json").read_text())["files"])
    return next(n for n in names if n.endswith(suffix))


def _fault(how: str) -> str:
    return {"truncate": "is truncated", "delete": "is missing", "flip": "is corrupted"}[how]


def _check_error(err: pytest.ExceptionInfo[KeytokError], name: str, how: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert f"file {name} {_fault(how)}" in message, message


# Every part of the folder: (sub-folder or "" for the folder's own files, file in it).
PARTS = [
    ("", "docs.jsonl"),
    ("", "df.npy"),
    ("", "center_mean.npy"),
    ("sparse", "doc_ids.json"),
    ("sparse", "seg00000.docs.npy"),
    ("sparse", "seg00000.impacts.npy"),
    ("dense", "index.faiss"),
    ("dense", "doc_ids.json"),
]
if LUCENE:
    PARTS += [("lucene", ".si"), ("lucene", "segments_"), ("bm25", ".tim"), ("bm25", ".fdt")]


def _target(index: Path, part: str, name: str) -> tuple[Path, str]:
    folder = index / part if part else index
    if part and not (folder / name).exists():
        name = _first(folder, name) if not name.startswith("segments_") else _segments(folder)
    return folder, name


def _segments(folder: Path) -> str:
    names = json.loads((folder / "manifest.json").read_text())["files"]
    return next(n for n in sorted(names) if n.startswith("segments_"))


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize(("part", "name"), PARTS, ids=[f"{p or 'top'}:{n}" for p, n in PARTS])
def test_damaged_file_is_named_on_open(built: Path, tmp_path: Path, part: str, name: str, how: str) -> None:
    index = _copy(built, tmp_path)
    folder, name = _target(index, part, name)
    _damage(folder / name, how)
    with pytest.raises(KeytokError) as err:
        keytok.Retriever.open(index)
    _check_error(err, name, how)
    assert str(folder) in str(err.value)
    with pytest.raises(KeytokError) as err:
        Searcher(index)
    _check_error(err, name, how)


def _engine_open(part: str):
    if part == "sparse":
        return SparseIndex.open
    if part == "dense":
        return DenseIndex.open
    from keytok.engines.lucene import LuceneBM25Index, LuceneImpactIndex

    return LuceneImpactIndex.open if part == "lucene" else LuceneBM25Index.open


ENGINE_PARTS = [(p, n) for p, n in PARTS if p]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize(("part", "name"), ENGINE_PARTS, ids=[f"{p}:{n}" for p, n in ENGINE_PARTS])
def test_each_engine_open_names_the_damaged_file(
    built: Path, tmp_path: Path, part: str, name: str, how: str
) -> None:
    index = _copy(built, tmp_path)
    folder, name = _target(index, part, name)
    _damage(folder / name, how)
    with pytest.raises(KeytokError) as err:
        _engine_open(part)(folder)
    _check_error(err, name, how)


def test_edited_descriptions_are_refused(built: Path, tmp_path: Path) -> None:
    index = _copy(built, tmp_path)
    _damage(index / "keytok.json", "flip")
    with pytest.raises(KeytokError, match=r"keytok\.json (is not valid JSON|was edited)"):
        keytok.Retriever.open(index)
    index = _copy(built, tmp_path / "2")
    mf = index / "sparse" / "manifest.json"
    mf.write_bytes(mf.read_bytes()[:100])
    with pytest.raises(KeytokError, match=r"manifest\.json is not valid JSON"):
        keytok.Retriever.open(index)
    index = _copy(built, tmp_path / "3")
    (index / "dense" / "manifest.json").unlink()
    with pytest.raises(KeytokError, match=r"dense is not a keytok index \(no manifest\.json\)"):
        keytok.Retriever.open(index)


def test_verify_false_checks_sizes_only(built: Path, tmp_path: Path) -> None:
    index = _copy(built, tmp_path)
    _damage(index / "sparse" / "seg00000.impacts.npy", "flip")
    Searcher(index, verify=False).close()  # same size: only the sha256 would tell
    keytok.Retriever.open(index, verify=False).close()
    _damage(index / "sparse" / "seg00000.impacts.npy", "truncate")
    with pytest.raises(KeytokError, match=r"file seg00000\.impacts\.npy is truncated"):
        Searcher(index, verify=False)


def test_an_index_without_sha256_of_its_own_files_must_be_rebuilt(built: Path, tmp_path: Path) -> None:
    from keytok.engines.manifest import canonical
    from keytok.utils.hashing import sha256_text

    index = _copy(built, tmp_path)
    info = json.loads((index / "keytok.json").read_text())
    del info["sha256"]
    for entry in info["files"].values():
        del entry["sha256"]
    info["sha256"] = sha256_text(canonical(info))
    (index / "keytok.json").write_text(json.dumps(info))
    with pytest.raises(KeytokError, match=r"keytok\.json records no sha256 for .*; rebuild the index"):
        Searcher(index)


def test_reopening_in_one_process_rehashes_nothing(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _copy(built, tmp_path)
    calls: list[str] = []
    real = manifest_module.sha256_file

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    Searcher(index).close()
    listed = sum(len(json.loads((index / k / "manifest.json").read_text())["files"]) for k in KINDS)
    listed += len(json.loads((index / "keytok.json").read_text())["files"])
    assert len(calls) == listed  # every file once
    calls.clear()
    Searcher(index).close()
    SparseIndex.open(index / "sparse").search({1: 1.0})
    assert calls == []
    _damage(index / "docs.jsonl", "flip")  # rewritten: hashed again
    with pytest.raises(KeytokError, match=r"file docs\.jsonl is corrupted"):
        Searcher(index)
    assert calls == [str(index / "docs.jsonl")]
