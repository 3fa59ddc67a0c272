"""Run fusion on hand-made runs whose fused order is worked out by hand."""

from __future__ import annotations

import math

import pytest

from keytok.engines.fusion import fuse, normalise
from keytok.errors import KeytokError

BM25 = {"q1": {"a": 10.0, "b": 8.0, "c": 2.0}}
KEYTOK = {"q1": {"c": 0.9, "d": 0.6, "a": 0.3}}


def test_minmax_by_hand() -> None:
    # bm25 -> a 1, b 0.75, c 0; keytok -> c 1, d 0.5, a 0
    fused = fuse([BM25, KEYTOK], "minmax", [1.0, 1.0])["q1"]
    assert fused == pytest.approx({"a": 1.0, "b": 0.75, "c": 1.0, "d": 0.5})
    # a and c tie at 1.0: the doc id breaks the tie
    assert list(fused) == ["a", "c", "b", "d"]
    fused = fuse([BM25, KEYTOK], "minmax", [1.0, 0.5])["q1"]
    assert list(fused) == ["a", "b", "c", "d"]
    assert fused["c"] == pytest.approx(0.5)


def test_zscore_by_hand() -> None:
    vals = [10.0, 8.0, 2.0]
    mu = sum(vals) / 3
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / 3)
    z = {d: (v - mu) / sd for d, v in zip("abc", vals, strict=True)}
    expected = {d: v - z["c"] for d, v in z.items()}
    assert normalise(BM25["q1"], "zscore") == pytest.approx(expected)
    fused = fuse([BM25, KEYTOK], "zscore", [1.0, 0.0])["q1"]
    assert fused == pytest.approx(expected)


def test_rrf_by_hand() -> None:
    fused = fuse([BM25, KEYTOK], "rrf")["q1"]
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["d"] == pytest.approx(1 / 62)
    assert list(fused) == ["a", "c", "b", "d"]


def test_missing_query_and_depth() -> None:
    runs = [BM25, {"q2": {"x": 1.0}}]
    fused = fuse(runs, "minmax", depth=2)
    assert list(fused) == ["q1", "q2"]
    assert list(fused["q1"]) == ["a", "b"]
    # a run with one hit (no spread) gives it the full weight
    assert fused["q2"] == {"x": 1.0}


def test_bad_input() -> None:
    with pytest.raises(KeytokError, match="unknown fusion"):
        fuse([BM25], "sum")
    with pytest.raises(KeytokError, match="2 runs but 1"):
        fuse([BM25, KEYTOK], weights=[1.0])
    with pytest.raises(KeytokError, match=">= 0"):
        fuse([BM25, KEYTOK], weights=[1.0, -1.0])
    with pytest.raises(KeytokError, match="non-finite"):
        fuse([{"q": {"a": float("nan")}}])


def _model_with_fusion(tiny_model_dir, tmp_path, record) -> str:
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "keytok.json").write_text(json.dumps({"fusion": record}))
    return str(folder)


def test_fusion_weights_recorded_in_a_model_go_into_its_indexes(tiny_model_dir, tmp_path) -> None:
    import json

    import keytok
    from keytok.pipeline.kinds import DEFAULT_FUSION_WEIGHTS
    from keytok.pipeline.searcher import Searcher

    record = {"method": "zscore", "weights": {"sparse:expanded": 0.5, "dense": 0.3}, "chosen_on": "dev"}
    model = _model_with_fusion(tiny_model_dir, tmp_path, record)
    keytok.build_index(
        {"d1": "bone loss", "d2": "heart attack"}, tmp_path / "idx", model=model, kinds="sparse,dense"
    )
    info = json.loads((tmp_path / "idx" / "keytok.json").read_text())
    assert info["fusion"]["method"] == "zscore" and info["fusion"]["chosen_on"] == "dev"
    assert info["fusion"]["weights"] == DEFAULT_FUSION_WEIGHTS | {"sparse:expanded": 0.5, "dense": 0.3}
    searcher = Searcher(tmp_path / "idx")
    parts = searcher.resolve_system("sparse:expanded+dense")
    assert searcher.fusion_settings(parts) == ("zscore", [0.5, 0.3])
    # what the caller names wins over the model's record
    assert searcher.fusion_settings(parts, "rrf", {"dense": 1.0}) == ("rrf", [0.5, 1.0])
    searcher.close()


@pytest.mark.parametrize(
    "record", [{"method": "minmax", "weights": {"dense": -1}}, {"method": "rrf"}, {"weights": {}}, []]
)
def test_a_bad_fusion_record_in_a_model_is_one_line_error(tiny_model_dir, tmp_path, record) -> None:
    from keytok.models.loading import load_model

    with pytest.raises(KeytokError, match="bad 'fusion' record"):
        load_model(_model_with_fusion(tiny_model_dir, tmp_path, record))


def test_a_fusion_method_keytok_lacks_stops_the_build_before_encoding(tiny_model_dir, tmp_path) -> None:
    import keytok

    model = _model_with_fusion(tiny_model_dir, tmp_path, {"method": "max", "weights": {}})
    with pytest.raises(KeytokError, match="unknown method 'max'"):
        keytok.build_index(
            {"d1": "bone loss"}, tmp_path / "idx", model=model, kinds="sparse", cache=tmp_path / "c"
        )
    assert not (tmp_path / "idx").exists() and not list((tmp_path / "c").rglob("chunk*"))
