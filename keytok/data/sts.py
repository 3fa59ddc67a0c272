"""Readers for the semantic textual similarity (STS) benchmarks.

``root`` is a folder laid out like ``../shared/data/sts``::

    STS12-en-test/STS.input.{subset}.txt   sentence1<TAB>sentence2[<TAB>...] per line
    STS12-en-test/STS.gs.{subset}.txt      gold score per line; an empty line means "not scored"
    ...                                    (STS13..STS16 alike)
    STSBenchmark/sts-{train,dev,test}.csv  tab separated: genre, file, year, id, score, s1, s2[, sources]
    SICK/SICK_{train,trial,test_annotated}.txt  header + pair_ID, sentence_A, sentence_B,
                                                relatedness_score, entailment_judgment

Names accepted by :func:`load_sts`:

* ``STS12`` .. ``STS16``: every scored pair of every subset with both input and gold files, subsets in file-name
  order (``STS.gs.ALL.txt`` is a concatenation, and subsets shipped without input, such as STS13 SMT, are skipped);
* ``STS12/SMTnews``: one subset; the name may omit a dotted prefix (``surprise.SMTnews``); case-insensitive;
* ``STSB-train``, ``STSB-dev``, ``STSB-test`` (``STSB`` alone means the test split);
* ``SICK-train``, ``SICK-trial``, ``SICK-test``; ``SICK-R-*`` and ``SICK-E-*`` are the same pairs (relatedness
  as ``score``, entailment judgement as ``label``); ``SICK-R`` / ``SICK`` alone mean the test split.

Sentences are stripped of surrounding whitespace. Faults raise KeytokError naming the file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from keytok.data.contract import iter_text_lines, parse_score
from keytok.errors import KeytokError

__all__ = [
    "STS_BENCHMARKS",
    "STS_ROOT_ENV",
    "STSPair",
    "load_sts",
    "sts12_smtnews_high",
    "sts_root",
    "sts_subsets",
]

#: The environment variable naming the folder of the STS data sets, when no folder is given.
STS_ROOT_ENV = "KEYTOK_STS_ROOT"

# The seven sets of the usual STS table (SentEval / BeLLM).
STS_BENCHMARKS: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSB-test", "SICK-R-test")


@dataclass(frozen=True)
class STSPair:
    """A sentence pair with its gold similarity ``score`` and, for SICK, the entailment ``label``."""

    s1: str
    s2: str
    score: float
    label: str | None = None


def _parse_score(value: str, path: Path, lineno: int) -> float:
    return parse_score(value, f"{path} line {lineno}")


def _year_dir(root: Path, year: str) -> Path:
    if not root.is_dir():
        raise KeytokError(f"{root}: STS data folder not found")
    candidates = [root / f"{year}-en-test", root / year]
    for c in candidates:
        if c.is_dir():
            return c
    raise KeytokError(f"{root}: no {year} folder (looked for {year}-en-test)")


def sts_subsets(root: str | os.PathLike[str], year: str) -> list[str]:
    """Subset names (e.g. ``surprise.SMTnews``) of an STS year that have both input and gold files."""
    folder = _year_dir(Path(root), year.upper())
    names = []
    for gs in sorted(folder.glob("STS.gs.*.txt")):
        sub = gs.name[len("STS.gs.") : -len(".txt")]
        if sub.upper() != "ALL" and (folder / f"STS.input.{sub}.txt").is_file():
            names.append(sub)
    return names


def _read_sts_subset(folder: Path, sub: str) -> list[STSPair]:
    inp = folder / f"STS.input.{sub}.txt"
    gs = folder / f"STS.gs.{sub}.txt"
    # Both files are read keeping blank lines, because an empty gold line is what marks an unscored pair and
    # the two files are matched by line number.
    inputs = _all_lines(inp)
    golds = _all_lines(gs)
    if len(inputs) != len(golds):
        raise KeytokError(
            f"{gs}: {len(golds)} lines but {inp.name} has {len(inputs)}; they must match line by line"
        )
    pairs: list[STSPair] = []
    for i, (line, gold) in enumerate(zip(inputs, golds, strict=True), start=1):
        if not gold.strip():
            continue
        score = _parse_score(gold.strip(), gs, i)
        cols = line.split("\t")
        if len(cols) < 2:
            raise KeytokError(f"{inp} line {i}: expected two tab-separated sentences, got {len(cols)} column")
        s1, s2 = cols[0].strip(), cols[1].strip()
        if not s1 or not s2:
            raise KeytokError(f"{inp} line {i}: empty sentence in a scored pair")
        pairs.append(STSPair(s1, s2, score))
    if not pairs:
        raise KeytokError(f"{gs}: no scored pairs")
    return pairs


def _all_lines(path: Path) -> list[str]:
    """Every line of a UTF-8 file, blank ones kept, without line endings; decode errors name the line."""
    return [line for _, line in iter_text_lines(path, "STS", keep_blank=True)]


def _load_sts_year(root: Path, year: str, subset: str | None) -> list[STSPair]:
    folder = _year_dir(root, year)
    subs = sts_subsets(root, year)
    if subset is not None:
        want = subset.lower()
        chosen = [s for s in subs if s.lower() == want or s.lower().endswith("." + want)]
        if not chosen:
            raise KeytokError(f"{year}/{subset}: no such subset in {folder} (have: {', '.join(subs)})")
        subs = chosen[:1]
    if not subs:
        raise KeytokError(f"{folder}: no STS.input.*.txt / STS.gs.*.txt pairs")
    pairs: list[STSPair] = []
    for sub in subs:
        pairs.extend(_read_sts_subset(folder, sub))
    return pairs


def _load_stsb(root: Path, split: str) -> list[STSPair]:
    path = root / "STSBenchmark" / f"sts-{split}.csv"
    pairs: list[STSPair] = []
    # A plain split, no CSV quoting: sentences contain unbalanced double quotes that a quoting reader would
    # merge across lines (and the csv module refuses a stray carriage return inside a field).
    for lineno, line in iter_text_lines(path, "STS Benchmark"):
        row = line.split("\t")
        if len(row) < 7:
            raise KeytokError(
                f"{path} line {lineno}: expected at least 7 tab-separated columns, got {len(row)}"
            )
        score = _parse_score(row[4].strip(), path, lineno)
        s1, s2 = row[5].strip(), row[6].strip()
        if not s1 or not s2:
            raise KeytokError(f"{path} line {lineno}: empty sentence")
        pairs.append(STSPair(s1, s2, score))
    return pairs


_SICK_FILES = {"train": "SICK_train.txt", "trial": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
_SICK_COLUMNS = ("sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")


def _load_sick(root: Path, split: str) -> list[STSPair]:
    path = root / "SICK" / _SICK_FILES[split]
    pairs: list[STSPair] = []
    col: dict[str, int] = {}
    for lineno, line in iter_text_lines(path, "SICK"):
        row = line.split("\t")
        if not col:
            header = [c.strip() for c in row]
            missing = [c for c in _SICK_COLUMNS if c not in header]
            if missing:
                raise KeytokError(f"{path} line {lineno}: header lacks column(s) {', '.join(missing)}")
            col = {c: header.index(c) for c in _SICK_COLUMNS}
            continue
        if len(row) <= max(col.values()):
            raise KeytokError(
                f"{path} line {lineno}: expected at least {max(col.values()) + 1} columns, got {len(row)}"
            )
        score = _parse_score(row[col["relatedness_score"]].strip(), path, lineno)
        s1, s2 = row[col["sentence_A"]].strip(), row[col["sentence_B"]].strip()
        label = row[col["entailment_judgment"]].strip() or None
        if not s1 or not s2:
            raise KeytokError(f"{path} line {lineno}: empty sentence")
        pairs.append(STSPair(s1, s2, score, label))
    if not pairs:
        raise KeytokError(f"{path}: no pairs after the header")
    return pairs


_YEAR_RE = re.compile(r"^(STS1[2-6])(?:/(.+))?$", re.IGNORECASE)
_STSB_RE = re.compile(r"^STS-?B(?:enchmark)?(?:-(train|dev|test))?$", re.IGNORECASE)
_SICK_RE = re.compile(r"^SICK(?:-[RE])?(?:-(train|trial|test))?$", re.IGNORECASE)


def sts_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the STS data sets: ``root``, else ``$KEYTOK_STS_ROOT``; neither is a one-line error."""
    given = root if root is not None else os.environ.get(STS_ROOT_ENV)
    if not given:
        raise KeytokError(
            f"no STS data folder given: pass sts_root=DIR (--sts-root DIR) or set ${STS_ROOT_ENV}"
        )
    return Path(given)


def load_sts(name: str, root: str | os.PathLike[str] | None = None) -> list[STSPair]:
    """Load the STS set ``name`` (see the module docstring for accepted names) from the folder ``root``
    (default: ``$KEYTOK_STS_ROOT``, see :func:`sts_root`)."""
    root_p = sts_root(root)
    if not root_p.is_dir():
        raise KeytokError(f"{root_p}: STS data folder not found")
    if m := _YEAR_RE.match(name.strip()):
        return _load_sts_year(root_p, m.group(1).upper(), m.group(2))
    if m := _STSB_RE.match(name.strip()):
        return _load_stsb(root_p, (m.group(1) or "test").lower())
    if m := _SICK_RE.match(name.strip()):
        return _load_sick(root_p, (m.group(1) or "test").lower())
    raise KeytokError(
        f"unknown STS set '{name}' (use STS12..STS16, STS12/<subset>, STSB-train|dev|test, SICK-R-train|trial|test)"
    )


def sts12_smtnews_high(root: str | os.PathLike[str], min_score: float = 4.0) -> list[STSPair]:
    """STS12 ``surprise.SMTnews`` pairs with gold score strictly above ``min_score``: the key-token paper's set."""
    return [p for p in load_sts("STS12/SMTnews", root) if p.score > min_score]
