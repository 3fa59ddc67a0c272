"""Alignment metrics on hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keytok.analyses.alignment import (
    alignment_report,
    format_report,
    global_alignment_rate,
    hit_at_k,
    local_alignment_rate,
)

# Text A: T = [1, 5, 7, 5]  (|T| = 4 with repetition, set(T) = {1, 5, 7})
A_IN = [1, 5, 7, 5]
A_RANK = [9, 5, 1, 3, 7, 8]
# Text B: T = [2, 3]  (|T| = 2, set(T) = {2, 3})
B_IN = [2, 3]
B_RANK = [4, 6, 3, 2, 10, 11, 12, 13, 14, 15]


def test_hit_at_k_by_hand():
    # A: top-1 = {9}, not in T -> 0; top-2 = {9, 5}, 5 in T -> 1.
    assert hit_at_k(A_IN, A_RANK, 1) == 0.0
    assert hit_at_k(A_IN, A_RANK, 2) == 1.0
    # B: top-2 = {4, 6} -> 0; top-3 = {4, 6, 3} -> 1.
    assert hit_at_k(B_IN, B_RANK, 2) == 0.0
    assert hit_at_k(B_IN, B_RANK, 3) == 1.0


def test_lar_by_hand():
    # A: T̂[:4] = {9, 5, 1, 3}; ∩ {1, 5, 7} = {1, 5}; 2 / 3.
    assert local_alignment_rate(A_IN, A_RANK) == pytest.approx(2 / 3)
    # B: T̂[:2] = {4, 6}; ∩ {2, 3} = {} -> 0.
    assert local_alignment_rate(B_IN, B_RANK) == 0.0
    # cap=2 on A: T̂[:2] = {9, 5}; ∩ = {5}; 1 / 3.
    assert local_alignment_rate(A_IN, A_RANK, cap=2) == pytest.approx(1 / 3)


def test_lar_window_counts_repeated_tokens():
    # T = [5, 5, 5, 6]: |T| = 4 (with repetition), |set(T)| = 2. T̂[:4] = {7, 8, 9, 6}; ∩ = {6}; 1 / 2.
    # Slicing by |set(T)| = 2 would see {7, 8} and give 0, so this pins the documented choice.
    assert local_alignment_rate([5, 5, 5, 6], [7, 8, 9, 6]) == 0.5


def test_gar_by_hand():
    # Matched: A -> {1, 5}, B -> {}; union {1, 5}. Inputs: {1, 5, 7} ∪ {2, 3} = 5 tokens. GAR = 2 / 5.
    assert global_alignment_rate([A_IN, B_IN], [A_RANK, B_RANK]) == pytest.approx(0.4)
    # Shared tokens count once: C: T = [1, 2], T̂[:2] = {1, 9} -> {1}; D: T = [1, 3], T̂[:2] = {1, 8} -> {1}.
    # Mean LAR = (1/2 + 1/2) / 2 = 0.5 but GAR = |{1}| / |{1, 2, 3}| = 1/3.
    assert global_alignment_rate([[1, 2], [1, 3]], [[1, 9], [1, 8]]) == pytest.approx(1 / 3)


def test_report_by_hand():
    rep = alignment_report([A_IN, B_IN, []], [A_RANK, B_RANK, [0] * 10], ks=(1, 5))
    # hit@1: A 0, B 0 -> 0. hit@5: A top-5 {9,5,1,3,7} -> 1; B top-5 {4,6,3,2,10} -> 1 -> 1.
    # LAR: (2/3 + 0) / 2 = 1/3. GAR: 2/5. The empty third text is skipped, as in the paper's code.
    assert rep["n"] == 2 and rep["n_skipped"] == 1
    assert rep["hit@1"] == 0.0
    assert rep["hit@5"] == 1.0
    assert rep["lar"] == pytest.approx(1 / 3)
    assert rep["gar"] == pytest.approx(0.4)
    assert format_report(rep) == "n=2 n_skipped=1 hit@1=0.000 hit@5=1.000 lar=0.333 gar=0.400"


def test_arrays_and_tensors_give_the_same_numbers():
    ranked = np.array([[1, 9, 4], [1, 8, 4]])
    inputs = [np.array([1, 2]), torch.tensor([1, 3])]
    rep = alignment_report(inputs, torch.from_numpy(ranked), ks=(1,))
    assert rep == alignment_report([[1, 2], [1, 3]], [[1, 9, 4], [1, 8, 4]], ks=(1,))
    assert rep["hit@1"] == 1.0
    assert rep["gar"] == pytest.approx(1 / 3)
    assert hit_at_k(torch.tensor([4]), np.array([3, 4]), 2) == 1.0


def test_too_short_rankings_are_rejected():
    with pytest.raises(ValueError, match="need at least 4"):
        local_alignment_rate(A_IN, [9, 5, 1])
    with pytest.raises(ValueError, match="need at least k=10"):
        hit_at_k(A_IN, A_RANK, 10)
    with pytest.raises(ValueError, match="input_ids is empty"):
        local_alignment_rate([], A_RANK)
    with pytest.raises(ValueError, match="2 input id lists but 1"):
        global_alignment_rate([A_IN, B_IN], [A_RANK])
