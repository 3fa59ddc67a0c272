"""keytok's encoder on a GPU against the same encoder on the machine's CPU cores, in one run.

Every row encodes documents of one BEIR corpus with :class:`keytok.encoding.encoder.Encoder` (its defaults:
length-sorted token-budget batches, the PromptEOL prompt, last-token pooling): the CPU row on a sample
(all cores, fp32: the in-run baseline), the GPU rows on the whole corpus at fp32 and bf16. Each GPU row
also gives its agreement with the CPU embeddings of the sample (min cosine) and the overlap of the top-10
key tokens (projection through the LM head on the GPU against the CPU's), which checks the GPU paths of
the encoder and of the projection, not only their speed.

    python experiments/bench_gpu.py --corpus ../shared/data/beir/scifact --out experiments/results/bench_gpu.md

Needs a CUDA device; on a machine without one it stops with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import command, run_script, write_json, write_npz, write_page

from keytok.data.beir import load_corpus, load_queries, resolve_beir
from keytok.encoding.encoder import Encoder
from keytok.errors import KeytokError

HERE = Path(__file__).resolve().parent


def _timed_encode(enc: Encoder, texts: list[str]) -> tuple[np.ndarray, float, int]:
    """Embeddings, wall seconds and real tokens of one encode call (the GPU synchronised at both ends)."""
    cuda = enc.precision.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    emb = enc.encode(texts, show_progress=False)
    if cuda:
        torch.cuda.synchronize()
    return emb, time.perf_counter() - t0, enc.last_stats.tokens


def _top10(enc: Encoder, emb: np.ndarray) -> list[set[int]]:
    """Top-10 token ids of ``lm_head(e)`` for each row, computed on the encoder's device."""
    head = enc.model.model.get_output_embeddings()
    with torch.no_grad():
        x = torch.from_numpy(emb).to(device=head.weight.device, dtype=head.weight.dtype)
        ids = head(x).float().topk(10, dim=-1).indices.cpu().numpy()
    return [set(map(int, row)) for row in ids]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name, .gguf file or model folder")
    p.add_argument("--corpus", required=True, help="a BEIR folder")
    p.add_argument("--docs", type=int, default=None, help="the first N documents (default: all)")
    p.add_argument("--cpu-docs", type=int, default=128, help="documents of the CPU baseline and the checks")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtypes", default="fp32,bf16", help="GPU precisions to time, comma-separated")
    p.add_argument(
        "--save-embeddings", default=None, help="write the GPU fp32 corpus and query embeddings here"
    )
    p.add_argument("--device", default="cuda", help="the accelerator's device (cpu: a dry run of the script)")
    p.add_argument("--out", default=str(HERE / "results" / "bench_gpu.md"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KeytokError("bench_gpu needs a CUDA device; torch sees none")

    root = resolve_beir(args.corpus).root
    # Documents without text are not run through the model (their row is all zeros in an index build).
    docs = [d for d in load_corpus(root, on_empty="skip")][: args.docs]
    ids = [d.id for d in docs]
    texts = [d.full_text for d in docs]
    sample = texts[: args.cpu_docs]
    threads = len(os.sched_getaffinity(0))
    cpu = Encoder(args.model, dtype="fp32", device="cpu", threads=threads, max_length=args.max_length)
    cpu.encode(sample[:8], show_progress=False)  # warm-up
    cpu_emb, cpu_s, cpu_tokens = _timed_encode(cpu, sample)
    cpu_top = _top10(cpu, cpu_emb)
    rows = [
        {"device": f"cpu ({threads} cores)", "precision": "fp32", "docs": len(sample), "tokens": cpu_tokens,
         "seconds": cpu_s, "tokens_per_s": cpu_tokens / cpu_s, "min_cos": 1.0, "top10_overlap": 1.0}
    ]  # fmt: skip
    del cpu
    on_gpu = args.device == "cuda"
    gpu_name = torch.cuda.get_device_name(0) if on_gpu else args.device
    saved = None
    for dtype in args.dtypes.split(","):
        enc = Encoder(args.model, dtype=dtype, device=args.device, max_length=args.max_length)
        enc.encode(texts[:64], show_progress=False)  # warm-up: kernels, allocator, a compile if any
        emb, secs, tokens = _timed_encode(enc, texts)
        check = emb[: len(sample)]
        top = _top10(enc, check)
        overlap = float(np.mean([len(a & b) / 10 for a, b in zip(top, cpu_top, strict=True)]))
        rows.append(
            {"device": gpu_name, "precision": enc.precision.describe(), "docs": len(texts), "tokens": tokens,
             "seconds": secs, "tokens_per_s": tokens / secs, "min_cos": float(_cosines(check, cpu_emb).min()),
             "top10_overlap": overlap,
             "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else 0.0}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        if dtype == "fp32" and args.save_embeddings:
            queries = load_queries(root)
            q_emb = enc.encode(list(queries.values()), show_progress=False)
            saved = Path(args.save_embeddings)
            write_npz(saved / f"{root.name}_corpus.npz", ids=np.array(ids), emb=emb)
            write_npz(saved / f"{root.name}_queries.npz", ids=np.array(list(queries)), emb=q_emb)
        del enc
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    base = rows[0]["tokens_per_s"]
    lines = [
        f"# keytok's encoder on a GPU: {args.model}, {root.name}, PromptEOL, max {args.max_length} tokens",
        "",
        f"GPU: {gpu_name}; torch {torch.__version__}. CPU baseline: the same encoder, fp32, {threads} cores, "
        f"the first {len(sample)} documents. Agreement columns: the same {len(sample)} documents against the CPU.",
        "",
        "| device | precision | documents | tokens | seconds | tokens/s | × CPU | min cosine to CPU | top-10 key tokens shared with CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['precision']} | {r['docs']:,} | {r['tokens']:,} | {r['seconds']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.1f} | {r['min_cos']:.5f} | {r['top10_overlap']:.3f} |"
        )
    write_page(args.out, lines, __file__, argv)
    write_json(Path(args.out).with_suffix(".json"), {"rows": rows}, command(__file__, argv))
    return 0


if __name__ == "__main__":
    run_script(main)
