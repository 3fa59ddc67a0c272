"""``keytok export``: write an index's key-token vectors in a format other engines import."""

from __future__ import annotations

import argparse

from keytok.cli.common import cli_flags, info, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``keytok export`` on the top-level subcommands."""
    from keytok.interop.export import FORMATS

    p = sub.add_parser(
        "export",
        help="export an index's key-token vectors (Anserini, CIFF, OpenSearch, safetensors)",
        description="Write the native sparse index's integer key-token vectors in another engine's format: "
        + "; ".join(f"{name}: {what}" for name, what in FORMATS.items())
        + ". Terms are t<token id>, as in keytok's Lucene index; weights are the integer impacts. The output "
        "is written atomically.",
    )
    p.add_argument("path", metavar="INDEX", help="a keytok index folder (or a native sparse index folder)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="the format to write")
    p.add_argument("--out", required=True, metavar="PATH", help="the file or folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PATH")
    p.add_argument(
        "--shards", type=int, default=None, help="anserini-jsonvector: files to split into (default: 1)"
    )
    p.add_argument("--index-name", default=None, help="opensearch: target index name (default: keytok)")
    p.add_argument("--field", default=None, help="opensearch: rank_features field (default: key_tokens)")
    p.add_argument(
        "--docs-per-file", type=int, default=None, help="opensearch: documents per bulk file (default: 10000)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


@cli_flags()
def run(args: argparse.Namespace) -> int:
    """Run ``keytok export``: :func:`keytok.interop.export_index` with the options given."""
    from keytok.interop.export import export_index

    options = {
        k: v
        for k, v in {
            "shards": args.shards,
            "index_name": args.index_name,
            "field": args.field,
            "docs_per_file": args.docs_per_file,
        }.items()
        if v is not None
    }
    info(f"exporting {args.path} as {args.format} to {args.out}")
    summary = export_index(args.path, args.format, args.out, overwrite=args.overwrite, **options)
    if args.json:
        print_json(summary.as_dict())
    else:
        print(summary.line())
    return 0
