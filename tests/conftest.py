"""Shared fixtures: a tiny random Llama built from a config (fast), and the real packaged models (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "were",
    "has",
    "have",
    "not",
    "but",
    "or",
    "vitamin",
    "d",
    "deficiency",
    "linked",
    "bone",
    "loss",
    "cat",
    "sat",
    "mat",
    "dog",
    "ran",
    "park",
    "aspirin",
    "reduces",
    "risk",
    "heart",
    "attack",
    "older",
    "adults",
    "protein",
    "cell",
    "cells",
    "gene",
    "genes",
    "cancer",
    "patients",
    "study",
    "results",
    "increased",
    "decreased",
    "effect",
    "treatment",
]


def _build_tiny(folder: Path, architecture: str = "llama") -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + [",", ".", ":", '"', "\n"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    # Random init with std 0.02 gives near-identical states; scale up so methods differ measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-d random Llama with a word-level tokenizer, saved as a local model folder."""
    return _build_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from keytok.models.loading import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def smollm2():
    """The real packaged SmolLM2-135M (converted once into the keytok cache)."""
    from keytok.models.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def isolated_cache_one_cpu(tmp_path_factory):
    """An isolated KEYTOK_CACHE for a module, and one CPU for the encoders it builds.

    The encoder runs as many torch threads as the process may use CPUs; on a shared 2-core machine two
    threads spin-wait on each other and the tiny model runs ~40x slower than with one. Modules opt in with
    an autouse fixture that returns this one.
    """
    root = tmp_path_factory.mktemp("keytok-cache")
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KEYTOK_CACHE", str(root))
            yield root
    finally:
        os.sched_setaffinity(0, cpus)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
