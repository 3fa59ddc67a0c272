"""Quick STS check: Spearman x 100 of several model/method pairs on one seeded sample of an STS set.

A diagnostic for when the full test set is too slow to encode (STS-B test: 2,758 sentences): every model is
scored on the same pairs, so the differences are comparable; the absolute figures are not the full set's.

    python experiments/sts_sample.py smollm2-135m=bellm results/train/bellm-sts smollm2-135m=prompteol --pairs 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import run_script

from keytok.data.sts import load_sts
from keytok.encoding.encoder import Encoder
from keytok.evaluation.sts import sample_pairs, sts_spearman

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="MODEL or MODEL=METHOD (a checkpoint alone uses its own method)")
    p.add_argument("--set", default="STSB-test")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    pairs = sample_pairs(load_sts(args.set, DATA), args.pairs, seed=args.seed)
    for spec in args.models:
        model, _, method = spec.partition("=")
        started = time.perf_counter()
        enc = Encoder(model, method or None, threads=args.threads)
        score = sts_spearman(enc, pairs)
        print(
            f"{model} | {enc.method.describe()} | {args.set} sample of {len(pairs)} (seed {args.seed}) | "
            f"{score:.2f} | {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    run_script(main)
