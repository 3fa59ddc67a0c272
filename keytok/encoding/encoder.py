"""The one encoder every command uses: texts -> pooled embeddings -> LM-head projection.

Speed comes from three things, each measured in ``experiments/bench_encode.py``:

* texts are sorted by length and packed into batches up to a *token budget* (rows x longest
  row), so little is spent on padding and each batch is large enough to keep the matmuls busy;
  the original order is restored on output;
* the precision chosen per machine (:mod:`keytok.encoding.precision`) and the backend that runs the forward
  pass (:mod:`keytok.encoding.backends`: PyTorch, or the exported graph in ONNX Runtime);
* the LM head is applied to pooled vectors only, in vocabulary chunks: never a
  [batch, sequence, vocabulary] tensor (Gemma's 262,144-token vocabulary would need gigabytes);
* a short call (at most :data:`SHORT_CALL_TEXTS` texts) runs on the cores the load average leaves idle
  (:func:`short_call_threads`: threads without a core of their own spin-wait at every operator), and search
  queries (``encode(..., queries=True)``) under a causal method run after the prompt prefix's keys and values,
  computed once (:meth:`Encoder.prompt_cache_applies`); ``experiments/bench_query.py`` measures both.

Tokenisation keeps the prompt whole: the prompt prefix, the text and the prompt suffix are
tokenised separately and joined, and only the text is truncated, so PromptEOL's
``means in one word:"`` survives a long document. Positions are right-padded with explicit
``position_ids`` so every real token gets the same positions alone and in a batch.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from keytok.encoding.backends import OnnxRunner, graph_for_queries, resolve_backend
from keytok.encoding.precision import (
    Fp32Layers,
    Precision,
    keep_attention_fp32,
    resolve_precision,
    restore_forward,
)
from keytok.errors import KeytokError
from keytok.models.bidirectional import BidirectionalLayers, decoder_layers
from keytok.models.loading import LoadedModel, load_model
from keytok.models.methods import MethodChoice, resolve_method

DEFAULT_MAX_LENGTH = 512
VOCAB_CHUNK = 32_768
# A short call (a query, a served batch): at most this many texts. It runs on the CPU's idle cores
# (short_call_threads), and as search queries after the prompt's cached keys and values
# (Encoder.prompt_cache_applies); bulk encodes keep every core and the plain forward pass.
SHORT_CALL_TEXTS = 16


@dataclass
class Tokenized:
    """Token ids of a batch of texts under a method's prompt, before padding."""

    ids: list[list[int]]
    text_spans: list[tuple[int, int]]  # [start, end) of the text's own tokens in ids
    truncated: list[bool]


@dataclass
class EncodeStats:
    """What an :meth:`Encoder.encode` call did; printed in summaries and recorded in reports."""

    texts: int = 0
    tokens: int = 0  # real tokens run through the model
    padded_tokens: int = 0  # tokens including padding (batch rows x longest row)
    truncated: int = 0
    batches: int = 0
    seconds: float = 0.0
    precision: str = ""
    compiled: bool = False  # the decoder layers ran torch.compile-d (see COMPILE_MIN_TOKENS)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: EncodeStats) -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.truncated += other.truncated
        self.batches += other.batches
        self.seconds += other.seconds
        self.precision = other.precision or self.precision
        self.compiled = self.compiled or other.compiled

    def as_dict(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(self.padding_fraction, 4),
            "truncated": self.truncated,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "precision": self.precision,
            "compiled": self.compiled,
        }

    def summary(self) -> str:
        return (
            f"{self.texts} texts, {self.tokens:,} tokens in {self.seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tokens/s, {self.precision}), padding {self.padding_fraction:.1%}, "
            f"truncated {self.truncated}"
        )


def plan_batches(
    lengths: Sequence[int], batch_tokens: int, max_batch: int = 512, batch_overhead: float | None = None
) -> list[list[int]]:
    """Group text indices into batches with rows x longest row <= ``batch_tokens``, longest first.

    Texts are sorted by length; the cut points are chosen by dynamic programming to minimise
    padded tokens + ``batch_overhead`` per batch (a batch has a fixed cost: Python, weight reads),
    which keeps padding low where greedy filling would pack a long text with many short ones.
    A text longer than the budget gets a batch of its own. Very long lists (> 50,000 texts) are
    filled greedily, the DP being quadratic in the batch size.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    sorted_len = np.asarray([lengths[i] for i in order], dtype=np.int64)
    overhead = batch_overhead if batch_overhead is not None else 0.02 * batch_tokens
    if n > 50_000:
        cuts, start = [], 0
        while start < n:
            rows = max(1, min(max_batch, batch_tokens // max(1, int(sorted_len[start]))))
            cuts.append((start, min(n, start + rows)))
            start += rows
        return [order[a:b] for a, b in cuts]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # Batch = sorted[i:j]; its longest row is sorted_len[i].
        lo = max(0, j - max_batch)
        starts = np.arange(lo, j)
        cost = sorted_len[starts] * (j - starts)
        ok = (cost <= batch_tokens) | (starts == j - 1)
        total = np.where(ok, best[starts] + cost + overhead, np.inf)
        pick = int(np.argmin(total))
        best[j] = total[pick]
        back[j] = starts[pick]
    batches = []
    j = n
    while j > 0:
        i = int(back[j])
        batches.append(order[i:j])
        j = i
    return batches[::-1]


def pad_batch(
    ids: Sequence[Sequence[int]], pad_id: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token id rows: (input_ids, attention mask, position ids), each [rows, longest].

    Explicit position ids 0..n-1 give every real token the same position alone and in a batch.
    """
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    positions = torch.arange(longest).expand(len(ids), -1)
    return input_ids.to(device), mask.to(device), positions.to(device)


def pool_hidden(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    pooling: str,
    spans: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Pool final-norm states [b, n, d] of right-padded rows: last token, mean or position-weighted mean.

    ``spans`` ([start, end) of each text's own tokens) restricts mean poolings to the text (GritLM style).
    """
    hidden = hidden.float()
    if pooling == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, mask.sum(1) - 1]
    weights = mask.float()
    if spans is not None:
        pos = torch.arange(mask.shape[1], device=mask.device)
        starts = torch.tensor([s for s, _ in spans], device=mask.device)
        ends = torch.tensor([e for _, e in spans], device=mask.device)
        weights = ((pos[None, :] >= starts[:, None]) & (pos[None, :] < ends[:, None])).float()
    if pooling == "weighted_mean":
        # SGPT: position weights 1..L over the pooled tokens.
        weights = weights * torch.cumsum(weights, dim=1)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-9)


# torch.compile (inductor) of each decoder layer fuses the elementwise work around the matmuls (rotary,
# RMSNorm, residual adds: ~45 % of a CPU forward pass in eager mode). Measured on 2 AVX-512-BF16 cores,
# SmolLM2-135M under bf16 autocast, 160 SciFact documents: 982 -> 1,167 tokens/s (1.19x), after ~15 s of
# compilation. That pays off after ~100k tokens, so only calls that encode at least this many tokens compile
# (index builds, benchmarks); queries and short calls stay eager. KEYTOK_COMPILE=0 / 1 forces it off / on.
COMPILE_MIN_TOKENS = 100_000


def _compile_wanted(tokens: int, device: torch.device) -> bool:
    forced = os.environ.get("KEYTOK_COMPILE", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return device.type == "cpu" and tokens >= COMPILE_MIN_TOKENS


def compile_layers(model: Any, warm_up: Callable[[], object]) -> bool:
    """Swap each decoder layer's forward for a ``torch.compile``-d one, once per model.

    ``warm_up`` runs a tiny forward pass so that compilation happens (and can fail) here: without a
    working C++ toolchain inductor raises, and the layers go back to eager with a warning.
    """
    state = getattr(model, "_keytok_compiled", None)
    if state is not None:
        return state
    layers = list(decoder_layers(model))
    originals = [vars(layer).get("forward") for layer in layers]
    # Every layer runs the same forward code: dynamo compiles it once per layer (guards on the instance),
    # so its per-code recompile limit (8) must cover all layers, or the rest silently stay eager.
    import torch._dynamo

    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, limit, max(getattr(cfg, limit), 4 * len(layers)))
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    try:
        warm_up()
        ok = True
    except Exception as exc:  # any compiler failure means: run eager
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {exc}); encoding without it", stacklevel=2
        )
        for layer, original in zip(layers, originals, strict=True):
            restore_forward(layer, original)
        ok = False
    model._keytok_compiled = ok
    return ok


def short_call_threads(cores: int) -> int:
    """Torch threads for a short call on the CPU: the cores that the load average leaves idle, at least one.

    A short call is a few hundred small operators; between them OpenMP threads spin-wait for each other, so a
    thread without a core of its own stalls every operator. Measured on this project's 2 shared cores under
    load (experiments/results/bench_query_avx2.md): one PromptEOL query on 2 threads took ~25x as long as on
    one thread. On an idle machine every core is used, as before.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def _weights_version(params: list[torch.Tensor]) -> int:
    """The sum of the weights' in-place version counters: it grows with every in-place change."""
    try:
        return sum(p._version for p in params)
    except RuntimeError:  # inference tensors keep no counter, and cannot be changed in place outside one
        return -1


def _cache_argument(backbone: Any) -> str:
    """The keyword a decoder's forward takes its key/value cache by (``cache`` in transformers 5, else
    ``past_key_values``)."""
    names = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def check_head(embedder: LoadedModel, base: LoadedModel) -> None:
    """An embedder can be projected through ``base``'s LM head only if the head reads its vectors (same hidden
    size) and its rows are the embedder's tokens (same tokenizer vocabulary); else a one-line error."""
    weight = base.lm_head_weight
    if weight.shape[1] != embedder.hidden_size:
        raise KeytokError(
            f"LM head of '{base.name}' takes {weight.shape[1]}-d vectors; '{embedder.name}' gives "
            f"{embedder.hidden_size}-d"
        )
    mine, theirs = embedder.tokenizer.get_vocab(), base.tokenizer.get_vocab()
    if mine != theirs or weight.shape[0] < len(embedder.tokenizer):
        raise KeytokError(
            f"LM head of '{base.name}' is for a vocabulary of {len(theirs):,} tokens ({weight.shape[0]:,} rows); "
            f"'{embedder.name}' tokenizes into {len(mine):,}{'' if len(mine) != len(theirs) else ' other'} tokens: "
            "they must share one tokenizer"
        )


class Encoder:
    """Embed texts with a causal LM and an :class:`EmbeddingMethod`; project them through an LM head.

    >>> enc = Encoder("smollm2-135m", "prompteol")          # doctest: +SKIP
    >>> emb = enc.encode(["Vitamin D deficiency is linked to bone loss."])
    >>> scores, token_ids = enc.logits_topk(emb, k=10)   # the 10 key tokens of the text

    ``head`` selects the LM head used for projection when it should come from another base
    model than the embedder (the paper decodes e5-mistral with Mistral-7B's head); it must have
    the same hidden size and tokenizer vocabulary. With ``backend="auto"``, search queries
    (``encode(..., queries=True)``) may run in the exported ONNX graph while documents run in torch
    (:func:`keytok.encoding.backends.graph_for_queries`, :attr:`query_backend`).
    """

    def __init__(
        self,
        model: str | LoadedModel,
        method: MethodChoice = None,
        *,
        dtype: str = "auto",
        device: str | torch.device | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        head: str | LoadedModel | None = None,
        threads: int | None = None,
        backend: str = "auto",
    ) -> None:
        self.precision: Precision = resolve_precision(dtype, device)
        self.backend = resolve_backend(backend, self.precision)
        self._auto_backend = backend == "auto"
        self._query_graph: bool | None = None  # decided on first use (query_backend)
        self._runner: OnnxRunner | None = None
        # Short calls run after the prompt head's cached keys and values (see _encode_after_prompt).
        self.reuse_prompt = True
        self._prompt_state: tuple[Any, Any, torch.Tensor] | None = None
        self.threads = threads  # None: every core for bulk calls, the idle ones for short calls
        if threads or self.precision.device.type == "cpu":
            torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
        self.model = (
            model
            if isinstance(model, LoadedModel)
            else load_model(model, dtype=self.precision.weight_dtype, device=self.precision.device)
        )
        if isinstance(model, LoadedModel):
            self.model.model.to(device=self.precision.device, dtype=self.precision.weight_dtype)
        self.method = resolve_method(method, self.model.recorded_method)
        if max_length < 8:
            raise KeytokError(f"max_length must be at least 8, got {max_length}")
        self.max_length = max_length
        # Measured (bench_encode.py): 2 CPU cores saturate at a few thousand tokens per batch;
        # GPUs need far larger batches to fill.
        self.batch_tokens = batch_tokens or (65_536 if self.precision.device.type == "cuda" else 4_096)
        self.stats = EncodeStats(precision=self.describe())
        self._head_model = None
        recipe = self.model.recipe
        if head is None and recipe is not None:
            head = recipe.head  # a preset's base (e5-mistral -> Mistral-7B-v0.1), None when it is its own
        if isinstance(head, str) and head == self.model.name:
            head = None
        if head is not None:
            self._head_model = (
                head
                if isinstance(head, LoadedModel)
                else self._load_head(head, from_recipe=recipe is not None)
            )
            check_head(self.model, self._head_model)
        self._prepare_prompt()

    def _load_head(self, spec: str, from_recipe: bool) -> LoadedModel:
        try:
            return load_model(spec, dtype=self.precision.weight_dtype, device=self.precision.device)
        except KeytokError:
            recipe = self.model.recipe
            if not from_recipe or recipe is None or spec != recipe.base or os.path.exists(spec):
                raise
            from keytok.models.recipes import missing_weights

            raise missing_weights(recipe, "base", spec) from None

    def describe(self, queries: bool = False) -> str:
        """Precision and backend, e.g. ``fp32 weights on cpu`` or ``fp32, ONNX Runtime on cpu``; of search
        queries' calls with ``queries`` (:attr:`query_backend`)."""
        backend = self.query_backend if queries else self.backend
        if backend == "torch":
            return self.precision.describe()
        weights = ", int8 weights" if backend == "onnx-int8" else ""
        return f"fp32{weights}, ONNX Runtime on {self.precision.device.type}"

    @property
    def query_backend(self) -> str:
        """The backend of search queries (``encode(..., queries=True)``): :attr:`backend`, except that
        ``auto`` runs them in the exported graph where :func:`~keytok.encoding.backends.graph_for_queries`
        says so (fp32 on the CPU, ONNX Runtime installed, the graph already in the cache)."""
        if self._query_graph is None:
            self._query_graph = self._auto_backend and self.backend == "torch" and graph_for_queries(self)
        return "onnx" if self._query_graph else self.backend

    @property
    def runner(self) -> OnnxRunner | None:
        """The warm ONNX Runtime session of the ``onnx`` backends, or of the queries' graph (made, and
        exported, on first use); None where nothing runs in ONNX Runtime."""
        if self._runner is None and self.query_backend != "torch":  # the onnx backends, or auto's query graph
            self._runner = OnnxRunner(self, quantized=self.backend == "onnx-int8")
        return self._runner

    # -- tokenisation ---------------------------------------------------------------------------
    def _prepare_prompt(self) -> None:
        tok = self.model.tokenizer
        with_special = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        start = with_special.index(plain[0]) if plain and plain[0] in with_special else 0
        self._lead = list(with_special[:start])  # e.g. Gemma's <bos>
        self._trail = list(with_special[start + len(plain) :])
        m = self.method
        self._prefix = tok(m.prefix, add_special_tokens=False)["input_ids"] if m.prefix else []
        self._suffix = tok(m.suffix, add_special_tokens=False)["input_ids"] if m.suffix else []
        if m.append_eos and tok.eos_token_id is None:
            raise KeytokError(
                f"method '{m.name}' appends EOS, but the tokenizer of '{self.model.name}' has no EOS token"
            )
        if m.append_eos and tok.eos_token_id not in self._trail:
            self._trail = [*self._trail, tok.eos_token_id]
        self._room = (
            self.max_length - len(self._lead) - len(self._prefix) - len(self._suffix) - len(self._trail)
        )
        if self._room < 1:
            raise KeytokError(
                f"max_length {self.max_length} leaves no room for text after the prompt of '{m.name}'"
            )
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids of each text inside the method's prompt; only the text part is truncated."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise KeytokError(f"text {i} is {type(text).__name__}, not a string")
            if not text.strip():
                raise KeytokError(f"text {i} is empty")
        bodies = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        ids, spans, truncated = [], [], []
        head = [*self._lead, *self._prefix]
        for body in bodies:
            cut = len(body) > self._room
            body = body[: self._room]
            ids.append([*head, *body, *self._suffix, *self._trail])
            spans.append((len(head), len(head) + len(body)))
            truncated.append(cut)
        return Tokenized(ids, spans, truncated)

    def input_token_ids(self, text: str) -> list[int]:
        """The text's own token ids with the tokenizer's special tokens (T in the alignment metrics)."""
        return list(self.model.tokenizer(text, add_special_tokens=True)["input_ids"])

    # -- encoding -------------------------------------------------------------------------------
    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        return pool_hidden(hidden, mask, self.method.pooling, spans if self.method.pool_text_only else None)

    def apply_precision(self) -> None:
        """Set the model's attention blocks to this encoder's precision (fp32 or not under autocast).

        Called by :meth:`encode` on every call, since another encoder may share the model with another
        precision; code that runs the model's layers itself under :meth:`Precision.autocast` (the
        frozen-layer cache, training) calls it first.
        """
        if self.precision.autocast_dtype is None:
            return
        blocks = keep_attention_fp32(decoder_layers(self.model.model), self.precision.fp32_attention)
        if self.precision.fp32_attention and not blocks:
            self.precision = replace(self.precision, fp32_attention=False)  # no attention blocks to keep

    # -- the prompt head's keys and values, computed once -----------------------------------------
    def prompt_cache_applies(self, texts: int) -> bool:
        """Whether ``texts`` search queries encoded in one call (``encode(..., queries=True)``) run after the
        prompt head's cached keys and values.

        Under a causal method the tokens before the text (the tokenizer's lead tokens and the prompt prefix:
        PromptEOL's ``This sentence : "``) see nothing of the text, so their keys, values and final states
        are the same for every text: they are computed once and only the text and the suffix run. Short
        calls only (:data:`SHORT_CALL_TEXTS`), on torch, without bidirectional layers or compiled layers;
        ``reuse_prompt = False`` turns it off. The embeddings equal the plain forward pass's to float
        rounding (tests/test_encoder.py), not bit for bit: documents, whose embeddings the embedding cache
        keeps, always take the plain forward pass.
        """
        return (
            self.reuse_prompt
            and self.query_backend == "torch"
            and not self.method.bidirectional
            and 0 < texts <= SHORT_CALL_TEXTS
            and len(self._lead) + len(self._prefix) > 0
            and not getattr(self.model.model, "_keytok_compiled", False)
        )

    def call_threads(self, texts: int) -> int | None:
        """Torch threads a call of ``texts`` texts runs on: for a short call on the CPU without ``threads``
        given, :func:`short_call_threads`; else None (the process's setting)."""
        if self.threads or self.backend != "torch" or self.precision.device.type != "cpu":
            return None
        if not 0 < texts <= SHORT_CALL_TEXTS:
            return None
        return short_call_threads(max(1, len(os.sched_getaffinity(0))))

    @contextlib.contextmanager
    def _threads_for(self, texts: int) -> Iterator[None]:
        """Run the block on :meth:`call_threads` torch threads, then restore the process's setting."""
        threads, previous = self.call_threads(texts), torch.get_num_threads()
        if threads is None or threads == previous:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _prompt_head(self) -> tuple[Any, torch.Tensor]:
        """Keys/values (a transformers cache) and final-norm states of the prompt head, remembered while
        the weights and the precision stay as they were (an optimizer step bumps the weights' versions)."""
        params = list(self.model.model.parameters())
        key = (self.precision, len(params), _weights_version(params), params[0].dtype, params[0].device)
        if self._prompt_state is None or self._prompt_state[0] != key:
            head = torch.tensor([[*self._lead, *self._prefix]], device=self.precision.device)
            with self.precision.autocast():
                out = self.model.backbone(
                    input_ids=head,
                    attention_mask=torch.ones_like(head),
                    position_ids=torch.arange(head.shape[1], device=head.device)[None],
                    use_cache=True,
                )
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            self._prompt_state = (key, cache, out.last_hidden_state)
        return self._prompt_state[1], self._prompt_state[2]

    def _encode_after_prompt(self, ids: list[list[int]], spans: list[tuple[int, int]]) -> torch.Tensor:
        """:meth:`_encode_batch` for a causal method, with the prompt head's keys and values from the cache."""
        cache, head_states = self._prompt_head()
        start = head_states.shape[1]
        input_ids, mask, _ = pad_batch([row[start:] for row in ids], self.pad_id, self.precision.device)
        rows, length = input_ids.shape
        cache = copy.deepcopy(cache)  # the forward pass appends the rows' own keys and values to it
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        full_mask = torch.cat([torch.ones((rows, start), dtype=mask.dtype, device=mask.device), mask], 1)
        positions = torch.arange(start, start + length, device=mask.device).expand(rows, -1)
        with self.precision.autocast():
            out = self.model.backbone(
                input_ids=input_ids,
                attention_mask=full_mask,
                position_ids=positions,
                use_cache=True,
                **{_cache_argument(self.model.backbone): cache},
            )
        hidden = torch.cat(
            [head_states.expand(rows, -1, -1).to(out.last_hidden_state.dtype), out.last_hidden_state], 1
        )
        return self._pool(hidden, full_mask, spans)

    @torch.inference_mode()
    def _encode_batch(
        self,
        ids: list[list[int]],
        spans: list[tuple[int, int]],
        after_prompt: bool = False,
        graph: bool | None = None,
    ) -> torch.Tensor:
        if after_prompt:
            fp32_tail = (
                Fp32Layers(list(decoder_layers(self.model.model))[-self.precision.fp32_last :])
                if self.precision.fp32_last and self.precision.autocast_dtype is not None
                else None
            )
            try:
                return self._encode_after_prompt(ids, spans)
            finally:
                if fp32_tail is not None:
                    fp32_tail.remove()
        input_ids, mask, positions = pad_batch(ids, self.pad_id, self.precision.device)
        in_graph = self.backend != "torch" if graph is None else graph
        if in_graph:
            pool_mask = None
            if self.method.pool_text_only:
                pos = torch.arange(mask.shape[1])
                pool_mask = torch.stack([(pos >= s) & (pos < e) for s, e in spans]).long()
            return self.runner.pooled(input_ids, mask, pool_mask)
        # The bidirectional hooks are installed for this forward pass only, so encoders with
        # different methods can share one loaded model.
        bidirectional = (
            BidirectionalLayers(self.model.model, self.method.bidirectional)
            if self.method.bidirectional
            else None
        )
        fp32_tail = (
            Fp32Layers(list(decoder_layers(self.model.model))[-self.precision.fp32_last :])
            if self.precision.fp32_last and self.precision.autocast_dtype is not None
            else None
        )
        try:
            with self.precision.autocast():
                out = self.model.backbone(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
                )
        finally:
            if bidirectional is not None:
                bidirectional.remove()
            if fp32_tail is not None:
                fp32_tail.remove()
        return self._pool(out.last_hidden_state, mask, spans)

    def encode(
        self,
        texts: Sequence[str],
        *,
        show_progress: bool | None = None,
        normalize: bool = False,
        desc: str = "encoding",
        on_batch: Callable[[int, int], None] | None = None,
        journal: Any = None,
        queries: bool = False,
    ) -> np.ndarray:
        """Pooled last-layer embeddings [n, hidden] as float32, in the order of ``texts``.

        ``hidden_states[-1]`` of HF decoders is already after the final norm: no second norm.
        ``normalize`` L2-normalises the rows (for cosine similarity). Stats of the call are in
        :attr:`stats` (accumulated) and :attr:`last_stats`. ``on_batch(texts, tokens)`` is called
        after each batch (progress bars of callers that encode in large chunks). ``journal``
        (:class:`keytok.encoding.cache.BatchJournal`): batches it holds are read back instead of run, and
        each batch run is saved to it, so a stopped call resumes at batch grain; ``stats.tokens`` counts only
        the batches run. ``queries``: the texts are search queries; a short call of them then runs after the
        prompt's cached keys and values (:meth:`prompt_cache_applies`).
        """
        started = time.perf_counter()
        self.apply_precision()
        tokenized = self.tokenize(texts)
        graph = self.backend != "torch" or (queries and self.query_backend != "torch")
        stats = EncodeStats(texts=len(texts), precision=self.describe(queries))
        stats.truncated = sum(tokenized.truncated)
        out = np.zeros((len(texts), self.model.hidden_size), dtype=np.float32)
        lengths = [len(x) for x in tokenized.ids]
        batches = plan_batches(lengths, self.batch_tokens)
        if texts and not graph and _compile_wanted(sum(lengths), self.precision.device):
            shortest = min(range(len(texts)), key=lengths.__getitem__)
            stats.compiled = compile_layers(
                self.model.model,
                lambda: self._encode_batch([tokenized.ids[shortest]], [tokenized.text_spans[shortest]]),
            )
        after_prompt = not graph and queries and journal is None and self.prompt_cache_applies(len(texts))
        with self._threads_for(len(texts)):
            self._run_batches(
                tokenized, batches, stats, (after_prompt, graph), show_progress, desc, on_batch, journal, out
            )
        stats.seconds = time.perf_counter() - started
        self.last_stats = stats
        self.stats.merge(stats)
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
        return out

    def _run_batches(
        self,
        tokenized: Tokenized,
        batches: list[list[int]],
        stats: EncodeStats,
        way: tuple[bool, bool],
        show_progress: bool | None,
        desc: str,
        on_batch: Callable[[int, int], None] | None,
        journal: Any,
        out: np.ndarray,
    ) -> None:
        """Run (or read back from ``journal``) each batch into ``out``, counting into ``stats``; ``way``:
        (after the prompt's cached keys and values, in the ONNX graph)."""
        from tqdm.auto import tqdm

        lengths = [len(x) for x in tokenized.ids]
        if show_progress is None:
            show_progress = sum(lengths) > 20_000
        with tqdm(
            total=sum(lengths), unit="tok", unit_scale=True, desc=desc, disable=not show_progress
        ) as bar:
            for batch in batches:
                ids = [tokenized.ids[i] for i in batch]
                spans = [tokenized.text_spans[i] for i in batch]
                rows = journal.get(ids, spans) if journal is not None else None
                real = sum(len(x) for x in ids)
                if rows is None:
                    rows = self._encode_batch(ids, spans, *way).cpu().numpy()
                    if journal is not None:
                        journal.put(ids, spans, rows)
                    stats.tokens += real
                    stats.padded_tokens += max(len(x) for x in ids) * len(ids)
                    stats.batches += 1
                out[batch] = rows
                bar.update(real)
                if on_batch is not None:
                    on_batch(len(batch), real)

    # -- projection -----------------------------------------------------------------------------
    @property
    def head_model(self) -> LoadedModel:
        return self._head_model or self.model

    @property
    def head_spec(self) -> str | None:
        """The model the LM head comes from when it is not the embedder's own (recorded in indexes), else None."""
        return None if self._head_model is None else str(self._head_model.name)

    @property
    def vocab_size(self) -> int:
        return self.head_model.vocab_size

    def _softcap(self) -> float | None:
        cfg = self.head_model.model.config.get_text_config()
        return getattr(cfg, "final_logit_softcapping", None)

    @torch.inference_mode()
    def logits_topk(
        self, embeddings: np.ndarray | torch.Tensor, k: int = 10, vocab_chunk: int = VOCAB_CHUNK
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``lm_head(e)`` for each row: (scores [n, k] float32, token ids [n, k] int64).

        Raw logits (no softmax); the head is applied in vocabulary chunks so memory stays
        bounded by rows x chunk whatever the vocabulary.
        """
        weight = self.head_model.lm_head_weight
        e = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(weight.device)
        if e.dim() == 1:
            e = e[None]
        if e.shape[1] != weight.shape[1]:
            raise KeytokError(f"embeddings are {e.shape[1]}-d; the LM head takes {weight.shape[1]}-d")
        # Qwen2, OPT, ... pad their head past the tokenizer (for matmul shapes): rows no token names are no key tokens.
        named = min(weight.shape[0], len(self.head_model.tokenizer))
        k = min(k, named)
        if self._runner is not None and self._head_model is None and named == weight.shape[0]:
            known = self._runner.top_for(e.numpy(), k)  # computed by the graph with these rows
            if known is not None:
                return known
        with self._threads_for(e.shape[0]):
            return self._head_topk(e, weight, named, k, vocab_chunk)

    def _head_topk(
        self, e: torch.Tensor, weight: torch.Tensor, named: int, k: int, vocab_chunk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        best_s = torch.full((e.shape[0], 0), float("-inf"))
        best_i = torch.zeros((e.shape[0], 0), dtype=torch.long)
        bias = getattr(self.head_model.model.get_output_embeddings(), "bias", None)
        for start in range(0, named, vocab_chunk):
            w = weight[start : min(start + vocab_chunk, named)].float()
            logits = e @ w.T
            if bias is not None:
                logits += bias[start : start + vocab_chunk].float()
            s, i = logits.topk(min(k, logits.shape[1]), dim=1)
            best_s = torch.cat([best_s, s.cpu()], 1)
            best_i = torch.cat([best_i, (i + start).cpu()], 1)
            if best_s.shape[1] > k:
                best_s, pos = best_s.topk(k, dim=1)
                best_i = best_i.gather(1, pos)
        cap = self._softcap()
        if cap:
            best_s = torch.tanh(best_s / cap) * cap
        return best_s.numpy().astype(np.float32), best_i.numpy()
