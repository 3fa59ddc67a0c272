"""Training pairs made from a corpus alone (``keytok train --corpus``): title ↔ body, inverse cloze task,
independent cropping; the sentence splitter; the reader's errors; the command end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from keytok.errors import KeytokError
from keytok.training.corpus_pairs import (
    CorpusPairs,
    corpus_pairs,
    crop_pairs,
    ict_pairs,
    split_sentences,
    title_pairs,
)

VIT = (
    "Vitamin D deficiency is linked to bone loss in older adults. Dr. Smith measured 3.5 ng/mL on average, "
    "e.g. in winter. The effect was larger in women than in men."
)
VIT_SENTENCES = [
    "Vitamin D deficiency is linked to bone loss in older adults.",
    "Dr. Smith measured 3.5 ng/mL on average, e.g. in winter.",
    "The effect was larger in women than in men.",
]
# Cranfield's layout: lower case, stops standing alone, the title repeated as the text's first sentence.
WING_TITLE = "flow past a flat plate ."
WING_BODY = (
    "the boundary layer on a flat plate is studied . results agree with the theory of blasius for small "
    "viscosity ."
)
WING_SENTENCES = [
    "the boundary layer on a flat plate is studied .",
    "results agree with the theory of blasius for small viscosity .",
]
CAT = "the cat sat on the mat and the dog ran in the park with the cat from the study of older adults"
DOCS = [
    {"_id": "vit", "title": "Vitamin D and bones", "text": VIT},
    {"_id": "wing", "title": WING_TITLE, "text": f"{WING_TITLE} {WING_BODY}"},
    {"_id": "cat", "title": "", "text": CAT},  # one sentence, no title: crops only
    {"_id": "short", "title": "A short note", "text": "Too short to pair."},  # 4 words: skipped
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A BEIR folder with only corpus.jsonl: no queries, no qrels."""
    root = tmp_path / "beir"
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (VIT, VIT_SENTENCES),
        # Abbreviation, initialism, initial, decimal; a stop before a lower-case word in cased text.
        (
            "Prof. J. Smith et al. found 0.5 mg in the U.S. Army. It worked, approx. twice. Why? See fig. 3.",
            [
                "Prof. J. Smith et al. found 0.5 mg in the U.S. Army.",
                "It worked, approx. twice.",
                "Why?",
                "See fig. 3.",
            ],
        ),
        ('He said "stop." Then (he left.) Done!', ['He said "stop."', "Then (he left.)", "Done!"]),
        (f"{WING_TITLE} {WING_BODY}", [WING_TITLE, *WING_SENTENCES]),
        ("lower case text. no capitals here", ["lower case text.", "no capitals here"]),
        ("First paragraph\n\nSecond one. . . . Third.", ["First paragraph", "Second one.", "Third."]),
        ("no end", ["no end"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_title_pairs_are_title_and_body_without_a_repeated_title(folder: Path) -> None:
    made = corpus_pairs(folder, kinds=("title",))
    assert made.kind == "qrels"
    assert made.texts == [("Vitamin D and bones", VIT), (WING_TITLE, WING_BODY)]
    assert made.origins == ["title", "title"]
    assert made.describe() == {
        "kind": "qrels",
        "source": str(folder),
        "examples": 2,
        "made_from": "corpus",
        "made": {"title": 2},
        "per_doc": 1,
        "min_words": 20,
        "documents": 4,
        "too_short": 1,
    }
    assert title_pairs("", "a body") == []
    assert title_pairs("Same Text", "same text") == []


def test_every_kind_with_counts_and_summary(folder: Path) -> None:
    made = corpus_pairs(folder)
    assert made.made() == {"title": 2, "ict": 2, "crop": 3}
    assert made.origins == ["title", "ict", "crop", "title", "ict", "crop", "crop"]
    assert made.summary() == (
        f"corpus: {folder}: 7 pairs (title 2, ict 2, crop 3) from 4 documents; 1 under 20 words skipped"
    )
    # Nothing is made from the short document, and no pair has two equal sides.
    assert all("Too short" not in t for pair in made.texts for t in pair)
    assert all(a != b for a, b in made.texts)


def test_ict_pairs_are_a_sentence_and_the_rest(folder: Path) -> None:
    made = corpus_pairs(folder, kinds=("ict",), per_doc=3)
    by_doc = {"vit": VIT_SENTENCES, "wing": WING_SENTENCES}
    anchors = {doc: [] for doc in by_doc}
    for sentence, rest in made.texts:
        doc = "vit" if sentence in VIT_SENTENCES else "wing"
        sentences = by_doc[doc]
        anchors[doc].append(sentence)
        others = " ".join(s for s in sentences if s != sentence)
        assert rest in (others, " ".join(sentences))
        if rest == others:
            assert sentence not in rest
    # per_doc 3: every sentence of 4+ words once, never twice.
    assert sorted(anchors["vit"]) == sorted(VIT_SENTENCES)
    assert sorted(anchors["wing"]) == sorted(WING_SENTENCES)


def test_ict_removes_the_sentence_nine_times_in_ten() -> None:
    sentences = ["one two three four.", "five six seven eight.", "nine ten eleven twelve."]
    rng = random.Random(0)
    pairs = [p for _ in range(1000) for p in ict_pairs(sentences, 1, rng)]
    removed = sum(sentence not in rest for sentence, rest in pairs)
    assert len(pairs) == 1000 and 870 <= removed <= 930  # binomial(1000, 0.9): sd 9.5
    assert ict_pairs(["only one sentence here."], 1, rng) == []
    assert ict_pairs(["Short.", "Also short."], 1, rng) == []  # no anchor of 4+ words


def test_crops_are_spans_of_10_to_50_percent_of_the_words() -> None:
    words = [f"w{i}" for i in range(30)]
    lengths = []
    for seed in range(200):
        for pair in crop_pairs(words, 3, random.Random(seed)):
            for span in pair:
                got = span.split()
                start = words.index(got[0])
                assert got == words[start : start + len(got)]
                lengths.append(len(got))
    assert min(lengths) == 3 and max(lengths) == 15  # ceil(0.1 * 30), floor(0.5 * 30): both reached


def test_crops_of_the_corpus_are_spans_of_its_documents(folder: Path) -> None:
    bodies = {"vit": VIT.split(), "wing": WING_BODY.split(), "cat": CAT.split()}
    made = corpus_pairs(folder, kinds=("crop",), per_doc=4)
    assert len(made) == 12
    for pair in made.texts:
        assert any(all(_is_span(side.split(), words) for side in pair) for words in bodies.values())


def _is_span(part: list[str], words: list[str]) -> bool:
    n = len(part)
    bounds = math.ceil(len(words) / 10) <= n <= len(words) // 2
    return bounds and any(words[i : i + n] == part for i in range(len(words) - n + 1))


def test_pairs_with_equal_sides_are_dropped() -> None:
    made = corpus_pairs({"same": {"text": "word " * 20}}, kinds=("crop",), per_doc=50)
    assert all(a != b for a, b in made.texts)
    assert 0 < len(made) < 50  # crops of equal length are equal here, and dropped


def test_deterministic_under_the_seed_and_per_document(folder: Path) -> None:
    from keytok.data.beir import load_corpus

    first = corpus_pairs(folder, seed=0)
    assert corpus_pairs(folder, seed=0).texts == first.texts
    assert corpus_pairs(folder, seed=1).texts != first.texts
    # A document's pairs do not depend on the other documents.
    docs = load_corpus(folder, on_empty="keep")
    alone = corpus_pairs(docs[:1], seed=0)
    assert alone.origins == ["title", "ict", "crop"] and alone.texts == first.texts[:3]


def test_limit_keeps_a_sample_and_its_origins(folder: Path) -> None:
    full = corpus_pairs(folder)
    made = corpus_pairs(folder, limit=3)
    assert len(made) == 3 and sum(made.made().values()) == 3
    origin = dict(zip(full.texts, full.origins, strict=True))
    assert made.origins == [origin[t] for t in made.texts]
    assert made.describe()["examples"] == 3


def test_too_short_documents_are_skipped(folder: Path) -> None:
    made = corpus_pairs(folder, min_words=22)  # vit's body has 30 words, cat 22, wing's 21 (title removed)
    assert made.too_short == 2 and made.documents == 4
    assert made.made() == {"title": 1, "ict": 1, "crop": 2}
    with pytest.raises(KeytokError, match=r"no training pair could be made from 4 documents \(4 have under"):
        corpus_pairs(folder, min_words=100)


@pytest.mark.parametrize(
    ("setup", "fault"),
    [
        (lambda root: None, "corpus file not found"),
        (lambda root: root.mkdir(), "not a BEIR folder"),
        (lambda root: (root.mkdir(), (root / "corpus.jsonl").write_text("")), "empty"),
        (lambda root: (root.mkdir(), (root / "corpus.jsonl").write_text("{bad\n")), "line 1"),
    ],
)
def test_bad_corpus_is_a_one_line_error(tmp_path: Path, setup, fault: str) -> None:
    root = tmp_path / "corpus"
    setup(root)
    with pytest.raises(KeytokError, match=fault) as caught:
        corpus_pairs(root)
    assert "\n" not in str(caught.value)


def test_bad_arguments() -> None:
    with pytest.raises(KeytokError, match="choose from title, ict, crop"):
        corpus_pairs({"a": {"text": "x"}}, kinds=("title", "cloze"))
    with pytest.raises(KeytokError, match="per document"):
        corpus_pairs({"a": {"text": "x"}}, per_doc=0)


def test_read_source_corpus(folder: Path) -> None:
    from keytok.training.data import SOURCES, read_source

    made = read_source("corpus", str(folder), "", None, 0, per_doc=2)
    assert isinstance(made, CorpusPairs) and made.kind == "qrels" and made.per_doc == 2
    assert made.made() == {"title": 2, "ict": 4, "crop": 6}
    assert "corpus" in SOURCES
    with pytest.raises(KeytokError, match="choose from pairs, triplets, qrels, corpus"):
        read_source("documents", str(folder), "", None, 0)


def test_cli_train_on_a_corpus(folder: Path, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from keytok.cli.main import main

    out = tmp_path / "ckpt"
    args = ["train", "--corpus", str(folder), "--model", str(tiny_model_dir), "--out", str(out)]
    args += ["--max-steps", "2", "--batch-size", "4", "--train-layers", "1", "--lora-rank", "0"]
    assert main([*args, "--dtype", "fp32"]) == 0
    err = capsys.readouterr().err
    assert (
        f"corpus: {folder}: 7 pairs (title 2, ict 2, crop 3) from 4 documents; 1 under 20 words skipped"
        in err
    )
    record = json.loads((out / "keytok.json").read_text())
    assert record["data"] == [corpus_pairs(folder).describe()]
    assert record["steps"] == 2 and [h["kind"] for h in record["loss_history"]] == ["qrels", "qrels"]
    assert main([*args, "--corpus-pairs", "0"]) == 1
    assert "--corpus-pairs must be >= 1" in capsys.readouterr().err
    assert main(["train", "--corpus", str(tmp_path / "missing"), "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0]
