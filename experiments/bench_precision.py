"""Precision against fp32: top-10 key-token agreement and throughput, on the same documents, in one run.

    python experiments/bench_precision.py --docs 1000 --max-length 256

Ways of running the model on the CPU:

* ``fp32``: the reference;
* ``autocast bf16``: fp32 weights and residual stream, matmuls in bf16 (keytok's ``--dtype bf16`` and its
  ``auto`` choice on CPUs with bf16 units);
* ``bf16 weights``: the whole model cast to bf16 (residual stream and norms in bf16 too);
* ``autocast bf16, attention fp32``: autocast, with each layer's attention block (q/k/v/o projections,
  rotary, SDPA) in fp32.

Agreement = mean over documents of |top-10 of fp32 ∩ top-10 of the other| / 10, with the LM head applied
in fp32 to each pooled vector. The ways are interleaved slice by slice so that a changing machine load hits
each alike; throughput is real tokens per second of wall clock and per CPU-second. Writes
experiments/results/bench_precision.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import run_script, write_page

from keytok.data.beir import load_corpus
from keytok.encoding.encoder import Encoder
from keytok.encoding.precision import cpu_flags
from keytok.models.loading import load_model

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "beir" / "scifact"
DEFAULT_WAYS = ("fp32", "autocast bf16", "bf16 weights")


def make_encoder(model: str, way: str, method: str, max_length: int) -> Encoder:
    """``way``: fp32, autocast bf16, bf16 weights, ``autocast bf16, attention fp32`` or
    ``autocast bf16, last N fp32``."""
    loaded = load_model(model)
    enc = Encoder(
        loaded, method, dtype="fp32" if way in ("fp32", "bf16 weights") else "bf16", max_length=max_length
    )
    if way == "bf16 weights":
        loaded.model.to(torch.bfloat16)  # after the Encoder, which casts to its precision's weight dtype
    elif way == "autocast bf16, attention fp32":
        enc.precision = dataclasses.replace(enc.precision, fp32_attention=True)
    elif way.startswith("autocast bf16, last "):
        enc.precision = dataclasses.replace(
            enc.precision, fp32_attention=False, fp32_last=int(way.split()[3])
        )
    elif way == "autocast bf16":
        enc.precision = dataclasses.replace(enc.precision, fp32_attention=False)
    elif way != "fp32":
        raise SystemExit(f"unknown way {way!r}")
    return enc


def top10_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="prompteol")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="BEIR folder or corpus.jsonl")
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4, help="interleave the ways over this many slices")
    p.add_argument(
        "--ways",
        default=",".join(DEFAULT_WAYS),
        help="comma-separated: fp32, autocast bf16, bf16 weights, 'autocast bf16, attention fp32', "
        "'autocast bf16, last N fp32' (fp32 comes first)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "bench_precision.md"))
    args = p.parse_args(argv)

    ways = ["fp32"] + [
        w.strip() for w in re.split(r",(?! last| attention)", args.ways) if w.strip() and w.strip() != "fp32"
    ]
    texts = [d.full_text for d in load_corpus(args.corpus, on_empty="skip")[: args.docs]]
    encoders = {way: make_encoder(args.model, way, args.method, args.max_length) for way in ways}
    for enc in encoders.values():
        enc.encode(texts[:8])  # warm-up
    slices = [list(range(r, len(texts), args.rounds)) for r in range(args.rounds)]
    emb = {way: np.zeros((len(texts), encoders[way].model.hidden_size), np.float32) for way in ways}
    wall = dict.fromkeys(ways, 0.0)
    cpu = dict.fromkeys(ways, 0.0)
    tokens = dict.fromkeys(ways, 0)
    for idx in slices:
        part = [texts[i] for i in idx]
        for way, enc in encoders.items():
            w, c = time.perf_counter(), time.process_time()
            emb[way][idx] = enc.encode(part, show_progress=False)
            wall[way] += time.perf_counter() - w
            cpu[way] += time.process_time() - c
            tokens[way] += enc.last_stats.tokens
        print(f"slice done: {len(part)} documents", file=sys.stderr, flush=True)

    ref = encoders["fp32"]
    top = {way: ref.logits_topk(emb[way], 10)[1] for way in ways}
    lines = [
        f"# Precision against fp32: {args.model}, {args.method}, {len(texts)} documents of "
        f"{Path(args.corpus).name}, max {args.max_length} tokens",
        "",
        "| way | top-10 key-token agreement with fp32 | documents with all 10 equal | min cosine | "
        "tokens/s (wall) | tokens per CPU-second | speed vs fp32 (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    for way in ways:
        agree = top10_agreement(top["fp32"], top[way])
        a, b = emb["fp32"], emb[way]
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        tps = tokens[way] / wall[way]
        lines.append(
            f"| {way} | {agree.mean():.2%} | {(agree == 1).mean():.1%} | {cos.min():.5f} | {tps:,.0f} | "
            f"{tokens[way] / cpu[way]:,.0f} | {tps / (tokens['fp32'] / wall['fp32']):.2f}x |"
        )
    lines += [
        "",
        f"CPU bf16 flags: {', '.join(sorted(f for f in cpu_flags() if 'bf16' in f or 'amx' in f)) or 'none'}; "
        f"torch {torch.__version__}; load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ]
    write_page(args.out, lines, __file__, argv)
    return 0


if __name__ == "__main__":
    run_script(main)
