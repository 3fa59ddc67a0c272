"""``keytok align``: Hit@K, LAR and GAR of a model+method on a set of texts."""

from __future__ import annotations

import argparse

from keytok.cli.common import add_model_options, add_sts_root, info, model_from_args, print_json, read_texts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="alignment metrics (Hit@K, LAR, GAR) of a method on texts",
        description="Measure how well a method's key tokens align with the texts' own tokens (Nie et al.): "
        "Hit@K = a top-K token occurs in the text; LAR = share of the text's distinct tokens found among the "
        "top-|T| key tokens; GAR = matched tokens over input tokens across the whole set.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", help="texts: a .txt file, a .jsonl file or a BEIR folder")
    src.add_argument(
        "--sts",
        metavar="NAME",
        help="both sentences of an STS set's pairs, e.g. STS12/SMTnews (with --min-score 4: the paper's set)",
    )
    add_sts_root(p)
    p.add_argument("--min-score", type=float, default=None, help="keep STS pairs with gold score above this")
    p.add_argument("--limit", type=int, default=0, help="use the first N texts (0 = all)")
    p.add_argument("-k", "--ks", default="1,5,10", help="Hit@K cut-offs (default: 1,5,10)")
    p.add_argument(
        "--cap", type=int, default=None, help="cap LAR's window at this many tokens (the paper's code: 10)"
    )
    p.add_argument("--calibration", default=None, metavar="FILE", help="apply a fitted PC1 adjustment first")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(p)
    p.set_defaults(run=run)


def sts_texts(name: str, root: str | None, min_score: float | None) -> list[str]:
    from keytok.data.sts import load_sts

    pairs = load_sts(name, root)
    if min_score is not None:
        pairs = [pair for pair in pairs if pair.score > min_score]
    return [s for pair in pairs for s in (pair.s1, pair.s2)]


def run(args: argparse.Namespace) -> int:
    from keytok.analyses.alignment import format_report
    from keytok.errors import KeytokError

    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError as exc:
        raise KeytokError(f"-k/--ks must be comma-separated integers, got {args.ks!r}") from exc
    if args.sts:
        texts = sts_texts(args.sts, args.sts_root, args.min_score)
        texts = texts[: args.limit] if args.limit else texts
    else:
        texts = read_texts(args.input, args.limit or None)
    model = model_from_args(args, calibration=args.calibration)
    report = model.align(texts, ks=ks, cap=args.cap, progress=True)
    if model.last_stats is not None:
        info(model.last_stats.summary())
    calibrated = model.calibration is not None
    if args.json:
        print_json(report | {"model": model.name, "method": model.method.key(), "calibrated": calibrated})
    else:
        print(f"{model.name} / {model.method.describe()}{' + calibration' if calibrated else ''}")
        print(format_report(report))
    return 0
