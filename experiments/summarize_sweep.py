"""Tables for the report from ``experiments/results/sweep_sparse_<dataset>.json``.

    python experiments/summarize_sweep.py cranfield scifact

Prints, per data set: dense nDCG@10; the best sparse nDCG@10 for each transform x K (over centering, M,
expansion weight); and, at a fixed configuration, the effect of M, of the expansion weight, of centering,
of idf and of case variants, one factor at a time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import run_script

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+")
    ap.add_argument(
        "--at", default="raw,1024,0.75,32,0.1", help="transform,K,center,M,beta of the reference row"
    )
    args = ap.parse_args()
    t0, k0, c0, m0, b0 = args.at.split(",")
    ref = {
        "transform": t0,
        "K": int(k0),
        "center": float(c0),
        "M": int(m0),
        "beta": float(b0),
        "idf": True,
        "case_variants": False,
    }
    runs = {
        d: json.loads((HERE / "results" / f"sweep_sparse_{d}.json").read_text())["results"]
        for d in args.datasets
    }

    def sparse(d):
        return [r for r in runs[d] if r["kind"] == "sparse"]

    def at(d, **over):
        want = ref | over
        rows = [
            r
            for r in sparse(d)
            if all(r[k] == v for k, v in want.items() if not (k == "beta" and want["M"] == 0))
        ]
        return rows[0]["ndcg10"] if rows else float("nan")

    print("dense (cosine of pooled vectors, centre 0 / 0.5 / 1.0):")
    for d in args.datasets:
        ds = {r["center"]: r["ndcg10"] for r in runs[d] if r["kind"] == "dense"}
        print(f"  {d}: " + " / ".join(f"{ds[c]:.3f}" for c in sorted(ds)))
    ks = sorted({r["K"] for r in sparse(args.datasets[0])})
    print("\nbest sparse nDCG@10 per transform x K (over centre, M, expansion weight; idf on):")
    print("| transform | " + " | ".join(f"{d} K={k}" for d in args.datasets for k in ks) + " |")
    for t in ("log1p", "relu", "raw"):
        cells = []
        for d in args.datasets:
            for k in ks:
                c = [
                    r["ndcg10"]
                    for r in sparse(d)
                    if r["transform"] == t and r["K"] == k and r["idf"] and not r["case_variants"]
                ]
                cells.append(f"{max(c):.3f}" if c else "-")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print(f"\none factor at a time around {ref}:")
    factors = {
        "K": [(k, {"K": k}) for k in ks],
        "M": [(m, {"M": m}) for m in sorted({r["M"] for r in sparse(args.datasets[0])})],
        "beta": [(b, {"beta": b}) for b in sorted({r["beta"] for r in sparse(args.datasets[0]) if r["M"]})],
        "center": [(c, {"center": c}) for c in sorted({r["center"] for r in sparse(args.datasets[0])})],
        "transform": [(t, {"transform": t}) for t in ("log1p", "relu", "raw")],
        "idf": [(v, {"idf": v}) for v in (True, False)],
        "case_variants": [(v, {"case_variants": v}) for v in (False, True)],
    }
    for name, values in factors.items():
        print(f"| {name} | " + " | ".join(f"{v}" for v, _ in values) + " |")
        for d in args.datasets:
            print(f"|   {d} | " + " | ".join(f"{at(d, **o):.3f}" for _, o in values) + " |")
    print("\nbest overall:")
    for d in args.datasets:
        b = max(sparse(d), key=lambda r: r["ndcg10"])
        print(f"  {d}: {b}")
    if len(args.datasets) > 1:
        keys = ("transform", "K", "center", "M", "beta", "idf", "case_variants")
        tables = [{tuple(r[k] for k in keys): r["ndcg10"] for r in sparse(d)} for d in args.datasets]
        common = set(tables[0]).intersection(*tables[1:])
        ranked = sorted(common, key=lambda c: -sum(t[c] / max(t.values()) for t in tables))
        print("\nbest by mean of (nDCG@10 / each data set's best):")
        for c in ranked[:10]:
            print("  ", dict(zip(keys, c, strict=True)), " ".join(f"{t[c]:.4f}" for t in tables))


if __name__ == "__main__":
    run_script(main)
