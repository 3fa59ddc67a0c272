"""Encoder throughput: a plain transformers loop against keytok's encoder, in one run.

The plain loop is the first row of issue 7's table: fp32, batches of 16 in corpus order, right
padding, ``AutoTokenizer(..., padding=True, truncation=True)`` and the decoder's last hidden
state, last-token pooled. keytok's encoder runs the same model on the same documents with its
defaults (precision chosen per machine, length-sorted token-budget batches). Both see the
PromptEOL prompt, max 512 tokens.

    python experiments/bench_encode.py --model smollm2-135m --docs 500

Prints tokens/s of both, the speedup, the padding fractions and the achieved FLOP/s
(2 x non-embedding parameters x tokens/s), writes a table under experiments/results/, and ends
with ``speedup: N.NN``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import command, run_script, write_json, write_page

from keytok.data.beir import load_corpus
from keytok.encoding.encoder import Encoder, EncodeStats
from keytok.encoding.precision import cpu_has_fast_bf16
from keytok.models.loading import load_model
from keytok.models.methods import PROMPTEOL_TEMPLATE

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "beir" / "scifact"


def non_embedding_params(model) -> int:
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    emb |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def plain_loop(loaded, texts: list[str], max_length: int, batch_size: int = 16) -> dict:
    tok = loaded.tokenizer
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    real = padded = 0
    started = time.perf_counter()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            prompts = [PROMPTEOL_TEMPLATE.format(text=t) for t in texts[i : i + batch_size]]
            enc = tok(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = loaded.backbone(**enc).last_hidden_state
            last = enc["attention_mask"].sum(1) - 1
            out.append(hidden[torch.arange(hidden.shape[0]), last].float())
            real += int(enc["attention_mask"].sum())
            padded += enc["attention_mask"].numel()
    seconds = time.perf_counter() - started
    return {
        "tokens": real,
        "seconds": seconds,
        "padded": padded,
        "padding": 1 - real / padded,
        "emb": torch.cat(out).numpy(),
    }


def variant_rows(
    model: str, texts: list[str], max_length: int, batch_tokens: int | None, threads: int
) -> list:
    """The encoder under other settings: what the defaults were chosen against."""
    rows = []
    settings = [
        ("eager attention, fp32", {"attn_implementation": "eager"}, "fp32", False),
        ("sdpa, bf16 autocast", {}, "bf16", False),
        ("sdpa, bf16 weights", {"dtype": torch.bfloat16}, "fp32", False),
        ("sdpa, fp32, torch.compile", {}, "fp32", True),
    ]
    for name, load_kwargs, dtype, compiled in settings:
        loaded = load_model(model, **load_kwargs)
        enc = Encoder(
            loaded,
            "prompteol",
            dtype=dtype,
            max_length=max_length,
            batch_tokens=batch_tokens,
            threads=threads,
        )
        if "dtype" in load_kwargs:
            loaded.model.to(
                torch.bfloat16
            )  # the Encoder casts to its precision's weight dtype; undo for this row
        if compiled:
            loaded.model.model = torch.compile(loaded.model.model, dynamic=True)
        try:
            enc.encode(texts[:16])  # warm-up (and compilation)
            c0 = time.process_time()
            enc.encode(texts, show_progress=False)
            cpu = time.process_time() - c0
        except Exception as exc:  # a variant that fails here is reported, not fatal
            print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})", file=sys.stderr)
            continue
        st = enc.last_stats
        rows.append((f"keytok encoder, {name}", st.tokens_per_second, st.padding_fraction, st.tokens / cpu))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="BEIR folder or corpus.jsonl")
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtype", default="auto", help="keytok encoder precision (auto|fp32|bf16|fp16)")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="interleave the two ways over this many slices of the documents (fair under a changing load)",
    )
    p.add_argument("--skip-plain", action="store_true", help="only time keytok's encoder")
    p.add_argument(
        "--variants",
        action="store_true",
        help="also time the alternatives tried for the encoder: eager attention, bf16 autocast, bf16 weights, "
        "torch.compile (same documents, same run)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "bench_encode.md"))
    args = p.parse_args(argv)

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    docs = load_corpus(args.corpus, on_empty="skip")[: args.docs]
    texts = [d.full_text for d in docs]

    loaded = load_model(args.model)
    # The plain loop gets its own copy: keytok's encoder may compile its model's layers (torch.compile).
    plain_model = load_model(args.model) if not args.skip_plain else None
    params = non_embedding_params(loaded.model)
    enc = Encoder(
        loaded,
        "prompteol",
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        threads=threads,
    )
    # Warm-ups, then the two ways interleaved chunk by chunk: on a shared machine the load
    # changes from minute to minute, and interleaving exposes both ways to the same load.
    enc.encode(texts[:16])
    if not args.skip_plain:
        plain_loop(plain_model, texts[:16], args.max_length)
    chunks = [texts[i :: args.rounds] for i in range(args.rounds)]
    plain = {"tokens": 0, "seconds": 0.0, "cpu": 0.0, "padded": 0, "emb": []}
    mine = EncodeStats(precision=enc.precision.describe())
    mine_cpu = 0.0
    embs = []
    for chunk in chunks:
        if not args.skip_plain:
            c0 = time.process_time()
            part = plain_loop(plain_model, chunk, args.max_length)
            plain["cpu"] += time.process_time() - c0
            plain["tokens"] += part["tokens"]
            plain["seconds"] += part["seconds"]
            plain["padded"] += part["padded"]
            plain["emb"].append(part["emb"])
        c0 = time.process_time()
        embs.append(enc.encode(chunk, show_progress=False))
        mine_cpu += time.process_time() - c0
        mine.merge(enc.last_stats)
    order = [i for r in range(args.rounds) for i in range(r, len(texts), args.rounds)]
    emb = np.zeros((len(texts), embs[0].shape[1]), dtype=np.float32)
    emb[order] = np.concatenate(embs)
    rows = []
    if not args.skip_plain:
        plain_emb = np.zeros_like(emb)
        plain_emb[order] = np.concatenate(plain["emb"])
        plain["emb"] = plain_emb
        plain["padding"] = 1 - plain["tokens"] / plain["padded"]
        rows.append(
            (
                "plain loop (fp32, 16/batch, corpus order)",
                plain["tokens"] / plain["seconds"],
                plain["padding"],
                plain["tokens"] / plain["cpu"],
            )
        )
    else:
        plain = None
    st = mine
    rows.append(
        (
            f"keytok encoder ({st.precision}{', torch.compile' if st.compiled else ''}, {enc.batch_tokens} tokens/batch, sorted)",
            st.tokens_per_second,
            st.padding_fraction,
            st.tokens / mine_cpu,
        )
    )

    keytok_tps = st.tokens_per_second
    if args.variants:
        rows += variant_rows(args.model, texts, args.max_length, args.batch_tokens, threads)

    lines = [
        f"# Encoder throughput: {args.model}, {len(texts)} documents of {Path(args.corpus).name}, PromptEOL, "
        f"max {args.max_length} tokens, {threads} threads",
        "",
        f"CPU: {platform.processor() or platform.machine()}, bf16 units: {cpu_has_fast_bf16()}, torch {torch.__version__}",
        "",
        "| way of running the model | real tokens/s (wall) | tokens per CPU-second | padding | achieved GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for name, tps, pad, cpu_tps in rows:
        lines.append(f"| {name} | {tps:,.0f} | {cpu_tps:,.0f} | {pad:.1%} | {2 * params * tps / 1e9:.1f} |")
    speedup = keytok_tps / rows[0][1] if plain else float("nan")
    cpu_speedup = (st.tokens / mine_cpu) / rows[0][3] if plain else float("nan")
    if plain is not None:
        cos = np.sum(plain["emb"] * emb, 1) / (
            np.linalg.norm(plain["emb"], axis=1) * np.linalg.norm(emb, axis=1)
        )
        whole = ~np.asarray(enc.tokenize(texts).truncated)
        cut_mean = cos[~whole].mean() if (~whole).any() else float("nan")
        lines += [
            "",
            f"Embedding agreement with the plain loop on the {int(whole.sum())} untruncated documents: min cosine "
            f"{cos[whole].min():.5f}, mean {cos[whole].mean():.5f} (prompt pieces are tokenised separately). "
            f"On the {int((~whole).sum())} truncated ones the plain loop cuts the prompt's ending off and pools a "
            f"text token instead: mean cosine {cut_mean:.3f}.",
        ]
    lines += [
        "",
        f"Speedup of keytok's encoder over the plain loop: {speedup:.2f}x wall clock, {cpu_speedup:.2f}x per "
        f"CPU-second (the two ways interleaved over {args.rounds} slices; load average at the end: "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}).",
    ]
    write_page(args.out, lines, __file__, argv)
    write_json(
        Path(args.out).with_suffix(".json"),
        {"rows": rows, "speedup": speedup, "cpu_speedup": cpu_speedup},
        command(__file__, argv),
    )
    print(f"speedup: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
