"""Alignment of key tokens with the input (Nie et al.): Hit@K, LAR, GAR per model x method,
before and after the first-principal-component adjustment.

Rows per model:
* every method as is;
* every method with its own first singular direction removed ("remove-PC1");
* the base model's pooled states (mean, wmean, last) adjusted with h + v1*u1, where v1 is the mean
  variation along u1 between the base vectors and an embedder's (PromptEOL) on fitting texts:
  the paper's experiment on the models we have.

The adjustment is fitted on other texts than those measured (STS-B train sentences by default).

    python experiments/alignment.py --models smollm2-135m --sets sts12-smtnews,scifact-queries
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import run_script, write_page

from keytok.analyses.alignment import alignment_report
from keytok.analyses.pc1 import fit_pc1_shift, fit_remove_pc1
from keytok.data.beir import load_queries
from keytok.data.sts import load_sts, sts12_smtnews_high
from keytok.encoding.encoder import Encoder
from keytok.models.loading import load_model

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def texts_of(name: str, limit: int) -> list[str]:
    if name == "sts12-smtnews":
        pairs = sts12_smtnews_high(DATA / "sts", 4.0)
        texts = [s for p in pairs for s in (p.s1, p.s2)]
    elif name == "scifact-queries":
        texts = list(load_queries(DATA / "beir" / "scifact").values())
    elif name == "stsb-train":
        texts = sorted({s for p in load_sts("STSB-train", DATA / "sts") for s in (p.s1, p.s2)})
        np.random.default_rng(0).shuffle(texts)
    else:
        raise SystemExit(f"unknown text set {name}")
    return texts[:limit] if limit else texts


def measure(enc: Encoder, texts: list[str], emb: np.ndarray, k_max: int = 10) -> dict:
    inputs = [enc.input_token_ids(t) for t in texts]
    depth = max(k_max, max(len(x) for x in inputs))
    _, ranked = enc.logits_topk(emb, depth)
    return alignment_report(inputs, [list(r) for r in ranked], ks=(1, 10))


class ModelRun:
    """Encoders of one loaded model, with embeddings memoised per (method, text set)."""

    def __init__(self, loaded, dtype: str) -> None:
        self.loaded = loaded
        self.dtype = dtype
        self.encoders: dict[str, Encoder] = {}
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def embed(self, method: str, set_name: str, texts: list[str]) -> np.ndarray:
        if (method, set_name) not in self.cache:
            if method not in self.encoders:
                self.encoders[method] = Encoder(self.loaded, method, dtype=self.dtype)
            t0 = time.perf_counter()
            self.cache[method, set_name] = self.encoders[method].encode(texts)
            print(
                f"  {self.loaded.name} {method} {set_name}: {len(texts)} texts in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
        return self.cache[method, set_name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m")
    p.add_argument("--methods", default="mean,wmean,last,prompteol,bellm")
    p.add_argument("--embedder", default="prompteol", help="method the v1*u1 shift is fitted against")
    p.add_argument("--sets", default="sts12-smtnews,scifact-queries")
    p.add_argument("--fit-texts", default="stsb-train")
    p.add_argument("--fit-limit", type=int, default=2000)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=str(HERE / "results" / "alignment.md"))
    args = p.parse_args(argv)

    sets = {name: texts_of(name, 0) for name in args.sets.split(",")}
    fit_texts = texts_of(args.fit_texts, args.fit_limit)
    rows = []
    for model_name in args.models.split(","):
        loaded = load_model(model_name)
        run = ModelRun(loaded, args.dtype)
        embed = run.embed

        methods = args.methods.split(",")
        fit_target = embed(args.embedder, "fit", fit_texts)
        for method in methods:
            fit_base = embed(method, "fit", fit_texts)
            meta = {"model": loaded.fingerprint, "method": method, "fit_method": args.embedder}
            shift = fit_pc1_shift(fit_base, fit_target, meta) if method != args.embedder else None
            remove = fit_remove_pc1(fit_base, meta | {"fit_method": "self"})
            for set_name, texts in sets.items():
                emb = embed(method, set_name, texts)
                enc = run.encoders[method]
                variants = [("as is", emb), ("remove-PC1", remove.apply(emb))]
                if shift is not None:
                    variants.append(
                        (f"+ v1·u1 vs {args.embedder} (v1={shift.coefficient:+.1f})", shift.apply(emb))
                    )
                for label, vectors in variants:
                    r = measure(enc, texts, vectors)
                    rows.append((model_name, set_name, method, label, r))

    lines = [
        "# Alignment of key tokens with the input text",
        "",
        "Hit@K: a top-K key token occurs in the text's tokens; LAR: share of the text's distinct tokens among the "
        "top-|T| key tokens (window = number of input tokens); GAR: matched / input tokens over the whole set. "
        f"PC1 adjustments fitted on {len(fit_texts)} {args.fit_texts} sentences.",
        "",
        "| model | texts | method | adjustment | n | Hit@1 | Hit@10 | LAR | GAR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model_name, set_name, method, label, r in rows:
        lines.append(
            f"| {model_name} | {set_name} | {method} | {label} | {r['n']} | {r['hit@1']:.3f} | {r['hit@10']:.3f} | "
            f"{r['lar']:.3f} | {r['gar']:.3f} |"
        )
    write_page(args.out, lines, __file__, argv)
    return 0


if __name__ == "__main__":
    run_script(main)
