"""How the PC1 fits' SVD is computed: scikit-learn's truncated SVD (ARPACK) against LAPACK's full SVD.

Prints, per shape, both timings (same run, same machine: compare the ratio) and the largest difference
between the two first right singular vectors (up to sign). Random embeddings with one strong shared
direction, as LM embeddings have.

    python experiments/bench_pc1_svd.py
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.decomposition import TruncatedSVD


def main() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((1000, 576), (5000, 576), (2000, 2048)):
        h = rng.normal(size=(n, d)) + 3 * rng.normal(size=d)
        t0 = time.perf_counter()
        _, _, vt = np.linalg.svd(h, full_matrices=False)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        u1 = TruncatedSVD(n_components=1, algorithm="arpack", random_state=0).fit(h).components_[0]
        truncated = time.perf_counter() - t0
        diff = min(np.abs(vt[0] - u1).max(), np.abs(vt[0] + u1).max())
        print(
            f"{n} x {d}: full SVD {full * 1000:.0f} ms, truncated (ARPACK) {truncated * 1000:.0f} ms "
            f"({full / truncated:.0f}x), max |u1 difference| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
