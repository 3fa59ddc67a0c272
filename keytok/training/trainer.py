"""``keytok train``: turn a causal LM into a BeLLM-style embedder on a CPU (or a GPU when there is one).

The recipe (Li & Li, BeLLM, NAACL 2024; AnglE objective) with one change that makes it feasible on two CPU
cores: only the top ``train_layers`` decoder layers and the final norm are trained, fully or with LoRA
(r = 32, α = 32, dropout 0.1). The frozen lower layers give the same output for a text at every step, so
they run once per unique text and are cached (:mod:`keytok.training.frozen`); a step then costs a forward
and backward pass through the top layers only.

* method: the BeLLM prompt ``The representative word for sentence {text} is:"``, last-token pooling, the last
  ``bidirectional`` layers attending both ways (padding masked), as :class:`~keytok.encoding.encoder.Encoder`
  embeds;
* objective: :func:`keytok.training.losses.angle_objective` (cosine/CoSENT τ 20 + in-batch negatives τ 20 +
  angle τ 1, weights 1 / 1 / 0.02);
* batches hold one kind of example each (scored pairs, triplets, query-document pairs); the batches of all
  sources are shuffled together, per epoch, from the seed, so a resumed run replays the same order;
* AdamW, linear warm-up then linear decay, gradient clipping at 1.0.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keytok.encoding.encoder import pool_hidden
from keytok.errors import KeytokError
from keytok.training import checkpoint as ckpt
from keytok.training.data import TrainingSet
from keytok.training.frozen import FrozenCache, SplitDecoder, build_frozen_cache, cache_key
from keytok.training.lora import add_lora, merge_lora
from keytok.training.losses import LossWeights, angle_objective

# Settings that may change between a stopped run and its resumption without invalidating the state.
_RESUMABLE = {"save_every", "log_every", "eval_sts", "device", "dtype", "threads"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in ``keytok.json`` and checked on resume)."""

    model: str = "smollm2-135m"
    method: str = "bellm"
    train_layers: int = 4
    lora_rank: int = 32  # 0: train the top layers fully
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    epochs: float = 1.0
    max_steps: int = 0  # > 0: stop after this many steps whatever epochs says
    batch_size: int = 32
    max_length: int = 128
    grad_clip: float = 1.0
    seed: int = 0
    cache_dtype: str = "bf16"
    dtype: str = "auto"
    device: str | None = None
    threads: int | None = None  # CPU threads (default: every core this process may use)
    save_every: int = 50
    log_every: int = 10
    eval_sts: str | None = None  # e.g. "STSB-dev": Spearman before training and after each epoch
    losses: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        checks = [
            (self.train_layers >= 1, f"--train-layers must be >= 1, got {self.train_layers}"),
            (self.lora_rank >= 0, f"--lora-rank must be >= 0, got {self.lora_rank}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"--warmup must be in [0, 1), got {self.warmup}"),
            (self.epochs > 0 or self.max_steps > 0, "--epochs or --max-steps must be > 0"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (in-batch negatives), got {self.batch_size}"),
            (self.max_length >= 8, f"--max-length must be >= 8, got {self.max_length}"),
            (self.save_every >= 1, f"--save-every must be >= 1, got {self.save_every}"),
            (0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise KeytokError(message)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a run did: steps, timings, the frozen cache and the loss history."""

    out: Path
    steps: int
    total_steps: int
    seconds: float
    cache_seconds: float
    cache: str
    history: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    resumed_from: int = 0
    loaded: Any = None  # the trained LoadedModel (LoRA merged) once the checkpoint is exported


class Embedder:
    """Embed cached texts through the trainable top layers: the training-time twin of the Encoder."""

    def __init__(
        self, split: SplitDecoder, cache: FrozenCache, pooling: str, text_only: bool, precision: Any
    ):
        self.split = split
        self.cache = cache
        self.pooling = pooling
        self.text_only = text_only
        self.precision = precision

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        hidden, pad, spans = self.cache.batch(texts, self.precision.device)
        with self.precision.autocast():
            out = self.split.run(hidden, pad, self.cache.split, self.split.n_layers, final_norm=True)
        return pool_hidden(out, pad, self.pooling, spans if self.text_only else None)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256, **_: Any) -> np.ndarray:
        """[n, d] float32 embeddings (eval mode), for :func:`keytok.evaluation.sts.sts_spearman`."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.split.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self([texts[i] for i in rows]).float().cpu().numpy()
        return out


def plan_steps(
    sets: Sequence[TrainingSet], batch_size: int, epochs: float, max_steps: int, seed: int
) -> list:
    """The run's batches in order: (set index, example indices) per step, reproducible from the seed."""
    per_epoch = sum(len(s) // batch_size + (1 if len(s) % batch_size >= 2 else 0) for s in sets)
    if per_epoch == 0:
        raise KeytokError(f"no batch of 2 or more examples can be formed with --batch-size {batch_size}")
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    steps: list[tuple[int, list[int]]] = []
    epoch = 0
    while len(steps) < total:
        rng = random.Random(seed * 1000 + epoch)
        batches = []
        for k, s in enumerate(sets):
            order = list(range(len(s)))
            rng.shuffle(order)
            for i in range(0, len(order), batch_size):
                chunk = order[i : i + batch_size]
                if len(chunk) >= 2:
                    batches.append((k, chunk))
        rng.shuffle(batches)
        steps.extend(batches)
        epoch += 1
    return steps[:total]


def _lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, round(total * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    sets: Sequence[TrainingSet],
    out: str | os.PathLike[str],
    *,
    sts_root: str | os.PathLike[str] | None = None,
    restart: bool = False,
    log: Callable[[str], None] = _log,
    stop_after: int | None = None,
) -> TrainResult:
    """Train, saving the resumable state every ``save_every`` steps; export the checkpoint at the end.

    A run whose ``out`` already holds a state with the same settings resumes from it (the same command
    run again continues); other settings raise KeytokError unless ``restart``. ``stop_after`` ends the
    call after that many steps without exporting (what an interruption does; used by the tests).
    """
    from keytok.encoding.encoder import Encoder
    from keytok.models.loading import load_model
    from keytok.models.methods import get_method

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KeytokError(f"--out {out} is a file, not a folder")
    if not sets:
        raise KeytokError("no training data: give --pairs, --triplets or --qrels")
    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(config.seed)
    run = {
        "config": {k: v for k, v in config.as_dict().items() if k not in _RESUMABLE},
        "data": [s.describe() for s in sets],
    }
    previous = ckpt.load_run(out)
    if previous is not None and previous != run and not restart:
        changed = sorted(
            k
            for k in set(previous["config"]) | set(run["config"])
            if previous["config"].get(k) != run["config"].get(k)
        ) or ["data"]
        raise KeytokError(
            f"{out} holds a run with other settings ({', '.join(changed)}); resume it with the same ones, "
            "or pass --restart or another --out"
        )
    if restart and ckpt.state_dir(out).exists():
        for f in ckpt.state_dir(out).glob("state.pt"):
            f.unlink()

    loaded = load_model(config.model)
    method = get_method(config.method)
    encoder = Encoder(
        loaded,
        method,
        dtype=config.dtype,
        device=config.device,
        max_length=config.max_length,
        threads=config.threads,
    )
    model = loaded.model
    if encoder.precision.weight_dtype != torch.float32:
        # GPUs embed with half-precision weights; training keeps fp32 master weights under autocast.
        half = encoder.precision.weight_dtype
        model.float()
        encoder.precision = replace(encoder.precision, weight_dtype=torch.float32, autocast_dtype=half)
    encoder.apply_precision()  # training runs the layers as the encoder does (attention fp32 or not)
    precision = encoder.precision
    split_decoder = SplitDecoder(model, method.bidirectional)
    n_layers = split_decoder.n_layers
    if config.train_layers > n_layers:
        raise KeytokError(f"--train-layers {config.train_layers}: the model has {n_layers} decoder layers")
    split = n_layers - config.train_layers
    if method.pooling == "last" and method.bidirectional == 1:
        log(
            "note: under last-token pooling a bidirectional last layer changes nothing; use --bidirectional 2+"
        )

    eval_pairs = []
    if config.eval_sts:
        from keytok.data.sts import load_sts

        if sts_root is None:
            raise KeytokError("--eval-sts needs --sts-root")
        eval_pairs = load_sts(config.eval_sts, sts_root)
    texts = list(
        dict.fromkeys(
            [t for s in sets for t in s.unique_texts()] + [t for p in eval_pairs for t in (p.s1, p.s2)]
        )
    )
    key = cache_key(loaded.fingerprint, method.key(), config.max_length, split, texts)
    cache_file = ckpt.state_dir(out) / f"frozen-{config.cache_dtype}-L{split}.safetensors"
    cache = FrozenCache.load(cache_file, key, texts)
    if cache is None:
        log(
            f"frozen layers 0..{split - 1}: running them once on {len(texts):,} texts ({precision.describe()})"
        )
        cache = build_frozen_cache(encoder, texts, split, config.cache_dtype, show_progress=True)
        cache.save(cache_file)
        log(f"cached {cache.describe()} in {cache.seconds:.0f} s")
    else:
        log(f"frozen-layer cache reused: {cache.describe()}")
    cache_seconds = cache.seconds

    # Trainable part: the top layers (LoRA or full) and the final norm.
    model.requires_grad_(False)
    top = list(split_decoder.decoder.layers)[split:]
    if config.lora_rank:
        params = add_lora(top, config.lora_rank, config.lora_alpha, config.lora_dropout)
    else:
        params = [p for layer in top for p in layer.parameters()]
    norm_params = list(split_decoder.decoder.norm.parameters())
    params += norm_params
    for p in params:
        p.requires_grad_(True)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    model.to(precision.device)
    n_trainable = sum(p.numel() for p in named.values())

    steps = plan_steps(sets, config.batch_size, config.epochs, config.max_steps, config.seed)
    total = len(steps)
    per_epoch = len(plan_steps(sets, config.batch_size, 1.0, 0, config.seed))
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, config.warmup))
    embedder = Embedder(split_decoder, cache, method.pooling, method.pool_text_only, precision)

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    prior: dict[str, float] = {}  # time spent by earlier calls of a resumed run

    def spent() -> dict[str, float]:
        """Wall, frozen-cache and CPU seconds of the whole run so far, earlier calls included."""
        return {
            "total": round(prior.get("total", 0.0) + time.perf_counter() - started, 1),
            "frozen_cache": round(prior.get("frozen_cache", 0.0) + cache_seconds, 1),
            "cpu": round(prior.get("cpu", 0.0) + time.process_time() - cpu_started, 1),
        }

    start_step = 0
    state = None if restart else ckpt.load_state(out)
    if state is not None:
        missing = set(named) - set(state["params"])
        if missing:
            raise KeytokError(
                f"{ckpt.state_dir(out)}: the saved state lacks {len(missing)} trainable tensors"
            )
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_step = int(state["step"])
        history = list(state.get("history", []))
        evals = list(state.get("evals", []))
        prior = dict(state.get("seconds", {}))
        log(f"resuming at step {start_step} of {total}")
    ckpt.save_run(out, run)
    log(
        f"training layers {split}..{n_layers - 1} + final norm of {loaded.name} "
        f"({f'LoRA r={config.lora_rank}' if config.lora_rank else 'full'}: {n_trainable:,} parameters), "
        f"{total} steps of {config.batch_size} ({per_epoch} per epoch), {precision.describe()}"
    )

    def evaluate(step: int) -> None:
        if not eval_pairs:
            return
        from keytok.evaluation.sts import sts_spearman

        model.eval()
        score = sts_spearman(embedder, eval_pairs)
        evals.append({"step": step, "set": config.eval_sts, "spearman": round(score, 2)})
        log(f"step {step}: {config.eval_sts} Spearman {score:.2f}")

    def save(step: int) -> None:
        ckpt.save_state(
            out,
            {
                "step": step,
                "params": {n: p.detach().cpu() for n, p in named.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "history": history,
                "evals": evals,
                "seconds": spent(),
            },
        )

    if start_step == 0 and not evals:
        evaluate(0)
    train_started = time.perf_counter()
    window: list[float] = []
    step = start_step
    for step in range(start_step, total):
        if stop_after is not None and step - start_step >= stop_after:
            save(step)
            return TrainResult(
                out,
                step,
                total,
                time.perf_counter() - started,
                cache_seconds,
                cache.describe(),
                history,
                evals,
                start_step,
            )
        for layer in top:
            layer.train()
        k, rows = steps[step]
        s = sets[k]
        groups = list(zip(*(s.texts[i] for i in rows), strict=True))
        width = len(rows)
        emb = embedder([t for g in groups for t in g])
        parts = [emb[j * width : (j + 1) * width] for j in range(len(groups))]
        scores = torch.tensor([s.scores[i] for i in rows], device=emb.device) if s.kind == "pairs" else None
        loss, terms = angle_objective(s.kind, parts, scores, config.losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(named.values()), config.grad_clip)
        optimizer.step()
        scheduler.step()
        history.append(
            {
                "step": step + 1,
                "kind": s.kind,
                "loss": round(float(loss.detach()), 5),
                **{k2: round(v, 5) for k2, v in terms.items()},
            }
        )
        window.append(float(loss.detach()))
        done = step + 1
        if done % config.log_every == 0 or done == total:
            rate = (done - start_step) / (time.perf_counter() - train_started)
            log(
                f"step {done}/{total}  loss {np.mean(window):.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                f"{rate:.2f} steps/s, ~{(total - done) / rate / 60:.1f} min left"
            )
            window = []
        if done % per_epoch == 0 or done == total:
            evaluate(done)
        if done % config.save_every == 0 or done == total:
            save(done)
    seconds = time.perf_counter() - started

    # Export: merge LoRA into the weights, restore plain modules, save the model folder.
    for layer in top:
        layer.eval()
    merge_lora(model)
    model.requires_grad_(False)
    record = {
        "base_model": {"name": config.model, "sha256": loaded.fingerprint},
        "method": method.key(),
        "template": method.template,
        "pooling": method.pooling,
        "bidirectional_layers": list(range(n_layers - method.bidirectional, n_layers)),
        "trained_layers": list(range(split, n_layers)),
        "training": config.as_dict(),
        "data": [s.describe() for s in sets],
        "steps": total,
        "trainable_parameters": n_trainable,
        "seconds": spent(),  # cpu: all threads; wall and CPU summed over the calls of a resumed run
        "frozen_cache": cache.describe(),
        "device": precision.describe(),
        "evals": evals,
        "loss_history": history,
    }
    model.to("cpu")
    ckpt.export_checkpoint(out, model, loaded.tokenizer, record)
    log(f"checkpoint written to {out} ({seconds / 60:.1f} min)")
    return TrainResult(
        out, total, total, seconds, cache_seconds, cache.describe(), history, evals, start_step, loaded
    )
