"""Options shared by several commands, and the helpers that turn them into objects."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from keytok.encoding.backends import BACKENDS
from keytok.encoding.precision import DTYPE_CHOICES
from keytok.errors import KeytokError
from keytok.models.methods import DEFAULT_METHOD, PRESETS
from keytok.models.registry import DEFAULT_MODEL, MODEL_NAMES


def add_sts_root(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--sts-root: the folder of the STS data sets, else ``$KEYTOK_STS_ROOT`` (no default in or outside the package)."""
    from keytok.data.sts import STS_ROOT_ENV

    p.add_argument(
        "--sts-root",
        default=None,
        metavar="DIR",
        help=f"folder of the STS data sets (default: ${STS_ROOT_ENV})",
    )


def add_model_options(p: argparse.ArgumentParser, method_default: str | None = None) -> None:
    """--model, --method and the encoder's knobs."""
    g = p.add_argument_group("model and embedding method")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"packaged name ({', '.join(MODEL_NAMES)}), a preset ('keytok models recipes'), a .gguf file, a model "
        "folder or a hub id "
        f"(default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--method",
        default=method_default,
        help=f"embedding method: {', '.join(PRESETS)}, optionally with options, e.g. 'mean:bidirectional=2' "
        f"(default: {method_default or 'a keytok train checkpoint’s own method, else ' + DEFAULT_METHOD})",
    )
    g.add_argument(
        "--bidirectional", type=int, default=None, metavar="K", help="make the last K layers bidirectional"
    )
    g.add_argument("--instruction", default=None, help="instruction text for instruction-prefixed methods")
    g.add_argument("--template", default=None, help="prompt template with {text} (overrides the method's)")
    g.add_argument(
        "--pooling", default=None, choices=["mean", "weighted_mean", "last"], help="pooling override"
    )
    g.add_argument("--head", default=None, metavar="MODEL", help="take the LM head from another base model")
    g.add_argument(
        "--dtype",
        "--precision",
        default="auto",
        choices=DTYPE_CHOICES,
        help="precision (default: auto, per machine)",
    )
    g.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="where the model runs: torch, or its exported graph in ONNX Runtime (onnx, onnx-int8: int8 "
        "weights); needs keytok[onnx] (default: auto, per machine)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--max-length", type=int, default=512, help="tokens per text incl. prompt (default: 512)")
    g.add_argument(
        "--batch-tokens", type=int, default=None, help="token budget per batch (default: per device)"
    )


def add_sparse_options(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """-K, -M, --transform, --center, --expansion-weight, --query-mode: the fields of a
    :class:`~keytok.representations.sparse.SparseConfig`, with its defaults."""
    from keytok.representations.sparse import QUERY_MODES, TRANSFORMS, SparseConfig

    d = SparseConfig()
    g.add_argument("-K", type=int, default=d.k_doc, help=f"key tokens per document (default: {d.k_doc})")
    g.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default=d.transform,
        help=f"weight transform (default: {d.transform})",
    )
    g.add_argument(
        "--center",
        type=float,
        default=d.center,
        metavar="ALPHA",
        help=f"subtract ALPHA x the corpus mean embedding before projection (default: {d.center})",
    )
    g.add_argument(
        "-M", type=int, default=d.m_query, help=f"expansion tokens per query (default: {d.m_query})"
    )
    g.add_argument(
        "--expansion-weight",
        type=float,
        default=d.expansion_weight,
        help=f"weight of expansion tokens against the query's own (default: {d.expansion_weight})",
    )
    g.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=d.query_mode,
        help=f"default query mode recorded in the index (default: {d.query_mode})",
    )


def sparse_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~keytok.representations.sparse.SparseConfig` of :func:`add_sparse_options`' options."""
    from keytok.representations.sparse import SparseConfig

    with cli_flags(K="-K", M="-M"):
        return SparseConfig(
            k_doc=args.K,
            m_query=args.M,
            transform=args.transform,
            center=args.center,
            query_mode=args.query_mode,
            expansion_weight=args.expansion_weight,
        )


@contextlib.contextmanager
def cli_flags(**flags: str) -> Iterator[None]:
    """Translate the argument names in a library error into this command's flags.

    Library errors name arguments as Python spells them (``pass overwrite=True``, ``train_layers must
    be >= 1``); inside this block a :class:`KeytokError` is re-raised with ``overwrite=True`` read as
    ``--overwrite`` and each ``name`` of ``flags`` as its flag (``cli_flags(train_layers="--train-layers")``).
    """
    try:
        yield
    except KeytokError as exc:
        message = re.sub(r"\b([a-z][a-z_]*)=True\b", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        for name, flag in flags.items():
            message = re.sub(rf"(?<![\w-]){re.escape(name)}\b", flag, message)
        raise KeytokError(message) from None


def method_from_args(args: argparse.Namespace, method: str | None = None) -> Any:
    """The method the options describe, for :func:`keytok.models.methods.resolve_method`: the named one with
    the option overrides; without --method, the overrides alone (applied to the model's own method) or None."""
    from keytok.models.methods import get_method

    spec = method or args.method
    overrides = {
        k: v
        for k, v in (
            ("bidirectional", args.bidirectional),
            ("instruction", args.instruction),
            ("template", args.template),
            ("pooling", args.pooling),
        )
        if v is not None
    }
    if spec is None:
        return overrides or None
    return get_method(spec, **overrides)


def model_from_args(
    args: argparse.Namespace, model: Any = None, method: str | None = None, calibration: str | None = None
) -> Any:
    """The :class:`keytok.KeyTokenModel` the options describe (``model`` may be another KeyTokenModel, whose
    weights are shared); ``calibration``: a calibration file to apply before projection."""
    from keytok.api import KeyTokenModel

    return KeyTokenModel(
        model or args.model,
        method_from_args(args, method),
        dtype=args.dtype,
        device=args.device,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        head=args.head,
        calibration=calibration,
        backend=getattr(args, "backend", "auto"),
    )


def read_texts(source: str, limit: int | None = None) -> list[str]:
    """Texts from a .txt/.jsonl file or a BEIR folder; '-' reads lines from standard input."""
    if source == "-":
        from keytok.data.contract import decode_lines

        texts = [line.strip() for _, line in decode_lines(sys.stdin.buffer, "standard input") if line.strip()]
        if not texts:
            raise KeytokError("standard input: no texts")
    else:
        from keytok.data.texts import load_texts

        texts = load_texts(source, skip_empty=True)
    return texts[:limit] if limit else texts


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def info(message: str) -> None:
    """Progress and summaries go to stderr, so stdout stays machine-readable."""
    print(message, file=sys.stderr)
