"""Verified stamps: the sha256 of files this machine has already hashed, and the structural checks that
passed on them, so that opening an unchanged index folder again redoes neither.

A stamp is keyed by what changes when a file is rewritten, replaced or copied: its real path, device, inode,
size, mtime and ctime. ctime cannot be set back by a user (any write, chmod or rename of the file moves it),
so a file edited in place and given its old mtime back is hashed again. The stamps live in keytok's cache
folder (:func:`keytok.utils.hashing.cache_dir`), never in the index folder: a folder is untrusted input, and a
stamp that travelled with it could claim anything.

The store is a small SQLite file, safe for several processes. Any failure to read or write it (a read-only
cache, a damaged file) only costs a rehash: :func:`known_sha256` then answers ``None``.
``KEYTOK_VERIFY_STAMPS=0`` turns the store off (every open rehashes).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from keytok.utils.hashing import cache_dir

STORE_NAME = "verified.sqlite"
#: stamps kept; past it the oldest are dropped (a dropped stamp only costs one more check)
MAX_STAMPS = 200_000


def _enabled() -> bool:
    return os.environ.get("KEYTOK_VERIFY_STAMPS", "1") != "0"


def stamp_key(path: Path) -> str:
    """The identity of ``path``'s current bytes: real path, device, inode, size, mtime and ctime (ns)."""
    st = path.stat()
    real = os.path.realpath(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{real}"


def folder_key(folder: Path, names: list[str], what: str) -> str | None:
    """One key for the current bytes of ``names`` in ``folder`` (and of what ``what`` says was checked), or
    ``None`` when a file cannot be stat-ed."""
    try:
        keys = [stamp_key(folder / name) for name in sorted(names)]
    except OSError:
        return None
    return what + "\n" + "\n".join(keys)


def is_checked(key: str | None) -> bool:
    """Whether the check named in ``key`` (:func:`folder_key`) passed on these very files before."""
    return key is not None and known_sha256(key) == "checked"


def mark_checked(key: str | None) -> None:
    """Record that the check named in ``key`` passed (best effort, as :func:`remember_sha256`)."""
    if key is not None:
        remember_sha256(key, "checked")


def _connect() -> sqlite3.Connection:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / STORE_NAME, timeout=10.0)
    db.execute("CREATE TABLE IF NOT EXISTS stamps (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
    return db


def known_sha256(key: str) -> str | None:
    """The sha256 stamped for ``key`` on an earlier verification, or ``None``."""
    if not _enabled():
        return None
    try:
        with closing(_connect()) as db, db:
            row = db.execute("SELECT sha256 FROM stamps WHERE key = ?", (key,)).fetchone()
    except (sqlite3.Error, OSError):
        return None
    return str(row[0]) if row else None


def remember_sha256(key: str, digest: str) -> None:
    """Stamp ``key`` as hashed to ``digest`` (best effort: a cache that cannot be written is skipped)."""
    if not _enabled():
        return
    try:
        with closing(_connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO stamps (key, sha256) VALUES (?, ?)", (key, digest))
            db.execute("DELETE FROM stamps WHERE rowid <= (SELECT MAX(rowid) FROM stamps) - ?", (MAX_STAMPS,))
    except (sqlite3.Error, OSError):
        pass
