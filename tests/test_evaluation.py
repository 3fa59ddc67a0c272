import math

import pytest

from keytok.evaluation.metrics import Latency, drop_self_hits, evaluate


def test_evaluate_hand_worked():
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}, "q3": {"d9": 1}}
    run = {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {"d4": 1.0}}  # q3 returned nothing
    got = evaluate(run, qrels)
    # q1: relevant d1 at rank 2 -> nDCG = (1/log2(3)) / 1; q2 and q3 score 0; mean over 3 judged queries.
    assert got["nDCG@10"] == pytest.approx((1 / math.log2(3)) / 3)
    assert got["RR@10"] == pytest.approx(0.5 / 3)
    assert got["R@100"] == pytest.approx(1 / 3)


def test_self_hits_are_removed():
    run = {"q1": {"q1": 9.0, "d1": 1.0}}
    assert drop_self_hits(run) == {"q1": {"d1": 1.0}}
    qrels = {"q1": {"q1": 1, "d1": 1}}
    # With its self-hit removed, q1 finds only d1 of its two relevant documents.
    assert evaluate(run, qrels)["R@100"] == pytest.approx(0.5)


def test_latency_percentiles():
    lat = Latency.from_seconds([0.001] * 90 + [0.010] * 10)
    assert lat.p50_ms == pytest.approx(1.0)
    assert lat.p95_ms == pytest.approx(10.0)
    assert lat.qps == pytest.approx(1000 / 1.9)
