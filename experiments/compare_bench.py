"""Every row of two `keytok bench` results side by side: nDCG@10 before and after, the change, and R@100.

    python experiments/compare_bench.py BEFORE/results.json AFTER/results.json [--labels "default" "adapted"]

Rows are matched by their `spec` (the `--system` string that reproduces them) where both files have one, else
by their label; a row found on one side only is listed with a dash on the other. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(path: Path) -> dict[str, dict]:
    rows = json.loads(path.read_text())["rows"]
    return {r.get("spec") or r["system"]: r for r in rows} | {r["system"]: r for r in rows}


def compare(before: Path, after: Path, labels: tuple[str, str]) -> str:
    old = _rows(before)
    order = json.loads(after.read_text())["rows"]
    lines = [
        f"| row (`--system` spec) | nDCG@10 {labels[0]} | {labels[1]} | change | R@100 {labels[0]} → {labels[1]} |",
        "|---|---|---|---|---|",
    ]
    for row in order:
        spec = row.get("spec") or ""
        was = old.get(spec) or old.get(row["system"])
        n1 = row["quality"]["nDCG@10"]
        r1 = row["quality"]["R@100"]
        label = f"{row['system']} (`{spec}`)" if spec else row["system"]
        if was is None:
            lines.append(f"| {label} | – | {n1:.4f} | – | – → {r1:.3f} |")
            continue
        n0, r0 = was["quality"]["nDCG@10"], was["quality"]["R@100"]
        lines.append(f"| {label} | {n0:.4f} | {n1:.4f} | {(n1 / n0 - 1) * 100:+.1f}% | {r0:.3f} → {r1:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--labels", nargs=2, default=("before", "after"))
    args = p.parse_args()
    print(compare(args.before, args.after, tuple(args.labels)))


if __name__ == "__main__":
    main()
