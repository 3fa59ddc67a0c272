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
so a hand-edited manifest is caught on open. Opening checks the presence and byte size of every listed
file (cheap, catches truncation); :meth:`Manifest.verify` rehashes them (reads every byte). Files not
listed in ``files`` are ignored; file names are relative paths inside the folder (``..`` and absolute paths
are refused), so a crafted manifest cannot point outside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_write_text
from keytok.utils.hashing import sha256_file, sha256_text

FORMAT = "keytok-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: Meta fields that must agree between an index and the encoder that queries it.
COMPAT_KEYS = ("model", "model_sha256", "method", "calibration_sha256", "vocab_size")


def _canonical(obj: Any) -> str:
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
    """A relative path inside the folder: no absolute path, no ``..``, no backslash, no empty part."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


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
            digest = sha256_text(_canonical(d))
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
    def load(cls, folder: str | os.PathLike[str], kind: str | None = None) -> Manifest:
        """Read and check ``folder/manifest.json``.

        Raises :class:`KeytokError` when the folder or manifest is missing or unparseable, the format or
        version is unknown, the manifest was edited (checksum), ``kind`` differs, or a listed file is
        missing or has another size than recorded (truncated). File contents are not rehashed: call
        :meth:`verify` for that.
        """
        folder = Path(folder)
        where = f"index {folder}"
        if not folder.exists():
            raise KeytokError(f"{where} does not exist")
        if not folder.is_dir():
            raise KeytokError(f"{where} is not a folder")
        path = folder / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeytokError(f"{folder} is not a keytok index (no {MANIFEST_NAME})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeytokError(f"{where}: cannot read {MANIFEST_NAME}: {exc}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeytokError(f"{where}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise KeytokError(f"{where}: {MANIFEST_NAME} is not a keytok index manifest")
        version = raw.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise KeytokError(f"{where}: {MANIFEST_NAME} has no valid format_version")
        if version != FORMAT_VERSION:
            raise KeytokError(
                f"{where} has format version {version}; this keytok reads version {FORMAT_VERSION}"
                + ("; upgrade keytok" if version > FORMAT_VERSION else "; rebuild the index")
            )
        claimed = raw.pop("manifest_sha256", None)
        try:
            actual = sha256_text(_canonical(raw))
        except ValueError:
            actual = None
        if claimed != actual:
            raise KeytokError(
                f"{where}: {MANIFEST_NAME} was edited or is corrupted (manifest_sha256 does not match its content)"
            )
        try:
            files = {}
            for name, entry in raw["files"].items():
                if not _safe_name(name):
                    raise ValueError(f"bad file name {name!r}")
                files[name] = FileEntry(bytes=int(entry["bytes"]), sha256=str(entry["sha256"]))
            manifest = cls(
                kind=str(raw["kind"]),
                meta=dict(raw.get("meta") or {}),
                counts=dict(raw.get("counts") or {}),
                params=dict(raw.get("params") or {}),
                files=files,
                format_version=version,
                created=str(raw.get("created", "")),
                folder=folder,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeytokError(f"{where}: {MANIFEST_NAME} is malformed ({exc})") from None
        if kind is not None and manifest.kind != kind:
            raise KeytokError(f"{where} is a {manifest.kind} index, not a {kind} index")
        manifest.check_files()
        return manifest

    def _where(self) -> str:
        return f"index {self.folder}" if self.folder is not None else "index"

    def check_files(self) -> None:
        """Raise :class:`KeytokError` if a listed file is missing or its size differs from the record."""
        if self.folder is None:
            raise KeytokError("manifest has no folder to check files in")
        for name, entry in self.files.items():
            try:
                size = (self.folder / name).stat().st_size
            except FileNotFoundError:
                raise KeytokError(f"{self._where()}: file {name} is missing") from None
            if size != entry.bytes:
                what = "truncated" if size < entry.bytes else "longer than recorded"
                raise KeytokError(
                    f"{self._where()}: file {name} is {what} ({size} bytes, manifest says {entry.bytes})"
                )

    def verify(self) -> None:
        """Rehash every listed file; raise :class:`KeytokError` naming the first one that differs."""
        self.check_files()
        assert self.folder is not None
        for name, entry in self.files.items():
            if sha256_file(self.folder / name) != entry.sha256:
                raise KeytokError(
                    f"{self._where()}: file {name} is corrupted (sha256 differs from the manifest)"
                )

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
