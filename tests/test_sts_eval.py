"""STS evaluation (keytok.evaluation.sts) and experiments/sts.py, on the tiny random Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from keytok.data.sts import STSPair
from keytok.encoding.encoder import Encoder
from keytok.errors import KeytokError
from keytok.evaluation.sts import (
    evaluate_sts,
    pair_cosines,
    sample_pairs,
    spearman_x100,
    sts_scores,
    sts_spearman,
    unique_sentences,
)

SENTENCES = [
    "the cat sat on the mat",
    "the dog ran in the park",
    "vitamin d deficiency is linked to bone loss",
    "aspirin reduces the risk of heart attack",
    "cancer patients were in the study",
    "the gene has an effect on cells",
    "treatment increased the risk",
    "older adults have bone loss",
]
ROOT = Path(__file__).resolve().parents[1]


class Recording:
    """A real Encoder that also records what it was asked to encode (an observer, not a stand-in)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str], **kwargs: object) -> np.ndarray:
        self.calls.append(list(texts))
        return self.encoder.encode(texts, **kwargs)

    @property
    def last_stats(self) -> object:
        return self.encoder.last_stats


@pytest.fixture(scope="module")
def encoder(tiny_model) -> Encoder:
    return Encoder(tiny_model, "mean", dtype="fp32")


def _all_pairs() -> list[STSPair]:
    return [STSPair(a, b, 0.0) for i, a in enumerate(SENTENCES) for b in SENTENCES[i + 1 :]]


def _cosines(encoder: Encoder, pairs: list[STSPair]) -> np.ndarray:
    emb = encoder.encode([p.s1 for p in pairs] + [p.s2 for p in pairs])
    a, b = emb[: len(pairs)], emb[len(pairs) :]
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    return r


def test_gold_equal_to_cosine_gives_100_and_reversed_gives_minus_100(encoder: Encoder) -> None:
    pairs = _all_pairs()
    cos = _cosines(encoder, pairs)  # computed independently: every sentence encoded per occurrence
    assert np.ptp(cos) > 0.05, "the tiny model should give distinct similarities"
    graded = [STSPair(p.s1, p.s2, float(c)) for p, c in zip(pairs, cos, strict=True)]
    assert sts_spearman(encoder, graded) == pytest.approx(100.0, abs=1e-6)
    reversed_ = [STSPair(p.s1, p.s2, -float(c)) for p, c in zip(pairs, cos, strict=True)]
    assert sts_spearman(encoder, reversed_) == pytest.approx(-100.0, abs=1e-6)


def test_known_value_from_rank_formula(encoder: Encoder) -> None:
    pairs = _all_pairs()
    cos = _cosines(encoder, pairs)
    assert len(np.unique(np.round(cos, 6))) == len(cos), "need untied similarities for the closed form"
    gold = np.random.default_rng(3).permutation(len(pairs)).astype(float)  # untied gold
    n = len(pairs)
    d = _ranks(cos) - _ranks(gold)
    expected = (1 - 6 * (d**2).sum() / (n * (n * n - 1))) * 100
    got = sts_spearman(encoder, [STSPair(p.s1, p.s2, g) for p, g in zip(pairs, gold, strict=True)])
    assert got == pytest.approx(expected, abs=1e-6)
    assert -100 < got < 100


def test_identical_sentence_pairs_score_highest(encoder: Encoder) -> None:
    # Identical pairs have cosine 1, the maximum: gold 5 for them and 0..4 for different pairs agrees
    # with the model on 'identical beats different' whatever it thinks of the rest.
    same = [STSPair(s, s, 5.0) for s in SENTENCES[:4]]
    different = [STSPair(a, b, 1.0) for a, b in zip(SENTENCES[:4], SENTENCES[4:], strict=True)]
    pairs = same + different
    texts = unique_sentences(pairs)
    cos = pair_cosines(pairs, (texts, encoder.encode(texts)))
    assert (cos[:4] == 1.0).all()
    assert (cos[4:] < 0.999).all()
    # Two gold levels and every identical pair above every different one: the different pairs' order among
    # themselves does not matter (their gold is tied), so rho equals that of any such ranking.
    got = sts_spearman(encoder, pairs)
    expected = spearman_x100(np.r_[np.full(4, 8.0), np.arange(4.0)], [5, 5, 5, 5, 1, 1, 1, 1])
    assert got == pytest.approx(expected, abs=1e-6)
    assert got > 80


def test_each_distinct_sentence_encoded_once(encoder: Encoder) -> None:
    rec = Recording(encoder)
    pairs = [
        STSPair(a, b, float(i))
        for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1], strict=True))
    ]
    sts_spearman(rec, pairs)
    assert len(rec.calls) == 1
    assert sorted(rec.calls[0]) == sorted(SENTENCES)


def test_tuples_are_accepted(encoder: Encoder) -> None:
    pairs = _all_pairs()
    cos = _cosines(encoder, pairs)
    as_tuples = [(p.s1, p.s2, float(c)) for p, c in zip(pairs, cos, strict=True)]
    assert sts_spearman(encoder, as_tuples) == pytest.approx(100.0, abs=1e-6)


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        ([], "no pairs"),
        ([STSPair("the cat", "", 1.0), STSPair("the dog", "a cat", 2.0)], "empty"),
        ([STSPair("the cat", "the dog", 3.0), STSPair("the dog", "a cat", 3.0)], "gold scores are equal"),
        ([STSPair("the cat", "the dog", float("nan")), STSPair("a", "b", 1.0)], "finite"),
        ([STSPair("the cat", "the dog", 1.0)], "at least 2"),
        ([("the cat", "the dog")], "not (sentence1, sentence2, score)"),
    ],
)
def test_bad_input_is_one_line_keytok_error(encoder: Encoder, pairs: list, fragment: str) -> None:
    with pytest.raises(KeytokError) as err:
        sts_spearman(encoder, pairs)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_constant_similarities_are_refused(encoder: Encoder) -> None:
    pairs = [STSPair(s, s, float(i)) for i, s in enumerate(SENTENCES[:3])]  # every cosine is 1
    with pytest.raises(KeytokError, match="predicted similarities are equal"):
        sts_spearman(encoder, pairs)


def test_several_sets_share_one_encode_call(encoder: Encoder) -> None:
    pairs = _all_pairs()
    cos = _cosines(encoder, pairs)
    rng = np.random.default_rng(0)
    set_a = [STSPair(p.s1, p.s2, float(c)) for p, c in zip(pairs[:14], cos[:14], strict=True)]
    set_b = [STSPair(p.s1, p.s2, float(g)) for p, g in zip(pairs[14:], rng.normal(size=14), strict=True)]
    rec = Recording(encoder)
    result = sts_scores(rec, {"a": set_a, "b": set_b}, show_progress=False)
    assert len(rec.calls) == 1
    assert len(rec.calls[0]) == len(set(rec.calls[0])) == result.sentences
    assert result.scores["a"] == pytest.approx(100.0, abs=1e-6)
    assert result.scores["b"] == pytest.approx(sts_spearman(encoder, set_b), abs=1e-9)
    assert result.average == pytest.approx((result.scores["a"] + result.scores["b"]) / 2)
    assert result.pairs == {"a": 14, "b": 14}
    assert result.as_dict()["stats"]["texts"] == result.sentences


def test_sample_pairs_is_seeded_ordered_and_bounded() -> None:
    pairs = [STSPair(f"s{i}", f"t{i}", float(i)) for i in range(100)]
    a = sample_pairs(pairs, 10)
    assert a == sample_pairs(pairs, 10)
    assert len(a) == 10 and [p.score for p in a] == sorted(p.score for p in a)
    assert a != pairs[:10]  # a draw over the whole list, not its head
    assert sample_pairs(pairs, 0) == pairs and sample_pairs(pairs, 500) == pairs


def _write_stsb(root: Path, rows: list[tuple[float, str, str]]) -> None:
    (root / "STSBenchmark").mkdir(parents=True)
    lines = [
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s:.2f}\t{a}\t{b}" for i, (s, a, b) in enumerate(rows)
    ]
    (root / "STSBenchmark" / "sts-test.csv").write_text("\n".join(lines) + "\n")


def test_evaluate_sts_reads_sets_from_a_folder(encoder: Encoder, tmp_path: Path) -> None:
    pairs = _all_pairs()
    cos = _cosines(encoder, pairs)
    _write_stsb(tmp_path, [(float(c), p.s1, p.s2) for p, c in zip(pairs, cos, strict=True)])
    result = evaluate_sts(encoder, tmp_path, ["STSB-test"], show_progress=False)
    # Gold rounded to 2 decimals in the file: ties may appear, so near but not always exactly 100.
    assert result.scores["STSB-test"] > 99.0
    assert result.pairs == {"STSB-test": len(pairs)}
    with pytest.raises(KeytokError, match="SICK"):
        evaluate_sts(encoder, tmp_path, ["SICK-R-test"])


class _Script:
    """``experiments/sts.py`` run as the command it is (tests do not import experiment scripts)."""

    def __init__(self) -> None:
        self.last_err = ""

    def main(self, args: Sequence[str]) -> int:
        done = subprocess.run(
            [sys.executable, str(ROOT / "experiments" / "sts.py"), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=os.environ | {"TRANSFORMERS_VERBOSITY": "error"},
        )
        self.last_err = done.stderr
        return done.returncode


def _sts_experiment(name: str) -> _Script:
    return _Script()


def _write_all_pairs(data: Path) -> None:
    """An STS-B test set of every pair of SENTENCES, gold scores cycling 0..5."""
    pairs = [(a, b) for i, a in enumerate(SENTENCES) for b in SENTENCES[i + 1 :]]
    _write_stsb(data, [(float(i % 6), a, b) for i, (a, b) in enumerate(pairs)])


@pytest.mark.slow  # runs experiments/sts.py as a command, three times
def test_experiment_script_writes_table_and_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "sts"
    _write_stsb(
        data, [(float(i % 5), a, b) for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[::-1], strict=True))]
    )
    module = _sts_experiment("sts_experiment")
    out = tmp_path / "res" / "sts.md"
    args = ["--models", str(tiny_model_dir), "--methods", "mean,last", "--sets", "STSB-test"]
    args += ["--data", str(data), "--dtype", "fp32", "--out", str(out)]
    assert module.main(args) == 0
    text = out.read_text()
    assert "| STS-B |" in text and text.count(f"| {tiny_model_dir} | ") == 4  # 2 table rows + 2 run rows
    assert "python experiments/sts.py --models" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["mean", "last"]
    for r in rows:  # the script's Spearman is evaluate_sts's on the same encoder
        enc = Encoder(str(tiny_model_dir), r["method"], dtype="fp32")
        want = evaluate_sts(enc, data, ["STSB-test"], show_progress=False).scores["STSB-test"]
        assert r["scores"]["STSB-test"] == pytest.approx(want, abs=1e-6)
    # A second run merges: same key replaced, not duplicated.
    assert module.main([*args[:3], "last", *args[4:]]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["last", "mean"]
    # Notes beside the page are placed between the table and the runs; --render-only runs no model.
    out.with_suffix(".notes.md").write_text("What it shows: nothing yet.\n")
    assert module.main(["--render-only", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.index("| STS-B |") < page.index("What it shows: nothing yet.") < page.index("## Runs")


@pytest.mark.slow  # runs experiments/sts.py as a command, three times
def test_experiment_shared_forward_pass_matches_separate_encoding(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "sts"
    _write_all_pairs(data)
    module = _sts_experiment("sts_experiment2")
    base = ["--models", str(tiny_model_dir), "--methods", "mean,last,wmean", "--sets", "STSB-test"]
    base += ["--data", str(data), "--dtype", "fp32"]
    assert module.main([*base, "--out", str(tmp_path / "a" / "sts.md")]) == 0
    assert module.main([*base, "--share-forward", "--out", str(tmp_path / "b" / "sts.md")]) == 0
    sep = json.loads((tmp_path / "a" / "sts.json").read_text())["rows"]
    shared = json.loads((tmp_path / "b" / "sts.json").read_text())["rows"]
    assert [r["method"] for r in shared] == ["mean", "last", "wmean"]
    for a, b in zip(sep, shared, strict=True):
        assert b["scores"]["STSB-test"] == pytest.approx(a["scores"]["STSB-test"], abs=1e-4)
        assert b["stats"]["shared_forward_with"] == ["mean", "last", "wmean"]
        assert "shared_forward_with" not in a["stats"]
    # The three poolings differ on the random model: the test would not see a pooling mix-up otherwise.
    assert len({round(r["scores"]["STSB-test"], 3) for r in sep}) == 3
    assert "one forward pass for mean + last + wmean" in (tmp_path / "b" / "sts.md").read_text()


@pytest.mark.slow  # runs experiments/sts.py as a command, three times
def test_experiment_checkpoint_resumes_from_saved_embeddings(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "sts"
    _write_all_pairs(data)
    module = _sts_experiment("sts_experiment3")
    ckpt = tmp_path / "ckpt"
    args = [
        "--models",
        str(tiny_model_dir),
        "--methods",
        "mean,last",
        "--sets",
        "STSB-test",
        "--data",
        str(data),
    ]
    args += [
        "--dtype",
        "fp32",
        "--share-forward",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "r" / "sts.md"),
    ]
    assert module.main(args) == 0
    first = json.loads((tmp_path / "r" / "sts.json").read_text())["rows"]
    saved = list(ckpt.glob("*.npy"))
    assert len(saved) == 1 and np.load(saved[0]).shape == (2, len(SENTENCES), 32)
    assert module.main(args) == 0
    assert "from " + str(saved[0]) in module.last_err
    again = json.loads((tmp_path / "r" / "sts.json").read_text())["rows"]
    assert [r["scores"] for r in again] == [r["scores"] for r in first]
