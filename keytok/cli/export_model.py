"""``keytok export-model``: a model and its embedding method as a portable ONNX graph folder."""

from __future__ import annotations

import argparse

from keytok.cli.common import DEFAULT_METHOD, info
from keytok.models.methods import PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    from keytok.encoding.graph import DEFAULT_TOP_K, EXPORT_FORMATS

    p = sub.add_parser(
        "export-model",
        help="export a model with its embedding method as an ONNX graph",
        description="Write the encoder as one graph: the model's layers with the method's pooling and final norm "
        "inside (output 'pooled'), and the LM head's top-k logits of that vector as a second output "
        "('top_scores', 'top_ids'). keytok-export.json beside it gives the prompt template, the prompt's token "
        "ids, padding and truncation; the tokenizer's files come along, so another runtime (ONNX Runtime, "
        "onnxruntime-web, ...) reproduces keytok's vectors. Needs pip install 'keytok[onnx]'.",
    )
    p.add_argument("model", help="packaged name, a .gguf file, a model folder or a hub id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced if it exists)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="graph format (default: onnx)")
    p.add_argument(
        "--method",
        default=None,
        help=f"embedding method: {', '.join(PRESETS)}, with options like 'mean:bidirectional=2' "
        f"(default: a keytok train checkpoint's own method, else {DEFAULT_METHOD})",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"LM-head logits in the graph's second output (default: {DEFAULT_TOP_K})",
    )
    p.add_argument("--max-length", type=int, default=512, help="tokens per text incl. prompt (default: 512)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keytok.cli.common import cli_flags
    from keytok.encoding.graph import export_model, read_export_record

    with cli_flags(top_k="--top-k", max_length="--max-length"):
        out = export_model(
            args.model,
            args.out,
            format=args.format,
            method=args.method,
            top_k=args.top_k,
            max_length=args.max_length,
        )
    record = read_export_record(out)
    info(
        f"exported {record['model']} ({record['method_name']}, {record['pooling']} pooling) to {out}/model.onnx: "
        f"inputs {', '.join(record['inputs'])}; outputs pooled [n, {record['hidden_size']}], "
        f"top_scores/top_ids [n, {record['top_k']}]"
    )
    print(out)
    return 0
