"""The Common Index File Format (CIFF): write a native index's postings, and read a CIFF file back.

CIFF (https://github.com/osirrc/ciff, ``CommonIndexFileFormat.proto``) is one file of varint-length-delimited
protobuf messages: one ``Header``, then ``Header.num_postings_lists`` ``PostingsList`` messages, then
``Header.num_docs`` ``DocRecord`` messages. PISA (``ciff2pisa``), JASS, Terrier and OldDog import it.
Both directions are written here from the ``.proto`` schema (proto3 wire format: zero-valued fields are
omitted, repeated ``Posting`` messages are length-delimited), so no protobuf package is needed.

What keytok writes:

* a term per token that occurs, spelled as in keytok's Lucene index (``"t"`` + token id,
  :func:`keytok.engines.lucene.token_key`), postings lists in the terms' byte order (as Lucene exports them);
* postings: CIFF ``docid`` = the document's row in the export (``0 .. num_docs - 1``, the native index's
  order of its live documents), **gap-encoded** (the first posting holds the docid itself, each later one
  the difference to the previous), ``tf`` = the native index's integer impact; ``df`` = postings in the
  list, ``cf`` = the sum of its impacts;
* ``DocRecord``: ``docid``, ``collection_docid`` = the document's id, ``doclength`` = the sum of its impacts
  (what Anserini would count for the same impact document);
* the ``Header``: version 1, counts, ``total_terms_in_collection`` = sum of all impacts, the average
  document length, and a ``description`` naming the model, K and the quantisation ``scale``.

An engine that scores the imported index by ``Σ_t q_t · tf`` (PISA's ``quantized`` scorer, JASS impacts)
ranks as keytok does. A file name ending in ``.gz`` is gzip-compressed; :func:`read_ciff` reads both.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from keytok.engines.lucene import token_key
from keytok.errors import KeytokError
from keytok.interop.source import ExportSource, parse_token_key
from keytok.utils.atomic import atomic_path

__all__ = [
    "CIFF_VERSION",
    "CiffDocRecord",
    "CiffHeader",
    "CiffIndex",
    "CiffPostingsList",
    "read_ciff",
    "write_ciff",
]

CIFF_VERSION = 1
_BATCH = 1 << 20  # postings encoded per vectorised pass of the writer
_VECTORISED_MIN_BYTES = 2048  # shorter postings lists decode faster in the plain loop than through numpy
_MASK64 = (1 << 64) - 1
_SMALL = [bytes([v]) if v < 0x80 else bytes([(v & 0x7F) | 0x80, v >> 7]) for v in range(1 << 14)]


# --------------------------------------------------------------------------------------------- wire format
def _varint(value: int) -> bytes:
    if 0 <= value < (1 << 14):
        return _SMALL[value]
    value &= _MASK64  # negative int32/int64 values are written as 64-bit two's complement (10 bytes)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return b"" if value == 0 else _varint(number << 3) + _varint(value)


def _bytes_field(number: int, data: bytes) -> bytes:
    return b"" if not data else _varint((number << 3) | 2) + _varint(len(data)) + data


def _delimited(message: bytes) -> bytes:
    return _varint(len(message)) + message


def _varint_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of non-negative integers, vectorised: bytes ``[n, width]`` (row-aligned) and lengths ``[n]``."""
    v = np.asarray(values, dtype=np.int64).astype(np.uint64)
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        lengths += v >= np.uint64(1 << (7 * k))
    width = int(lengths.max()) if v.size else 1
    out = np.empty((v.size, width), dtype=np.uint8)
    for k in range(width):
        low = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[:, k] = low | ((lengths > k + 1).astype(np.uint8) << 7)
    return out, lengths


def _posting_records(gaps: np.ndarray, tfs: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The ``postings`` field records (``0x22 len [0x08 gap] [0x10 tf]``) of many postings, concatenated.

    Vectorised; returns the bytes and each record's byte length (zero-valued fields are omitted, as proto3
    encoders do). ``gaps`` and ``tfs`` must be in [0, 2**31).
    """
    n = gaps.size
    g_bytes, g_len = _varint_columns(gaps)
    t_bytes, t_len = _varint_columns(tfs)
    g_len = np.where(gaps > 0, g_len, 0)
    t_len = np.where(tfs > 0, t_len, 0)
    body = (g_len > 0) + g_len + (t_len > 0) + t_len  # at most 12 bytes: its length is one varint byte
    pieces = [
        (np.full((n, 1), 0x22, np.uint8), np.ones(n, np.int64)),
        (body.astype(np.uint8).reshape(n, 1), np.ones(n, np.int64)),
        (np.full((n, 1), 0x08, np.uint8), (g_len > 0).astype(np.int64)),
        (g_bytes, g_len),
        (np.full((n, 1), 0x10, np.uint8), (t_len > 0).astype(np.int64)),
        (t_bytes, t_len),
    ]
    matrix = np.hstack([m for m, _ in pieces])
    mask = np.hstack([np.arange(m.shape[1]) < ln[:, None] for m, ln in pieces])
    return matrix[mask].tobytes(), 2 + body


class _Reader:
    """Sequential reader of protobuf wire data; every fault is a :class:`KeytokError` naming the file."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.where = where
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> KeytokError:
        return KeytokError(f"{self.where}: {what} at byte {self.pos if at is None else at}")

    def varint(self, end: int) -> int:
        data, pos, shift, value = self.data, self.pos, 0, 0
        while True:
            if pos >= end:
                raise self.fail("truncated varint")
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise self.fail("varint longer than 10 bytes")
        self.pos = pos
        return value & _MASK64

    def fields(self, end: int) -> Iterator[tuple[int, int, int | bytes | float]]:
        """(field number, wire type, value) of each field up to ``end``; length-delimited values are bytes.

        ``self.pos`` is past a field when it is yielded, so the generator may be abandoned after any field.
        """
        while self.pos < end:
            key = self.varint(end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail("field number 0")
            if wire == 0:
                yield number, wire, self.varint(end)
            elif wire == 2:
                n = self.varint(end)
                if self.pos + n > end:
                    raise self.fail(f"field {number} runs past the end of its message")
                self.pos += n
                yield number, wire, self.data[self.pos - n : self.pos]
            elif wire == 1:
                if self.pos + 8 > end:
                    raise self.fail("truncated 64-bit field")
                self.pos += 8
                yield number, wire, struct.unpack_from("<d", self.data, self.pos - 8)[0]
            elif wire == 5:
                if self.pos + 4 > end:
                    raise self.fail("truncated 32-bit field")
                self.pos += 4
                yield number, wire, struct.unpack_from("<f", self.data, self.pos - 4)[0]
            else:
                raise self.fail(f"unsupported wire type {wire} in field {number}")

    def message(self) -> tuple[int, int]:
        """The (start, end) of the next length-delimited top-level message."""
        if self.pos >= len(self.data):
            raise self.fail("file ends early: a message is missing")
        n = self.varint(len(self.data))
        start = self.pos
        if start + n > len(self.data):
            raise self.fail(f"truncated message ({n} bytes announced)", start)
        self.pos = start + n
        return start, start + n


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


# --------------------------------------------------------------------------------------------- records
@dataclass
class CiffHeader:
    """The CIFF ``Header`` message."""

    version: int = CIFF_VERSION
    num_postings_lists: int = 0
    num_docs: int = 0
    total_postings_lists: int = 0
    total_docs: int = 0
    total_terms_in_collection: int = 0
    average_doclength: float = 0.0
    description: str = ""

    def encode(self) -> bytes:
        """The message's proto3 wire bytes (zero fields omitted)."""
        return b"".join(
            [
                _int_field(1, self.version),
                _int_field(2, self.num_postings_lists),
                _int_field(3, self.num_docs),
                _int_field(4, self.total_postings_lists),
                _int_field(5, self.total_docs),
                _int_field(6, self.total_terms_in_collection),
                b"" if self.average_doclength == 0 else b"\x39" + struct.pack("<d", self.average_doclength),
                _bytes_field(8, self.description.encode("utf-8")),
            ]
        )


@dataclass
class CiffPostingsList:
    """A CIFF ``PostingsList`` with its docids decoded (absolute, ascending) and its tfs."""

    term: str
    df: int
    cf: int
    docids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tfs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def encode(self) -> bytes:
        """The message's wire bytes, docids gap-encoded."""
        docids = np.asarray(self.docids, dtype=np.int64)
        gaps = np.diff(docids, prepend=0)
        records, _ = _posting_records(gaps, np.asarray(self.tfs, dtype=np.int64))
        return _postings_list_head(self.term, self.df, self.cf) + records


def _postings_list_head(term: str, df: int, cf: int) -> bytes:
    return _bytes_field(1, term.encode("utf-8")) + _int_field(2, df) + _int_field(3, cf)


@dataclass
class CiffDocRecord:
    """A CIFF ``DocRecord``."""

    docid: int
    collection_docid: str
    doclength: int

    def encode(self) -> bytes:
        """The message's wire bytes."""
        return (
            _int_field(1, self.docid)
            + _bytes_field(2, self.collection_docid.encode("utf-8"))
            + _int_field(3, self.doclength)
        )


@dataclass
class CiffIndex:
    """A whole CIFF file: header, postings lists (in file order) and document records."""

    header: CiffHeader
    postings: list[CiffPostingsList]
    docs: list[CiffDocRecord]

    def to_csr(self, vocab_size: int | None = None) -> tuple[list[str], sp.csr_matrix]:
        """The documents' ids and their ``n_docs × vocab_size`` int64 CSR of tfs, for keytok-written files.

        Row ``i`` is the document with CIFF ``docid`` ``i``; columns are token ids parsed from the terms
        (``"t17"`` → 17). ``vocab_size`` defaults to the largest token id + 1. Raises :class:`KeytokError`
        for a term keytok did not write or docids that are not ``0 .. num_docs - 1``.
        """
        n = len(self.docs)
        ids = [""] * n
        for rec in self.docs:
            if not 0 <= rec.docid < n or ids[rec.docid]:
                raise KeytokError(
                    f"CIFF docid {rec.docid} is out of range or repeated: expected 0 .. {n - 1}"
                )
            ids[rec.docid] = rec.collection_docid
        cols = [parse_token_key(pl.term) for pl in self.postings]
        width = (max(cols) + 1 if cols else 0) if vocab_size is None else int(vocab_size)
        if cols and max(cols) >= width:
            raise KeytokError(f"CIFF term {token_key(max(cols))} is outside a vocabulary of {width} tokens")
        rows = np.concatenate([pl.docids for pl in self.postings]) if cols else np.zeros(0, np.int64)
        data = np.concatenate([pl.tfs for pl in self.postings]) if cols else np.zeros(0, np.int64)
        col = np.repeat(np.asarray(cols, dtype=np.int64), [pl.docids.size for pl in self.postings])
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise KeytokError(f"CIFF postings name docids outside 0 .. {n - 1}")
        csr = sp.csr_matrix((data, (rows, col)), shape=(n, width), dtype=np.int64)
        csr.sort_indices()
        return ids, csr


# --------------------------------------------------------------------------------------------- write
def write_ciff(source: ExportSource, out: str | os.PathLike[str], *, overwrite: bool = False) -> CiffHeader:
    """Write ``source`` as a CIFF file ``out`` (gzip when it ends in ``.gz``), atomically; see the module doc.

    Returns the header written.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise KeytokError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.is_dir():
        raise KeytokError(f"{out} is a folder: a CIFF export is one file")
    csr = source.vectors
    csc = csr.tocsc()
    csc.sort_indices()
    df = np.diff(csc.indptr)
    tokens = sorted(np.flatnonzero(df).tolist(), key=lambda t: token_key(t).encode())
    lengths = np.asarray(csr.sum(axis=1), dtype=np.int64).ravel()
    total = int(lengths.sum())
    header = CiffHeader(
        version=CIFF_VERSION,
        num_postings_lists=len(tokens),
        num_docs=source.n_docs,
        total_postings_lists=len(tokens),
        total_docs=source.n_docs,
        total_terms_in_collection=total,
        average_doclength=total / source.n_docs if source.n_docs else 0.0,
        description=source.description(),
    )
    with atomic_path(out) as tmp:
        opener = gzip.GzipFile(tmp, "wb", mtime=0) if out.name.endswith(".gz") else open(tmp, "wb")  # noqa: SIM115
        with opener as fh:
            fh.write(_delimited(header.encode()))
            at = 0
            while at < len(tokens):
                # a batch of terms holding about _BATCH postings, encoded in one vectorised pass
                stop, count = at, 0
                while stop < len(tokens) and (count == 0 or count + df[tokens[stop]] <= _BATCH):
                    count += int(df[tokens[stop]])
                    stop += 1
                batch = np.asarray(tokens[at:stop], dtype=np.int64)
                lens = df[batch]
                first = np.repeat(csc.indptr[batch] - np.cumsum(lens) + lens, lens) + np.arange(
                    int(lens.sum())
                )
                docids = csc.indices[first].astype(np.int64)
                tfs = csc.data[first].astype(np.int64)
                gaps = np.diff(docids, prepend=0)
                starts = np.cumsum(lens) - lens
                gaps[starts] = docids[starts]
                records, sizes = _posting_records(gaps, tfs)
                ends = np.concatenate([[0], np.cumsum(sizes)])[np.cumsum(lens)]
                cfs = np.add.reduceat(tfs, starts)
                prev = 0
                for j, t in enumerate(batch.tolist()):
                    head = _postings_list_head(token_key(t), int(lens[j]), int(cfs[j]))
                    end = int(ends[j])
                    fh.write(_varint(len(head) + end - prev) + head + records[prev:end])
                    prev = end
                at = stop
            for i, doc_id in enumerate(source.doc_ids):
                fh.write(_delimited(CiffDocRecord(i, doc_id, int(lengths[i])).encode()))
    return header


# --------------------------------------------------------------------------------------------- read
def _text(value: int | bytes | float, r: _Reader, what: str) -> str:
    if not isinstance(value, bytes):
        raise r.fail(f"{what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail(f"{what} is not UTF-8") from None


def _int(value: int | bytes | float, r: _Reader, what: str, bits: int) -> int:
    if not isinstance(value, int):
        raise r.fail(f"{what} is not an integer")
    return _signed(value, bits)


def _read_header(r: _Reader) -> CiffHeader:
    start, end = r.message()
    r.pos = start
    h = CiffHeader(version=0)
    ints = {1: "version", 2: "num_postings_lists", 3: "num_docs", 4: "total_postings_lists", 5: "total_docs"}
    for number, _, value in r.fields(end):
        if number in ints:
            setattr(h, ints[number], _int(value, r, f"Header.{ints[number]}", 32))
        elif number == 6:
            h.total_terms_in_collection = _int(value, r, "Header.total_terms_in_collection", 64)
        elif number == 7:
            if not isinstance(value, float):
                raise r.fail("Header.average_doclength is not a double")
            h.average_doclength = value
        elif number == 8:
            h.description = _text(value, r, "Header.description")
    if h.num_postings_lists < 0 or h.num_docs < 0:
        raise r.fail("Header has negative counts", start)
    return h


def _posting_records_read(r: _Reader, end: int, gaps: list[int], tfs: list[int]) -> None:
    """Decode consecutive ``postings`` records (field 4) from ``r.pos`` in a tight loop.

    Stops at the first other field (or at ``end``) and leaves ``r.pos`` there. Values are raw (unsigned)
    varints; the caller reinterprets them as int32.
    """
    data, pos = r.data, r.pos
    try:
        while pos < end and data[pos] == 0x22:
            n = data[pos + 1]
            pos += 2
            if n >= 0x80:  # a record longer than 127 bytes: not keytok's, read it the general way
                r.pos = pos - 1
                n = r.varint(end)
                pos = r.pos
            stop = pos + n
            if stop > end:
                raise r.fail("a Posting runs past the end of its PostingsList", pos)
            gap = tf = 0
            while pos < stop:
                key = data[pos]
                if key & 7 or key >= 0x80:
                    raise r.fail(
                        f"Posting has field key {key:#x}: only varint fields 1 and 2 are expected", pos
                    )
                b = data[pos + 1]
                pos += 2
                value, shift = b & 0x7F, 7
                while b >= 0x80:
                    b = data[pos]
                    pos += 1
                    value |= (b & 0x7F) << shift
                    shift += 7
                if key == 0x08:
                    gap = value
                elif key == 0x10:
                    tf = value
            if pos != stop:
                raise r.fail("a Posting's varint runs past its end", pos)
            gaps.append(gap)
            tfs.append(tf)
    except IndexError:
        raise r.fail("truncated Posting", pos) from None
    r.pos = pos


def _postings_vectorised(region: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Raw (gap, tf) varints of a run of ``postings`` records, decoded with numpy; ``None`` if unusual.

    Every token in such a run is a varint and they come in (key, value) pairs: ``(0x22, record length)``,
    ``(0x08, gap)``, ``(0x10, tf)``. Runs holding anything else (other fields, long varints) return
    ``None`` and are read by :func:`_posting_records_read`. Record lengths are checked.
    """
    arr = np.frombuffer(region, dtype=np.uint8)
    if arr.size == 0 or arr[-1] >= 0x80:
        return None
    ends = np.flatnonzero(arr < 0x80)
    starts = np.concatenate([[0], ends[:-1] + 1])
    nbytes = ends - starts + 1
    if ends.size % 2 or nbytes.max() > 10:
        return None
    pos = np.arange(arr.size) - np.repeat(starts, nbytes)
    contrib = (arr & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    tokens = np.add.reduceat(contrib, starts)
    keys, values = tokens[0::2], tokens[1::2]
    pair_bytes = nbytes[0::2] + nbytes[1::2]
    is_rec = keys == 0x22
    if not is_rec[0] or not np.isin(keys, (0x22, 0x08, 0x10)).all():
        return None
    rec = np.cumsum(is_rec) - 1
    n = int(is_rec.sum())
    inner = ~is_rec
    if not np.array_equal(np.bincount(rec[inner], weights=pair_bytes[inner], minlength=n), values[is_rec]):
        return None  # record lengths disagree with their content: let the careful reader report it
    gaps = np.zeros(n, dtype=np.uint64)
    tfs = np.zeros(n, dtype=np.uint64)
    g, t = keys == 0x08, keys == 0x10
    gaps[rec[g]] = values[g]
    tfs[rec[t]] = values[t]
    return gaps, tfs


def _int32(values: list[int] | np.ndarray) -> np.ndarray:
    """Raw varint values as int32 (negative int32 values are 10-byte sign-extended varints)."""
    arr = np.asarray(values, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    return arr.astype(np.uint32).view(np.int32).astype(np.int64)


def _read_postings(r: _Reader, num_docs: int) -> CiffPostingsList:
    start, end = r.message()
    r.pos = start
    term, df, cf = None, 0, 0
    gaps: list[int] | np.ndarray = []
    tfs: list[int] | np.ndarray = []
    while r.pos < end:
        if r.data[r.pos] == 0x22:
            if not gaps and end - r.pos >= _VECTORISED_MIN_BYTES:
                fast = _postings_vectorised(r.data[r.pos : end])
                if fast is not None:
                    gaps, tfs = fast
                    r.pos = end
                    continue
            _posting_records_read(r, end, gaps, tfs)  # type: ignore[arg-type]
            continue
        number, _, value = next(r.fields(end))
        if number == 1:
            term = _text(value, r, "PostingsList.term")
        elif number == 2:
            df = _int(value, r, "PostingsList.df", 64)
        elif number == 3:
            cf = _int(value, r, "PostingsList.cf", 64)
    if term is None:
        raise r.fail("PostingsList without a term", start)
    docids = np.cumsum(_int32(gaps))
    tf_arr = _int32(tfs)
    where = f"PostingsList {term!r} (byte {start})"
    if len(gaps) != df:
        raise KeytokError(f"{r.where}: {where} has {len(gaps)} postings but df {df}")
    if int(tf_arr.sum()) != cf:
        raise KeytokError(f"{r.where}: {where} has tfs summing to {int(tf_arr.sum())} but cf {cf}")
    if docids.size and (docids[0] < 0 or np.any(np.diff(docids) <= 0) or docids[-1] >= max(num_docs, 1)):
        raise KeytokError(
            f"{r.where}: {where} has docids that are not ascending within 0 .. {num_docs - 1} "
            "(are they gap-encoded?)"
        )
    return CiffPostingsList(term=term, df=df, cf=cf, docids=docids, tfs=tf_arr)


def _read_doc(r: _Reader) -> CiffDocRecord:
    start, end = r.message()
    r.pos = start
    rec = CiffDocRecord(0, "", 0)
    for number, _, value in r.fields(end):
        if number == 1:
            rec.docid = _int(value, r, "DocRecord.docid", 32)
        elif number == 2:
            rec.collection_docid = _text(value, r, "DocRecord.collection_docid")
        elif number == 3:
            rec.doclength = _int(value, r, "DocRecord.doclength", 32)
    return rec


def read_ciff(path: str | os.PathLike[str]) -> CiffIndex:
    """Read a CIFF file (plain or gzip) into memory, checking it against its header.

    Checks: the message counts the header announces, ``df`` and ``cf`` of every list against its
    postings, docids ascending and below ``num_docs`` after undoing the gap encoding, and nothing after
    the last DocRecord. Raises :class:`KeytokError` naming the file and the fault.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeytokError(f"CIFF file {path} does not exist") from None
    except OSError as exc:
        raise KeytokError(f"CIFF file {path} is unreadable ({exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise KeytokError(f"CIFF file {path}: bad gzip data ({exc})") from None
    r = _Reader(raw, f"CIFF file {path}")
    if not raw:
        raise KeytokError(f"CIFF file {path} is empty")
    header = _read_header(r)
    postings = [_read_postings(r, header.num_docs) for _ in range(header.num_postings_lists)]
    docs = [_read_doc(r) for _ in range(header.num_docs)]
    if r.pos != len(raw):
        raise r.fail(f"{len(raw) - r.pos} bytes after the last of {header.num_docs} DocRecords")
    return CiffIndex(header=header, postings=postings, docs=docs)
