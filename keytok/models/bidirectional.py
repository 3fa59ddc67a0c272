"""BeLLM-style bidirectional attention on the last k decoder layers, with padding kept masked.

keytok implements the *sequential* variant, the paper's description and the later ``billm``
package's (``BiLLM_START_INDEX``): layers ``L-k .. L-1`` run in order as usual, but each attends
to every position instead of only earlier ones. (The first public version, in the AnglE
repository, instead ran a second branch from the input embeddings through the bidirectional
layers and added it to the causal output; it is not implemented.)

The public code replaces the causal mask by an all-zero mask, so its bidirectional layers also
attend to padding and a text's embedding depends on what it is batched with. Here the mask of
those layers lets each position see every *real* token of its own text and no padding, so a
text embeds the same alone and inside a padded batch (tests check it). Sliding-window layers
(Gemma 3) keep their window, symmetrically: |i - j| < window.

Under last-token pooling a bidirectional *last* layer changes nothing: the last token already
attends to every real token, and what the other positions of that layer see reaches no later
layer (tests check it; measured on STS with SmolLM2, ``bellm`` and ``bellm:bidirectional=0`` give
identical Spearman). Bidirectionality reaches a last-token embedding only from k >= 2, or with
mean pooling.

Implemented with forward pre-hooks rather than by editing model code, so it applies to any
transformers decoder whose layers receive ``attention_mask`` as a keyword, and is removed by
:meth:`BidirectionalLayers.remove`. Where each family keeps its window differs, and every one is read:
the attention module's ``sliding_window`` (Qwen2/3, Gemma 2/3: None on full layers), the config's
``sliding_window`` for all layers (Mistral, Phi-3, whose attention modules hold none), GPT-Neo's
``window_size`` on its local layers. GPT-Neo also ANDs a fixed causal buffer into its scores whatever the
mask says; that buffer is swapped for a symmetric one while installed. ``k = -1`` (:data:`ALL_LAYERS`)
makes every layer bidirectional (LLM2Vec, GritLM).
"""

from __future__ import annotations

from typing import Any

import torch

from keytok.errors import KeytokError

ALL_LAYERS = -1  # bidirectional=-1: every decoder layer


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder's blocks in order (``layers``; GPT-Neo's ``h``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        layers = getattr(decoder, "h", None)
    if layers is None:
        raise KeytokError(f"{type(model).__name__}: cannot find its decoder layers to make bidirectional")
    return layers


def attention_module(layer: Any) -> Any:
    """A decoder block's self-attention (``self_attn``; GPT-Neo's ``attn.attention``), or None."""
    attn = getattr(layer, "self_attn", None)
    if attn is None and hasattr(layer, "attn"):
        attn = getattr(layer.attn, "attention", layer.attn)
    return attn


def attention_window(layer: Any, config: Any) -> int | None:
    """How far a layer's attention reaches (None: everywhere), wherever its family keeps it."""
    attn = attention_module(layer)
    if attn is not None and hasattr(attn, "sliding_window"):
        return attn.sliding_window or None
    if getattr(attn, "attention_type", None) == "local":  # GPT-Neo
        return int(config.window_size)
    if getattr(attn, "attention_type", None) == "global":
        return None
    return getattr(config.get_text_config(), "sliding_window", None) or None


class BidirectionalLayers:
    """Make the last ``k`` decoder layers of ``model`` bidirectional while installed.

    The padding mask is read from the ``attention_mask`` keyword of the decoder's forward call,
    so the decoder must be called with one (keytok's encoder always passes it).
    """

    def __init__(self, model: Any, k: int) -> None:
        layers = decoder_layers(model)
        k = len(layers) if k == ALL_LAYERS else k
        if not 0 < k <= len(layers):
            raise KeytokError(f"bidirectional={k}: the model has {len(layers)} decoder layers")
        self.k = k
        self.layers = list(layers)[len(layers) - k :]
        self._attn_impl = getattr(model.config, "_attn_implementation", "sdpa")
        self._windows = {id(layer): attention_window(layer, model.config) for layer in self.layers}
        self._padding_mask: torch.Tensor | None = None
        self._mask_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        self._handles = [decoder.register_forward_pre_hook(self._capture, with_kwargs=True)]
        self._was_causal = []
        self._buffers: list[tuple[Any, torch.Tensor]] = []
        for layer in self.layers:
            self._handles.append(layer.register_forward_pre_hook(self._replace_mask, with_kwargs=True))
            attn = attention_module(layer)
            self._was_causal.append(getattr(attn, "is_causal", None))
            if attn is not None:
                # SDPA takes its fused causal path when the mask is None and is_causal is set.
                attn.is_causal = False
            bias = getattr(attn, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.dtype == torch.bool and bias.dim() == 4:
                # GPT-Neo's causal (or local) buffer, applied whatever the mask says: make it symmetric.
                self._buffers.append((attn, bias))
                n = bias.shape[-1]
                pos = torch.arange(n, device=bias.device)
                window = self._windows[id(layer)]
                symmetric = torch.ones(n, n, dtype=torch.bool, device=bias.device)
                if window:
                    symmetric = (pos[:, None] - pos[None, :]).abs() < window
                attn.bias = symmetric[None, None]

    def _capture(self, module: Any, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids")
            ids = ids if ids is not None else kwargs.get("inputs_embeds")
            if ids is None:
                raise KeytokError("bidirectional layers need input_ids or inputs_embeds")
            mask = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        if mask.dim() != 2:
            raise KeytokError("bidirectional layers need a 2-D padding attention_mask")
        self._padding_mask = mask
        self._mask_cache.clear()

    def _layer_mask(self, layer: Any, hidden: torch.Tensor) -> torch.Tensor:
        pad = self._padding_mask
        assert pad is not None
        window = self._windows[id(layer)]
        key = (window, hidden.dtype, self._attn_impl)
        if key in self._mask_cache:
            return self._mask_cache[key]
        keys = pad.to(device=hidden.device, dtype=torch.bool)  # [b, L]
        allowed = keys[:, None, None, :].expand(-1, 1, pad.shape[1], -1)  # [b, 1, q, k]
        if window:
            pos = torch.arange(pad.shape[1], device=hidden.device)
            allowed = allowed & ((pos[:, None] - pos[None, :]).abs() < window)
        if self._attn_impl == "eager":
            # Eager attention adds the mask to the scores.
            mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
            mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        else:
            mask = allowed
        self._mask_cache[key] = mask
        return mask

    def _replace_mask(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._padding_mask is None:
            raise KeytokError(
                "bidirectional layers: the decoder was called without going through its forward"
            )
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = self._layer_mask(module, hidden)
        return args, kwargs

    def remove(self) -> None:
        """Restore causal attention."""
        for handle in self._handles:
            handle.remove()
        for layer, was in zip(self.layers, self._was_causal, strict=True):
            attn = attention_module(layer)
            if attn is not None and was is not None:
                attn.is_causal = was
        for attn, bias in self._buffers:
            attn.bias = bias
        self._handles, self._buffers = [], []
