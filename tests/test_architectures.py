"""The architecture matrix: every decoder family of the paper's embedders x every embedding method.

For each tiny twin (tests/tiny_architectures.py) and method, keytok's pooled embedding must equal a
reference computed here from the Hugging Face model's own forward pass (a second copy of the model, loaded
here with eager attention), with masks built here: a 2-D padding mask for causal layers (the model builds its
own causal and sliding-window masks from it), and explicit 4-D masks for bidirectional layers (each position
sees every real token of its text, within the layer's window on both sides, and no padding). The reference
shares nothing with keytok's tokenisation, padding, masks or pooling. Each text is also checked alone against
the same text inside left- and right-padded batches, and bidirectional layers against what padding holds.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from tiny_architectures import ARCHITECTURES, EOS, build_tiny_architecture

TEXTS = [
    "vitamin d deficiency is linked to bone loss .",
    "the cat sat on the mat",
    "aspirin reduces the risk of heart attack in older adults and patients with cancer",
    "cells",
]

# method -> (keytok spec, reference recipe written out independently of keytok.models.methods)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "mean": ("mean", {"template": "{text}", "pool": "mean"}),
    "wmean": ("wmean", {"template": "{text}", "pool": "wmean"}),
    "last": ("last", {"template": "{text}", "pool": "last"}),
    "last+eos": ("last:append_eos=true", {"template": "{text}", "pool": "last", "eos": True}),
    "prompteol": ("prompteol", {"template": 'This sentence : "{text}" means in one word:"', "pool": "last"}),
    "instruct": (
        "instruct:instruction=the study of cells",
        {"template": "the study of cells\n{text}", "pool": "mean", "text_only": True},
    ),
    "bellm": (
        "bellm:bidirectional=2",
        {"template": 'The representative word for sentence {text} is:"', "pool": "last", "bidir": 2},
    ),
    "bidir-all": ("mean:bidirectional=all", {"template": "{text}", "pool": "mean", "bidir": 4}),
}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_cpu(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module", params=ARCHITECTURES)
def twin(request, tmp_path_factory) -> dict[str, Any]:
    """A tiny checkpoint of one architecture: keytok's loaded model and an independent HF copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from keytok.models.loading import load_model

    arch = request.param
    folder = build_tiny_architecture(tmp_path_factory.mktemp(arch), arch)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return {
        "arch": arch,
        "folder": folder,
        "loaded": load_model(str(folder)),
        "hf": reference.eval(),
        "tokenizer": AutoTokenizer.from_pretrained(folder),
    }


def _encoder(twin: dict[str, Any], spec: str) -> Any:
    from keytok.encoding.encoder import Encoder

    return Encoder(twin["loaded"], spec, dtype="fp32", device="cpu")


# ---------------------------------------------------------------------------------------------- reference
def _layer_windows(hf: Any) -> list[int | None]:
    """Each layer's attention window from the config (None: global), as each family defines it."""
    c = hf.config
    n = c.num_layers if c.model_type == "gpt_neo" else c.num_hidden_layers
    if c.model_type == "gpt_neo":
        return [c.window_size if kind == "local" else None for kind in c.attention_layers]
    if getattr(c, "layer_types", None) and c.model_type != "mistral":
        return [c.sliding_window if t == "sliding_attention" else None for t in c.layer_types]
    return [getattr(c, "sliding_window", None)] * n


def _layers(hf: Any) -> list[Any]:
    base = hf.base_model
    return list(base.h if hf.config.model_type == "gpt_neo" else base.get_decoder().layers)


def _tokens(tokenizer: Any, recipe: dict[str, Any], text: str) -> tuple[list[int], tuple[int, int]]:
    """Token ids of the prompted text and the text's span: the tokenizer's own specials around the prompt
    prefix, the text and the suffix tokenised apart (keytok's documented contract: only the text is cut), EOS
    appended if asked."""
    prefix, _, suffix = recipe["template"].partition("{text}")
    lead = tokenizer("x")["input_ids"][:-1] if tokenizer("x")["input_ids"][-1] != EOS else []

    def plain(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    head, body = [*lead, *plain(prefix)], plain(text)
    ids = [*head, *body, *plain(suffix)]
    if recipe.get("eos"):
        ids = [*ids, EOS]
    return ids, (len(head), len(head) + len(body))


def _bidirectional_mask(real: torch.Tensor, window: int | None) -> torch.Tensor:
    """Additive [b, 1, n, n] mask: every real token of the row, within ``window`` on both sides."""
    allowed = real[:, None, None, :].expand(-1, 1, real.shape[1], -1)
    if window:
        pos = torch.arange(real.shape[1])
        allowed = allowed & ((pos[:, None] - pos[None, :]).abs() < window)
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _masks_for(hf: Any, real: torch.Tensor) -> Any:
    """The bidirectional mask argument of the whole model: one tensor, or one per layer type."""
    windows = _layer_windows(hf)
    c = hf.config
    if c.model_type in ("qwen2", "qwen3", "gemma2", "gemma3_text"):  # masks per layer type
        return {
            "full_attention": _bidirectional_mask(real, None),
            "sliding_attention": _bidirectional_mask(real, c.sliding_window),
        }
    if c.model_type == "gpt_neo":  # the window lives in each layer's causal buffer (see _gpt_neo_bias)
        return _bidirectional_mask(real, None)
    return _bidirectional_mask(real, windows[0])


@contextmanager
def _gpt_neo_bias(hf: Any, layers: list[int]):
    """GPT-Neo ANDs a fixed causal (or local) buffer into its scores: make it symmetric in ``layers``."""
    saved = {}
    try:
        if hf.config.model_type == "gpt_neo":
            windows = _layer_windows(hf)
            for i in layers:
                attn = _layers(hf)[i].attn.attention
                saved[i] = attn.bias
                n = attn.bias.shape[-1]
                pos = torch.arange(n)
                sym = torch.ones(n, n, dtype=torch.bool)
                if windows[i]:
                    sym = (pos[:, None] - pos[None, :]).abs() < windows[i]
                attn.bias = sym[None, None]
        yield
    finally:
        for i, bias in saved.items():
            _layers(hf)[i].attn.attention.bias = bias


@torch.no_grad()
def reference_embeddings(
    twin: dict[str, Any], recipe: dict[str, Any], texts: list[str], side: str
) -> torch.Tensor:
    """Pooled embeddings of ``texts`` batched with ``side`` padding, from the HF model's own forward pass."""
    hf, tokenizer = twin["hf"], twin["tokenizer"]
    rows = [_tokens(tokenizer, recipe, t) for t in texts]
    n = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), n), 3, dtype=torch.long)  # <unk>, a real word, as padding
    real = torch.zeros((len(rows), n), dtype=torch.bool)
    position_ids = torch.zeros((len(rows), n), dtype=torch.long)
    offsets = []
    for r, (ids, _) in enumerate(rows):
        off = n - len(ids) if side == "left" else 0
        offsets.append(off)
        input_ids[r, off : off + len(ids)] = torch.tensor(ids)
        real[r, off : off + len(ids)] = True
        position_ids[r, off : off + len(ids)] = torch.arange(len(ids))
    base = hf.base_model
    args = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    n_layers = len(_layers(hf))
    k = recipe.get("bidir", 0)
    if k == 0:
        hidden = base(**args, attention_mask=real.long()).last_hidden_state
    elif k == n_layers:  # every layer: an explicit non-causal mask for the whole model
        with _gpt_neo_bias(hf, list(range(n_layers))):
            hidden = base(**args, attention_mask=_masks_for(hf, real)).last_hidden_state
    else:  # the last k layers: the masks the model derives from the explicit one, spliced into a causal pass
        seen: dict[int, Any] = {}
        layers = _layers(hf)
        with ExitStack() as stack:
            for i in range(n_layers - k, n_layers):
                hook = layers[i].register_forward_pre_hook(
                    lambda m, a, kw, i=i: seen.__setitem__(i, kw["attention_mask"]), with_kwargs=True
                )
                stack.callback(hook.remove)
            base(**args, attention_mask=_masks_for(hf, real))
        with ExitStack() as stack:
            for i in range(n_layers - k, n_layers):
                hook = layers[i].register_forward_pre_hook(
                    lambda m, a, kw, i=i: (a, {**kw, "attention_mask": seen[i]}), with_kwargs=True
                )
                stack.callback(hook.remove)
            stack.enter_context(_gpt_neo_bias(hf, list(range(n_layers - k, n_layers))))
            hidden = base(**args, attention_mask=real.long()).last_hidden_state
    out = []
    for r, (ids, (start, end)) in enumerate(rows):
        h = hidden[r, offsets[r] : offsets[r] + len(ids)].double()
        if recipe["pool"] == "last":
            out.append(h[-1])
            continue
        if recipe.get("text_only"):
            h = h[start:end]
        w = (
            torch.arange(1, len(h) + 1, dtype=torch.float64)
            if recipe["pool"] == "wmean"
            else torch.ones(len(h))
        )
        out.append((h * w[:, None].double()).sum(0) / w.sum())
    return torch.stack(out).float()


# ---------------------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("method", list(METHODS))
def test_embedding_equals_the_models_own_forward(twin, method):
    spec, recipe = METHODS[method]
    enc = _encoder(twin, spec)
    got = torch.from_numpy(enc.encode(TEXTS))
    alone = torch.from_numpy(np.concatenate([enc.encode([t]) for t in TEXTS]))
    want = reference_embeddings(twin, recipe, TEXTS, "right")
    want_left = reference_embeddings(twin, recipe, TEXTS, "left")
    want_alone = torch.cat([reference_embeddings(twin, recipe, [t], "right") for t in TEXTS])
    # the reference itself: a text alone = in a left- or right-padded batch
    torch.testing.assert_close(want, want_alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(want_left, want_alone, atol=1e-4, rtol=1e-4)
    # keytok: alone = batched = the reference
    torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, want_alone, atol=1e-4, rtol=1e-4)
    assert got.std(0).mean() > 1e-3  # texts differ: the comparison has something to compare


@pytest.mark.parametrize("method", ["bellm", "bidir-all"])
def test_bidirectional_layers_do_not_attend_to_padding(twin, method):
    """What the padding positions hold (which token, hence which states) must not reach any text."""
    spec, _ = METHODS[method]
    enc = _encoder(twin, spec)
    base = enc.encode(TEXTS)
    for pad in (5, 40):  # real words as padding: their states are as loud as a text's
        enc.pad_id = pad
        np.testing.assert_allclose(enc.encode(TEXTS), base, atol=1e-4, rtol=1e-4)
    # and the layers are bidirectional at all: a later token changes an earlier one's state
    causal = _encoder(twin, spec.split(":")[0] + ":bidirectional=0").encode(TEXTS)
    assert np.abs(causal - base).max() > 1e-3


def test_gemma_scales_its_embeddings_and_caps_its_logits(twin):
    """Gemma multiplies token embeddings by sqrt(d) and soft-caps logits: both must survive keytok's loading."""
    if not twin["arch"].startswith("gemma"):
        pytest.skip("Gemma only")
    model = twin["loaded"].model
    ids = torch.tensor([[5, 6, 7]])
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings()(ids), weight[ids] * model.config.hidden_size**0.5)
    enc = _encoder(twin, "mean")
    emb = enc.encode(TEXTS)
    scores, _ = enc.logits_topk(emb, k=5)
    with torch.no_grad():
        full = twin["hf"].lm_head(torch.from_numpy(emb))
        cap = twin["hf"].config.final_logit_softcapping
        capped = torch.tanh(full / cap) * cap
    np.testing.assert_allclose(scores, capped.topk(5).values.numpy(), atol=1e-5)
    assert np.abs(scores).max() < cap


def test_key_tokens_stay_inside_the_tokenizers_vocabulary(twin):
    """Qwen2 and OPT pad their LM head past the tokenizer: the padding rows are no key tokens."""
    from keytok.representations.projection import key_tokens

    enc = _encoder(twin, "mean")
    n_tok = len(twin["tokenizer"])
    rows = key_tokens(enc, TEXTS, k=enc.vocab_size)
    assert all(t.token_id < n_tok for row in rows for t in row)


def test_loading_picks_an_attention_the_architecture_computes_right(twin):
    impl = twin["loaded"].model.config._attn_implementation
    assert impl == ("eager" if twin["arch"] in ("gemma2", "gpt_neo") else "sdpa")


def test_eos_is_appended_once_or_refused(twin):
    """``append_eos``: the EOS ends every text once (whether or not the tokenizer adds it); a tokenizer without
    one is a one-line error, not an embedding of the text's last word."""
    import copy
    from dataclasses import replace

    from keytok.errors import KeytokError

    enc = _encoder(twin, "last:append_eos=true")
    assert all(ids[-1] == EOS and ids.count(EOS) == 1 for ids in enc.tokenize(TEXTS).ids)
    tok = copy.deepcopy(twin["tokenizer"])
    tok.eos_token = None
    with pytest.raises(KeytokError, match="no EOS token"):
        _encoder({**twin, "loaded": replace(twin["loaded"], tokenizer=tok)}, "last:append_eos=true")
