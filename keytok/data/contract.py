"""The input contract: what every keytok reader accepts, what it refuses and what it only warns about.

This is the one statement of the contract; the readers (:mod:`keytok.data.beir`, :mod:`keytok.data.texts`,
:mod:`keytok.data.sts`, the training-pair and calibration readers) enforce it through the functions below, so
a rule changes here or nowhere.

**Every file**

* UTF-8, decoded line by line (a bad byte is reported with its line and column); a byte-order mark on the
  first line is dropped; ``\\r\\n`` line ends are fine; blank lines are skipped (STS gold files excepted,
  where a blank line marks an unscored pair).
* Refused: a missing path, a folder where a file belongs, a file with no non-blank line.

**JSON-lines files** (``corpus.jsonl``, ``queries.jsonl``, ``*.jsonl`` text lists)

* Each line is one JSON object. Refused: invalid JSON, a value that is not an object, an object with the
  same key twice (JSON leaves that undefined; keytok will not guess which one you meant), nesting deeper
  than :data:`MAX_JSON_DEPTH`, an integer too long to convert, ``NaN``/``Infinity`` where a string belongs.
* Unknown fields are ignored (BEIR exports carry ``metadata``).

**Fields**

===========  ==========================  =====================================================================
field        type                        refused
===========  ==========================  =====================================================================
``_id``      string (the BEIR layout)    missing, not a string (a number too: write ``"7"``, not ``7``), empty,
                                         containing whitespace or a control character (a TREC run file
                                         separates its columns with whitespace, so such an id would corrupt
                                         every run written with it), a duplicate within the file
``text``     string                      ``null`` or another type, an unpaired UTF-16 surrogate
                                         (``"\\ud800"``: valid JSON, but no UTF-8 text); missing or empty in
                                         a query or a text list; in a corpus document, missing counts as
                                         empty, and title and text both empty is refused
``title``    string, optional            ``null`` or another type, an unpaired surrogate
===========  ==========================  =====================================================================

Cranfield ships two documents with empty title and text; ``load_corpus(on_empty="keep")`` keeps them.

**Qrels** (``qrels/{split}.tsv``): an optional header ``query-id<TAB>corpus-id<TAB>score``, then exactly three
tab-separated columns per line: two ids (the ``_id`` rule) and an integer grade (``1.0`` is read as 1;
negative grades are kept, as TREC does). Refused: another column count, a non-integer grade, a pair judged
twice, a file with a header and nothing else.

**A BEIR folder** is checked as a whole by :func:`keytok.data.beir.check_beir` before any model runs: every
part the command will read, qrels included. Only *warned* about (a :class:`~keytok.errors.KeytokWarning`,
printed by the CLI as ``keytok: warning: ...``): judged queries missing from ``queries.jsonl`` and judged
documents missing from the corpus (they are scored as not retrieved).

**Other files**

* Text lists: ``.txt`` (one text per line, stripped), ``.jsonl`` (the ``text`` rule, ``title`` optional) or a
  BEIR folder (its corpus); any other suffix is refused.
* STS files: ``STS.input.*.txt`` (two tab-separated sentences) matched line by line with ``STS.gs.*.txt`` (a
  finite number, or blank for an unscored pair); STS Benchmark and SICK by their published columns. Refused:
  line counts that differ, a score that is not a finite number, an empty sentence in a scored pair.
* Training pairs and triplets (``.tsv``): exactly the stated number of tab-separated columns, no empty text;
  a pair's score a finite number, and not all scores equal.
* Calibration files (``keytok calibrate``): the safetensors or npz layout keytok writes, with the sha256 of its
  content in the header. Refused: anything else, a changed byte, a fit for another model or method.
* Index folders: every file is listed in ``manifest.json`` / ``keytok.json`` with its size and sha256 and is
  checked when the index is opened. Refused: a missing, truncated or altered file (named), a manifest edited
  by hand, an index built with another model, method or calibration than the one querying it.

**Texts given on the command line** follow the ``text`` rule (a terminal can pass bytes that are not UTF-8;
Python turns them into surrogates).

Every refusal raises :class:`~keytok.errors.KeytokError` with one line naming the file, the line and the
fault; the CLI prints it and exits with status 1, and nothing is written.
"""

from __future__ import annotations

import json
import math
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError, KeytokWarning

__all__ = [
    "MAX_JSON_DEPTH",
    "check_file",
    "check_id",
    "check_text",
    "decode_lines",
    "id_field",
    "iter_jsonl",
    "iter_text_lines",
    "parse_grade",
    "parse_json_object",
    "parse_score",
    "text_field",
    "warn",
]

#: Deepest nesting of JSON arrays/objects a line may have. Python's decoder recurses and would overflow
#: the stack on ``[[[[…`` long before memory runs out; no real corpus nests deeper than a handful of levels.
MAX_JSON_DEPTH = 100


def _at(path: Path | str, lineno: int | None) -> str:
    return f"{path}" if lineno is None else f"{path} line {lineno}"


def warn(message: str) -> None:
    """Issue a :class:`KeytokWarning`: input keytok accepts but the user should know about."""
    warnings.warn(message, KeytokWarning, stacklevel=3)


def check_file(path: Path, what: str) -> None:
    """Refuse a missing path or one that is not a regular file."""
    if not path.exists():
        raise KeytokError(f"{path}: {what} file not found")
    if not path.is_file():
        raise KeytokError(f"{path}: {what} is not a regular file")


def decode_lines(raw_lines: Iterable[bytes], where: str) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of UTF-8 byte lines (a file, standard input), line endings and a first-line
    byte-order mark removed; a bad byte is a KeytokError naming ``where``, the line and the column."""
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KeytokError(
                f"{where} line {lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            ) from None
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        yield lineno, line.rstrip("\r\n")


def iter_text_lines(
    path: Path, what: str = "input", *, keep_blank: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each line of a UTF-8 file, without the line ending.

    Blank lines are skipped unless ``keep_blank``. Decoding is per line so that a bad byte is reported with
    its line. Raises KeytokError for a missing file, non-UTF-8 bytes, or a file with no non-blank line.
    """
    check_file(path, what)
    seen = False
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below; the open alone needs its own except
    except OSError as exc:
        raise KeytokError(f"{path}: cannot read the {what} file ({exc.strerror})") from None
    with fh:
        for lineno, line in decode_lines(fh, str(path)):
            if line.strip():
                seen = True
            elif not keep_blank:
                continue
            yield lineno, line
    if not seen:
        raise KeytokError(f"{path}: {what} file is empty")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _depth_exceeds(line: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (a cheap scan, run only on suspicion)."""
    depth = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_json_object(line: str, path: Path | str, lineno: int | None = None) -> dict[str, Any]:
    """One JSON object from ``line``; every way it can fail becomes a one-line KeytokError."""
    where = _at(path, lineno)
    # The scan costs a pass over the line, so it runs only when the line has enough brackets to matter.
    if line.count("[") + line.count("{") > MAX_JSON_DEPTH and _depth_exceeds(line, MAX_JSON_DEPTH):
        raise KeytokError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise KeytokError(f"{where}: key '{_show(exc.key)}' appears twice in one object") from None
    except json.JSONDecodeError as exc:
        raise KeytokError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise KeytokError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        raise KeytokError(f"{where}: unreadable JSON value ({str(exc).split(':')[0]})") from None
    if not isinstance(obj, dict):
        raise KeytokError(f"{where}: expected a JSON object, got {_json_type(obj)}")
    return obj


def iter_jsonl(path: Path, what: str = "input") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file; each must be an object."""
    for lineno, line in iter_text_lines(path, what):
        yield lineno, parse_json_object(line, path, lineno)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN, Infinity: JSON extensions Python's decoder accepts
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: str, limit: int = 40) -> str:
    """An id or key as it can be printed on one line: escapes for control characters, cut if long."""
    shown = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def check_text(value: str, where: str, field: str) -> str:
    """Refuse a string that cannot be written as UTF-8 (an unpaired surrogate from a ``\\ud800`` escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise KeytokError(
            f"{where}: {field} holds an unpaired surrogate {_show(value[exc.start])} at character {exc.start + 1}, "
            "which is not text"
        ) from None
    return value


def text_field(obj: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    """A string field; an absent optional one is ``""``. ``null`` and other types are refused."""
    if key not in obj:
        if required:
            raise KeytokError(f"{where}: missing field '{key}'")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise KeytokError(f"{where}: field '{key}' must be a string, got {_json_type(value)}")
    return check_text(value, where, f"field '{key}'")


def check_id(value: str, where: str, field: str = "_id") -> str:
    """Refuse an id a TREC run or qrels file could not hold: empty, whitespace or control characters inside."""
    if not value:
        raise KeytokError(f"{where}: empty {field}")
    check_text(value, where, field)
    for i, ch in enumerate(value):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            what = "whitespace" if ch.isspace() else "a control character"
            raise KeytokError(
                f"{where}: {field} '{_show(value)}' contains {what} (U+{ord(ch):04X}) at character {i + 1}; "
                "ids are written to whitespace-separated TREC run files, so they must be single tokens"
            )
    return value


def id_field(obj: dict[str, Any], where: str) -> str:
    """The ``_id`` of a JSON-lines record: present, a string, and a valid id."""
    if "_id" not in obj:
        raise KeytokError(f"{where}: missing field '_id'")
    value = obj["_id"]
    if not isinstance(value, str):
        hint = f' (write "{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
        raise KeytokError(f"{where}: field '_id' must be a string, got {_json_type(value)}{hint}")
    return check_id(value, where)


def parse_grade(value: str, where: str) -> int:
    """A relevance grade: an integer, or a float with no fractional part (``1.0`` written by some exporters)."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        f = math.nan
    if math.isfinite(f) and f.is_integer():
        return int(f)
    raise KeytokError(f"{where}: score '{_show(value)}' is not an integer")


def parse_score(value: str, where: str) -> float:
    """A finite real number (an STS gold score, a training-pair score)."""
    try:
        score = float(value)
    except ValueError:
        raise KeytokError(f"{where}: score '{_show(value)}' is not a number") from None
    if not math.isfinite(score):
        raise KeytokError(f"{where}: score '{_show(value)}' is not a finite number")
    return score
