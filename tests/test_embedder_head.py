"""An embedder that is not its base: a bare decoder (e5-mistral ships a MistralModel, Qwen3-Embedding a
Qwen3Model) projected through the LM head of a separate base model, with the paper's PC1 adjustment fitted
between the two; on tiny twins."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_architectures import build_tiny_architecture

from keytok.errors import KeytokError

TEXTS = [
    "vitamin d deficiency is linked to bone loss .",
    "the cat sat on the mat",
    "aspirin reduces the risk of heart attack in older adults",
    "cancer cells and genes",
    "the dog ran in the park",
    "protein study results",
]
E5 = "last:append_eos=true"


@pytest.fixture(scope="module", autouse=True)
def _one_cpu(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {
        "base": build_tiny_architecture(root / "mistral-base", "mistral"),
        "embedder": build_tiny_architecture(root / "e5-bare", "mistral", bare=True, seed=1),
        "qwen3-bare": build_tiny_architecture(root / "qwen3-bare", "qwen3", bare=True),
        "other-vocab": build_tiny_architecture(root / "qwen2", "qwen2"),
        "wider": build_tiny_architecture(root / "wide", "mistral", hidden_size=48),
    }


def test_a_bare_decoder_loads_bare_and_asks_for_a_head(twins):
    from keytok import KeyTokenModel
    from keytok.models.loading import load_model

    loaded = load_model(str(twins["embedder"]))
    assert type(loaded.model).__name__ == "MistralModel" and not loaded.has_lm_head
    model = KeyTokenModel(loaded, E5, dtype="fp32")
    assert model.encode(TEXTS).shape == (len(TEXTS), 32)  # dense embeddings need no head
    with pytest.raises(KeytokError, match="no LM head") as err:
        model.key_tokens("the cat sat")
    assert "--head" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("embedder", ["embedder", "qwen3-bare"])
def test_key_tokens_come_from_the_base_head(twins, embedder):
    from transformers import AutoModel, AutoModelForCausalLM

    from keytok import KeyTokenModel

    if embedder == "qwen3-bare":
        base = build_tiny_architecture(twins["qwen3-bare"].parent / "qwen3-base", "qwen3", seed=2)
    else:
        base = twins["base"]
    model = KeyTokenModel(str(twins[embedder]), E5, dtype="fp32", head=str(base))
    emb = model.encode(TEXTS)
    # the embedding: the bare decoder's own forward, last token after an appended EOS
    bare = AutoModel.from_pretrained(twins[embedder], dtype=torch.float32).eval()
    tok = model.encoder.model.tokenizer
    for text, row in zip(TEXTS, emb, strict=True):
        ids = torch.tensor([[*tok(text)["input_ids"], tok.eos_token_id]])
        with torch.no_grad():
            want = bare(input_ids=ids).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(row, want, atol=1e-4, rtol=1e-4)
    # the key tokens: the base's head applied to it
    head = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).lm_head
    with torch.no_grad():
        want_ids = head(torch.from_numpy(emb))[:, : len(tok)].topk(5).indices.numpy()
    got = model.key_tokens(TEXTS, k=5)
    assert [[t.token_id for t in row] for row in got] == want_ids.tolist()
    assert model.vocab_size == head.weight.shape[0]


def test_a_head_that_cannot_read_the_embedder_is_a_one_line_error(twins):
    from keytok import KeyTokenModel

    for other, fault in (("other-vocab", "must share one tokenizer"), ("wider", "takes 48-d vectors")):
        with pytest.raises(KeytokError, match=fault) as err:
            KeyTokenModel(str(twins["embedder"]), E5, dtype="fp32", head=str(twins[other]))
        assert "\n" not in str(err.value)


def test_pc1_adjustment_fitted_between_embedder_and_base(twins):
    """The paper's fit: u1 of the base embeddings' uncentred SVD, v1 = mean((embedder - base) . u1)."""
    from keytok import KeyTokenModel

    base = KeyTokenModel(str(twins["base"]), E5, dtype="fp32")
    embedder = KeyTokenModel(str(twins["embedder"]), E5, dtype="fp32", head=str(twins["base"]))
    cal = base.calibrate(TEXTS, embedder=embedder)
    h, e = base.encode(TEXTS).astype(np.float64), embedder.encode(TEXTS).astype(np.float64)
    u1 = np.linalg.svd(h, full_matrices=False)[2][0]
    v1 = float(((e - h) @ u1).mean())
    np.testing.assert_allclose(cal.coefficient * cal.direction, v1 * u1, atol=1e-5)
    assert abs(v1) > 1e-3
    calibrated = KeyTokenModel(base, E5, calibration=cal)
    shifted = h + v1 * u1
    assert [t.token_id for t in calibrated.key_tokens(TEXTS[0], k=3)] == list(
        np.argsort(-(shifted[0] @ base.encoder.head_model.lm_head_weight.detach().numpy().T))[:3]
    )


def test_cli_head_option_through_tokens_calibrate_and_an_index(twins, tmp_path, capsys):
    from keytok import Retriever
    from keytok.cli.main import main

    emb, base = str(twins["embedder"]), str(twins["base"])
    common = ["--dtype", "fp32", "--method", E5]
    assert main(["tokens", "the cat sat", "--model", emb, "--head", base, "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    cal = tmp_path / "cal.safetensors"
    argv = ["calibrate", str(texts), "--model", base, "--embedder-model", emb, "--embedder-method", E5]
    assert main([*argv, "--head", base, "--out", str(cal), *common]) == 0
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "idx"
    argv = [
        "index",
        "build",
        str(corpus),
        "--out",
        str(out),
        "--model",
        emb,
        "--head",
        base,
        "--kind",
        "sparse",
    ]
    assert main([*argv, "--no-progress", *common]) == 0
    capsys.readouterr()
    with Retriever.open(out) as opened:  # the head travels with the index
        hits = opened.search("vitamin d", query_mode="expanded")
        assert hits and opened.model.encoder.head_spec == base


def test_a_causal_lm_config_without_head_weights_loads_as_a_bare_decoder(twins, tmp_path):
    """gte-Qwen2 style: config names *ForCausalLM, the weights hold no lm_head: no random head is made up."""
    from safetensors.torch import load_file, save_file

    from keytok.models.loading import load_model

    folder = tmp_path / "headless"
    shutil.copytree(twins["base"], folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head")}, folder / "model.safetensors")
    loaded = load_model(str(folder))
    assert not loaded.has_lm_head
    with pytest.raises(KeytokError, match="no LM head"):
        _ = loaded.lm_head_weight
