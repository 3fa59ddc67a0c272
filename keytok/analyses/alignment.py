"""Key-token alignment metrics of Nie, Zhang & Wu (arXiv 2406.17378): Hit@K, LAR and GAR.

Per text the inputs are

* ``input_ids`` T: the token ids of the text as the tokenizer encodes it, special tokens included;
* ``ranked_ids`` T̂: token ids ranked by the projection ``lm_head(e)`` of the text's embedding, best first.
  It must be at least ``max(K, |T|)`` long (``|T|`` for LAR/GAR, K for Hit@K).

Both may be Python sequences, numpy arrays or torch tensors (anything with ``tolist()``).

Choice, written down: ``|T|`` counts tokens *with repetition* (the length of the token list), as the paper's
released code slices ``topk_idxs[:len(token_list)]``; the denominator of LAR is ``|set(T)|``. That code only
computed the top 10 tokens, so its slice was in effect ``T̂[:min(|T|, 10)]``; pass ``cap=10`` to reproduce it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["alignment_report", "format_report", "global_alignment_rate", "hit_at_k", "local_alignment_rate"]


def _ids(x: Any) -> list[int]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, int):
        raise ValueError("expected a sequence of token ids, got a single int")
    return [int(t) for t in x]


def _rows(xs: Any) -> list[list[int]]:
    # A 2-D array of ranked ids and a list of per-text lists are both "one row per text".
    if hasattr(xs, "tolist"):
        xs = xs.tolist()
    return [_ids(x) for x in xs]


def _window(n_input: int, cap: int | None) -> int:
    if cap is not None and cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return n_input if cap is None else min(n_input, cap)


def _matched(inputs: list[int], ranked: list[int], cap: int | None) -> set[int]:
    if not inputs:
        raise ValueError("input_ids is empty: alignment is undefined for a text without tokens")
    n = _window(len(inputs), cap)
    if len(ranked) < n:
        raise ValueError(f"ranked_ids has {len(ranked)} ids, need at least {n} (the number of input tokens)")
    return set(ranked[:n]) & set(inputs)


def hit_at_k(input_ids: Sequence[int] | Any, ranked_ids: Sequence[int] | Any, k: int) -> float:
    """1.0 if any of the top-``k`` ranked ids is among the input ids, else 0.0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    inputs, ranked = _ids(input_ids), _ids(ranked_ids)
    if len(ranked) < k:
        raise ValueError(f"ranked_ids has {len(ranked)} ids, need at least k={k}")
    return 1.0 if set(ranked[:k]) & set(inputs) else 0.0


def local_alignment_rate(
    input_ids: Sequence[int] | Any, ranked_ids: Sequence[int] | Any, cap: int | None = None
) -> float:
    """LAR of one text: ``|set(T̂[:|T|]) ∩ set(T)| / |set(T)|``.

    ``|T|`` is the number of input tokens counted with repetition (see the module docstring); with ``cap`` the
    window is ``min(|T|, cap)``.
    """
    inputs, ranked = _ids(input_ids), _ids(ranked_ids)
    return len(_matched(inputs, ranked, cap)) / len(set(inputs))


def global_alignment_rate(
    list_of_inputs: Sequence[Sequence[int]] | Any,
    list_of_ranked: Sequence[Sequence[int]] | Any,
    cap: int | None = None,
) -> float:
    """GAR over a data set: ``|∪_i (set(T̂_i[:|T_i|]) ∩ set(T_i))| / |∪_i set(T_i)|``.

    Texts without tokens are skipped, as in the paper's code.
    """
    inputs_rows, ranked_rows = _rows(list_of_inputs), _rows(list_of_ranked)
    _check_lengths(inputs_rows, ranked_rows)
    matched: set[int] = set()
    present: set[int] = set()
    for inputs, ranked in zip(inputs_rows, ranked_rows, strict=True):
        if not inputs:
            continue
        matched |= _matched(inputs, ranked, cap)
        present |= set(inputs)
    if not present:
        raise ValueError("no text has any input token")
    return len(matched) / len(present)


def _check_lengths(a: list[list[int]], b: list[list[int]]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} input id lists but {len(b)} ranked id lists")


def alignment_report(
    list_of_inputs: Sequence[Sequence[int]] | Any,
    list_of_ranked: Sequence[Sequence[int]] | Any,
    ks: Sequence[int] = (1, 5, 10),
    cap: int | None = None,
) -> dict[str, float | int]:
    """All alignment metrics of a data set.

    Returns ``{"n": texts scored, "n_skipped": texts without tokens, "hit@K": mean Hit@K for each K in ks,
    "lar": mean LAR, "gar": GAR}``. Texts without tokens are skipped (the paper's code does the same).
    """
    inputs_rows, ranked_rows = _rows(list_of_inputs), _rows(list_of_ranked)
    _check_lengths(inputs_rows, ranked_rows)
    hits: dict[int, float] = dict.fromkeys(ks, 0.0)
    lar_sum = 0.0
    n = skipped = 0
    matched: set[int] = set()
    present: set[int] = set()
    for inputs, ranked in zip(inputs_rows, ranked_rows, strict=True):
        if not inputs:
            skipped += 1
            continue
        n += 1
        for k in ks:
            hits[k] += hit_at_k(inputs, ranked, k)
        m = _matched(inputs, ranked, cap)
        lar_sum += len(m) / len(set(inputs))
        matched |= m
        present |= set(inputs)
    if n == 0:
        raise ValueError("no text has any input token")
    report: dict[str, float | int] = {"n": n, "n_skipped": skipped}
    report.update({f"hit@{k}": hits[k] / n for k in ks})
    report["lar"] = lar_sum / n
    report["gar"] = len(matched) / len(present)
    return report


def format_report(report: Mapping[str, float | int]) -> str:
    """One line such as ``n=291 hit@1=0.412 hit@5=0.801 lar=0.213 gar=0.187`` for logs and the CLI."""
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()]
    return " ".join(parts)
