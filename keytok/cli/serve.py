"""``keytok serve``: an HTTP API over an index (or a model alone) and a page to look at key tokens and hits."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from keytok.serve.limits import Limits

DEFAULTS = Limits()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an index (search, key tokens, explanations) over HTTP, with a page at /",
        description="Open INDEX once (every file verified), load its model, and answer POST /search, /tokens "
        "and /explain, GET /health and /info, with a page at / and the OpenAPI page at /docs. With --model "
        "and no INDEX, only key tokens (/tokens). Requests that need the model arrive together and share "
        "one forward. Read-only; binds to loopback unless --host says otherwise.",
    )
    p.add_argument("index", nargs="?", default=None, help="an index folder (keytok index build)")
    p.add_argument(
        "--model",
        default=None,
        help="with no INDEX: the model whose key tokens to serve; with INDEX: where its model is now, if it "
        "moved (sha256 checked)",
    )
    p.add_argument(
        "--method", default=None, help="embedding method of --model without INDEX (default: its own)"
    )
    p.add_argument("--dtype", default=None, help="precision of the model (default: the index's, else auto)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    g = p.add_argument_group("limits of one request")
    g.add_argument(
        "--max-k", type=int, default=DEFAULTS.max_k, help=f"hits or key tokens (default: {DEFAULTS.max_k})"
    )
    g.add_argument(
        "--max-query-chars",
        type=int,
        default=DEFAULTS.max_query_chars,
        help=f"characters of a query or text (default: {DEFAULTS.max_query_chars})",
    )
    g.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULTS.max_body_bytes,
        help=f"bytes of a request body (default: {DEFAULTS.max_body_bytes})",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULTS.max_batch,
        help=f"texts in a request, and in one model forward; 1 gives each request its own forward "
        f"(default: {DEFAULTS.max_batch})",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULTS.batch_wait_ms,
        help=f"how long a forward waits for more requests to join it (default: {DEFAULTS.batch_wait_ms:g})",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keytok.errors import KeytokError

    if args.index is None and args.model is None:
        raise KeytokError("keytok serve needs an INDEX folder, or --model MODEL to serve key tokens only")
    if not 0 <= args.port <= 65535:
        raise KeytokError(f"--port must lie in [0, 65535], got {args.port}")
    try:
        import uvicorn

        from keytok.serve import create_app
    except ImportError as exc:
        raise KeytokError(
            f"keytok serve needs the serve extra (pip install 'keytok[serve]'): {exc}"
        ) from None
    limits = Limits(
        max_k=args.max_k,
        max_query_chars=args.max_query_chars,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )
    sock = _bind(args.host, args.port)  # first: a taken port is reported before minutes of loading
    from keytok.serve import memory

    memory.settle()  # a small fixed JVM young generation: memory that does not climb under load
    try:
        app = create_app(*_open(args), limits)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    what = args.index if args.index is not None else f"key tokens of {args.model}"
    print(f"keytok: serving {what} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    if not _loopback(host):
        print(f"keytok: warning: {host} is reachable from other machines; keytok serve has no authentication",
              file=sys.stderr, flush=True)  # fmt: skip
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _open(args: argparse.Namespace) -> tuple:
    """(retriever, model) for create_app: the index opened and verified, or the model alone."""
    from keytok.api import KeyTokenModel, Retriever

    if args.index is not None:
        retriever = Retriever.open(args.index, model=args.model, dtype=args.dtype, verify=True)
        return retriever, None
    return None, KeyTokenModel(args.model, args.method, dtype=args.dtype or "auto")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before the server runs so that the address printed is real."""
    from keytok.errors import KeytokError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise KeytokError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
