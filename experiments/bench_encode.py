"""Encoder throughput and query latency: a plain transformers loop, keytok's encoder, and every other way tried.

The plain loop is the first row of issue 7's table: fp32, batches of 16 in corpus order, right
padding, ``AutoTokenizer(..., padding=True, truncation=True)`` and the decoder's last hidden
state, last-token pooled. keytok's encoder runs the same model on the same documents with its
defaults (precision chosen per machine, length-sorted token-budget batches). Both see the
PromptEOL prompt, max 512 tokens.

The other ways (``--ways``) run keytok's encoder with another backend or model:

* ``onnx``: the exported graph (layers, pooling, LM-head top-k) in ONNX Runtime, fp32 (``--backend onnx``);
* ``onnx-int8``: the same graph with int8 weights (MatMulNBits, blocks of 32), fp32 activations;
* ``ort-dynamic-int8``: ONNX Runtime dynamic quantisation (int8 weights per channel *and* int8 activations,
  per tensor, computed with MatMulInteger): the classic CPU int8 path;
* ``torch-dynamic-int8``: ``torch.ao.quantization.quantize_dynamic`` of every nn.Linear (fbgemm);
* ``openvino``: the exported fp32 graph compiled by OpenVINO for the CPU.

    python experiments/bench_encode.py --docs 500

Every way encodes the same documents, interleaved slice by slice (fair under a changing load). For each: real
tokens/s, top-10 key-token agreement with keytok's fp32 torch encoder (mean overlap of the raw LM-head top-10),
min cosine with it, and the model time of one query alone (p50 over ``--queries`` SciFact queries: the text
to its embedding and its top-M expansion logits, a warm encoder). Writes a table under experiments/results/
and ends with three lines for scripts, for the default backend (``--backend auto``):
``speedup: N.NN`` (over the plain loop), ``agreement: 0.NNN``, ``query p50 ms: N.N``.
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

from keytok.data.beir import load_corpus, load_queries
from keytok.encoding.backends import onnx_available
from keytok.encoding.encoder import Encoder, EncodeStats
from keytok.encoding.precision import cpu_flags, cpu_has_fast_bf16
from keytok.models.loading import load_model
from keytok.models.methods import PROMPTEOL_TEMPLATE
from keytok.models.registry import DEFAULT_MODEL

HERE = Path(__file__).resolve().parent
# shared/ sits beside the checkout (a worktree is one level deeper): the first one up the tree
DEFAULT_CORPUS = next(
    (p / "shared/data/beir/scifact" for p in HERE.parents if (p / "shared/data/beir/scifact").is_dir()),
    HERE.parent.parent / "shared" / "data" / "beir" / "scifact",
)


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


WAYS = ("onnx", "onnx-int8", "ort-dynamic-int8", "torch-dynamic-int8", "openvino")


def cpu_name() -> str:
    """The CPU's model name and the vector units that matter here."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    units = [
        u
        for u in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
        if u in cpu_flags()
    ]
    return f"{name}, {len(os.sched_getaffinity(0))} cores, {' '.join(units) or 'no AVX2'}"


class _OrtDynamicInt8:
    """The graph quantised by ``onnxruntime.quantization.quantize_dynamic`` (u8 activations, u8 weights per
    channel: s8 weights saturate on AVX2 without VNNI), put in place of an onnx encoder's session."""

    def __init__(self, enc: Encoder) -> None:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        runner = enc.runner
        out = runner.path.with_name("model.dynamic-int8.onnx")
        if not out.is_file():
            quantize_dynamic(
                str(runner.path),
                str(out),
                weight_type=QuantType.QUInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                extra_options={"MatMulConstBOnly": True},
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        runner.session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])


class _OpenVino:
    """The fp32 graph compiled by OpenVINO, answering like an ONNX Runtime session."""

    def __init__(self, enc: Encoder) -> None:
        import openvino as ov

        runner = enc.runner
        compiled = ov.Core().compile_model(
            str(runner.path),
            "CPU",
            {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"},
        )
        names = [o.get_any_name() for o in compiled.outputs]

        class Session:
            def run(self, _outputs, feeds):
                result = compiled(feeds)
                return [result[compiled.output(n)] for n in names]

        runner.session = Session()


def make_way(way: str, model: str, max_length: int, batch_tokens: int | None, threads: int) -> Encoder:
    """keytok's encoder running ``way`` (see the module doc)."""
    if way == "torch-dynamic-int8":
        loaded = load_model(model)
        # the decoder's linear layers; the LM head stays fp32 as in every other way
        decoder = loaded.model.get_decoder()
        torch.ao.quantization.quantize_dynamic(decoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return Encoder(
            loaded,
            "prompteol",
            dtype="fp32",
            max_length=max_length,
            batch_tokens=batch_tokens,
            threads=threads,
            backend="torch",
        )
    backend = way if way in ("onnx", "onnx-int8") else "onnx"
    enc = Encoder(
        load_model(model),
        "prompteol",
        dtype="fp32",
        max_length=max_length,
        batch_tokens=batch_tokens,
        threads=threads,
        backend=backend,
    )
    if way == "ort-dynamic-int8":
        _OrtDynamicInt8(enc)
    elif way == "openvino":
        _OpenVino(enc)
    return enc


def query_p50_ms(enc: Encoder, queries: list[str], m: int = 128) -> float:
    """Model time of one query alone, p50: its embedding and its top-M expansion logits (warm encoder)."""
    enc.logits_topk(enc.encode(queries[:1], show_progress=False), m)  # warm-up
    times = []
    for q in queries:
        t0 = time.perf_counter()
        enc.logits_topk(enc.encode([q], show_progress=False), m)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def agreement(enc: Encoder, emb: np.ndarray, ref: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean top-``k`` key-token overlap with ``ref``'s, and the min cosine between the embeddings."""
    a, b = enc.logits_topk(emb, k)[1], enc.logits_topk(ref, k)[1]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))
    cos = np.sum(emb * ref, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    return overlap, float(cos.min())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="BEIR folder or corpus.jsonl")
    p.add_argument("--docs", type=int, default=500, help="documents to encode (fewer for a quick run)")
    p.add_argument("--queries", type=int, default=50, help="queries timed one by one for the query p50")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtype", default="auto", help="keytok encoder precision (auto|fp32|bf16|fp16)")
    p.add_argument(
        "--backend",
        default="auto",
        help="keytok encoder backend: the default way (auto|torch|onnx|onnx-int8)",
    )
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument(
        "--rounds", type=int, default=4, help="interleave the ways over this many slices of the documents"
    )
    p.add_argument("--skip-plain", action="store_true", help="no plain loop (no speedup)")
    p.add_argument(
        "--ways",
        default=",".join(WAYS),
        help=f"other ways to time, comma-separated, '' for none (default: {','.join(WAYS)})",
    )
    p.add_argument("--out", default=str(HERE / "results" / "bench_encode.md"))
    args = p.parse_args(argv)

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    docs = load_corpus(args.corpus, on_empty="skip")[: args.docs]
    texts = [d.full_text for d in docs]
    queries = (
        list(load_queries(args.corpus).values())[: args.queries] if Path(args.corpus).is_dir() else texts[:20]
    )
    ways = [w for w in args.ways.split(",") if w]
    for w in ways:
        if w not in WAYS:
            raise SystemExit(f"error: unknown way '{w}' (choose from {', '.join(WAYS)})")
    if not onnx_available():
        skipped = [w for w in ways if w != "torch-dynamic-int8"]
        if skipped:
            print(
                f"onnxruntime/onnx/onnxscript not installed: skipping {', '.join(skipped)}", file=sys.stderr
            )
        ways = [w for w in ways if w not in skipped]

    def encoder(**kw) -> Encoder:
        return Encoder(
            load_model(args.model),
            "prompteol",
            max_length=args.max_length,
            batch_tokens=args.batch_tokens,
            threads=threads,
            **kw,
        )

    default = encoder(dtype=args.dtype, backend=args.backend)
    # the reference of agreement: keytok's torch encoder in fp32 (the default itself where that is the default)
    plain_fp32 = default.backend == "torch" and default.precision.name == "fp32"
    fp32 = default if plain_fp32 else encoder(dtype="fp32", backend="torch")
    plain_model = load_model(args.model) if not args.skip_plain else None
    params = non_embedding_params(fp32.model.model)
    runs: dict[str, Encoder] = {f"keytok encoder, default ({default.describe()})": default}
    if fp32 is not default:
        runs[f"keytok encoder, {fp32.describe()}"] = fp32
    for w in ways:
        try:
            runs[f"keytok encoder, {w} ({'' if w.startswith('torch') else 'graph in '}{w})"] = make_way(
                w, args.model, args.max_length, args.batch_tokens, threads
            )
        except Exception as exc:  # a way that cannot be made here is reported, not fatal
            print(f"{w}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:150]})", file=sys.stderr)
    # Warm-ups, then every way interleaved slice by slice.
    for enc in runs.values():
        enc.encode(texts[:8], show_progress=False)
    if plain_model is not None:
        plain_loop(plain_model, texts[:8], args.max_length)
    chunks = [texts[i :: args.rounds] for i in range(args.rounds)]
    order = [i for r in range(args.rounds) for i in range(r, len(texts), args.rounds)]
    plain = {"tokens": 0, "seconds": 0.0, "padded": 0, "emb": []}
    stats = {name: EncodeStats() for name in runs}
    embs: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for chunk in chunks:
        if plain_model is not None:
            part = plain_loop(plain_model, chunk, args.max_length)
            for key in ("tokens", "seconds", "padded"):
                plain[key] += part[key]
            plain["emb"].append(part["emb"])
        for name, enc in runs.items():
            embs[name].append(enc.encode(chunk, show_progress=False))
            stats[name].merge(enc.last_stats)
    emb = {}
    for name, parts in embs.items():
        emb[name] = np.zeros((len(texts), parts[0].shape[1]), dtype=np.float32)
        emb[name][order] = np.concatenate(parts)
    fp32_name = next(n for n, e in runs.items() if e is fp32)
    rows = []
    plain_tps = plain["tokens"] / plain["seconds"] if plain_model is not None else float("nan")
    if plain_model is not None:
        plain_p50 = float(
            np.median([plain_loop(plain_model, [q], args.max_length)["seconds"] for q in queries]) * 1000
        )
        rows.append(
            (
                "plain loop (fp32, 16/batch, corpus order)",
                plain_tps,
                1 - plain["tokens"] / plain["padded"],
                float("nan"),
                float("nan"),
                plain_p50,
            )
        )
    results = {}
    for name, enc in runs.items():
        overlap, cos = agreement(fp32, emb[name], emb[fp32_name])
        p50 = query_p50_ms(enc, queries)
        st = stats[name]
        results[name] = (st.tokens_per_second, overlap, p50)
        rows.append((name, st.tokens_per_second, st.padding_fraction, overlap, cos, p50))
        print(
            f"{name}: {st.tokens_per_second:,.0f} tokens/s, agreement {overlap:.3f}, query p50 {p50:.1f} ms",
            file=sys.stderr,
            flush=True,
        )

    default_name = next(iter(runs))
    tps, overlap, p50 = results[default_name]
    speedup = tps / plain_tps if plain_model is not None else float("nan")
    lines = [
        f"# Encoder throughput and query latency: {args.model}, {len(texts)} documents of {Path(args.corpus).name}, "
        f"PromptEOL, max {args.max_length} tokens, {threads} threads",
        "",
        f"CPU: {cpu_name()}; bf16 units: {cpu_has_fast_bf16()}; torch {torch.__version__}; "
        f"default backend here: {default.backend} ({default.describe()})",
        "",
        "| way of running the model | real tokens/s (wall) | x plain loop | padding | top-10 agreement with fp32 | "
        "min cosine with fp32 | query p50 ms (model) | achieved GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t, pad, ov, cos, q in rows:
        lines.append(
            f"| {name} | {t:,.0f} | {t / plain_tps:.2f} | {pad:.1%} | {ov:.3f} | {cos:.5f} | {q:.1f} | "
            f"{2 * params * t / 1e9:.1f} |"
        )
    lines += [
        "",
        f"The ways interleaved over {args.rounds} slices of the documents; query p50 over {len(queries)} queries "
        f"encoded alone (embedding + top-128 logits). Load average at the end: "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (on a shared machine compare ratios within one run).",
    ]
    write_page(args.out, lines, __file__, argv)
    write_json(
        Path(args.out).with_suffix(".json"),
        {"cpu": cpu_name(), "rows": rows, "speedup": speedup, "agreement": overlap, "query_p50_ms": p50},
        command(__file__, argv),
    )
    print(f"speedup: {speedup:.2f}")
    print(f"agreement: {overlap:.3f}")
    print(f"query p50 ms: {p50:.1f}")
    return 0


if __name__ == "__main__":
    run_script(main)
