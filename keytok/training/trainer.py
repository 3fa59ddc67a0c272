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

Memory: a step embeds every text of its batch (a batch of 64 (query, document) pairs is 128 texts), and the
activations of the trained layers for all of them are what fills memory. Two options bound them without
changing the objective: ``micro_batch`` embeds that many texts at a time and keeps the in-batch negatives of
the whole batch by gradient caching (:mod:`keytok.training.gradcache`; a second forward pass), and
``grad_checkpoint`` keeps only each trained layer's input and recomputes its activations in the backward pass
(another forward pass). Both give the gradients of a whole-batch pass (up to float rounding; with dropout on,
each micro-batch draws its own masks), so both may change when a run is resumed.

Robustness: a progress bar (steps, running loss, tokens/s, time left) on a terminal, log lines every
``log_every`` steps always; the resumable state (trainable weights, optimiser, schedule, CPU and CUDA RNG,
history) is saved atomically every ``save_every`` steps, and a run killed at any moment (``kill -9``, during a
save, the frozen-cache pass or the export included) continues from it when run again, to the same trained
tensors as an uninterrupted run (bit for bit on a CPU with the same threads). One run per folder at a time
(:func:`keytok.training.checkpoint.run_lock`). The exported record reports the peak resident memory.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keytok.encoding.encoder import plan_batches, pool_hidden
from keytok.errors import KeytokError
from keytok.training import checkpoint as ckpt
from keytok.training.data import TrainingSet
from keytok.training.frozen import FrozenCache, SplitDecoder, build_frozen_cache, cache_key
from keytok.training.gradcache import RngState, cached_backward
from keytok.training.lora import add_lora, merge_lora
from keytok.training.losses import LossWeights, angle_objective
from keytok.training.recipes import ALL_LAYERS

# Settings that may change between a stopped run and its resumption without invalidating the state
# (micro_batch and grad_checkpoint trade memory for time; the gradients stay those of the whole batch).
_RESUMABLE = {
    *("save_every", "log_every", "eval_sts", "device", "dtype", "threads"),
    *("micro_batch", "grad_checkpoint"),
}


# Padded tokens per forward pass of the trained layers: texts of a batch are grouped by length into passes of
# at most this many (rows x longest row), so short texts are not padded to the longest document.
BUCKET_TOKENS = 4096


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in ``keytok.json`` and checked on resume)."""

    model: str = "smollm2-135m"
    method: str = "bellm"
    train_layers: int | str = 4  # or "all": every decoder layer, whatever the model's depth
    lora_rank: int = 32  # 0: train the top layers fully
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    epochs: float = 1.0
    max_steps: int = 0  # > 0: stop after this many steps whatever epochs says
    batch_size: int = 32
    micro_batch: int = 0  # > 0: texts per forward pass (gradient caching keeps the whole batch's negatives)
    grad_checkpoint: bool = False  # recompute the trained layers' activations in the backward pass
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
            (
                self.train_layers == ALL_LAYERS
                or (isinstance(self.train_layers, int) and self.train_layers >= 1),
                f"train_layers must be >= 1 or {ALL_LAYERS!r}, got {self.train_layers}",
            ),
            (self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (self.epochs > 0 or self.max_steps > 0, "epochs or max_steps must be > 0"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}"),
            (self.micro_batch >= 0, f"micro_batch must be >= 0 (0: the whole batch), got {self.micro_batch}"),
            (self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}"),
            (self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}"),
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
        self,
        split: SplitDecoder,
        cache: FrozenCache,
        pooling: str,
        text_only: bool,
        precision: Any,
        grad_checkpoint: bool = False,
        bucket_tokens: int = BUCKET_TOKENS,
    ):
        self.split = split
        self.bucket_tokens = bucket_tokens
        self.cache = cache
        self.pooling = pooling
        self.text_only = text_only
        self.precision = precision
        self.grad_checkpoint = grad_checkpoint

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, d] embeddings of ``texts`` (rows in order), run in length buckets of at most
        ``bucket_tokens`` padded tokens: a (query, document) batch padded as one block would spend most of
        its compute on the queries' padding."""
        buckets = plan_batches(self.cache.lengths(texts), self.bucket_tokens, batch_overhead=64)
        if len(buckets) == 1:
            return self._embed(texts)
        parts = [self._embed([texts[i] for i in rows]) for rows in buckets]
        order = torch.tensor([i for rows in buckets for i in rows], device=parts[0].device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts)[inverse]

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        hidden, pad, spans = self.cache.batch(texts, self.precision.device)
        with self.precision.autocast():
            out = self.split.run(
                hidden,
                pad,
                self.cache.split,
                self.split.n_layers,
                final_norm=True,
                checkpoint=self.grad_checkpoint,
            )
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
        raise KeytokError(f"no batch of 2 or more examples can be formed with batch_size {batch_size}")
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


def _above_bars(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` writing above the progress bar (cleared, then redrawn) instead of through it."""
    from tqdm import tqdm

    def say(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            log(message)

    return say


def peak_rss_mb() -> int:
    """This process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 2**20 if sys.platform == "darwin" else peak // 1024)


def train(
    config: TrainConfig,
    sets: Sequence[TrainingSet],
    out: str | os.PathLike[str],
    *,
    sts_root: str | os.PathLike[str] | None = None,
    restart: bool = False,
    log: Callable[[str], None] = _log,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train, saving the resumable state every ``save_every`` steps; export the checkpoint at the end.

    A run whose ``out`` already holds a state with the same settings resumes from it (the same call
    run again continues); other settings raise KeytokError unless ``restart``. ``stop_after`` ends the
    call after that many steps without exporting (what an interruption does; used by the tests).
    ``progress`` shows a progress bar on stderr (default: when stderr is a terminal).
    Steps: lock the folder → check the run → load the model → frozen-layer cache → trainable top layers →
    resume → steps → export.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KeytokError(f"{out} is a file: out must be a folder")
    if not sets:
        raise KeytokError("no training data: sets is empty")
    with ckpt.run_lock(out):
        return _train(config, sets, out, sts_root, restart, _above_bars(log), stop_after, progress)


def _train(
    config: TrainConfig,
    sets: Sequence[TrainingSet],
    out: Path,
    sts_root: str | os.PathLike[str] | None,
    restart: bool,
    log: Callable[[str], None],
    stop_after: int | None,
    progress: bool | None,
) -> TrainResult:
    """:func:`train`'s steps, under the folder's lock."""
    record = _check_run(config, sets, out, restart)
    clock = (time.perf_counter(), time.process_time())
    torch.manual_seed(config.seed)
    model = _load(config, log)
    cache, eval_pairs = _frozen_cache(config, sets, model, out, sts_root, log)
    run = _Run(config, sets, out, model, cache, eval_pairs, log, clock)
    run.resume(None if restart else ckpt.load_state(out))
    ckpt.save_run(out, record)
    run.announce()
    if run.start_step == 0 and not run.evals:
        run.evaluate(0)
    if not run.steps_until(stop_after, sys.stderr.isatty() if progress is None else progress):
        return run.result(run.step)
    return _export(run)


def _check_run(config: TrainConfig, sets: Sequence[TrainingSet], out: Path, restart: bool) -> dict[str, Any]:
    """The run's record (settings that must not change on resume, and the data); refuses another run's
    folder unless ``restart``, and then drops its state."""
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
            "or pass restart=True or another out folder"
        )
    if restart and ckpt.state_dir(out).exists():
        for f in ckpt.state_dir(out).glob("state.pt"):
            f.unlink()
    return run


@dataclass
class _Model:
    """The loaded model, its method and precision, and where it splits into frozen and trained layers."""

    loaded: Any
    method: Any
    encoder: Any
    split_decoder: SplitDecoder
    split: int

    @property
    def precision(self) -> Any:
        return self.encoder.precision

    @property
    def n_layers(self) -> int:
        return self.split_decoder.n_layers


def _load(config: TrainConfig, log: Callable[[str], None]) -> _Model:
    from keytok.encoding.encoder import Encoder
    from keytok.models.loading import load_model
    from keytok.models.methods import get_method

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
    if encoder.precision.weight_dtype != torch.float32:
        # GPUs embed with half-precision weights; training keeps fp32 master weights under autocast.
        half = encoder.precision.weight_dtype
        loaded.model.float()
        encoder.precision = replace(encoder.precision, weight_dtype=torch.float32, autocast_dtype=half)
    encoder.apply_precision()  # training runs the layers as the encoder does (attention fp32 or not)
    split_decoder = SplitDecoder(loaded.model, method.bidirectional)
    n_layers = split_decoder.n_layers
    trained = n_layers if config.train_layers == ALL_LAYERS else int(config.train_layers)
    if trained > n_layers:
        raise KeytokError(f"train_layers {trained}: the model has {n_layers} decoder layers")
    if method.pooling == "last" and method.bidirectional == 1:
        log("note: under last-token pooling a bidirectional last layer changes nothing; use bidirectional 2+")
    return _Model(loaded, method, encoder, split_decoder, n_layers - trained)


def _frozen_cache(
    config: TrainConfig,
    sets: Sequence[TrainingSet],
    m: _Model,
    out: Path,
    sts_root: str | os.PathLike[str] | None,
    log: Callable[[str], None],
) -> tuple[FrozenCache, list]:
    """The frozen lower layers' output for every text the run's steps (and STS evaluation) will read, cached in
    ``out``. Only the planned steps' texts: a short run over a large set (12 steps of 32 from a corpus's 15,000
    pairs) would otherwise hold gigabytes of inputs it never reads."""
    eval_pairs = []
    if config.eval_sts:
        from keytok.data.sts import load_sts

        eval_pairs = load_sts(config.eval_sts, sts_root)
    steps = plan_steps(sets, config.batch_size, config.epochs, config.max_steps, config.seed)
    used = [t for k, rows in steps for i in rows for t in sets[k].texts[i]]
    texts = list(dict.fromkeys(used + [t for p in eval_pairs for t in (p.s1, p.s2)]))
    key = cache_key(m.loaded.fingerprint, m.method.key(), config.max_length, m.split, texts)
    cache_file = ckpt.state_dir(out) / f"frozen-{config.cache_dtype}-L{m.split}.safetensors"
    cache = FrozenCache.load(cache_file, key, texts)
    if cache is None:
        frozen = f"frozen layers 0..{m.split - 1}" if m.split else "no frozen layer (input embeddings only)"
        log(f"{frozen}: running them once on {len(texts):,} texts ({m.precision.describe()})")
        cache = build_frozen_cache(m.encoder, texts, m.split, config.cache_dtype, show_progress=True)
        cache.save(cache_file)
        log(f"cached {cache.describe()} in {cache.seconds:.0f} s")
    else:
        log(f"frozen-layer cache reused: {cache.describe()}")
    return cache, eval_pairs


class _Run:
    """The trainable top layers, optimiser and schedule of one run, its history, and its steps."""

    def __init__(
        self,
        config: TrainConfig,
        sets: Sequence[TrainingSet],
        out: Path,
        m: _Model,
        cache: FrozenCache,
        eval_pairs: list,
        log: Callable[[str], None],
        clock: tuple[float, float],
    ) -> None:
        self.config, self.sets, self.out, self.m, self.cache = config, sets, out, m, cache
        self.eval_pairs, self.log = eval_pairs, log
        self.started, self.cpu_started = clock
        model = m.loaded.model
        # Trainable part: the top layers (LoRA or full) and the final norm.
        model.requires_grad_(False)
        self.top = list(m.split_decoder.decoder.layers)[m.split :]
        if config.lora_rank:
            params = add_lora(self.top, config.lora_rank, config.lora_alpha, config.lora_dropout)
        else:
            params = [p for layer in self.top for p in layer.parameters()]
        params += list(m.split_decoder.decoder.norm.parameters())
        for p in params:
            p.requires_grad_(True)
        self.named = {name: p for name, p in model.named_parameters() if p.requires_grad}
        model.to(m.precision.device)
        self.n_trainable = sum(p.numel() for p in self.named.values())
        self.plan = plan_steps(sets, config.batch_size, config.epochs, config.max_steps, config.seed)
        self.total = len(self.plan)
        self.per_epoch = len(plan_steps(sets, config.batch_size, 1.0, 0, config.seed))
        self.optimizer = torch.optim.AdamW(
            list(self.named.values()), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.total, config.warmup)
        )
        self.embedder = Embedder(
            m.split_decoder,
            cache,
            m.method.pooling,
            m.method.pool_text_only,
            m.precision,
            grad_checkpoint=config.grad_checkpoint,
        )
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.prior: dict[str, float] = {}  # time spent by earlier calls of a resumed run
        self.prior_peak_mb = 0  # peak resident memory of earlier calls of a resumed run
        self.start_step = self.step = 0

    def spent(self) -> dict[str, float]:
        """Wall, frozen-cache and CPU seconds of the whole run so far, earlier calls included."""
        prior = self.prior
        return {
            "total": round(prior.get("total", 0.0) + time.perf_counter() - self.started, 1),
            "frozen_cache": round(prior.get("frozen_cache", 0.0) + self.cache.seconds, 1),
            "cpu": round(prior.get("cpu", 0.0) + time.process_time() - self.cpu_started, 1),
        }

    def peak_mb(self) -> int:
        """Peak resident memory (MiB) of the whole run so far, earlier calls included."""
        return max(self.prior_peak_mb, peak_rss_mb())

    def resume(self, state: dict[str, Any] | None) -> None:
        """Continue from a saved state (parameters, optimiser, schedule, RNG, history), if any."""
        if state is None:
            return
        missing = set(self.named) - set(state["params"])
        if missing:
            raise KeytokError(
                f"{ckpt.state_dir(self.out)}: the saved state lacks {len(missing)} trainable tensors"
            )
        with torch.no_grad():
            for name, p in self.named.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        device = self.m.precision.device
        cuda = state.get("rng_cuda") if device.type == "cuda" else None
        RngState(state["rng"], cuda, device).restore()
        self.start_step = self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))
        self.prior = dict(state.get("seconds", {}))
        self.prior_peak_mb = int(state.get("peak_rss_mb", 0))
        self.log(f"resuming at step {self.start_step} of {self.total}")

    def announce(self) -> None:
        c, m = self.config, self.m
        self.log(
            f"training layers {m.split}..{m.n_layers - 1} + final norm of {m.loaded.name} "
            f"({f'LoRA r={c.lora_rank}' if c.lora_rank else 'full'}: {self.n_trainable:,} parameters), "
            f"{self.total} steps of {c.batch_size} ({self.per_epoch} per epoch), {m.precision.describe()}"
        )

    def evaluate(self, step: int) -> None:
        if not self.eval_pairs:
            return
        from keytok.evaluation.sts import sts_spearman

        self.m.loaded.model.eval()
        score = sts_spearman(self.embedder, self.eval_pairs)
        self.evals.append({"step": step, "set": self.config.eval_sts, "spearman": round(score, 2)})
        self.log(f"step {step}: {self.config.eval_sts} Spearman {score:.2f}")

    def save(self, step: int) -> None:
        """Save everything the steps after ``step`` depend on: a run resumed from it repeats them exactly
        (the dropout masks come from the RNG state, the batches from the seeded plan)."""
        rng = RngState.capture(self.m.precision.device)
        ckpt.save_state(
            self.out,
            {
                "step": step,
                "params": {n: p.detach().cpu() for n, p in self.named.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng.cpu,
                "rng_cuda": rng.cuda,
                "history": self.history,
                "evals": self.evals,
                "seconds": self.spent(),
                "peak_rss_mb": self.peak_mb(),
            },
        )

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimiser step on the batch planned for ``step``; returns its loss and its tokens (no padding)."""
        for layer in self.top:
            layer.train()
        k, rows = self.plan[step]
        s = self.sets[k]
        groups = list(zip(*(s.texts[i] for i in rows), strict=True))
        texts = [t for g in groups for t in g]
        device = self.m.precision.device
        scores = torch.tensor([s.scores[i] for i in rows], device=device) if s.kind == "pairs" else None

        def objective(emb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            parts = list(emb.split(len(rows)))  # [s1 | s2] or [anchor | positive | negative]
            return angle_objective(s.kind, parts, scores, self.config.losses)

        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = self.backward(texts, objective)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.named.values()), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        value = float(loss)
        self.history.append(
            {
                "step": step + 1,
                "kind": s.kind,
                "loss": round(value, 5),
                **{n: round(v, 5) for n, v in terms.items()},
            }
        )
        return value, sum(self.cache.lengths(texts))

    def backward(
        self, texts: list[str], objective: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Embed ``texts``, apply ``objective`` and back-propagate: in one pass, or ``micro_batch`` texts at a
        time by gradient caching when the batch has more (the same gradients, less memory)."""
        chunk = self.config.micro_batch
        if chunk and len(texts) > chunk:
            # Chunks of texts of similar length (longest first), the embeddings put back in batch order for
            # the objective: chunks cut from [queries | documents] as given would pad queries to documents.
            lengths = self.cache.lengths(texts)
            order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
            inverse = torch.empty(len(order), dtype=torch.long, device=self.m.precision.device)
            inverse[torch.tensor(order, device=inverse.device)] = torch.arange(
                len(order), device=inverse.device
            )

            def in_batch_order(emb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
                return objective(emb[inverse])

            sorted_texts = [texts[i] for i in order]
            return cached_backward(
                self.embedder, sorted_texts, in_batch_order, chunk, self.m.precision.device
            )
        loss, terms = objective(self.embedder(texts))
        loss.backward()
        return loss.detach(), terms

    def steps_until(self, stop_after: int | None, progress: bool = False) -> bool:
        """Run the remaining steps (logging, evaluating and saving on schedule); False when ``stop_after``
        steps of this call ended it early (the state saved, nothing exported). ``progress``: a progress
        bar on stderr; the log lines come every ``log_every`` steps either way."""
        from tqdm import tqdm

        c = self.config
        meter = _Meter(self.total, c.log_every)
        with tqdm(
            total=self.total,
            initial=self.start_step,
            desc="training",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not progress,
        ) as bar:
            for step in range(self.start_step, self.total):
                self.step = step
                if stop_after is not None and step - self.start_step >= stop_after:
                    self.save(step)
                    return False
                meter.add(*self.train_step(step))
                done = step + 1
                bar.update(1)
                bar.set_postfix_str(meter.postfix(), refresh=False)
                if done % c.log_every == 0 or done == self.total:
                    self.log(meter.line(done, self.scheduler.get_last_lr()[0]))
                if done % self.per_epoch == 0 or done == self.total:
                    self.evaluate(done)
                if done % c.save_every == 0 or done == self.total:
                    self.save(done)
        return True

    def result(self, steps: int, loaded: Any = None) -> TrainResult:
        return TrainResult(
            self.out,
            steps,
            self.total,
            time.perf_counter() - self.started,
            self.cache.seconds,
            self.cache.describe(),
            self.history,
            self.evals,
            self.start_step,
            loaded,
        )


class _Meter:
    """Loss and throughput of the steps of this call: the progress bar's postfix and the log lines."""

    def __init__(self, total: int, window: int) -> None:
        self.total = total
        self.started = time.perf_counter()
        self.steps = self.tokens = 0
        self.recent: deque[float] = deque(maxlen=max(1, window))  # the running loss: last log_every steps
        self.window: list[float] = []  # losses since the last log line

    def add(self, loss: float, tokens: int) -> None:
        self.steps += 1
        self.tokens += tokens
        self.recent.append(loss)
        self.window.append(loss)

    def rates(self) -> tuple[float, float]:
        """Steps and tokens per second of this call."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return self.steps / seconds, self.tokens / seconds

    def postfix(self) -> str:
        return f"loss {np.mean(self.recent):.4f}, {self.rates()[1]:,.0f} tok/s"

    def line(self, done: int, lr: float) -> str:
        """The log line at step ``done``: the mean loss since the previous line, then it starts anew."""
        steps_s, tokens_s = self.rates()
        loss, self.window = float(np.mean(self.window)), []
        # A CPU step of a large batch takes minutes: "0.00 steps/s" would say nothing.
        speed = f"{steps_s:.2f} steps/s" if steps_s >= 1 else f"{1 / steps_s:.1f} s/step"
        return (
            f"step {done}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {speed}, "
            f"{tokens_s:,.0f} tokens/s, ~{(self.total - done) / steps_s / 60:.1f} min left"
        )


def _export(run: _Run) -> TrainResult:
    """Merge LoRA into the weights, restore plain modules, and save the model folder with its record."""
    seconds = time.perf_counter() - run.started
    m, config = run.m, run.config
    model = m.loaded.model
    for layer in run.top:
        layer.eval()
    merge_lora(model)
    model.requires_grad_(False)
    n_layers = m.n_layers
    record = {
        "base_model": {"name": config.model, "sha256": m.loaded.fingerprint},
        "method": m.method.key(),
        "template": m.method.template,
        "pooling": m.method.pooling,
        "bidirectional_layers": list(range(n_layers - m.method.bidirectional, n_layers)),
        "trained_layers": list(range(m.split, n_layers)),
        "training": config.as_dict(),
        "data": [s.describe() for s in run.sets],
        "steps": run.total,
        "trainable_parameters": run.n_trainable,
        "seconds": run.spent(),  # cpu: all threads; wall and CPU summed over the calls of a resumed run
        "peak_rss_mb": run.peak_mb(),  # the largest of the calls of a resumed run (frozen-cache pass included)
        "frozen_cache": run.cache.describe(),
        "device": m.precision.describe(),
        "evals": run.evals,
        "loss_history": run.history,
    }
    if m.loaded.recorded_fusion is not None:
        # Adapting a model that carries fusion weights (the shipped default) keeps them: they were chosen on
        # held-out queries for that model, and a corpus without queries has nothing to choose new ones on.
        record["fusion"] = {**m.loaded.recorded_fusion, "inherited_from": config.model}
    model.to("cpu")
    ckpt.export_checkpoint(run.out, model, m.loaded.tokenizer, record)
    run.log(f"checkpoint written to {run.out} ({seconds / 60:.1f} min, peak RSS {run.peak_mb():,} MiB)")
    out = run.result(run.total, m.loaded)
    out.seconds = seconds
    return out
