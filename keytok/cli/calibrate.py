"""``keytok calibrate``: fit the first-principal-component adjustment and save it."""

from __future__ import annotations

import argparse

from keytok.cli.common import add_model_options, info, model_from_args, read_texts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit the PC1 adjustment of a model+method and save it",
        description="Fit the first-principal-component adjustment on texts. Mode 'add' (the paper's): embed the "
        "texts with --method (the base) and with --embedder-method/--embedder-model (the embedder), take the "
        "uncentred SVD of the base embeddings, and fit h + v1*u1 where v1 = mean((embedder - base) . u1). Mode "
        "'remove': remove the first singular direction of --method's own embeddings. The result is applied with "
        "--calibration to the same model and method only.",
    )
    p.add_argument("input", help="texts: a .txt file (one per line), a .jsonl file or a BEIR folder")
    p.add_argument("--out", required=True, help="output file (.safetensors or .npz)")
    p.add_argument("--mode", choices=["add", "remove"], default="add", help="default: add")
    p.add_argument(
        "--embedder-method", default="prompteol", help="the embedder's method (mode add; default: prompteol)"
    )
    p.add_argument("--embedder-model", default=None, help="the embedder's model (mode add; default: --model)")
    p.add_argument("--strength", type=float, default=1.0, help="scale of the adjustment (default: 1.0)")
    p.add_argument("--limit", type=int, default=2000, help="use the first N texts (default: 2000; 0 = all)")
    p.add_argument("--components", type=int, default=10, help="how many v_j to print (default: 10)")
    add_model_options(p, method_default="mean")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    texts = read_texts(args.input, args.limit or None)
    base = model_from_args(args)
    embedder = None
    if args.mode == "add":
        same_model = args.embedder_model in (None, args.model)
        embedder = model_from_args(
            args, model=base if same_model else args.embedder_model, method=args.embedder_method
        )
    cal = base.calibrate(
        texts,
        mode=args.mode,
        embedder=embedder or args.embedder_method,
        strength=args.strength,
        components=args.components,
        source=str(args.input),
        progress=True,
        report=info,
    )
    path = cal.save(args.out)
    info(f"saved {args.mode} calibration (coefficient {cal.coefficient:+.3f}, |u1|=1, d={cal.dim}) to {path}")
    return 0
