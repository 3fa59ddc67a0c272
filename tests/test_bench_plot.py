"""The bench's picture is legible: every number inside its panel and clear of the others, every system in the
key once, the systems with and without a model at query time in panels of their own."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from keytok.evaluation.bench_plot import FAMILIES, PlotPoint, draw_points, point_of_row
from keytok.pipeline.kinds import BENCH_SYSTEMS, needs_model, system_parts

matplotlib = pytest.importorskip("matplotlib")


def _crowded_points(seed: int = 0) -> list[PlotPoint]:
    """Every bench system, as crowded as a real bench: each system with a model at 120-150 ms, the others at
    0.5-10 ms, many within a thousandth of nDCG of another."""
    from keytok.evaluation.bench_plot import family

    rng = np.random.default_rng(seed)
    points = []
    for _, system in BENCH_SYSTEMS:
        model = 125.0 if needs_model(system_parts(system)) else 0.0
        latency = model + (rng.uniform(0, 25) if model else 10 ** rng.uniform(-0.3, 1))
        ndcg = float(rng.choice([0.26, 0.35, 0.38])) + rng.uniform(0, 0.004)
        points.append(PlotPoint(system, family(system), ndcg, latency, model))
    return points


def _numbers(fig) -> dict[object, list]:
    """The number labels of each panel (the axes that hold points)."""
    return {ax: list(ax.texts) for ax in fig.axes if ax.collections}


def _inside(inner, outer, slack: float = 0.5) -> bool:
    return (
        inner.x0 >= outer.x0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y0 >= outer.y0 - slack
        and inner.y1 <= outer.y1 + slack
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_number_is_inside_its_panel_and_apart_from_the_others(seed):
    import matplotlib.pyplot as plt

    points = _crowded_points(seed)
    fig = draw_points(points, "crowded")
    try:
        renderer = fig.canvas.get_renderer()
        seen = []
        for ax, texts in _numbers(fig).items():
            frame = ax.get_window_extent(renderer)
            boxes = [t.get_window_extent(renderer) for t in texts]
            for text, box in zip(texts, boxes, strict=True):
                assert _inside(box, frame), f"number {text.get_text()} runs off its panel"
            for (a, ba), (b, bb) in itertools.combinations(zip(texts, boxes, strict=True), 2):
                assert not ba.overlaps(bb), f"numbers {a.get_text()} and {b.get_text()} overlap"
            seen += [int(t.get_text()) for t in texts]
        assert sorted(seen) == list(range(1, len(points) + 1))
    finally:
        plt.close(fig)


def test_systems_with_a_model_have_their_own_panel_and_the_key_stands_clear():
    import matplotlib.pyplot as plt

    points = _crowded_points()
    fig = draw_points(points, "crowded")
    try:
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.collections]
        assert len(panels) == 2
        for ax, want_model in zip(panels, (False, True), strict=True):
            xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
            assert ((xs >= 100) == want_model).all()
        key = next(ax for ax in fig.axes if not ax.collections)
        right = max(ax.get_window_extent(renderer).x1 for ax in panels)
        lines = [t.get_text() for t in key.texts]
        assert all(t.get_window_extent(renderer).x0 >= right for t in key.texts)
        for n, p in enumerate(sorted(points, key=lambda p: [f[0] for f in FAMILIES].index(p.family)), 1):
            assert sum(line.split()[:2] == [str(n), p.name] for line in lines) == 1
    finally:
        plt.close(fig)


def test_a_bench_without_a_model_at_query_time_has_one_panel():
    import matplotlib.pyplot as plt

    points = [p for p in _crowded_points() if p.model_ms == 0]
    fig = draw_points(points, "no model")
    try:
        assert len([ax for ax in fig.axes if ax.collections]) == 1
    finally:
        plt.close(fig)


def test_a_row_of_results_json_is_a_point_with_its_model_time():
    row = {
        "system": "bm25+keytok = bm25+sparse (zscore, weights 1/0.5)",
        "spec": "bm25+keytok --fusion zscore --weight bm25=1 --weight sparse:expanded=0.5",
        "quality": {"nDCG@10": 0.3828},
        "end_to_end_p50_ms": 141.7,
        "encode_ms": 124.7,
    }
    point = point_of_row(row)
    want = ("bm25+keytok", FAMILIES[0][0], 0.3828, 124.7)
    assert (point.name, point.family, point.ndcg, point.model_ms) == want
    assert point_of_row(row | {"spec": "bm25", "encode_ms": 0.0}).family == "BM25 alone"
