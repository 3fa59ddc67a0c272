"""The paper's PC1 analysis (Nie, Zhang & Wu, arXiv 2406.17378, §spectral): the uncentred SVD of a base
LM's embeddings, an embedder's variation along each direction (:func:`spectral_variation`), and the two
:class:`~keytok.representations.calibration.Calibration` fits that follow from it (:func:`fit_pc1_shift`,
:func:`fit_remove_pc1`). Conventions (sign of each u_j) are in :mod:`keytok.representations.calibration`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from keytok.representations.calibration import Calibration, as_float64_2d

__all__ = ["SpectralFit", "fit_pc1_shift", "fit_remove_pc1", "spectral_variation"]


@dataclass(frozen=True)
class SpectralFit:
    """Uncentred SVD of base embeddings and the mean variation of an embedder along each direction.

    ``components`` (k, d): u_j as rows, sign-fixed (see the module docstring); ``singular_values`` (k,);
    ``variation`` (k,): v_j = mean_i[(embedder_i − base_i)·u_j]; ``n_texts``: N.
    """

    components: np.ndarray
    singular_values: np.ndarray
    variation: np.ndarray
    n_texts: int


def _svd(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` singular values and right singular vectors of ``h``, not mean-centred.

    Fewer than all directions: scikit-learn's truncated SVD (ARPACK, fixed start), which gives u_1 to
    within 1e-15 of the full SVD's at a fraction of its cost (10 to 56 times faster here:
    ``python experiments/bench_pc1_svd.py``); the whole spectrum: LAPACK's full SVD.
    """
    if k < min(h.shape):
        from sklearn.decomposition import TruncatedSVD

        fit = TruncatedSVD(n_components=k, algorithm="arpack", random_state=0).fit(h)
        return fit.singular_values_, fit.components_.copy()
    _, s, vt = np.linalg.svd(h, full_matrices=False)
    return s[:k], vt[:k].copy()


def _sign_fixed_svd(h: np.ndarray, n_components: int | None) -> tuple[np.ndarray, np.ndarray]:
    k = min(h.shape) if n_components is None else n_components
    if k < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    k = min(k, min(h.shape))  # N texts in d dimensions have at most min(N, d) directions
    s, vt = _svd(h, k)
    mean_proj = (h @ vt.T).mean(axis=0)
    for j in range(k):
        sign = np.sign(mean_proj[j])
        if sign == 0:
            sign = np.sign(vt[j, np.argmax(np.abs(vt[j]))]) or 1.0
        vt[j] *= sign
    return s, vt


def spectral_variation(base: Any, embedder: Any, n_components: int | None = None) -> SpectralFit:
    """SVD of ``base`` (not mean-centred, float64) and the variation of ``embedder`` along each u_j.

    ``base`` and ``embedder`` are [N, d] arrays (numpy or torch) holding the base LM's and the embedder's
    vectors of the same N texts, row for row. ``n_components`` keeps the first k directions (all by default).
    """
    h = as_float64_2d(base, "base")
    e = as_float64_2d(embedder, "embedder")
    if h.shape != e.shape:
        raise ValueError(f"base and embedder shapes differ: {h.shape} vs {e.shape}")
    s, vt = _sign_fixed_svd(h, n_components)
    variation = ((e - h) @ vt.T).mean(axis=0)
    return SpectralFit(components=vt, singular_values=s, variation=variation, n_texts=h.shape[0])


def _complete_meta(meta: Mapping[str, Any], n_texts: int, required: tuple[str, ...]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in meta.items()}
    missing = [k for k in required if not out.get(k)]
    if missing:
        raise ValueError(f"calibration meta lacks {', '.join(missing)}")
    out["n_texts"] = str(n_texts)
    out["created_by"] = "keytok"
    return out


def fit_pc1_shift(base: Any, embedder: Any, meta: Mapping[str, Any]) -> Calibration:
    """The paper's adjustment: ``mode="add"`` with u_1 of ``base`` and λ = v_1 measured against ``embedder``.

    ``meta`` must give ``model`` (fingerprint of the base model), ``method`` (the base embedding method the
    calibration will be applied to) and ``fit_method`` (the embedder); ``n_texts`` and ``created_by`` are set.
    """
    fit = spectral_variation(base, embedder, n_components=1)
    full = _complete_meta(meta, fit.n_texts, ("model", "method", "fit_method"))
    return Calibration(
        direction=fit.components[0], coefficient=float(fit.variation[0]), mode="add", meta=full
    )


def fit_remove_pc1(embeddings: Any, meta: Mapping[str, Any], strength: float = 1.0) -> Calibration:
    """``mode="remove"`` with u_1 of the uncentred SVD of ``embeddings`` (an embedder's own vectors).

    ``meta`` must give ``model`` and ``method``; ``fit_method`` defaults to ``"self"``. The stored coefficient
    is the mean projection of ``embeddings`` on u_1 (for inspection; ``remove`` does not use it).
    """
    h = as_float64_2d(embeddings, "embeddings")
    _, vt = _sign_fixed_svd(h, 1)
    meta = {"fit_method": "self", **dict(meta)}
    full = _complete_meta(meta, h.shape[0], ("model", "method"))
    coefficient = float((h @ vt[0]).mean())
    return Calibration(direction=vt[0], coefficient=coefficient, mode="remove", strength=strength, meta=full)
