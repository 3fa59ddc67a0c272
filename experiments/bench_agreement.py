"""Whether two ``keytok bench`` results.json agree: every row side by side, every measure to 4 decimals.

Rows are matched by their label; a row that only one of the two has is listed too. The approximate dense
index (``--ann``), a row in benches before issue 25 and a context entry since, is matched by its label
``dense (FAISS HNSW32)`` (nDCG@10 only: the context keeps no other measure). Prints a Markdown table and how
many rows agree to 4 decimals on every measure both files have. (``compare_bench.py`` gives the relative
change of nDCG@10 between two models' benches instead.)

    python experiments/bench_agreement.py OLD/results.json NEW/results.json --names "before,after"

Used for ``experiments/results/bench_cranfield/reproduction.md`` (the pre-redesign code against today's, on
one machine, with one model and the same cached document embeddings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MEASURES = (("nDCG@10", "nDCG@10"), ("R@100", "Recall@100"), ("RR@10", "MRR@10"))


def bench_rows(path: Path) -> dict[str, dict[str, float]]:
    """label -> {measure: value} of a results.json, the approximate dense index included."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    rows = {r["system"]: dict(r["quality"]) | {"spec": r.get("spec", "")} for r in payload["rows"]}
    ann = payload.get("context", {}).get("ann")
    if ann:
        rows[f"dense (FAISS {ann['factory']})"] = {"nDCG@10": ann["nDCG@10"], "spec": "(context: ann)"}
    return rows


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def compare(old: dict, new: dict, names: tuple[str, str]) -> list[str]:
    """The Markdown lines: one table row per label, then the count of rows equal to 4 decimals."""
    head = ["system"] + [f"{label} {n}" for _, label in MEASURES for n in (*names, "Δ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = list(new) + [label for label in old if label not in new]
    equal = 0
    for label in labels:
        a, b = old.get(label, {}), new.get(label, {})
        cells, same = [label], bool(a) and bool(b)
        for key, _ in MEASURES:
            x, y = a.get(key), b.get(key)
            delta = "" if x is None or y is None else f"{round(y, 4) - round(x, 4):+.4f}"
            same = same and (x is None or y is None or round(x, 4) == round(y, 4))
            cells += [_cell(x), _cell(y), delta.replace("+0.0000", "0").replace("-0.0000", "0")]
        equal += same
        lines.append("| " + " | ".join(cells) + " |")
    both = sum(1 for label in labels if label in old and label in new)
    lines += ["", f"rows in both: {both}; equal to 4 decimals on every measure both have: {equal}/{both}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="the first results.json")
    p.add_argument("new", type=Path, help="the second results.json")
    p.add_argument("--names", default="old,new", help="column names of the two, comma-separated")
    args = p.parse_args(argv)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        p.error("--names takes two names")
    print("\n".join(compare(bench_rows(args.old), bench_rows(args.new), names)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
