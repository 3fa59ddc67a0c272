"""``keytok tokens``: the top-k key tokens of a text, and whether they occur in it."""

from __future__ import annotations

import argparse

from keytok.cli.common import add_model_options, info, model_from_args, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokens",
        help="show the top-k key tokens of texts",
        description="Project each text's embedding through the LM head and show its top-k key tokens: rank, "
        "token (▁ marks a word start, [..] a special token), raw logit, and whether the token occurs in the text.",
    )
    p.add_argument("texts", nargs="+", help="one or more texts (quote each)")
    p.add_argument("-k", type=int, default=10, help="how many tokens (default: 10)")
    p.add_argument("--calibration", default=None, metavar="FILE", help="apply a fitted PC1 adjustment first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # keytok -v tokens ... sets it too
        help="also say which model, method, precision and backend encoded the texts (on stderr)",
    )
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keytok.errors import KeytokError
    from keytok.representations.projection import format_table

    if args.k < 1:
        raise KeytokError(f"-k must be at least 1, got {args.k}")
    from keytok.data.contract import check_text

    for i, text in enumerate(args.texts):
        if not text.strip():
            raise KeytokError(f"text {i + 1} is empty")
        check_text(text, f"text {i + 1}", "the command line")
    model = model_from_args(args, calibration=args.calibration)
    results = model.key_tokens(args.texts, k=args.k)
    stats = model.last_stats
    if stats is not None and stats.truncated:
        # said on stderr, so --json output stays parseable: the key tokens describe only the kept start
        info(
            f"note: {stats.truncated} of {stats.texts} texts were cut to --max-length {args.max_length} tokens "
            "(prompt included); their key tokens describe the start of the text only"
        )
    if getattr(args, "verbose", False):
        enc = model.encoder
        info(
            f"model {model.name} (sha256 {enc.model.short_fingerprint}), method {model.method.describe()}, "
            f"backend {enc.backend}: {enc.describe()}"
        )
    if args.json:
        print_json(
            [
                {
                    "text": text,
                    "model": model.name,
                    "method": model.method.name,
                    "calibrated": model.calibration is not None,
                    "tokens": [t.as_dict() for t in toks],
                }
                for text, toks in zip(args.texts, results, strict=True)
            ]
        )
    else:
        print("\n\n".join(format_table(text, toks) for text, toks in zip(args.texts, results, strict=True)))
    return 0
