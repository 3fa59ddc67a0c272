"""Tiny random checkpoints, one per decoder architecture the paper's embedders use, built from configs.

Each twin keeps what makes its architecture different (and what an embedding library gets wrong without
an error): Mistral's sliding window, Qwen2's q/k/v biases, Qwen3's q/k norms, Gemma 2/3's embedding scale,
soft-capping and alternating sliding layers, GPT-Neo's local attention and learned positions, OPT's learned
positions with an offset and a BOS that is also its EOS, Phi-3's fused projections and sliding window.
Windows are shorter than the test texts, so that a layer that ignores its window changes the result.
Tokenizers are word-level, with the special tokens each family's tokenizer adds (BOS or none; no EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import WORDS

ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gpt_neo",
    "opt",
    "phi3",
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS, UNK = range(4)
WINDOW = 4  # sliding / local attention window of the twins that have one
EXTRA_HEAD_ROWS = {"qwen2": 5, "opt": 3}  # vocabulary padded past the tokenizer, as Qwen2 and OPT ship it
BOS_ADDED = {"llama", "mistral", "gemma2", "gemma3", "opt", "phi3"}  # tokenizers that prepend <s>


def _byte_level_bpe() -> Any:
    """A Qwen2-style byte-level BPE: the 256 byte symbols, and merges that spell each word whole (with and
    without its leading space). transformers 5 loads every ``qwen2`` checkpoint's tokenizer as Qwen2Tokenizer,
    which rebuilds a BPE from tokenizer.json's vocabulary and merges: a word-level one would not survive."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        for spelled in (word, "\u0120" + word):
            for end in range(2, len(spelled) + 1):
                pair = (spelled[: end - 1], spelled[end - 1])
                if spelled[:end] not in vocab:
                    vocab[spelled[:end]] = len(vocab)
                    merges.append(pair)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _tokenizer(arch: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if arch == "qwen2":
        return _byte_level_bpe()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS + [",", ".", ":", '"', "\n", "<|embed|>"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    if arch in BOS_ADDED:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_config(arch: str, vocab_size: int, **changes: Any) -> Any:
    """A 4-layer, 32-d config of ``arch`` keeping the features that set it apart (``changes`` set fields)."""
    config = _tiny_config(arch, vocab_size)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _tiny_config(arch: str, vocab_size: int) -> Any:
    import transformers as tf

    ids = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    small = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **ids,
    }
    if arch == "llama":
        return tf.LlamaConfig(**small, tie_word_embeddings=True)
    if arch == "mistral":
        return tf.MistralConfig(**small, sliding_window=WINDOW, tie_word_embeddings=False)
    if arch == "qwen2":  # q/k/v projections carry biases
        return tf.Qwen2Config(**small, tie_word_embeddings=False, use_sliding_window=False)
    if arch == "qwen3":  # RMS norms on q and k
        return tf.Qwen3Config(**small, head_dim=8, tie_word_embeddings=True)
    if arch == "gemma2":
        return tf.Gemma2Config(
            **small,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=WINDOW,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            layer_types=["sliding_attention", "full_attention"] * 2,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            **small,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=WINDOW,
            final_logit_softcapping=3.0,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        )
    if arch == "gpt_neo":  # learned positions; every other layer attends locally (window_size)
        return tf.GPTNeoConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_layers=4,
            num_heads=4,
            intermediate_size=64,
            attention_types=[[["global", "local"], 2]],
            window_size=WINDOW,
            max_position_embeddings=256,
            **ids,
        )
    if arch == "opt":  # learned positions offset by 2
        return tf.OPTConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=4,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=256,
            **ids,
        )
    if arch == "phi3":  # fused qkv and gate_up projections, partial window
        return tf.Phi3Config(**small, sliding_window=WINDOW + 1, tie_word_embeddings=False)
    raise ValueError(f"no tiny twin for {arch}")


def build_tiny_architecture(
    folder: Path, arch: str, bare: bool = False, seed: int = 0, **changes: Any
) -> Path:
    """Save a tiny random ``arch`` checkpoint (with LM head, or ``bare``: the decoder alone, as e5-mistral and
    Qwen3-Embedding ship) and its tokenizer; ``changes`` set config fields (``hidden_size=48``)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    tokenizer = _tokenizer(arch)
    config = tiny_config(arch, len(tokenizer) + EXTRA_HEAD_ROWS.get(arch, 0), **changes)
    torch.manual_seed(sum(map(ord, arch)) + seed)
    model = (AutoModel if bare else AutoModelForCausalLM).from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-identical states; scale up so methods differ measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10 if arch not in ("gpt_neo", "opt") else 5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
