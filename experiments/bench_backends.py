"""Every bench row's nDCG@10 with the model in ONNX Runtime (fp32) against torch, on a Cranfield subset.

The subset: the first ``--docs`` documents of the collection, the test queries with at least one judged
document among them, their qrels cut to those documents (a complete BEIR folder, written under ``--work``).
``keytok bench`` runs on it once per backend (``--backend torch`` and ``--backend onnx``: documents and queries
encoded by that backend, each row searched as ``keytok search --model-backend`` runs it). The table gives each
row's nDCG@10 under both and the relative difference; the issue asks for every row within 1 %.

    python experiments/bench_backends.py --docs 300

Ends with ``max relative nDCG@10 difference: N.NNNN``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import command, run_script, write_json, write_page

from keytok.evaluation.bench import run_bench

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = next(
    (p / "shared/data/beir/cranfield" for p in HERE.parents if (p / "shared/data/beir/cranfield").is_dir()),
    HERE.parent.parent / "shared" / "data" / "beir" / "cranfield",
)


def subset(corpus: Path, docs: int, out: Path, split: str = "test") -> tuple[Path, int, int]:
    """The first ``docs`` documents of ``corpus`` with the queries judged on them, as a BEIR folder."""
    lines = (corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:docs]
    kept = {json.loads(line)["_id"] for line in lines}
    qrels = (corpus / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    judged = [row for row in qrels[1:] if row.split("\t")[1] in kept]
    queries = {row.split("\t")[0] for row in judged}
    qlines = [
        q
        for q in (corpus / "queries.jsonl").read_text(encoding="utf-8").splitlines()
        if json.loads(q)["_id"] in queries
    ]
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "queries.jsonl").write_text("\n".join(qlines) + "\n", encoding="utf-8")
    (out / "qrels" / f"{split}.tsv").write_text("\n".join([qrels[0], *judged]) + "\n", encoding="utf-8")
    return out, len(lines), len(qlines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--docs", type=int, default=300)
    p.add_argument("--backends", default="torch,onnx")
    p.add_argument(
        "--work", default="results/bench_backends", help="subset and bench folders (not committed)"
    )
    p.add_argument("--out", default=str(HERE / "results" / "bench_backends_cranfield300.md"))
    args = p.parse_args(argv)

    work = Path(args.work)
    root, n_docs, n_queries = subset(Path(args.corpus), args.docs, work / "corpus")
    results, seconds = {}, {}
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        results[backend] = run_bench(root, work / backend, backend=backend, dtype="fp32", progress=False)
        seconds[backend] = time.perf_counter() - t0
    names = list(results)
    base = names[0]
    rows, worst = [], 0.0
    for i, row in enumerate(results[base].rows):
        scores = [results[b].rows[i].quality["nDCG@10"] for b in names]
        assert all(results[b].rows[i].spec == row.spec for b in names), row.spec
        rel = max(abs(s - scores[0]) / scores[0] if scores[0] else abs(s) for s in scores)
        worst = max(worst, rel)
        rows.append((row.system, scores, rel, [results[b].rows[i].encode_ms for b in names]))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"# Bench rows under each model backend: {Path(args.corpus).name}, first {n_docs} documents, "
        f"{n_queries} judged queries",
        "",
        "Each backend encodes the documents and the queries (keytok bench --backend B, fp32); every row is the run "
        "keytok search --model-backend B writes. Load average at the end: " + load + ".",
        "",
        "| system | " + " | ".join(f"nDCG@10 {b}" for b in names) + " | max relative difference | "
        + " | ".join(f"model ms/query {b}" for b in names) + " |",
        "|---|" + "---|" * (2 * len(names) + 1),
    ]  # fmt: skip
    for system, scores, rel, ms in rows:
        lines.append(
            f"| {system} | "
            + " | ".join(f"{s:.4f}" for s in scores)
            + f" | {rel:.2%} | "
            + " | ".join(f"{m:.1f}" for m in ms)
            + " |"
        )
    lines += [
        "",
        "Bench wall time per backend (build incl. encoding + every row): "
        + ", ".join(f"{b} {s:.0f} s" for b, s in seconds.items())
        + ".",
    ]
    write_page(args.out, lines, __file__, argv)
    write_json(
        Path(args.out).with_suffix(".json"),
        {"rows": rows, "max_relative_difference": worst, "docs": n_docs, "queries": n_queries},
        command(__file__, argv),
    )
    print(f"max relative nDCG@10 difference: {worst:.4f}")
    return 0


if __name__ == "__main__":
    run_script(main)
