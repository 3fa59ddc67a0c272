"""BeLLM-style training on CPU (``keytok train``) against the untrained baselines of the same model.

Stages (results accumulate in ``experiments/results/train_bellm.json``; ``train_bellm.md`` is rewritten from
all rows after each stage, each row with the command that produced it):

* ``baseline``: STS-B test Spearman x 100 of the base model with PromptEOL (and any other ``--methods``);
* ``train``: runs ``keytok train`` with ``--train-args`` (the same command again resumes or, when finished,
  only re-exports), then scores the checkpoint with its recorded method on the same sets.

    python experiments/train_bellm.py baseline --methods prompteol,bellm
    python experiments/train_bellm.py train --name sts --checkpoint results/train/bellm-sts \\
        --train-args "--pairs STSB-train --triplets SICK-train --limit 1000 --train-layers 2 --epochs 2 --max-length 64"

STS scores come from :func:`keytok.evaluation.sts.sts_spearman` (cosine, each unique sentence encoded once).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _common import command, run_script, write_text

from keytok.data.sts import load_sts
from keytok.encoding.encoder import Encoder
from keytok.evaluation.sts import sts_spearman
from keytok.models.loading import load_model

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sts"
RESULTS = HERE / "results"


def command_line(argv: list[str] | None) -> str:
    return command(__file__, argv)


def score(encoder: Encoder, sets: list[str]) -> dict[str, float]:
    out = {}
    for name in sets:
        started = time.perf_counter()
        out[name] = round(sts_spearman(encoder, load_sts(name, DATA)), 2)
        print(
            f"  {name}: {out[name]:.2f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True
        )
    return out


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_rows(path: Path, rows: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        r
        for r in rows
        if (r["model"], r["method"], r["label"]) != (new["model"], new["method"], new["label"])
    ]
    rows.append(new)
    write_text(path, json.dumps(rows, indent=2, ensure_ascii=False))  # each row holds its command
    return rows


def render(rows: list[dict[str, Any]], sets: list[str]) -> str:
    names = sorted({s for r in rows for s in r["scores"]}, key=lambda s: (s not in sets, s))
    lines = [
        "# BeLLM-style training on CPU (`keytok train`) vs untrained methods of the same model",
        "",
        "Spearman x 100 of cosine similarity (`keytok.evaluation.sts.sts_spearman`), full test sets.",
        "",
        "| model | method | what | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = " | ".join(f"{r['scores'][n]:.2f}" if n in r["scores"] else "" for n in names)
        lines.append(f"| {r['model']} | {r['method_name']} | {r['label']} | {cells} |")
    lines += ["", "## Runs", ""]
    for r in rows:
        lines.append(f"- **{r['label']}** ({r['model']}, {r['method_name']}): `{r['command']}`")
        for extra in r.get("training", []):
            lines.append(f"  - {extra}")
    lines.append("")
    return "\n".join(lines)


def training_notes(folder: Path) -> list[str]:
    rec = json.loads((folder / "keytok.json").read_text())
    t = rec["training"]
    hist = rec["loss_history"]
    first = sum(h["loss"] for h in hist[:10]) / max(1, len(hist[:10]))
    last = sum(h["loss"] for h in hist[-10:]) / max(1, len(hist[-10:]))
    data = ", ".join(f"{d['source']} ({d['kind']}, {d['examples']:,})" for d in rec["data"])
    return [
        f"training command: `keytok train {rec.get('command', '')}`" if rec.get("command") else "",
        f"data: {data}",
        f"trained layers {rec['trained_layers']} + final norm "
        f"({'LoRA r=' + str(t['lora_rank']) if t['lora_rank'] else 'full'}, {rec['trainable_parameters']:,} "
        f"parameters), bidirectional layers {rec['bidirectional_layers']}, {rec['steps']} steps of "
        f"{t['batch_size']}, lr {t['lr']}, {rec['device']}",
        f"time: {rec['seconds']['total'] / 60:.1f} min wall in all, of which the frozen-layer cache "
        + (
            f"{rec['seconds']['frozen_cache'] / 60:.1f} min ({rec['frozen_cache']})"
            if rec["seconds"]["frozen_cache"]
            else f"0 (reused from a run over the same texts: {rec['frozen_cache']})"
        ),
        f"loss: mean of the first 10 steps {first:.3f}, of the last 10 steps {last:.3f}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=["baseline", "train"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="prompteol", help="baseline: methods to score")
    p.add_argument("--sets", default="STSB-test", help="STS sets to score (comma-separated)")
    p.add_argument("--name", default="sts", help="train: label of the run")
    p.add_argument("--checkpoint", default="results/train/bellm-sts", help="train: --out of keytok train")
    p.add_argument("--train-args", default="", help="train: the arguments of keytok train (without --out)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", default=str(RESULTS / "train_bellm.json"))
    args = p.parse_args(argv)
    sets = args.sets.split(",")
    cmd = command_line(argv)
    json_path = Path(args.json)
    rows = load_rows(json_path)

    if args.stage == "baseline":
        loaded = load_model(args.model)
        for method in args.methods.split(","):
            enc = Encoder(loaded, method, dtype=args.dtype)
            print(f"{args.model} / {enc.method.describe()}", file=sys.stderr)
            row = {
                "model": args.model,
                "method": enc.method.key(),
                "method_name": enc.method.describe(),
                "label": "untrained",
                "scores": score(enc, sets),
                "command": cmd,
            }
            rows = save_rows(json_path, rows, row)
            write_text(json_path.with_suffix(".md"), render(rows, sets))
    else:
        from keytok.cli.main import main as keytok

        train_args = [*shlex.split(args.train_args), "--model", args.model, "--out", args.checkpoint]
        if keytok(["train", *train_args]) != 0:
            return 1
        folder = Path(args.checkpoint)
        rec = json.loads((folder / "keytok.json").read_text())
        rec["command"] = shlex.join(train_args)
        write_text(folder / "keytok.json", json.dumps(rec, indent=2, ensure_ascii=False))
        enc = Encoder(str(folder), dtype=args.dtype)  # the recorded method
        print(f"{folder} / {enc.method.describe()}", file=sys.stderr)
        row = {
            "model": args.model,
            "method": enc.method.key(),
            "method_name": enc.method.describe(),
            "label": f"trained: {args.name}",
            "scores": score(enc, sets),
            "command": cmd,
            "training": [n for n in training_notes(folder) if n],
        }
        rows = save_rows(json_path, rows, row)
        write_text(json_path.with_suffix(".md"), render(rows, sets))
    print(render(rows, sets))
    return 0


if __name__ == "__main__":
    run_script(main)
