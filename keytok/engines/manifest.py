"""The ``manifest.json`` of an index folder: what the index is, what made it, and what it contains.

Every keytok index folder (sparse, dense FAISS, Lucene) holds one ``manifest.json``::

    {
      "format": "keytok-index",
      "format_version": 1,
      "kind": "sparse",                      # or "dense", "lucene", ...
      "created": "2025-01-01T00:00:00Z",
      "meta": {"model": ..., "model_sha256": ..., "method": ..., "K": ...,
               "calibration_sha256": ... or null, "vocab_size": ..., ...},
      "counts": {"docs": ..., "live_docs": ..., "postings": ...},
      "params": {...},                       # kind-specific (quantisation scale, segment size, ...)
      "files": {"name": {"bytes": ..., "sha256": ...}, ...},
      "manifest_sha256": "..."
    }

``manifest_sha256`` is the sha256 of the canonical JSON (sorted keys, no whitespace) of everything else,
so a hand-edited manifest is caught on open. Opening an engine checks the presence, byte size and sha256
of every listed file (``verify=False`` skips the hashing, for huge indexes; hashes are cached per process,
so opening again costs a ``stat`` per file); :meth:`Manifest.verify` rehashes them. Files not
listed in ``files`` are ignored, and engines read only listed files (:meth:`Manifest.file`); file names are
relative paths inside the folder (``..``, absolute paths and symlinks that lead out are refused before
anything is stat'ed or read, :func:`confined_path`), so a crafted manifest cannot point outside it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_write_text
from keytok.utils.hashing import sha256_file, sha256_text
from keytok.utils.stamps import known_sha256, remember_sha256, stamp_key

FORMAT = "keytok-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: Meta fields that must agree between an index and the encoder that queries it.
COMPAT_KEYS = ("model", "model_sha256", "method", "calibration_sha256", "vocab_size")


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no whitespace): what the self-checksums hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _short(value: Any) -> str:
    if value is None:
        return "none"
    s = str(value)
    # sha256 hex strings are shown shortened: enough to tell two apart on one line
    if len(s) == 64 and all(c in "0123456789abcdef" for c in s.lower()):
        return s[:12] + "…"
    return s


def _safe_name(name: object) -> bool:
    """A relative path inside the folder: no absolute path, no ``..``, no backslash, no empty part, and no
    control character (a name is printed in one-line errors)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def confined_path(folder: Path, name: object, described_in: str) -> Path:
    """``folder / name``, refused unless ``name`` stays inside ``folder`` once its symlinks are followed.

    An index folder is untrusted input: a crafted description could name ``../../etc/shadow``, an
    absolute path, or a link inside the folder that leads out, and keytok would then hash it, report its
    size in an error, or read it as index data. This check runs before anything else touches the file;
    it only reads links (``realpath``), never a file's size or content, and the error names the entry as
    the description spells it, nothing about its target.
    """
    where = f"index {folder}"
    if not _safe_name(name):
        raise KeytokError(
            f"{where}: {described_in} lists {name!r}, which is not a file name inside the folder: refused"
        )
    assert isinstance(name, str)
    path = folder / name
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise KeytokError(f"{where}: file {name} is a link that leads outside the folder: refused")
    return path


#: sha256 of files already hashed in this process, keyed by what changes when a file is rewritten
_HASHES: dict[str, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, from the verified stamps of this process and of this machine (:mod:`keytok.utils.stamps`),
    keyed by (path, device, inode, size, mtime, ctime).

    Re-opening an unchanged index costs a ``stat`` per file (and, in a new process, one lookup in the stamp
    store); a file rewritten in place, or replaced by another, changes one of those and is hashed again.
    """
    key = stamp_key(path)
    digest = _HASHES.get(key) or known_sha256(key)
    if digest is None:
        digest = sha256_file(path)
        remember_sha256(key, digest)
    _HASHES[key] = digest
    return digest


def check_files(
    folder: Path, files: Mapping[str, tuple[int, str | None]], described_in: str, verify: bool
) -> None:
    """Check every ``{name: (bytes, sha256)}`` of ``folder``: inside it (:func:`confined_path`, every name
    before any file is looked at), a regular file, of that size and, with ``verify``, of that sha256.
    Raises :class:`KeytokError` naming the first file that differs."""
    where = f"index {folder}"
    paths = {name: confined_path(folder, name, described_in) for name in files}
    for name, (size, _) in files.items():
        try:
            st = paths[name].stat()
        except FileNotFoundError:
            raise KeytokError(f"{where}: file {name} is missing") from None
        except OSError as exc:
            raise KeytokError(f"{where}: file {name} cannot be read ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeytokError(f"{where}: file {name} is not a regular file")
        if st.st_size != size:
            what = "truncated" if st.st_size < size else "longer than recorded"
            raise KeytokError(
                f"{where}: file {name} is {what} ({st.st_size} bytes, {described_in} says {size})"
            )
    if not verify:
        return
    for name, (_, digest) in files.items():
        if not digest:
            raise KeytokError(f"{where}: {described_in} records no sha256 for {name}; rebuild the index")
        if file_sha256(paths[name]) != digest:
            raise KeytokError(f"{where}: file {name} is corrupted (sha256 differs from {described_in})")


def read_checked_json(folder: Path, name: str, fmt: str, checksum_key: str) -> dict[str, Any]:
    """``folder/name`` parsed and checked: a folder, valid JSON of format ``fmt`` and version
    :data:`FORMAT_VERSION`, whose ``checksum_key`` is the sha256 of the canonical JSON of the rest.

    The one validator of both descriptions an index has: each engine's ``manifest.json`` and the index
    folder's ``keytok.json``. Returns the JSON without ``checksum_key``.
    """
    where = f"index {folder}"
    if not folder.exists():
        raise KeytokError(f"{where} does not exist")
    if not folder.is_dir():
        raise KeytokError(f"{where} is not a folder")
    try:
        text = (folder / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeytokError(f"{folder} is not a keytok index (no {name})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeytokError(f"{where}: cannot read {name}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeytokError(f"{where}: {name} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise KeytokError(f"{where}: {name} is not a keytok index description ({fmt})")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise KeytokError(f"{where}: {name} has no valid format_version")
    if version != FORMAT_VERSION:
        raise KeytokError(
            f"{where} has format version {version}; this keytok reads version {FORMAT_VERSION}"
            + ("; upgrade keytok" if version > FORMAT_VERSION else "; rebuild the index")
        )
    claimed = raw.pop(checksum_key, None)
    try:
        actual = sha256_text(canonical(raw))
    except ValueError:
        actual = None
    if claimed != actual:
        raise KeytokError(
            f"{where}: {name} was edited or is corrupted ({checksum_key} does not match its content)"
        )
    return raw


@dataclass
class FileEntry:
    """Size and sha256 of one file of an index folder."""

    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Contents of an index folder's ``manifest.json`` (see the module docstring)."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str = ""
    #: folder the manifest was loaded from or last written to; not serialised
    folder: Path | None = field(default=None, compare=False, repr=False)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict, without ``manifest_sha256``."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "kind": self.kind,
            "created": self.created,
            "meta": self.meta,
            "counts": self.counts,
            "params": self.params,
            "files": {k: {"bytes": v.bytes, "sha256": v.sha256} for k, v in sorted(self.files.items())},
        }

    def dumps(self) -> str:
        """The manifest's JSON text, ``manifest_sha256`` included."""
        d = self.to_dict()
        try:
            digest = sha256_text(canonical(d))
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"index metadata is not JSON-serialisable: {exc}") from None
        d["manifest_sha256"] = digest
        return json.dumps(d, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` into ``folder`` atomically and return its path."""
        folder = Path(folder)
        if not self.created:
            self.created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = self.dumps()
        dest = folder / MANIFEST_NAME
        atomic_write_text(dest, text)
        self.folder = folder
        return dest

    def record_file(self, folder: str | os.PathLike[str], name: str, sha256: str | None = None) -> FileEntry:
        """Add ``folder/name`` to ``files`` with its size and sha256 (hashed unless ``sha256`` is given).

        ``name`` is a relative POSIX path inside ``folder`` (``"lucene/_0.cfs"`` is fine).
        """
        if not _safe_name(name):
            raise ValueError(f"not a relative file name inside the index folder: {name!r}")
        path = Path(folder) / name
        entry = FileEntry(bytes=path.stat().st_size, sha256=sha256 or sha256_file(path))
        self.files[name] = entry
        return entry

    def record_all(self, folder: str | os.PathLike[str]) -> None:
        """Record every file under ``folder`` (sub-folders included) except ``manifest.json`` itself."""
        folder = Path(folder)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != MANIFEST_NAME:
                self.record_file(folder, path.relative_to(folder).as_posix())

    # ---------------------------------------------------------------- loading and checks

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], kind: str | None = None, *, verify: bool = False
    ) -> Manifest:
        """Read and check ``folder/manifest.json``.

        Raises :class:`KeytokError` when the folder or manifest is missing or unparseable, the format or
        version is unknown, the manifest was edited (checksum), ``kind`` differs, or a listed file is
        missing or has another size than recorded (truncated); with ``verify=True`` also when a file's
        sha256 differs (see :func:`check_files`). The engines' ``open`` pass ``verify=True`` by default.
        """
        folder = Path(folder)
        raw = read_checked_json(folder, MANIFEST_NAME, FORMAT, "manifest_sha256")
        where = f"index {folder}"
        try:
            files = {}
            # the names are checked, before any file is looked at, by check_files below
            for name, entry in raw["files"].items():
                files[name] = FileEntry(bytes=int(entry["bytes"]), sha256=str(entry["sha256"]))
            manifest = cls(
                kind=str(raw["kind"]),
                meta=dict(raw.get("meta") or {}),
                counts=dict(raw.get("counts") or {}),
                params=dict(raw.get("params") or {}),
                files=files,
                format_version=raw["format_version"],
                created=str(raw.get("created", "")),
                folder=folder,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeytokError(f"{where}: {MANIFEST_NAME} is malformed ({exc})") from None
        if kind is not None and manifest.kind != kind:
            raise KeytokError(f"{where} is a {manifest.kind} index, not a {kind} index")
        manifest.check_files(verify=verify)
        return manifest

    def _where(self) -> str:
        return f"index {self.folder}" if self.folder is not None else "index"

    def check_files(self, verify: bool = False) -> None:
        """Raise :class:`KeytokError` if a listed file is missing, has another size than recorded or, with
        ``verify``, another sha256."""
        if self.folder is None:
            raise KeytokError("manifest has no folder to check files in")
        check_files(
            self.folder, {n: (e.bytes, e.sha256) for n, e in self.files.items()}, MANIFEST_NAME, verify
        )

    def file(self, name: str) -> Path:
        """The path of the listed file ``name``, for an engine to read.

        An engine reads only files its manifest lists: those were checked on load (inside the folder, size,
        sha256), while an unlisted one, or a link put in its place, was not. Raises :class:`KeytokError`.
        """
        if self.folder is None:
            raise KeytokError("manifest has no folder to read files from")
        if name not in self.files:
            raise KeytokError(f"{self._where()}: {MANIFEST_NAME} does not list {name}")
        return self.folder / name

    def verify(self) -> None:
        """Rehash every listed file; raise :class:`KeytokError` naming the first one that differs."""
        self.check_files(verify=True)

    def check_compatible(self, expected: Mapping[str, Any]) -> None:
        """Raise :class:`KeytokError` if ``expected`` names another model, method, calibration or vocabulary.

        Only the keys of :data:`COMPAT_KEYS` that ``expected`` contains are compared, so a caller that does
        not know, say, the calibration hash can still check the model. A key absent from the index's meta
        counts as ``None``.
        """
        meta = self.meta
        where = self._where()
        if ("model" in expected and expected["model"] != meta.get("model")) or (
            "model_sha256" in expected and expected["model_sha256"] != meta.get("model_sha256")
        ):
            have = f"{_short(meta.get('model'))} (sha256 {_short(meta.get('model_sha256'))})"
            want = f"{_short(expected.get('model', meta.get('model')))}"
            if "model_sha256" in expected:
                want += f" (sha256 {_short(expected['model_sha256'])})"
            raise KeytokError(f"{where} was built with model {have}, not {want}")
        if "method" in expected and expected["method"] != meta.get("method"):
            raise KeytokError(
                f"{where} was built with method {_short(meta.get('method'))}, not {_short(expected['method'])}"
            )
        if "calibration_sha256" in expected and expected["calibration_sha256"] != meta.get(
            "calibration_sha256"
        ):
            raise KeytokError(
                f"{where} was built with calibration {_short(meta.get('calibration_sha256'))}, "
                f"not {_short(expected['calibration_sha256'])}"
            )
        if "vocab_size" in expected and expected["vocab_size"] != meta.get("vocab_size"):
            raise KeytokError(
                f"{where} has a vocabulary of {_short(meta.get('vocab_size'))} tokens, "
                f"not {_short(expected['vocab_size'])}: built with another model"
            )
