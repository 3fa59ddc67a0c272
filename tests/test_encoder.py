"""Encoder behaviour on a tiny random Llama (fast) and on the real packaged SmolLM2 (slow)."""

import numpy as np
import pytest
import torch

from keytok.encoding.encoder import Encoder, plan_batches
from keytok.errors import KeytokError
from keytok.models.bidirectional import BidirectionalLayers
from keytok.models.methods import PRESETS

TEXTS = [
    "vitamin d deficiency linked to bone loss",
    "the cat sat",
    "aspirin reduces the risk of heart attack in older adults and the dog ran in the park",
    "protein",
    "cancer patients with increased gene effect",
]


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_embedding_alone_equals_embedding_in_padded_batch(tiny_model, method):
    enc = Encoder(tiny_model, method, dtype="fp32")
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS)
    assert enc.last_stats.padded_tokens > enc.last_stats.tokens  # the batch really was padded
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_bf16_embedding_alone_equals_embedding_in_padded_batch(tiny_model, method):
    # Under bf16 the batch shape changes the rounding, not the maths: equal within bf16's 8-bit mantissa.
    enc = Encoder(tiny_model, method, dtype="bf16")
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS)
    assert enc.last_stats.padded_tokens > enc.last_stats.tokens
    cosine = np.sum(alone * batched, 1) / (np.linalg.norm(alone, axis=1) * np.linalg.norm(batched, axis=1))
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(batched, alone, rtol=0.05, atol=0.05 * np.abs(alone).max())


def test_methods_give_different_vectors(tiny_model):
    vectors = {}
    for method in sorted(PRESETS):
        enc = Encoder(tiny_model, method, dtype="fp32")
        vectors[method] = enc.encode(TEXTS[:2])
    names = sorted(vectors)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(vectors[a], vectors[b], atol=1e-3), (a, b)


def test_bidirectional_layers_see_later_tokens_and_not_padding(tiny_model):
    # Causal mean pooling: the first token's state cannot depend on the second token.
    model = tiny_model.model
    ids = torch.tensor([[31, 32, 33, 34], [31, 40, 41, 42]])
    mask = torch.ones_like(ids)
    backbone = tiny_model.backbone
    causal = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(causal[0, 0], causal[1, 0], atol=1e-5)
    hook = BidirectionalLayers(model, 1)
    try:
        bidir = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        # Bidirectional last layer: position 0 now depends on the rest of the text.
        assert not torch.allclose(bidir[0, 0], bidir[1, 0], atol=1e-3)
        # ... but not on padding: the same text padded with junk gives the same states.
        padded = torch.tensor([[31, 32, 33, 34, 50, 51]])
        pmask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        out = backbone(input_ids=padded, attention_mask=pmask).last_hidden_state
        assert torch.allclose(out[0, :4], bidir[0], atol=1e-5)
        # The public BeLLM code's all-zero mask lets the layer attend to padding: states change.
        leaky = backbone(input_ids=padded, attention_mask=torch.ones_like(padded)).last_hidden_state
        assert not torch.allclose(leaky[0, :4], bidir[0], atol=1e-3)
    finally:
        hook.remove()
    restored = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(restored, causal, atol=1e-6)


def test_last_token_pooling_is_blind_to_a_bidirectional_last_layer(tiny_model):
    # The last token already attends to every real token; what the other positions of the last layer
    # see reaches no later layer. So BeLLM's k = 1 changes nothing under last-token pooling, k = 2 does.
    causal = Encoder(tiny_model, "last", dtype="fp32").encode(TEXTS)
    one = Encoder(tiny_model, "last:bidirectional=1", dtype="fp32").encode(TEXTS)
    two = Encoder(tiny_model, "last:bidirectional=2", dtype="fp32").encode(TEXTS)
    np.testing.assert_allclose(one, causal, rtol=1e-5, atol=1e-5)
    assert not np.allclose(two, causal, atol=1e-3)


def test_bidirectional_k_is_checked(tiny_model):
    with pytest.raises(KeytokError, match="4 decoder layers"):
        BidirectionalLayers(tiny_model.model, 9)


def test_truncation_keeps_the_prompt_and_is_counted(tiny_model):
    enc = Encoder(tiny_model, "prompteol", dtype="fp32", max_length=24)
    long_text = " ".join(["protein"] * 100)
    tok = enc.tokenize([long_text, "the cat sat"])
    assert tok.truncated == [True, False]
    assert len(tok.ids[0]) == 24
    assert tok.ids[0][-len(enc._suffix) :] == enc._suffix  # the prompt's ending survives
    enc.encode([long_text, "the cat sat"])
    assert enc.last_stats.truncated == 1


def test_empty_text_is_refused(tiny_model):
    enc = Encoder(tiny_model, "mean", dtype="fp32")
    with pytest.raises(KeytokError, match="text 1 is empty"):
        enc.encode(["the cat", "   "])


def test_output_order_is_input_order(tiny_model):
    enc = Encoder(tiny_model, "mean", dtype="fp32", batch_tokens=16)
    batched = enc.encode(TEXTS)
    assert enc.last_stats.batches > 1
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(batched[i], enc.encode([text])[0], atol=1e-5)


def test_plan_batches_respects_budget_and_sorts():
    lengths = [5, 50, 7, 49, 3, 100, 8]
    batches = plan_batches(lengths, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)


def test_chunked_topk_equals_full_projection(tiny_model):
    enc = Encoder(tiny_model, "mean", dtype="fp32")
    emb = enc.encode(TEXTS)
    full = torch.from_numpy(emb) @ tiny_model.lm_head_weight.detach().float().T
    want_s, want_i = full.topk(7, dim=1)
    got_s, got_i = enc.logits_topk(emb, 7, vocab_chunk=5)  # many small chunks
    np.testing.assert_array_equal(got_i, want_i.numpy())
    np.testing.assert_allclose(got_s, want_s.numpy(), rtol=1e-5)


def test_padding_fraction_is_small_on_sorted_batches(tiny_model):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "park", "protein", "cell", "gene"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 60))) for _ in range(200)]
    enc = Encoder(tiny_model, "mean", dtype="fp32", batch_tokens=512)
    enc.encode(texts)
    assert enc.last_stats.padding_fraction < 0.05


@pytest.mark.slow
def test_prompteol_key_tokens_of_a_real_model(smollm2):
    from keytok.representations.projection import key_tokens

    enc = Encoder(smollm2, "prompteol", dtype="fp32")
    toks = key_tokens(enc, ["Vitamin D deficiency is linked to bone loss."], k=10)[0]
    words = {t.text.strip().lower() for t in toks}
    assert len(words & {"vitamin", "deficiency", "bone"}) >= 2, [t.display for t in toks]
    assert any(t.in_input for t in toks)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mean", "prompteol", "bellm"])
def test_real_model_padding_invariance(smollm2, method):
    texts = ["Vitamin D deficiency is linked to bone loss.", "Cats sleep.", "A much longer sentence " * 8]
    enc = Encoder(smollm2, method, dtype="fp32")
    alone = np.stack([enc.encode([t])[0] for t in texts])
    batched = enc.encode(texts)
    cos = (alone * batched).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(batched, axis=1)
    assert cos.min() > 0.9999


def test_fp32_last_layers_under_autocast(tiny_model):
    import dataclasses

    from keytok.models.bidirectional import decoder_layers

    layers = decoder_layers(tiny_model.model)
    ref = Encoder(tiny_model, "prompteol", dtype="fp32").encode(TEXTS)
    enc = Encoder(tiny_model, "prompteol", dtype="bf16")
    mixed = enc.encode(TEXTS)
    enc.precision = dataclasses.replace(enc.precision, fp32_last=len(layers))
    all_fp32 = enc.encode(TEXTS)
    assert "last" in enc.precision.describe()
    # every decoder layer outside autocast: the fp32 forward pass, to float rounding
    np.testing.assert_allclose(all_fp32, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(mixed, ref, rtol=1e-5, atol=1e-5)  # autocast really did round to bf16
    assert all("forward" not in vars(layer) for layer in layers)  # the wrappers are removed after the pass


def test_compiled_layers_give_the_eager_embeddings(tiny_model_dir, monkeypatch):
    # torch.compile fuses ops, it must not change the maths: fp32 results equal eager ones to rounding.
    from keytok.models.bidirectional import decoder_layers
    from keytok.models.loading import load_model

    tiny_model = load_model(str(tiny_model_dir))  # a private copy: compiling is for the model's lifetime
    enc = Encoder(tiny_model, "bellm:bidirectional=2", dtype="fp32")
    eager = enc.encode(TEXTS)
    assert not enc.last_stats.compiled
    monkeypatch.setenv("KEYTOK_COMPILE", "1")
    compiled = enc.encode(TEXTS)
    assert enc.last_stats.compiled
    assert all("forward" in vars(layer) for layer in decoder_layers(tiny_model.model))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    # bidirectional hooks still act on compiled layers: a method without them gives other vectors
    causal = Encoder(tiny_model, "bellm:bidirectional=0", dtype="fp32").encode(TEXTS)
    assert not np.allclose(causal, compiled, atol=1e-3)


def test_compiled_layers_keep_attention_in_fp32_when_asked(tiny_model_dir, monkeypatch):
    # The compiled layers trace into the attention wrappers: the flag must still decide, pass by pass.
    from dataclasses import replace

    from keytok.models.loading import load_model

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    tiny_model = load_model(str(tiny_model_dir))
    enc = Encoder(tiny_model, "prompteol", dtype="bf16")
    attn32 = replace(enc.precision, fp32_attention=True)
    enc.precision = attn32
    eager = enc.encode(TEXTS)
    monkeypatch.setenv("KEYTOK_COMPILE", "1")
    compiled = enc.encode(TEXTS)
    assert enc.last_stats.compiled
    assert cosine(compiled, eager).min() > 0.999
    enc.precision = replace(attn32, fp32_attention=False)
    compiled_bf16 = enc.encode(TEXTS)
    enc.precision = attn32
    np.testing.assert_allclose(enc.encode(TEXTS), compiled, rtol=1e-6, atol=1e-6)
    assert not np.allclose(compiled_bf16, compiled, rtol=1e-4, atol=1e-4)


def test_compile_failure_falls_back_to_eager(tiny_model_dir, monkeypatch):
    # Without a C++ toolchain inductor raises on the first call: keytok warns and runs eager.
    from keytok.models.bidirectional import decoder_layers
    from keytok.models.loading import load_model

    tiny_model = load_model(str(tiny_model_dir))
    enc = Encoder(tiny_model, "prompteol", dtype="fp32")
    eager = enc.encode(TEXTS)

    def broken_compile(fn, **_kwargs):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("KEYTOK_COMPILE", "1")
    with pytest.warns(UserWarning, match="torch.compile failed"):
        again = enc.encode(TEXTS)
    assert not enc.last_stats.compiled
    assert all("forward" not in vars(layer) for layer in decoder_layers(tiny_model.model))
    np.testing.assert_array_equal(again, eager)


def test_attention_runs_in_fp32_under_autocast_when_asked(tiny_model_dir):
    from dataclasses import replace

    from keytok.models.bidirectional import decoder_layers
    from keytok.models.loading import load_model

    model = load_model(str(tiny_model_dir))  # a private copy: the attention wrappers stay for its lifetime
    seen: dict[str, torch.dtype] = {}
    layer = decoder_layers(model.model)[0]
    layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.dtype))
    layer.mlp.up_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("up", o.dtype))
    enc = Encoder(model, "prompteol", dtype="bf16")
    plain = replace(enc.precision, fp32_attention=False)
    enc.precision = plain
    mixed = enc.encode(TEXTS)
    assert seen == {"q": torch.bfloat16, "up": torch.bfloat16}
    enc.precision = replace(plain, fp32_attention=True)
    attn32 = enc.encode(TEXTS)
    assert seen == {"q": torch.float32, "up": torch.bfloat16}  # only the attention block left autocast
    assert "attention fp32" in enc.precision.describe()
    assert not np.allclose(attn32, mixed, rtol=1e-6, atol=1e-6)
    wrapper = vars(layer.self_attn)["forward"]
    np.testing.assert_array_equal(enc.encode(TEXTS), attn32)
    assert vars(layer.self_attn)["forward"] is wrapper  # a second call wraps nothing twice
    # An encoder sharing the model without fp32 attention gets its own precision back.
    enc.precision = plain
    np.testing.assert_array_equal(enc.encode(TEXTS), mixed)
    assert seen == {"q": torch.bfloat16, "up": torch.bfloat16}
    # Outside autocast the wrappers change nothing: fp32 as from an unwrapped copy of the model.
    wrapped = Encoder(model, "prompteol", dtype="fp32").encode(TEXTS)
    fresh = Encoder(load_model(str(tiny_model_dir)), "prompteol", dtype="fp32").encode(TEXTS)
    np.testing.assert_allclose(wrapped, fresh, rtol=1e-5, atol=1e-6)


PROMPTED = [
    "prompteol",  # last token
    "instruct",  # mean over the text's own tokens
    "mean:template=passage : {text} end",  # mean over the prompt's tokens too
    "wmean:template=passage : {text} end",  # position-weighted mean
]


def _top10(enc, emb):
    return enc.logits_topk(emb, 10)[1]


@pytest.mark.parametrize("method", PROMPTED)
def test_prompt_cache_equals_the_plain_forward(tiny_model, method):
    """The prompt head's cached keys/values give the plain forward pass's embeddings and key tokens,
    alone and in a padded batch."""
    enc = Encoder(tiny_model, method, dtype="fp32")
    assert enc.prompt_cache_applies(1) and enc.prompt_cache_applies(len(TEXTS))
    plain = enc.encode(TEXTS)  # documents: the plain forward pass
    assert enc._prompt_state is None
    fast_alone = np.stack([enc.encode([t], queries=True)[0] for t in TEXTS])
    fast_batch = enc.encode(TEXTS, queries=True)
    assert enc._prompt_state is not None  # the cached path really ran
    for fast in (fast_alone, fast_batch):
        cos = np.sum(fast * plain, 1) / (np.linalg.norm(fast, axis=1) * np.linalg.norm(plain, axis=1))
        assert cos.min() >= 0.9999, cos
        np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)
        assert (_top10(enc, fast) == _top10(enc, plain)).all()


def test_prompt_cache_follows_the_weights(tiny_model_dir):
    """An in-place change of the weights (an optimizer step) recomputes the prompt head's keys/values."""
    from keytok.models.loading import load_model

    loaded = load_model(str(tiny_model_dir))  # a private copy: its weights are changed
    enc = Encoder(loaded, "prompteol", dtype="fp32")
    before = enc.encode(TEXTS[:1], queries=True)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.dim() > 1:
                p.mul_(1.1)
    after = enc.encode(TEXTS[:1], queries=True)
    np.testing.assert_allclose(after, enc.encode(TEXTS[:1]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(before, after, atol=1e-3)


def test_prompt_cache_only_where_it_holds(tiny_model):
    """Not for bidirectional layers (the prompt sees the text), not without a prompt, not for bulk calls,
    not for documents (their embeddings, kept in the embedding cache, stay the plain forward pass's)."""
    from keytok.encoding.encoder import SHORT_CALL_TEXTS

    assert not Encoder(tiny_model, "bellm", dtype="fp32").prompt_cache_applies(1)
    assert not Encoder(tiny_model, "mean", dtype="fp32").prompt_cache_applies(1)  # no prompt, no lead token
    enc = Encoder(tiny_model, "prompteol", dtype="fp32")
    assert not enc.prompt_cache_applies(SHORT_CALL_TEXTS + 1)
    enc.encode(TEXTS * 4, queries=True)  # 20 texts: the plain forward pass
    enc.encode(TEXTS[:1])  # a document
    assert enc._prompt_state is None


@pytest.mark.slow
def test_prompt_cache_of_the_default_model_keeps_its_key_tokens():
    from keytok.models.loading import load_model

    enc = Encoder(load_model("smollm2-135m-keytok"), None, dtype="fp32")
    queries = ["what similarity laws must be obeyed when constructing aeroelastic models", "boundary layer"]
    fast = np.stack([enc.encode([q], queries=True)[0] for q in queries])
    plain = np.stack([enc.encode([q])[0] for q in queries])
    cos = np.sum(fast * plain, 1) / (np.linalg.norm(fast, axis=1) * np.linalg.norm(plain, axis=1))
    assert cos.min() >= 0.9999
    assert (_top10(enc, fast) == _top10(enc, plain)).all()


def test_short_calls_run_on_the_idle_cores_and_restore_the_threads(tiny_model):
    import os

    from keytok.encoding.encoder import SHORT_CALL_TEXTS, short_call_threads

    cores = len(os.sched_getaffinity(0))
    assert 1 <= short_call_threads(cores) <= cores
    enc = Encoder(tiny_model, "prompteol", dtype="fp32")
    assert enc.call_threads(1) in range(1, cores + 1)
    assert enc.call_threads(SHORT_CALL_TEXTS + 1) is None  # bulk calls: the process's setting
    assert Encoder(tiny_model, "prompteol", dtype="fp32", threads=1).call_threads(1) is None  # threads given
    before = torch.get_num_threads()
    enc.logits_topk(enc.encode(TEXTS[:1]), 5)
    assert torch.get_num_threads() == before
