"""Instructions and relatedness: how an instruction changes a text's key tokens, and "I like apple" vs
"I dislike apple" (key-token paper, "other uses shown").

Two families of embedding methods, each with and without an instruction:

* mean pooling over the text's own tokens: ``mean`` (no instruction) and ``instruct`` (GritLM-style: the
  instruction precedes the text and is excluded from the mean, so it acts only through causal attention);
* last-token pooling after a one-word prompt: ``prompteol`` (no instruction) and ``instruct-eol``
  (``{instruction}\\nThis sentence : "{text}" means in one word:"``, the instruction in front of PromptEOL).

For a few reviews and news sentences the script lists the top-10 key tokens under each variant, marking those
that are not in the same family's uninstructed list, and counts polar sentiment words among them (a small fixed
lexicon, below). For sentence pairs that differ in polarity ("I like apple" / "I dislike apple"), paraphrases and
unrelated controls it gives the cosine of the two embeddings and the key tokens the two do not share.

    python experiments/instructions.py --models smollm2-135m,gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import command as script_command
from _common import run_script, write_json, write_text

from keytok.encoding.encoder import Encoder
from keytok.errors import KeytokError
from keytok.models.loading import load_model
from keytok.models.methods import PROMPTEOL_TEMPLATE, EmbeddingMethod, get_method
from keytok.representations.projection import KeyToken, key_tokens

HERE = Path(__file__).resolve().parent

SENTIMENT = "Retrieve the sentiment of this review"
TOPIC = "Retrieve the topic of this text"

TEXTS: list[tuple[str, str]] = [
    ("review", "The battery died after two days and customer support never answered my emails."),
    ("review", "This blender is fantastic: silky soups in seconds and it is easy to clean."),
    ("review", "The hotel room was spotless and the staff were lovely, but breakfast was cold."),
    ("review", "Worst pizza I have ever ordered, soggy crust and almost no cheese."),
    ("news", "The central bank raised interest rates by half a percentage point on Tuesday."),
    ("news", "The striker scored twice as the home team won the cup final."),
    ("news", "Heavy rain flooded roads across the city and closed several schools."),
]

PAIRS: list[tuple[str, str, str]] = [
    ("polarity", "I like apple", "I dislike apple"),
    ("polarity", "The movie was great", "The movie was terrible"),
    ("polarity", "I love this phone", "I hate this phone"),
    ("paraphrase", "I like apple", "I enjoy eating apples"),
    ("paraphrase", "The movie was great", "The film was excellent"),
    ("unrelated", "I like apple", "The train leaves at noon"),
    ("unrelated", "The movie was great", "Interest rates rose on Tuesday"),
]

# Polar sentiment words (lower-case, without the leading-space marker), for a rough count only.
SENTIMENT_WORDS = frozenset(
    [
        "good",
        "great",
        "bad",
        "terrible",
        "awful",
        "excellent",
        "amazing",
        "awesome",
        "love",
        "loved",
        "loving",
        "hate",
        "hated",
        "like",
        "liked",
        "dislike",
        "disliked",
        "happy",
        "sad",
        "angry",
        "disappointed",
        "disappointing",
        "disappointment",
        "positive",
        "negative",
        "best",
        "worst",
        "wonderful",
        "horrible",
        "poor",
        "nice",
        "perfect",
        "fantastic",
        "lovely",
        "pleased",
        "satisfied",
        "unhappy",
        "useless",
        "recommend",
        "enjoy",
        "enjoyed",
        "boring",
        "excited",
        "exciting",
        "fun",
        "beautiful",
        "ugly",
        "fail",
        "failed",
        "failure",
        "frustrating",
        "frustrated",
        "annoyed",
        "annoying",
        "joy",
        "pleasure",
        "delight",
        "delighted",
        "superb",
        "brilliant",
        "disgusting",
        "nasty",
        "pathetic",
        "rubbish",
        "crap",
        "sucks",
        "okay",
        "ok",
        "fine",
        "mediocre",
        "satisfying",
        "unsatisfied",
        "upset",
        "glad",
        "thrilled",
        "wow",
        "yuck",
        "yummy",
        "delicious",
        "tasty",
        "bland",
        "gross",
    ]
)


FUNCTION_WORDS = frozenset({"the", "of", "this", "a", "an", "to", "in"})


@dataclass(frozen=True)
class Variant:
    """One embedding method with or without an instruction, and the uninstructed variant it is compared to."""

    label: str
    method: EmbeddingMethod
    reference: str  # label of the same family's uninstructed variant
    instruction: str = ""


def variants() -> list[Variant]:
    """The six variants: two families x (none, sentiment, topic)."""
    eol = "{instruction}\n" + PROMPTEOL_TEMPLATE
    out = [
        Variant("mean", get_method("mean"), "mean"),
        Variant("instruct: sentiment", get_method("instruct", instruction=SENTIMENT), "mean", SENTIMENT),
        Variant("instruct: topic", get_method("instruct", instruction=TOPIC), "mean", TOPIC),
        Variant("prompteol", get_method("prompteol"), "prompteol"),
    ]
    for name, instr in (("sentiment", SENTIMENT), ("topic", TOPIC)):
        m = EmbeddingMethod("instruct-eol", template=eol, pooling="last", instruction=instr)
        out.append(Variant(f"instruct-eol: {name}", m, "prompteol", instr))
    return out


def word(t: KeyToken) -> str:
    """The token as a bare lower-case word (leading-space marker and surrounding punctuation dropped)."""
    return t.text.strip().strip(".,:;!?\"'").lower()


def cell(t: KeyToken, bold: bool) -> str:
    """A token for a Markdown table cell: code-quoted, '|' escaped, bold when it is new."""
    shown = t.display.replace("|", "\\|").replace("`", "'")
    return f"**`{shown}`**" if bold else f"`{shown}`"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def run_model(model_name: str, dtype: str, threads: int | None, k: int) -> dict[str, Any]:
    """Key tokens of every text and pair sentence under every variant, and the pairs' cosines."""
    loaded = load_model(model_name)
    texts = [t for _, t in TEXTS]
    pair_texts = list(dict.fromkeys(s for _, a, b in PAIRS for s in (a, b)))
    result: dict[str, Any] = {"model": model_name, "variants": {}}
    for v in variants():
        t0 = time.perf_counter()
        enc = Encoder(loaded, v.method, dtype=dtype, threads=threads)
        emb = enc.encode(texts + pair_texts, show_progress=False)
        toks = key_tokens(enc, texts + pair_texts, k=k, embeddings=emb)
        by_text = dict(zip(texts + pair_texts, toks, strict=True))
        vec = dict(zip(texts + pair_texts, emb, strict=True))
        result["variants"][v.label] = {
            "method": v.method.describe(),
            "template": v.method.template,
            "tokens": {t: [x.as_dict() for x in by_text[t]] for t in texts + pair_texts},
            "pairs": [
                {"kind": kind, "a": a, "b": b, "cosine": cosine(vec[a], vec[b])} for kind, a, b in PAIRS
            ],
        }
        print(f"  {model_name} {v.label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return result


def _tokens(data: dict[str, Any], label: str, text: str) -> list[KeyToken]:
    fields = ("rank", "token_id", "token", "text", "score", "in_input", "special")
    return [KeyToken(**{f: d[f] for f in fields}) for d in data["variants"][label]["tokens"][text]]


def render(results: list[dict[str, Any]], command: str, k: int) -> tuple[str, dict[str, Any]]:
    """The Markdown page and the summary figures it quotes."""
    vs = variants()
    summary: dict[str, Any] = {}
    lines = [
        "# Instructions and relatedness: key tokens under different instructions",
        "",
        f"Top-{k} key tokens (LM-head projection of the embedding, raw logits). Variants, two families:",
        "",
        "| variant | prompt | pooling | compared with |",
        "|---|---|---|---|",
    ]
    for v in vs:
        prompt = v.method.template.replace("{instruction}", v.instruction).replace("\n", "⏎")
        lines.append(f"| {v.label} | `{prompt}` | {v.method.pooling} | {v.reference} |")
    lines += [
        "",
        "**Bold** = not among the top-10 of the same family's variant without instruction (`mean` or "
        "`prompteol`); ✓ = the token occurs in the text. `▁` marks a leading space.",
        "",
    ]
    for res in results:
        model = res["model"]
        s = summary.setdefault(model, {})
        lines += [f"## {model}", "", "### Key tokens of each text", ""]
        polar: dict[str, list[int]] = {v.label: [] for v in vs}
        changed: dict[str, list[int]] = {v.label: [] for v in vs}
        echo: dict[str, list[int]] = {v.label: [] for v in vs}
        for kind, text in TEXTS:
            lines += [f"*{kind}*: {text}", "", "| variant | key tokens | new | polar |", "|---|---|---|---|"]
            for v in vs:
                toks = _tokens(res, v.label, text)
                ref = {t.token_id for t in _tokens(res, v.reference, text)}
                instr_words = {w.strip(".,").lower() for w in v.instruction.split()} - FUNCTION_WORDS
                new = [t for t in toks if t.token_id not in ref]
                n_polar = sum(word(t) in SENTIMENT_WORDS for t in toks)
                if kind == "review":
                    polar[v.label].append(n_polar)
                changed[v.label].append(len(new))
                echo[v.label].append(sum(word(t) in instr_words for t in toks))
                shown = " ".join(cell(t, t.token_id not in ref) + ("✓" if t.in_input else "") for t in toks)
                lines.append(f"| {v.label} | {shown} | {len(new)} | {n_polar} |")
            lines.append("")
        pair_rows = []
        for v in vs:
            cos = [p["cosine"] for p in res["variants"][v.label]["pairs"]]
            pair_rows.append(f"| {v.label} | " + " | ".join(f"{c:.3f}" for c in cos) + " |")
            by_kind: dict[str, list[float]] = {}
            for (kind, _, _), c in zip(PAIRS, cos, strict=True):
                by_kind.setdefault(kind, []).append(c)
            polar_pairs = [
                sum(word(t) in SENTIMENT_WORDS for t in _tokens(res, v.label, sent))
                for kind, a, b in PAIRS
                if kind == "polarity"
                for sent in (a, b)
            ]
            s[v.label] = {
                "new": float(np.mean(changed[v.label])),
                "polar_reviews": float(np.mean(polar[v.label])),
                "polar_pairs": float(np.mean(polar_pairs)),
                "echo": float(np.mean(echo[v.label])),
                "pair_cosine": {kk: float(np.mean(c)) for kk, c in by_kind.items()},
            }
        lines += [
            "### Summary",
            "",
            "new = key tokens not in the family's uninstructed top-10 (mean over the texts above); polar = polar "
            "sentiment words (a fixed list of whole words; word pieces such as `ter` or `aw` are not counted) in "
            "the top-10, mean over the reviews and over the six polarity-pair sentences; echo = content words of "
            "the instruction itself among the key tokens; cos = mean cosine of the pairs of each kind below.",
            "",
            "| variant | new of 10 | polar (reviews) | polar (pair sentences) | echo | cos polarity | cos paraphrase "
            "| cos unrelated |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in vs:
            r = s[v.label]
            pc = r["pair_cosine"]
            lines.append(
                f"| {v.label} | {r['new']:.1f} | {r['polar_reviews']:.2f} | {r['polar_pairs']:.2f} | {r['echo']:.1f} "
                f"| {pc['polarity']:.3f} | {pc['paraphrase']:.3f} | {pc['unrelated']:.3f} |"
            )
        lines += [
            "",
            "### Pairs: cosine and the key tokens they do not share",
            "",
            "| variant | " + " | ".join(f"{a} / {b} ({kind})" for kind, a, b in PAIRS) + " |",
            "|---|" + "---|" * len(PAIRS),
            *pair_rows,
        ]
        lines += ["", "Key tokens of the polarity pairs (tokens only one side has in **bold**):", ""]
        lines += ["| variant | sentence | key tokens |", "|---|---|---|"]
        for kind, a, b in PAIRS:
            if kind != "polarity":
                continue
            for v in vs:
                ta, tb = _tokens(res, v.label, a), _tokens(res, v.label, b)
                ia, ib = {t.token_id for t in ta}, {t.token_id for t in tb}
                for sent, toks, other in ((a, ta, ib), (b, tb, ia)):
                    shown = " ".join(cell(t, t.token_id not in other) for t in toks)
                    lines.append(f"| {v.label} | {sent} | {shown} |")
        lines.append("")
    lines += [
        "## Command",
        "",
        f"`{command}`",
        "",
    ]
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma-separated model names")
    p.add_argument("--k", type=int, default=10, help="key tokens per text (default: 10)")
    p.add_argument("--dtype", default="auto", help="precision: auto, fp32, bf16, fp16 (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the encoder's default)")
    p.add_argument(
        "--out", default=str(HERE / "results" / "instructions.md"), help="Markdown page (JSON beside it)"
    )
    p.add_argument(
        "--notes", default="", help="a Markdown file whose text is inserted after the title (the reading)"
    )
    p.add_argument(
        "--from-json",
        default="",
        help="re-render the page from an earlier run's JSON (no model runs; keeps that run's command)",
    )
    args = p.parse_args(argv)
    command = script_command(__file__, argv)
    if args.from_json:
        try:
            earlier = json.loads(Path(args.from_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KeytokError(f"{args.from_json}: cannot read the earlier run ({exc})") from None
        results = earlier["results"]
        command = earlier["command"]
        shown = f"{command}` (page re-rendered with `{script_command(__file__, argv)}"
    else:
        results = []
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"{model}:", file=sys.stderr)
            results.append(run_model(model, args.dtype, args.threads or None, args.k))
        shown = command
    page, summary = render(results, shown, args.k)
    if args.notes:
        notes = Path(args.notes).read_text().strip()
        title, _, rest = page.partition("\n\n")
        page = f"{title}\n\n{notes}\n\n{rest}"
    out = write_text(args.out, page)
    write_json(out.with_suffix(".json"), {"summary": summary, "results": results}, command, indent=1)
    print(page)
    return 0


if __name__ == "__main__":
    run_script(main)
