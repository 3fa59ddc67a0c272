"""``keytok models``: list the packaged models and prepare (verify + convert) them."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list packaged models, or prepare them (verify sha256, convert GGUF, merge trained parameters)",
        description="Without arguments, list the packaged models and whether each is installed and ready. "
        "'recipes' prints the presets of the paper's embedders (and Qwen3-Embedding): each name, given as --model, "
        "resolves embedder, LM-head base, method, template and EOS rule from the Hugging Face cache. "
        "'prepare NAME...' verifies each model file against its pinned sha256 and converts it once to "
        "safetensors in the keytok cache, so later commands load it in seconds; for a trained model shipped "
        "in keytok (smollm2-135m-keytok, the default) it also checks the shipped parameters' sha256 and merges "
        "them into their base. Where search queries run faster in ONNX Runtime (see --query-graph) it exports "
        "the model's graph for them.",
    )
    p.add_argument("action", nargs="?", choices=["list", "prepare", "recipes"], default="list")
    p.add_argument("names", nargs="*", help="models to prepare (default: all installed packaged models)")
    p.add_argument(
        "--query-graph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export each model's ONNX graph for search queries, where they will run in it: ONNX Runtime "
        "installed and a CPU that computes in fp32 (no bf16 units); measured 1.9x faster per query than torch "
        "on such a CPU (default: on)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from keytok.cli.common import info
    from keytok.encoding.graph import prepare_query_graph
    from keytok.errors import KeytokError
    from keytok.models import shipped
    from keytok.models.loading import _check_conversion, cached_conversion_dir, resolve_model_folder
    from keytok.models.registry import MODEL_NAMES, PACKAGED_MODELS, SHIPPED_MODELS

    if args.action == "recipes":
        from keytok.models.recipes import recipe_table

        print(recipe_table())
        return 0
    if args.action == "list":
        for m in SHIPPED_MODELS.values():
            merged = shipped.check_merge(shipped.merged_dir(m), m) is None
            base = PACKAGED_MODELS[m.base]
            state = (
                "ready" if merged else ("installed" if importlib.util.find_spec(base.package) else "no base")
            )
            print(f"{m.name:<20} {state:<12} {m.description}")
        for p in PACKAGED_MODELS.values():
            installed = importlib.util.find_spec(p.package) is not None
            converted = _check_conversion(cached_conversion_dir(p.sha256)) is None
            state = "ready" if converted else ("installed" if installed else f"not installed ({p.install})")
            print(f"{p.name:<20} {state:<12} {p.description}")
        return 0
    names = args.names or [
        name
        for name in MODEL_NAMES
        if importlib.util.find_spec(PACKAGED_MODELS[getattr(SHIPPED_MODELS.get(name), "base", name)].package)
    ]
    for name in names:
        if name not in MODEL_NAMES:
            raise KeytokError(f"unknown packaged model '{name}' (choose from {', '.join(MODEL_NAMES)})")
        folder, _ = resolve_model_folder(name)
        graph = None
        if args.query_graph:
            try:
                graph = prepare_query_graph(name)
            except Exception as exc:  # a speed-up only: queries then run in torch, as they would without it
                why = (str(exc).splitlines() or [""])[0]
                info(f"{name}: no ONNX graph for search queries ({type(exc).__name__}: {why})")
        info(
            f"{name}: ready at {folder}"
            + (f"; search queries run in its ONNX graph {graph}" if graph else "")
        )
    return 0
