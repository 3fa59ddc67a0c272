"""The AnglE objective (Li & Li, 2023), as BeLLM trains with it: cosine (CoSENT) + in-batch negatives + angle.

Written from the formulas, not from the AnglE code; the conventions follow it where they matter:

* **cosine / CoSENT** (τ = 20): for every two pairs i, j whose gold scores satisfy y_i < y_j, penalise
  cos_i > cos_j: ``log(1 + Σ_{y_i<y_j} exp(τ (cos_i − cos_j)))``. Only the order of the scores matters.
* **in-batch negatives** (τ = 20): InfoNCE with the positives on the diagonal:
  row i scores ``τ cos(anchor_i, c)`` for every candidate c = the batch's positives, then any hard negatives as
  extra columns; the loss is the cross-entropy of picking positive i.
* **angle** (τ = 1): each vector is read as complex, first half real, second half imaginary, u = a + ib and
  v = c + id. The normalised conjugate product w = u · conj(v) / (|u| |v|) (what AnglE's complex division
  ``u / v`` rescaled by ``|v| / |u|`` amounts to) is pooled as Σ_k (Re w_k + Im w_k); its absolute value ×τ
  is ranked by the same CoSENT rule as the cosine. For u = v the pooled value is 1.

Each term is defined on a batch of embedded pairs; :func:`angle_objective` combines them with weights
(AnglE's suggested cosine 1.0, in-batch 1.0, angle 0.02) for the three kinds of training example keytok reads:
scored pairs, triplets (anchor, positive, hard negative) and (query, positive document) pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from keytok.errors import KeytokError

__all__ = [
    "LossWeights",
    "angle_loss",
    "angle_objective",
    "angle_values",
    "cosent_loss",
    "in_batch_negative_loss",
    "ranking_loss",
]


def ranking_loss(values: torch.Tensor, scores: torch.Tensor, tau: float) -> torch.Tensor:
    """CoSENT's ranking rule: ``log(1 + Σ_{scores_i < scores_j} exp(τ (values_i − values_j)))``.

    A pair with a lower gold score than another should have a lower value (similarity). With no
    ordered couple in the batch (all scores equal) the loss is log(1) = 0.
    """
    if values.dim() != 1 or values.shape != scores.shape:
        raise KeytokError(f"ranking loss needs 1-D values and scores of one shape, got {tuple(values.shape)}")
    ordered = scores[:, None] < scores[None, :]  # [i, j]: pair i should rank below pair j
    diffs = tau * (values[:, None] - values[None, :])
    diffs = diffs.masked_fill(~ordered, float("-inf")).reshape(-1)
    zero = torch.zeros(1, dtype=diffs.dtype, device=diffs.device)
    return torch.logsumexp(torch.cat([zero, diffs]), dim=0)


def cosent_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, tau: float = 20.0) -> torch.Tensor:
    """CoSENT on pairs (u_i, v_i) with gold ``scores``: cosine similarities ranked like the scores."""
    _check_pairs(u, v, scores)
    cos = F.cosine_similarity(u.float(), v.float(), dim=1)
    return ranking_loss(cos, scores.float(), tau)


def angle_values(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|Σ_k Re w_k + Im w_k| with w = u ⊙ conj(v) / (|u| |v|), the halves of each vector read as (real, imag)."""
    if u.shape[-1] % 2:
        raise KeytokError(f"angle loss needs an even embedding size, got {u.shape[-1]}")
    a, b = u.float().chunk(2, dim=-1)
    c, d = v.float().chunk(2, dim=-1)
    norms = u.float().norm(dim=-1) * v.float().norm(dim=-1)
    re = (a * c + b * d).sum(-1)  # Σ Re(u conj v)
    im = (b * c - a * d).sum(-1)  # Σ Im(u conj v)
    return ((re + im) / norms.clamp_min(1e-12)).abs()


def angle_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """AnglE's angle term: :func:`angle_values` ×τ ranked by the gold scores (CoSENT rule)."""
    _check_pairs(u, v, scores)
    return ranking_loss(angle_values(u, v), scores.float(), tau)


def in_batch_negative_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    tau: float = 20.0,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss: anchor i against every positive (its own on the diagonal) and the hard negatives.

    ``rows`` (bool [n]) restricts which anchors count as having a true positive (for scored pairs, only the
    pairs scored high enough); every positive stays a candidate column. Returns 0 when no row is selected.
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise KeytokError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} differ")
    candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
    logits = tau * F.normalize(anchors.float(), dim=1) @ F.normalize(candidates.float(), dim=1).T
    target = torch.arange(anchors.shape[0], device=anchors.device)
    if rows is not None:
        if not bool(rows.any()):
            return logits.sum() * 0.0
        logits, target = logits[rows], target[rows]
    return F.cross_entropy(logits, target)


@dataclass(frozen=True)
class LossWeights:
    """Weights and temperatures of the AnglE objective (defaults: AnglE / BeLLM's)."""

    cosine: float = 1.0
    ibn: float = 1.0
    angle: float = 0.02
    cosine_tau: float = 20.0
    ibn_tau: float = 20.0
    angle_tau: float = 1.0
    positive_min: float = (
        0.8  # scored pairs at or above this (scores scaled to [0, 1]) are in-batch positives
    )

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise KeytokError(f"loss setting {name} must be >= 0, got {value}")
        if self.cosine == self.ibn == self.angle == 0:
            raise KeytokError("all loss weights are zero: nothing to train")


def angle_objective(
    kind: str,
    embeddings: list[torch.Tensor],
    scores: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted AnglE loss of one batch, and its terms (for the loss history).

    ``kind`` and ``embeddings``:

    * ``"pairs"``: [s1, s2] with ``scores`` in [0, 1]: cosine + angle on the pairs; in-batch negatives on the
      pairs with score >= ``positive_min`` (s1 against every s2);
    * ``"triplets"``: [anchor, positive, negative]: cosine + angle on (a, p) scored 1 and (a, n) scored 0;
      in-batch negatives with the batch's hard negatives as extra columns;
    * ``"qrels"``: [query, document]: in-batch negatives only (all pairs are positives: nothing to rank).
    """
    terms: dict[str, torch.Tensor] = {}
    if kind == "pairs":
        u, v = embeddings
        assert scores is not None
        rank_u, rank_v, rank_s = u, v, scores
        if weights.ibn:
            rows = scores >= weights.positive_min
            terms["ibn"] = in_batch_negative_loss(u, v, tau=weights.ibn_tau, rows=rows)
    elif kind == "triplets":
        a, p, n = embeddings
        rank_u = torch.cat([a, a])
        rank_v = torch.cat([p, n])
        rank_s = torch.cat([torch.ones(len(a)), torch.zeros(len(a))]).to(a.device)
        if weights.ibn:
            terms["ibn"] = in_batch_negative_loss(a, p, n, tau=weights.ibn_tau)
    elif kind == "qrels":
        q, d = embeddings
        rank_u = rank_v = rank_s = None
        if not weights.ibn:
            raise KeytokError("(query, document) pairs train with in-batch negatives only: its weight is 0")
        terms["ibn"] = in_batch_negative_loss(q, d, tau=weights.ibn_tau)
    else:
        raise KeytokError(f"unknown kind of training example '{kind}' (pairs, triplets, qrels)")
    if rank_u is not None and rank_v is not None and rank_s is not None:
        if weights.cosine:
            terms["cosine"] = cosent_loss(rank_u, rank_v, rank_s, weights.cosine_tau)
        if weights.angle:
            terms["angle"] = angle_loss(rank_u, rank_v, rank_s, weights.angle_tau)
    scale = {"cosine": weights.cosine, "ibn": weights.ibn, "angle": weights.angle}
    total = sum(scale[name] * value for name, value in terms.items())
    assert isinstance(total, torch.Tensor)
    return total, {name: float(value.detach()) for name, value in terms.items()}


def _check_pairs(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> None:
    if u.shape != v.shape or u.dim() != 2 or scores.shape != (u.shape[0],):
        raise KeytokError(
            f"pair loss needs u, v of one shape [n, d] and n scores; got {tuple(u.shape)}, {tuple(v.shape)}, "
            f"{tuple(scores.shape)}"
        )
