"""Sparse key-token vectors as one safetensors file (CSR), for any tool that reads safetensors.

The file holds five tensors and string metadata::

    indptr       int64  [n_docs + 1]   row i's entries are [indptr[i], indptr[i + 1])
    indices      int32  [nnz]          token ids, ascending within a row
    data         uint8 / uint16 [nnz]  the native index's integer impacts (weight = data * scale)
    ids_offsets  int64  [n_docs + 1]   document i's id is ids_utf8[ids_offsets[i]:ids_offsets[i + 1]]
    ids_utf8     uint8  [bytes]        the document ids, UTF-8, concatenated

    metadata: format "keytok-csr", format_version "1", shape "n_docs,vocab_size", scale, bits,
              token_key "t<token id>", model, model_sha256, method, K (strings, as safetensors requires)

Ids are stored as a byte tensor, not in the metadata, because the safetensors header is limited to
100 MB. Load it without keytok::

    from safetensors.numpy import load_file
    import scipy.sparse as sp
    t = load_file("vectors.safetensors")
    n = t["indptr"].size - 1
    m = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=(n, vocab_size))

or with :func:`read_csr`, which checks the file's consistency and returns a :class:`SparseVectors`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.lucene import TOKEN_PREFIX
from keytok.errors import KeytokError
from keytok.interop.source import ExportSource
from keytok.utils.atomic import atomic_path

__all__ = ["FORMAT", "SparseVectors", "read_csr", "write_csr"]

FORMAT = "keytok-csr"
FORMAT_VERSION = "1"
_META_KEYS = ("model", "model_sha256", "method", "K", "calibration_sha256", "precision")
_TENSORS = ("indptr", "indices", "data", "ids_offsets", "ids_utf8")


@dataclass
class SparseVectors:
    """Vectors read from a keytok safetensors CSR file: ``matrix`` row ``i`` belongs to ``doc_ids[i]``."""

    doc_ids: list[str]
    matrix: sp.csr_matrix
    scale: float
    metadata: dict[str, str] = field(default_factory=dict)

    def weights(self) -> sp.csr_matrix:
        """The float32 weights the integer impacts stand for (``impact * scale``)."""
        out = self.matrix.astype(np.float32)
        out.data *= np.float32(self.scale)
        return out


def write_csr(source: ExportSource, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``source`` as a safetensors CSR file ``out`` atomically (see the module doc); returns ``out``."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise KeytokError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.is_dir():
        raise KeytokError(f"{out} is a folder: a safetensors export is one file")
    csr = source.vectors
    encoded = [d.encode("utf-8") for d in source.doc_ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    tensors = {
        "indptr": csr.indptr.astype(np.int64),
        "indices": csr.indices.astype(np.int32),
        "data": np.ascontiguousarray(csr.data),
        "ids_offsets": offsets,
        "ids_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
    }
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": f"{csr.shape[0]},{csr.shape[1]}",
        "scale": repr(float(source.scale)),
        "bits": str(source.bits),
        "token_key": f"{TOKEN_PREFIX}<token id>",
    }
    for key in _META_KEYS:
        value = source.meta.get(key)
        if value is not None:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def _bad(path: Path, what: str) -> KeytokError:
    return KeytokError(f"safetensors file {path}: {what}")


def read_csr(path: str | os.PathLike[str]) -> SparseVectors:
    """Read a file written by :func:`write_csr`, checking that its tensors form a valid CSR matrix.

    Raises :class:`KeytokError` naming the file and the fault (not safetensors, not a keytok CSR file,
    a tensor missing or of the wrong dtype, inconsistent offsets, ids that are not UTF-8).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise KeytokError(f"safetensors file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata: dict[str, str] = dict(fh.metadata() or {})
            names = set(fh.keys())
            missing = [n for n in _TENSORS if n not in names]
            if metadata.get("format") != FORMAT:
                raise _bad(path, f"not a keytok CSR file (metadata format {metadata.get('format')!r})")
            if missing:
                raise _bad(path, f"tensor {missing[0]} is missing")
            t: dict[str, Any] = {n: fh.get_tensor(n) for n in _TENSORS}
    except KeytokError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ...
        raise _bad(
            path, f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise _bad(
            path, f"format version {metadata.get('format_version')!r}; this keytok reads {FORMAT_VERSION}"
        )
    try:
        n_rows, n_cols = (int(x) for x in metadata["shape"].split(","))
        scale = float(metadata["scale"])
    except (KeyError, ValueError) as exc:
        raise _bad(path, f"metadata shape/scale missing or malformed ({exc})") from None
    indptr, indices, data = t["indptr"], t["indices"], t["data"]
    offsets, raw = t["ids_offsets"], t["ids_utf8"]
    expect = {"indptr": np.int64, "indices": np.int32, "ids_offsets": np.int64, "ids_utf8": np.uint8}
    for name, dtype in expect.items():
        if t[name].dtype != dtype or t[name].ndim != 1:
            raise _bad(
                path, f"tensor {name} is {t[name].dtype}{list(t[name].shape)}, expected 1-D {np.dtype(dtype)}"
            )
    if data.dtype.kind not in "uif" or data.ndim != 1:
        raise _bad(path, f"tensor data is {data.dtype}{list(data.shape)}, expected 1-D numbers")
    nnz = data.size
    ok = (
        indptr.size == n_rows + 1
        and int(indptr[0]) == 0
        and int(indptr[-1]) == nnz == indices.size
        and bool(np.all(np.diff(indptr) >= 0))
        and (nnz == 0 or (int(indices.min()) >= 0 and int(indices.max()) < n_cols))
    )
    if not ok:
        raise _bad(path, f"indptr/indices/data do not form a {n_rows} x {n_cols} CSR matrix")
    if (
        offsets.size != n_rows + 1
        or int(offsets[0]) != 0
        or int(offsets[-1]) != raw.size
        or bool(np.any(np.diff(offsets) < 0))
    ):
        raise _bad(path, f"ids_offsets do not cut ids_utf8 ({raw.size} bytes) into {n_rows} ids")
    blob = raw.tobytes()
    try:
        ids = [
            blob[a:b].decode("utf-8")
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
    except UnicodeDecodeError:
        raise _bad(path, "a document id is not UTF-8") from None
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
    return SparseVectors(doc_ids=ids, matrix=matrix, scale=scale, metadata=metadata)
