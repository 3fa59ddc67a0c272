"""Where the pre-redesign bench and today's differ, and why: every row of a bench searched on one index with
one query batch, the old way and today's way.

- The old way (the bench before issue 25, d13de3b): each engine returns its top ``depth + 1`` (a spare for the
  self-hit that evaluation removes: Cranfield's query and document ids share one namespace), a fused row fuses
  those runs and keeps the best ``depth``, scores are kept as computed.
- Today's way (``keytok search -k depth``, which the bench now runs): each engine returns its top ``depth``, a
  fused row fuses those, scores are those of the run file (6 decimals). Evaluation removes the self-hit in both.

Each way is also run with the other's score precision, so a difference is put down to the depth or to the
rounding. Prints a Markdown table (nDCG@10, Recall@100, MRR@10 to 4 decimals); its column "today's way" is
the bench's own computation, so it must equal "today's bench" (a check of this script).

    python experiments/bench_reproduction_check.py INDEX CORPUS OLD/results.json NEW/results.json
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

MEASURES = ("nDCG@10", "R@100", "RR@10")


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, float]]:
    """``bm25+keytok --fusion zscore --weight bm25=1 ...`` -> (system, fusion, weights)."""
    words = shlex.split(spec)
    system, fusion, weights = words[0], None, {}
    for flag, value in zip(words[1::2], words[2::2], strict=True):
        if flag == "--fusion":
            fusion = value
        else:
            part, _, w = value.partition("=")
            weights[part] = float(w)
    return system, fusion, weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", help="the index folder of the new bench")
    p.add_argument("corpus", help="the BEIR folder")
    p.add_argument("old", type=Path, help="results.json of the pre-redesign bench")
    p.add_argument("new", type=Path, help="results.json of today's bench")
    p.add_argument("--depth", type=int, default=100)
    args = p.parse_args(argv)

    from keytok.engines.fusion import fuse
    from keytok.evaluation.bench import _load_queries
    from keytok.evaluation.metrics import evaluate
    from keytok.pipeline.searcher import Searcher

    _, qrels, queries = _load_queries(args.corpus, "test")
    old = {r["system"]: r["quality"] for r in json.loads(args.old.read_text())["rows"]}
    new_rows = json.loads(args.new.read_text())["rows"]
    searcher = Searcher(args.index, reuse_query_rows=True)
    searcher.query_embeddings(list(queries.values()))  # one batch, as the bench encodes it
    part_runs: dict[tuple[str, int], dict] = {}

    def part_run(part: str, k: int) -> dict[str, dict[str, float]]:
        if (part, k) not in part_runs:
            hits = searcher.search_batch(queries, k, backend=part)
            part_runs[part, k] = {q: {h.doc_id: h.score for h in hs} for q, hs in hits.items()}
        return part_runs[part, k]

    def run_of(spec: str, k: int) -> dict[str, dict[str, float]]:
        system, fusion, weights = parse_spec(spec)
        parts = searcher.resolve_system(system)
        if len(parts) == 1:
            return part_run(parts[0], k)
        runs = [part_run(part, k) for part in parts]
        return fuse(runs, fusion, [weights[part] for part in parts], depth=args.depth)

    def rounded(run: dict) -> dict:
        return {q: {d: float(f"{s:.6f}") for d, s in hits.items()} for q, hits in run.items()}

    ways = {
        "old bench": None,
        "old way (depth+1, raw)": lambda s: run_of(s, args.depth + 1),
        "old way, 6 decimals": lambda s: rounded(run_of(s, args.depth + 1)),
        "today's way, raw": lambda s: run_of(s, args.depth),
        "today's way (depth, 6 decimals)": lambda s: rounded(run_of(s, args.depth)),
        "today's bench": None,
    }
    head = ["system"] + [f"{m} {w}" for m in MEASURES for w in ways]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in new_rows:
        found = {w: evaluate(f(row["spec"]), qrels) for w, f in ways.items() if f is not None}
        found["old bench"], found["today's bench"] = old.get(row["system"], {}), row["quality"]
        cells = [f"`{row['spec'].split()[0]}`"]
        for m in MEASURES:
            cells += [f"{found[w][m]:.4f}" if m in found[w] else "—" for w in ways]
        print("| " + " | ".join(cells) + " |", flush=True)
    searcher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
