"""STS benchmark: Spearman x 100 of cosine similarity per model x embedding method on STS12-16, STS-B, SICK-R.

The table of the BeLLM paper (and SimCSE/SentEval): STS12..STS16 with the subsets of a year concatenated
("all" setting), STS-B test and SICK-R test, and their plain average. The models here are untrained embedders
(a base or instruct LM with a prompt and a pooling), so the figures measure the methods zero-shot.

Every unique sentence of the chosen sets is encoded once per model x method. Results accumulate across runs in
``experiments/results/sts.json`` (one row per model x method x limit, each with the command that produced it);
``sts.md`` is rewritten from all rows after every finished model x method, so a long run can be followed and
an interrupted one keeps what it finished.

    python experiments/sts.py --models smollm2-135m --methods prompteol,mean,last
    python experiments/sts.py --models gemma3-270m --methods prompteol --limit 500   # quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import command as script_command
from _common import run_script

from keytok.data.sts import STS_BENCHMARKS, STSPair, load_sts
from keytok.encoding.encoder import Encoder, EncodeStats, pad_batch, plan_batches, pool_hidden
from keytok.errors import KeytokError
from keytok.evaluation.sts import sample_pairs, sts_scores, unique_sentences
from keytok.models.loading import load_model
from keytok.models.methods import get_method
from keytok.utils.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sts"

LABELS = {"STSB-test": "STS-B", "SICK-R-test": "SICK-R"}

# BeLLM (Li & Li, NAACL 2024), LLaMA-2-7B trained with AnglE on NLI: the published figures, for scale.
BELLM_PAPER = {
    "STS12": 78.36,
    "STS13": 90.88,
    "STS14": 86.28,
    "STS15": 89.89,
    "STS16": 86.59,
    "STSB-test": 88.89,
    "SICK-R-test": 83.17,
}


def label(name: str) -> str:
    """Column header of a set name (``STSB-test`` -> ``STS-B``)."""
    return LABELS.get(name, name)


def load_sets(names: list[str], root: Path, limit: int | None) -> dict[str, list[STSPair]]:
    """The pairs of each set, sampled down to ``limit`` per set when given."""
    return {name: sample_pairs(load_sts(name, root), limit) for name in names}


def forward_key(enc: Encoder) -> tuple:
    """What decides the forward pass of a method: methods with equal keys differ only in pooling."""
    m = enc.method
    return (m.template, m.instruction, m.bidirectional, m.append_eos, enc.max_length)


@torch.inference_mode()
def encode_shared(
    encoders: list[Encoder], texts: list[str], desc: str
) -> tuple[list[np.ndarray], EncodeStats]:
    """Embeddings of ``texts`` under several methods that share one forward pass (same prompt, same attention).

    Only the pooling differs, so the model runs once and each method pools the same last hidden states. The
    Encoder's own batching, padding (right, explicit positions) and precision are used; the result is checked
    against ``Encoder.encode`` on a few texts before it is trusted.
    """
    from tqdm.auto import tqdm

    from keytok.models.bidirectional import BidirectionalLayers

    base = encoders[0]
    if len({forward_key(e) for e in encoders}) != 1:
        raise KeytokError("encode_shared: the methods differ in more than their pooling")
    started = time.perf_counter()
    tokenized = base.tokenize(texts)
    lengths = [len(x) for x in tokenized.ids]
    outs = [np.zeros((len(texts), base.model.hidden_size), dtype=np.float32) for _ in encoders]
    stats = EncodeStats(
        texts=len(texts), precision=base.precision.describe(), truncated=sum(tokenized.truncated)
    )
    dev = base.precision.device
    with tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc=desc) as bar:
        for batch in plan_batches(lengths, base.batch_tokens):
            ids = [tokenized.ids[i] for i in batch]
            spans = [tokenized.text_spans[i] for i in batch]
            input_ids, mask, positions = pad_batch(ids, base.pad_id)
            bidir = base.method.bidirectional
            hooks = BidirectionalLayers(base.model.model, bidir) if bidir else None
            try:
                with base.precision.autocast():
                    out = base.model.backbone(
                        input_ids=input_ids.to(dev),
                        attention_mask=mask.to(dev),
                        position_ids=positions.to(dev),
                        use_cache=False,
                    )
            finally:
                if hooks is not None:
                    hooks.remove()
            hidden = out.last_hidden_state.cpu()
            for enc, dest in zip(encoders, outs, strict=True):
                m = enc.method
                dest[batch] = pool_hidden(
                    hidden, mask, m.pooling, spans if m.pool_text_only else None
                ).numpy()
            real = sum(len(x) for x in ids)
            stats.tokens += real
            stats.padded_tokens += input_ids.numel()
            stats.batches += 1
            bar.update(real)
    stats.seconds = time.perf_counter() - started
    probe = texts[:: max(1, len(texts) // 16)][:16]
    for enc, emb in zip(encoders, outs, strict=True):
        ref = enc.encode(probe, show_progress=False)
        got = emb[[texts.index(t) for t in probe]]
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        if cos.min() < 0.999:
            raise KeytokError(
                f"shared forward pass disagrees with Encoder.encode for {enc.method.name} (cosine {cos.min():.4f})"
            )
    return outs, stats


class Precomputed:
    """Embeddings computed ahead, served through ``encode`` (what :func:`sts_scores` calls)."""

    def __init__(self, texts: list[str], embeddings: np.ndarray, stats: EncodeStats) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.embeddings = embeddings
        self.last_stats = stats

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return self.embeddings[[self.row[t] for t in texts]]


def embed_group(
    encoders: list[Encoder],
    texts: list[str],
    desc: str,
    checkpoint: Path | None = None,
    chunk: int = 4000,
) -> tuple[list[np.ndarray], EncodeStats]:
    """Embeddings of ``texts`` for each encoder (one shared forward pass when there are several).

    With ``checkpoint`` the texts are encoded in chunks and each chunk's embeddings are saved there, named by a
    hash of the model, the methods, the settings and the chunk's texts: a run that is stopped resumes where it
    stopped, and a finished chunk is never encoded twice.
    """
    import hashlib

    stats = EncodeStats(texts=len(texts), precision=encoders[0].precision.describe())
    parts: list[list[np.ndarray]] = [[] for _ in encoders]
    size = chunk if checkpoint is not None else max(1, len(texts))
    for start in range(0, len(texts), size):
        piece = texts[start : start + size]
        path = None
        if checkpoint is not None:
            h = hashlib.sha256()
            first = encoders[0]
            for item in (first.model.fingerprint, first.precision.describe(), str(first.max_length)):
                h.update(item.encode() + b"\0")
            for enc in encoders:
                h.update(enc.method.key().encode() + b"\0")
            h.update("\n".join(piece).encode())
            path = checkpoint / f"{h.hexdigest()[:24]}.npy"
            if path.is_file():
                saved = np.load(path)
                if saved.shape[:2] == (len(encoders), len(piece)):
                    for dest, emb in zip(parts, saved, strict=True):
                        dest.append(emb)
                    print(f"  {desc}: texts {start}..{start + len(piece)} from {path}", file=sys.stderr)
                    continue
        part_desc = f"{desc} [{start}:{start + len(piece)}/{len(texts)}]" if size < len(texts) else desc
        if len(encoders) > 1:
            embs, part_stats = encode_shared(encoders, piece, part_desc)
        else:
            embs = [encoders[0].encode(piece, show_progress=True, desc=part_desc)]
            part_stats = encoders[0].last_stats
        stats.merge(part_stats)
        stats.texts = len(texts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, np.stack(embs))
            tmp.replace(path)
        for dest, emb in zip(parts, embs, strict=True):
            dest.append(emb)
    return [np.concatenate(p) for p in parts], stats


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (row["model"], row["method"], int(row.get("limit") or 0))


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KeytokError(f"{path}: not valid JSON ({exc.msg}); delete it or pass --fresh") from None
    return list(data.get("rows", []))


METHOD_ORDER = ("prompteol", "mean", "wmean", "last", "bellm", "instruct", "bidir")


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by model (first seen first), method preset order, full sets before samples."""
    models = list(dict.fromkeys(r["model"] for r in rows))

    def key(r: dict[str, Any]) -> tuple:
        base = r["method"].split(":")[0]
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return (
            models.index(r["model"]),
            int(r.get("limit") or 0) != 0,
            rank,
            r["method"],
            int(r.get("limit") or 0),
        )

    return sorted(rows, key=key)


def render(rows: list[dict[str, Any]], sets: list[str]) -> str:
    """The Markdown page: one table of Spearman x 100, the commands, the encoding figures."""
    rows = sort_rows(rows)
    head = [label(s) for s in sets]
    lines = [
        "# STS: Spearman × 100 of cosine similarity (zero-shot embedders)",
        "",
        "Spearman rank correlation × 100 between the cosine similarity of the two sentences' embeddings and the "
        "gold score. STS12–16: every scored pair of every subset of the year in one list (SimCSE's *all* "
        "setting); STS-B and SICK-R: the test splits (SICK-R = relatedness score). avg = plain mean of the "
        "columns. No model here is trained for similarity: these are the embedding methods applied to the "
        "packaged language models as they are. Produced by `experiments/sts.py`.",
        "",
        "| model | method | " + " | ".join(head) + " | avg | pairs per set |",
        "|---|---|" + "---|" * len(head) + "---|---|",
    ]
    for row in rows:
        scores = row["scores"]
        cells = [f"{scores[s]:.2f}" if s in scores else "–" for s in sets]
        have = [scores[s] for s in sets if s in scores]
        avg = f"{sum(have) / len(have):.2f}" if len(have) == len(sets) else "–"
        n = "all" if not row.get("limit") else f"{row['limit']} sampled"
        lines.append(f"| {row['model']} | {row['method']} | " + " | ".join(cells) + f" | {avg} | {n} |")
    ref = [f"{BELLM_PAPER[s]:.2f}" if s in BELLM_PAPER else "–" for s in sets]
    if all(s in BELLM_PAPER for s in sets):
        ref_avg = f"{sum(BELLM_PAPER[s] for s in sets) / len(sets):.2f}"
    else:
        ref_avg = "–"
    lines.append(
        "| *BeLLM paper: LLaMA-2-7B, trained (AnglE, NLI)* | *bellm* | "
        + " | ".join(ref)
        + f" | {ref_avg} | all |"
    )
    lines += [
        "",
        "## Runs",
        "",
        "| model | method | sentences | tokens | seconds | tokens/s | precision | command |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in rows:
        st = row.get("stats", {})
        shared = st.get("shared_forward_with")
        note = f" (one forward pass for {' + '.join(shared)})" if shared else ""
        lines.append(
            f"| {row['model']} | {row['method_spec']}{note} | {row['sentences']:,} | {st.get('tokens', 0):,} | "
            f"{st.get('seconds', 0):,.0f} | {st.get('tokens_per_second', 0):,.0f} | {st.get('precision', '')} | "
            f"`{row['command']}` |"
        )
    lines.append("")
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], sets: list[str], md: Path, js: Path) -> None:
    """Write the JSON rows and the Markdown page; ``<name>.notes.md`` beside it, if present, follows the table."""
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(js, json.dumps({"sets": sets, "rows": rows}, indent=1) + "\n")
    page = render(rows, sets)
    notes = md.with_suffix(".notes.md")
    if notes.is_file():
        table, sep, runs = page.partition("\n## Runs\n")
        page = f"{table}\n{notes.read_text().strip()}\n{sep}{runs}"
    atomic_write_text(md, page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models", default="smollm2-135m", help="comma-separated model names (default: smollm2-135m)"
    )
    p.add_argument(
        "--methods",
        default="prompteol",
        help="comma-separated method specs; use ';' between specs that contain commas (default: prompteol)",
    )
    p.add_argument(
        "--sets",
        default=",".join(STS_BENCHMARKS),
        help=f"comma-separated STS set names as load_sts takes them (default: {','.join(STS_BENCHMARKS)})",
    )
    p.add_argument(
        "--limit", type=int, default=0, help="at most this many pairs per set, seeded sample (0: all)"
    )
    p.add_argument("--data", default=str(DATA), help=f"STS data folder (default: {DATA})")
    p.add_argument("--dtype", default="auto", help="precision: auto, fp32, bf16, fp16 (default: auto)")
    p.add_argument("--max-length", type=int, default=512, help="longest text in tokens (default: 512)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: the encoder's default, all cores); 1 is faster on a machine shared with "
        "other CPU-bound processes, where more threads than free cores stall on each other",
    )
    p.add_argument("--out", default=str(HERE / "results" / "sts.md"), help="Markdown table (JSON beside it)")
    p.add_argument(
        "--share-forward",
        action="store_true",
        help="methods that differ only in pooling (mean, last, wmean) share one forward pass; checked against "
        "Encoder.encode on a few sentences",
    )
    p.add_argument(
        "--checkpoint",
        default="",
        help="folder for embeddings saved every 4,000 sentences, so a stopped run resumes (default: none)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the Markdown from the JSON rows (and notes), run nothing",
    )
    p.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs instead of merging")
    args = p.parse_args(argv)

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    spec_sep = ";" if ";" in args.methods else ","
    methods = [m.strip() for m in args.methods.split(spec_sep) if m.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # fail early on a bad spec
    md = Path(args.out)
    js = md.with_suffix(".json")
    command = script_command(__file__, argv)

    if args.render_only:
        rows = load_rows(js)
        write_outputs(rows, list(dict.fromkeys(s for r in rows for s in r["sets"])) or sets, md, js)
        print(md.read_text())
        return 0
    pairs = load_sets(sets, Path(args.data), args.limit or None)
    n_sent = len({s for ps in pairs.values() for s in unique_sentences(ps)})
    print(
        f"sets: {', '.join(f'{label(k)} {len(v)}' for k, v in pairs.items())} pairs; {n_sent:,} distinct sentences",
        file=sys.stderr,
    )
    if args.fresh:
        write_outputs([], sets, md, js)
    for model_name in models:
        t0 = time.perf_counter()
        loaded = load_model(model_name)
        print(f"{model_name}: loaded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        encoders = {
            spec: Encoder(
                loaded, spec, dtype=args.dtype, max_length=args.max_length, threads=args.threads or None
            )
            for spec in methods
        }
        precomputed: dict[str, Precomputed] = {}
        shared_with: dict[str, list[str]] = {}
        groups: dict[Any, list[str]] = {}
        for spec, enc in encoders.items():
            groups.setdefault(forward_key(enc) if args.share_forward else spec, []).append(spec)
        texts = list(dict.fromkeys(s for ps in pairs.values() for s in unique_sentences(ps)))
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        for specs in groups.values():
            embs, stats = embed_group(
                [encoders[sp] for sp in specs], texts, f"{model_name} {'+'.join(specs)}", checkpoint
            )
            if len(specs) > 1:
                print(f"  shared forward pass for {', '.join(specs)}: {stats.summary()}", file=sys.stderr)
            for sp, emb in zip(specs, embs, strict=True):
                precomputed[sp] = Precomputed(texts, emb, stats)
                if len(specs) > 1:
                    shared_with[sp] = specs
        for spec in methods:
            enc = encoders[spec]
            source = precomputed[spec]
            result = sts_scores(source, pairs, show_progress=True, desc=f"{model_name} {spec}")
            if spec in shared_with:
                result.stats["shared_forward_with"] = shared_with[spec]
            row = {
                "model": model_name,
                "method": spec,
                "method_spec": enc.method.describe(),
                "limit": args.limit,
                "sets": sets,
                "scores": result.scores,
                "avg": result.average,
                "pairs": result.pairs,
                "sentences": result.sentences,
                "stats": result.stats,
                "command": command,
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            # Re-read before writing: another run (another model, in parallel) may have added rows meanwhile.
            rows = [r for r in load_rows(js) if row_key(r) != row_key(row)] + [row]
            all_sets = list(dict.fromkeys([*sets, *(s for r in rows for s in r["sets"])]))
            write_outputs(rows, all_sets, md, js)
            scores = "  ".join(f"{label(k)} {v:.2f}" for k, v in result.scores.items())
            print(f"{model_name} {spec}: {scores}  avg {result.average:.2f}", file=sys.stderr)
            print(f"  {source.last_stats.summary()}", file=sys.stderr)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    run_script(main)
