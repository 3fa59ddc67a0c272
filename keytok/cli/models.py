"""``keytok models``: list the packaged models and prepare (verify + convert) them."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list packaged models, or prepare them (verify sha256, convert GGUF to safetensors)",
        description="Without arguments, list the packaged models and whether each is installed and converted. "
        "'prepare NAME...' verifies each model file against its pinned sha256 and converts it once to "
        "safetensors in the keytok cache, so later commands load it in seconds.",
    )
    p.add_argument("action", nargs="?", choices=["list", "prepare"], default="list")
    p.add_argument("names", nargs="*", help="models to prepare (default: all installed packaged models)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from keytok.cli.common import info
    from keytok.errors import KeytokError
    from keytok.models.loading import _check_conversion, cached_conversion_dir, resolve_model_folder
    from keytok.models.registry import PACKAGED_MODELS

    if args.action == "list":
        for m in PACKAGED_MODELS.values():
            installed = importlib.util.find_spec(m.package) is not None
            converted = _check_conversion(cached_conversion_dir(m.sha256)) is None
            state = (
                "converted" if converted else ("installed" if installed else f"not installed ({m.install})")
            )
            print(f"{m.name:<14} {state:<12} {m.description}")
        return 0
    names = args.names or [m.name for m in PACKAGED_MODELS.values() if importlib.util.find_spec(m.package)]
    for name in names:
        if name not in PACKAGED_MODELS:
            raise KeytokError(f"unknown packaged model '{name}' (choose from {', '.join(PACKAGED_MODELS)})")
        folder, _ = resolve_model_folder(name)
        info(f"{name}: ready at {folder}")
    return 0
