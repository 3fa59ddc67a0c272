"""SciFact before and after ``keytok train --qrels``: dense and sparse nDCG@10 with ``keytok bench``.

A full SciFact bench encodes 5,183 documents per model (~10 minutes at bf16 on 2 free cores). With
``--docs N`` the benchmark runs on a *sub-corpus* instead: every document judged in the test qrels plus
N - (judged) others drawn at random (seed 0), with all test queries. Scores on a sub-corpus are higher than
on the full collection (fewer distractors); the comparison before/after on the same sub-corpus is what counts.

    python experiments/train_bellm_scifact.py --checkpoint results/train/bellm-scifact --docs 1000 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
from pathlib import Path

from _common import command_line, run_script, write_text

from keytok.cli.main import main as keytok
from keytok.data.beir import load_corpus, load_qrels, load_queries
from keytok.utils.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
SCIFACT = HERE.parent.parent / "shared" / "data" / "beir" / "scifact"


def sub_corpus(src: Path, dest: Path, docs: int, seed: int = 0) -> Path:
    """A BEIR folder with the test-judged documents of ``src`` plus random others, ``docs`` in all."""
    corpus = load_corpus(src, on_empty="keep")
    qrels = load_qrels(src, "test")
    judged = {d for judged in qrels.values() for d in judged}
    others = [d.id for d in corpus if d.id not in judged]
    keep = judged | set(random.Random(seed).sample(others, max(0, min(len(others), docs - len(judged)))))
    dest.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"_id": d.id, "title": d.title, "text": d.text}) for d in corpus if d.id in keep]
    atomic_write_text(dest / "corpus.jsonl", "\n".join(lines) + "\n")
    queries = load_queries(src)
    atomic_write_text(
        dest / "queries.jsonl", "\n".join(json.dumps({"_id": q, "text": queries[q]}) for q in qrels) + "\n"
    )
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, j in qrels.items() for d, g in j.items()]
    atomic_write_text(dest / "qrels" / "test.tsv", "\n".join(rows) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--checkpoint", required=True, help="a keytok train --qrels checkpoint")
    p.add_argument("--method", default="bellm", help="the base model's method (the checkpoint uses its own)")
    p.add_argument("--docs", type=int, default=0, help="sub-corpus size (0: the full corpus)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--kinds", default="sparse,dense,bm25")
    p.add_argument("--work", default="results/train/scifact-bench")
    p.add_argument("--out", default=str(HERE / "results" / "train_bellm_scifact.md"))
    args = p.parse_args(argv)
    work = Path(args.work)
    corpus = sub_corpus(SCIFACT, work / f"scifact-{args.docs}", args.docs) if args.docs else SCIFACT
    runs = {"before (base)": (args.base, args.method), "after (trained)": (args.checkpoint, None)}
    table = {}
    for label, (model, method) in runs.items():
        out = work / label.split()[0]
        cmd = ["bench", str(corpus), "--model", model, "--out", str(out), "--kinds", args.kinds]
        cmd += ["--max-length", str(args.max_length)] + (["--method", method] if method else [])
        if keytok(cmd) != 0:
            return 1
        result = json.loads((out / "results.json").read_text())
        table[label] = (result, "keytok " + shlex.join(cmd))
    systems = [r["system"] for r in next(iter(table.values()))[0]["rows"]]
    lines = [
        "# SciFact test before and after `keytok train --qrels` (BeLLM-style, AnglE in-batch negatives)",
        "",
        f"Corpus: {'the full SciFact corpus' if not args.docs else f'a {args.docs}-document sub-corpus (every test-judged document + random others, seed 0)'}; "
        f"documents cut to {args.max_length} tokens; all test queries.",
        "",
        "| run | model | " + " | ".join(f"{s} nDCG@10" for s in systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for label, (result, _) in table.items():
        q = {r["system"]: r["quality"]["nDCG@10"] for r in result["rows"]}
        lines.append(
            f"| {label} | {result['context']['model']} | "
            + " | ".join(f"{q.get(s, 0):.3f}" for s in systems)
            + " |"
        )
    lines += ["", "Commands:", ""] + [f"- {label}: `{cmd}`" for label, (_, cmd) in table.items()]
    lines += [
        "",
        command_line(__file__, argv),
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
