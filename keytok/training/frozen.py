"""A decoder split in two: the lower layers run once per text and are cached; the top layers train.

Training only the top ``k`` layers (plus the final norm) of a causal LM means the lower ``L - k`` layers give
the same output for a text at every step. :func:`build_frozen_cache` runs them once per unique text, under
the method's prompt and tokenised exactly as :class:`~keytok.encoding.encoder.Encoder` tokenises
(:meth:`Encoder.tokenize`), and keeps each text's hidden states ``[tokens, hidden]`` in one flat tensor
(bf16 by default: 2 bytes x hidden per token, 1.15 KB per token for SmolLM2; 16,000 sentences of ~28
tokens under the BeLLM prompt are ~0.5 GB). :class:`SplitDecoder` then runs only the top layers on a batch
of cached states.

Both halves see exactly what one full forward pass would (``tests/test_training.py`` checks it against the
encoder): rows are right-padded with ``position_ids = 0..n-1`` as the encoder does; the rotary embeddings
are computed from those positions by the model's own ``rotary_emb`` and passed to every layer, as
``LlamaModel.forward`` does; causal layers get the model's own causal + padding mask
(``transformers.masking_utils.create_causal_mask``); the last ``bidirectional`` layers get the padding-only
mask of :mod:`keytok.models.bidirectional` (each position sees every real token of its text, no padding).
A text's cached states do not depend on the batch it was computed in: causal layers never look ahead, and
padding is masked everywhere.

Supported: decoders laid out like ``LlamaModel`` (``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``;
Llama, Mistral, Qwen2/3 without sliding windows). Others raise a one-line KeytokError.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_path
from keytok.utils.hashing import sha256_text

CACHE_FORMAT = 1
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _causal_mask_args(config: Any, hidden: torch.Tensor, pad: torch.Tensor, positions: torch.Tensor) -> dict:
    """Keyword arguments of ``transformers.masking_utils.create_causal_mask`` for a cache-less forward pass.

    Its signature changed within transformers 5 (``input_embeds``/``past_key_values``/``cache_position``
    became ``inputs_embeds``/``cache``): name what this version takes.
    """
    import inspect

    from transformers.masking_utils import create_causal_mask

    params = inspect.signature(create_causal_mask).parameters
    args: dict[str, Any] = {"config": config, "attention_mask": pad, "position_ids": positions}
    args["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    # Versions that take both warn when both are passed: name the newer one only.
    cache_name = next((n for n in ("cache", "past_key_values") if n in params), None)
    if cache_name is not None:
        args[cache_name] = None
    if "cache_position" in params:
        args["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return args


def decoder_of(model: Any) -> Any:
    """The decoder stack of a causal LM, checked to have the parts a split forward needs."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    missing = [p for p in ("embed_tokens", "layers", "rotary_emb", "norm") if not hasattr(decoder, p)]
    if missing:
        raise KeytokError(
            f"{type(model).__name__}: keytok train supports Llama-style decoders; this one lacks {', '.join(missing)}"
        )
    config = model.config.get_text_config()
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(config, "sliding_window", None):
        raise KeytokError(
            f"{type(model).__name__}: keytok train does not support sliding-window attention layers"
        )
    return decoder


def padding_only_mask(pad: torch.Tensor, dtype: torch.dtype, attn_impl: str) -> torch.Tensor:
    """Bidirectional layers' mask [b, 1, q, k]: every real token of the row, no padding.

    The same mask as :class:`keytok.models.bidirectional.BidirectionalLayers` builds: boolean for SDPA,
    additive (0 / dtype min) for eager attention.
    """
    allowed = pad.bool()[:, None, None, :].expand(-1, 1, pad.shape[1], -1)
    if attn_impl == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=pad.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


@contextlib.contextmanager
def _not_causal(layers: Sequence[Any]) -> Iterator[None]:
    """SDPA takes its fused causal path when a layer has no mask and ``is_causal`` set; switch it off."""
    saved = []
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        saved.append(getattr(attn, "is_causal", None))
        if attn is not None:
            attn.is_causal = False
    try:
        yield
    finally:
        for layer, was in zip(layers, saved, strict=True):
            if was is not None:
                layer.self_attn.is_causal = was


class SplitDecoder:
    """Run a range of decoder layers with the masks and rotary embeddings of a full forward pass.

    ``bidirectional`` counts the last layers of the whole stack that attend in both directions.
    """

    def __init__(self, model: Any, bidirectional: int) -> None:
        self.model = model
        self.decoder = decoder_of(model)
        self.config = model.config.get_text_config()
        self.n_layers = len(self.decoder.layers)
        if not 0 <= bidirectional <= self.n_layers:
            raise KeytokError(f"bidirectional={bidirectional}: the model has {self.n_layers} decoder layers")
        self.bidirectional = bidirectional
        self.attn_impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (the hidden state entering layer 0)."""
        return self.decoder.embed_tokens(input_ids)

    def run(
        self,
        hidden: torch.Tensor,
        pad: torch.Tensor,
        start: int,
        end: int,
        final_norm: bool,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """Layers ``start .. end-1`` on ``hidden`` [b, n, d] with padding mask ``pad`` [b, n] (1 = real).

        Rows are right-padded, positions 0..n-1. ``final_norm`` applies the decoder's last norm after.
        ``checkpoint`` (gradient checkpointing, when autograd is on) keeps only each layer's input and runs
        the layer again during the backward pass: the activations of one layer are in memory at a time
        instead of all of them, for a second forward pass; the gradients are the same.
        """
        from transformers.masking_utils import create_causal_mask

        positions = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
        position_embeddings = self.decoder.rotary_emb(hidden, position_ids=positions)
        first_bidir = self.n_layers - self.bidirectional
        causal_mask = None
        if start < first_bidir:
            causal_mask = create_causal_mask(**_causal_mask_args(self.config, hidden, pad, positions))
        bidir_mask = padding_only_mask(pad, hidden.dtype, self.attn_impl) if end > first_bidir else None
        layers = list(self.decoder.layers)
        with _not_causal(layers[max(start, first_bidir) : end]):
            for i in range(start, end):
                layer = _checkpointed(layers[i]) if checkpoint and torch.is_grad_enabled() else layers[i]
                hidden = layer(
                    hidden,
                    attention_mask=bidir_mask if i >= first_bidir else causal_mask,
                    position_embeddings=position_embeddings,
                    position_ids=positions,
                    use_cache=False,
                )
        return self.decoder.norm(hidden) if final_norm else hidden


def _checkpointed(layer: Any) -> Any:
    """``layer`` under :func:`torch.utils.checkpoint.checkpoint`: its input is kept, its activations are
    recomputed in the backward pass (non-reentrant, which takes keyword arguments and parameters that need
    gradients while the input does not; the RNG state is restored for the rerun, so dropout draws the same
    masks)."""
    from torch.utils.checkpoint import checkpoint

    def call(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)

    return call


@dataclass
class FrozenCache:
    """The lower layers' output for each text: ``states[offsets[i]:offsets[i+1]]`` is text i's [tokens, d]."""

    texts: list[str]
    split: int  # states are the input of layer ``split`` (the output of layers 0..split-1)
    states: torch.Tensor  # [total tokens, hidden], bf16/fp16/fp32
    offsets: np.ndarray  # [n + 1] int64
    spans: list[tuple[int, int]]  # each text's own tokens within its prompt
    key: str  # what the states depend on (model, method, max length, split, texts)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self._row = {t: i for i, t in enumerate(self.texts)}

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> str:
        return (
            f"{len(self.texts):,} texts, {self.tokens:,} tokens, {self.nbytes / 2**20:,.0f} MiB "
            f"({str(self.states.dtype).removeprefix('torch.')}) of layer-{self.split} inputs"
        )

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """The tokens (prompt included, no padding) of each of ``texts``."""
        rows = self._rows(texts)
        return [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]

    def _rows(self, texts: Sequence[str]) -> list[int]:
        try:
            return [self._row[t] for t in texts]
        except KeyError as exc:
            raise KeytokError(f"text not in the frozen-layer cache: {str(exc)[:60]}") from None

    def batch(
        self, texts: Sequence[str], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Right-padded fp32 states [b, n, d], the padding mask [b, n] and the text spans of ``texts``."""
        rows = self._rows(texts)
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        longest = max(lengths)
        hidden = torch.zeros((len(rows), longest, self.states.shape[1]), dtype=torch.float32)
        pad = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            hidden[i, :n] = self.states[self.offsets[r] : self.offsets[r + 1]].float()
            pad[i, :n] = 1
        return hidden.to(device), pad.to(device), [self.spans[r] for r in rows]

    def save(self, path: str | Path) -> None:
        """Write the cache as one safetensors file (atomically)."""
        from safetensors.torch import save_file

        meta = {
            "format": str(CACHE_FORMAT),
            "key": self.key,
            "split": str(self.split),
            "texts": json.dumps(self.texts, ensure_ascii=False),
            "spans": json.dumps(self.spans),
        }
        tensors = {"states": self.states.contiguous(), "offsets": torch.from_numpy(self.offsets)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(
        cls, path: str | Path, expect_key: str, texts: Sequence[str] | None = None
    ) -> FrozenCache | None:
        """The cache at ``path`` if it exists and was built for ``expect_key``; else None.

        With ``texts``, a cache built by the same model, method, max length and split over a *superset* of
        ``texts`` is accepted too (a run on part of another run's data reuses its cache).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != str(CACHE_FORMAT) or not _same_setting(
                    meta.get("key"), expect_key, texts
                ):
                    return None
                states = fh.get_tensor("states")
                offsets = fh.get_tensor("offsets").numpy()
            texts_in = json.loads(meta["texts"])
            spans = [tuple(s) for s in json.loads(meta["spans"])]
        except Exception:  # a damaged cache is rebuilt, not trusted
            return None
        if meta["key"] != expect_key and not set(texts or ()) <= set(texts_in):
            return None
        return cls(texts_in, int(meta["split"]), states, offsets, spans, meta["key"])


def _same_setting(found: str | None, expect: str, texts: Sequence[str] | None) -> bool:
    """Keys equal, or (when ``texts`` are given) equal but for the texts they cover."""
    if found == expect:
        return True
    if found is None or texts is None:
        return False
    try:
        a, b = json.loads(found), json.loads(expect)
    except json.JSONDecodeError:
        return False
    a.pop("texts", None)
    b.pop("texts", None)
    return a == b


def cache_key(fingerprint: str, method_key: str, max_length: int, split: int, texts: Sequence[str]) -> str:
    """What a frozen cache depends on, as one string."""
    text_hash = sha256_text("\0".join(texts))
    return json.dumps(
        {
            "model": fingerprint,
            "method": method_key,
            "max_length": max_length,
            "split": split,
            "texts": text_hash,
        },
        sort_keys=True,
    )


@torch.no_grad()
def build_frozen_cache(
    encoder: Any,
    texts: Sequence[str],
    split: int,
    dtype: str = "bf16",
    show_progress: bool = False,
) -> FrozenCache:
    """Run layers ``0 .. split-1`` of ``encoder``'s model once per text and keep their output.

    ``encoder`` is a :class:`~keytok.encoding.encoder.Encoder`: its tokenisation (prompt, truncation), its
    method's bidirectional layers, precision, device and token-budget batching are used as they are.
    """
    from tqdm.auto import tqdm

    from keytok.encoding.encoder import plan_batches

    if dtype not in _DTYPES:
        raise KeytokError(f"unknown cache dtype '{dtype}' (choose from {', '.join(_DTYPES)})")
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise KeytokError("no texts to cache")
    loaded = encoder.model
    split_decoder = SplitDecoder(loaded.model, encoder.method.bidirectional)
    if not 0 <= split <= split_decoder.n_layers:
        raise KeytokError(f"split {split}: the model has {split_decoder.n_layers} decoder layers")
    started = time.perf_counter()
    tokenized = encoder.tokenize(texts)
    lengths = [len(x) for x in tokenized.ids]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    states = torch.empty((int(offsets[-1]), loaded.hidden_size), dtype=_DTYPES[dtype])
    device = encoder.precision.device
    batches = plan_batches(lengths, encoder.batch_tokens)
    encoder.apply_precision()
    with tqdm(
        total=sum(lengths), unit="tok", unit_scale=True, desc="frozen layers", disable=not show_progress
    ) as bar:
        for batch in batches:
            longest = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), longest), encoder.pad_id, dtype=torch.long)
            pad = torch.zeros((len(batch), longest), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : lengths[i]] = torch.tensor(tokenized.ids[i])
                pad[r, : lengths[i]] = 1
            ids, pad = ids.to(device), pad.to(device)
            with encoder.precision.autocast():
                hidden = split_decoder.embed(ids)
                hidden = split_decoder.run(hidden, pad, 0, split, final_norm=False)
            hidden = hidden.to("cpu", _DTYPES[dtype])
            for r, i in enumerate(batch):
                states[offsets[i] : offsets[i + 1]] = hidden[r, : lengths[i]]
            bar.update(sum(lengths[i] for i in batch))
    key = cache_key(loaded.fingerprint, encoder.method.key(), encoder.max_length, split, texts)
    return FrozenCache(
        texts, split, states, offsets, tokenized.text_spans, key, seconds=time.perf_counter() - started
    )
