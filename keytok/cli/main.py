"""Entry point of the ``keytok`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from keytok._version import __version__
from keytok.cli import (
    align,
    bench,
    calibrate,
    export,
    export_model,
    index,
    models,
    search,
    serve,
    tokens,
    train,
)
from keytok.errors import KeytokError, KeytokWarning

COMMANDS = (tokens, calibrate, align, models, train, index, search, bench, export, export_model, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keytok",
        description="Key-token analysis and sparse retrieval with LLM embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"keytok {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        # transformers prints load-time warnings that mean nothing to a keytok user.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored on exit: main() may run inside a host program
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args) or 0)
    except KeytokError as exc:
        if args.verbose:
            raise
        print(f"keytok: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout went away (| head): not a fault
        return 0
    except OSError as exc:  # disk full, permission denied, ...: the message names the file
        if args.verbose:
            raise
        message = f"{exc.filename}: {exc.strerror}" if exc.filename is not None and exc.strerror else str(exc)
        print(f"keytok: error: {' '.join(message.split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keytok: interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Input warnings are for the user: one line, no source location."""
    if issubclass(category, KeytokWarning):
        print(f"keytok: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    else:
        print(
            warnings.formatwarning(message, category, filename, lineno, line), end="", file=file or sys.stderr
        )


if __name__ == "__main__":
    raise SystemExit(main())
