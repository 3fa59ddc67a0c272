"""Top-10 key tokens of everyday texts, the untrained base against the shipped default, as a Markdown table.

Also the share of *filler* tokens among them (function words, punctuation, whitespace, single characters:
:attr:`keytok.representations.projection.KeyToken.filler`) and how many of each text's content words reach its top 10.

    python experiments/key_tokens_table.py --out experiments/results/default_model_tokens.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from _common import EVERYDAY_TEXTS, run_script

from keytok import KeyTokenModel
from keytok.models.registry import DEFAULT_BASE_MODEL, DEFAULT_MODEL


def content_words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1 and w not in ENGLISH_STOP_WORDS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=[DEFAULT_BASE_MODEL, DEFAULT_MODEL])
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    models = {name: KeyTokenModel(name) for name in args.models}
    rows = [
        "| text | " + " | ".join(f"top {args.k}, {n} ({m.method.name})" for n, m in models.items()) + " |"
    ]
    rows.append("|---" * (len(models) + 1) + "|")
    filler = dict.fromkeys(models, 0)
    covered = {n: [] for n in models}
    for text in EVERYDAY_TEXTS:
        cells = []
        for name, model in models.items():
            tokens = model.key_tokens(text, k=args.k)
            filler[name] += sum(t.filler for t in tokens)
            found = {t.text.strip().lower() for t in tokens}
            covered[name].append(len(content_words(text) & found))
            cells.append(" ".join(t.display.replace("|", "\\|") for t in tokens))
        rows.append(f"| {text} | " + " | ".join(cells) + " |")
    total = args.k * len(EVERYDAY_TEXTS)
    rows.append("")
    for name in models:
        two = sum(c >= 2 for c in covered[name])
        rows.append(
            f"- {name}: filler tokens {filler[name]}/{total} ({filler[name] / total:.0%}); "
            f"texts with two or more of their content words in the top {args.k}: {two}/{len(EVERYDAY_TEXTS)}"
        )
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    run_script(main)
