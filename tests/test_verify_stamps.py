"""Verified stamps: an unchanged index is not rehashed by a later process, and a file changed in any way that
keeps its size and mtime is still hashed again and refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import keytok
from keytok.errors import KeytokError
from keytok.utils import stamps

OPEN = (
    "import sys, keytok.utils.hashing as h, keytok; calls = []; real = h.sha256_file\n"
    "def counting(p):\n    calls.append(p); return real(p)\n"
    "import keytok.engines.manifest as m; m.sha256_file = counting\n"
    "keytok.SparseIndex.open(sys.argv[1], verify=True); print(len(calls))\n"
)


@pytest.fixture
def index(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    x = sp.random(40, 64, density=0.2, format="csr", random_state=np.random.default_rng(0), dtype=np.float32)
    keytok.SparseIndex.build(
        tmp_path / "idx", [f"d{i}" for i in range(40)], x, {"model": "t", "vocab_size": 64}
    )
    return tmp_path / "idx"


def _hashes_in_new_process(path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", OPEN, str(path)], capture_output=True, text=True, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_second_process_reads_stamps_instead_of_rehashing(index):
    first = _hashes_in_new_process(index)
    assert first >= 3  # manifest files: doc ids, deletions, segment arrays
    assert _hashes_in_new_process(index) == 0
    with sqlite3.connect(stamps.cache_dir() / stamps.STORE_NAME) as db:
        assert db.execute("SELECT COUNT(*) FROM stamps WHERE sha256 != 'checked'").fetchone()[0] == first


def test_stamps_off_rehashes_every_open(index, monkeypatch):
    monkeypatch.setenv("KEYTOK_VERIFY_STAMPS", "0")
    assert _hashes_in_new_process(index) == _hashes_in_new_process(index) > 0


def test_in_place_edit_with_mtime_put_back_is_caught(index):
    _hashes_in_new_process(index)  # stamped
    victim = index / "doc_ids.json"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] = ord("9") if data[-3] != ord("9") else ord("8")
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime moved
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(KeytokError, match=r"doc_ids\.json is corrupted"):
        keytok.SparseIndex.open(index, verify=True)


def test_damaged_store_costs_a_rehash_not_an_error(index):
    store = stamps.cache_dir() / stamps.STORE_NAME
    _hashes_in_new_process(index)
    store.write_bytes(b"not a database" * 100)
    assert _hashes_in_new_process(index) > 0


CHECKS = (
    "import sys, keytok, keytok.engines.sparse as s; calls = []; real = s._check_segment\n"
    "def counting(*a, **k):\n    calls.append(1); return real(*a, **k)\n"
    "s._check_segment = counting\n"
    "keytok.SparseIndex.open(sys.argv[1], verify=False); print(len(calls))\n"
)


def _structure_checks_in_new_process(path) -> int:
    out = subprocess.run([sys.executable, "-c", CHECKS, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_structure_is_checked_once_per_unchanged_folder(index):
    assert _structure_checks_in_new_process(index) == 0  # checked and stamped by the build's own open
    docs = index / "seg00000.docs.npy"
    docs.write_bytes(docs.read_bytes())  # same bytes, new ctime: checked again
    assert _structure_checks_in_new_process(index) == 1  # one segment
    assert _structure_checks_in_new_process(index) == 0
