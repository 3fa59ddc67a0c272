"""Presets for the embedding LLMs of the paper and their successors: one name resolves embedder, LM-head base,
method, prompt format and EOS rule.

``--model e5-mistral-7b-instruct`` (or ``KeyTokenModel("e5-mistral-7b-instruct")``) loads the embedder from the
Hugging Face cache (or downloads it with ``KEYTOK_ONLINE=1``), projects through its base's LM head when it ships
without one or was trained away from it, and embeds with the method below unless the caller names another
(:func:`keytok.models.methods.resolve_method`). Weights that are not there are a one-line error saying what to
download. The table is printed by ``keytok models recipes`` and kept in the README (a test checks both).

The templates are the query formats of each model's own code; documents are embedded with the same template in
keytok (one method per index). Two embedders ship as LoRA adapters over their base (LLM2Vec, BeLLM): they must be
merged into a model folder first (their own packages do it), then given as ``--model FOLDER --method ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from keytok.errors import KeytokError
from keytok.models.methods import EmbeddingMethod, get_method

E5_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {text}"  # e5-mistral, SFR, gte-Qwen2
QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"  # Qwen3-Embedding: no space after "Query:"


@dataclass(frozen=True)
class Recipe:
    """One embedder of the paper: its HF id, the base whose LM head reads it, and how it embeds."""

    name: str
    embedder: str  # HF id (or a local folder) of the embedding model
    base: str | None  # HF id of the model whose LM head projects it; None: the embedder's own head
    method: EmbeddingMethod  # template, pooling, bidirectional layers, instruction, EOS
    eos: str  # the EOS rule, in words
    paper: str  # where the recipe comes from
    adapter_of: str | None = None  # the embedder ships LoRA adapters over this model: merge them first

    @property
    def head(self) -> str | None:
        """The model to take the LM head from (None: the embedder's own)."""
        return self.base

    def pointing_at(self, embedder: str, base: str | None = None) -> Recipe:
        """The same recipe with its weights elsewhere (a local copy, a tiny twin in tests)."""
        return replace(self, embedder=embedder, base=base if base is not None else self.base, adapter_of=None)

    def row(self) -> dict[str, str]:
        """The recipe as the README table and ``keytok models recipes`` show it."""
        m = self.method
        layers = {0: "causal", -1: "every layer"}.get(m.bidirectional, f"last {m.bidirectional}")
        pooling = {"last": "last token", "mean": "mean", "weighted_mean": "position-weighted mean"}[m.pooling]
        if m.pool_text_only:
            pooling += " (text only)"
        return {
            "preset": self.name,
            "embedder": self.embedder + (f" (LoRA over {self.adapter_of})" if self.adapter_of else ""),
            "base (LM head)": self.base or "its own",
            "method": self.method.name + (" + EOS" if m.append_eos else ""),
            "pooling": f"{pooling}, {layers}",
            "template": m.template.replace("\n", "\\n"),
            "instruction": m.instruction or "-",
            "EOS": self.eos,
        }


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "e5-mistral-7b-instruct",
            "intfloat/e5-mistral-7b-instruct",
            "mistralai/Mistral-7B-v0.1",
            EmbeddingMethod(
                "last", template=QUERY_TEMPLATE, pooling="last", append_eos=True, instruction=E5_INSTRUCTION
            ),
            "appended by keytok (the tokenizer adds none)",
            "Wang et al. 2024; a bare MistralModel",
        ),
        Recipe(
            "sfr-embedding-mistral",
            "Salesforce/SFR-Embedding-Mistral",
            "mistralai/Mistral-7B-v0.1",
            EmbeddingMethod(
                "last", template=QUERY_TEMPLATE, pooling="last", append_eos=True, instruction=E5_INSTRUCTION
            ),
            "appended by keytok (the tokenizer adds none)",
            "fine-tuned from e5-mistral-7b-instruct; a bare MistralModel",
        ),
        Recipe(
            "gritlm-7b",
            "GritLM/GritLM-7B",
            None,
            EmbeddingMethod(
                "instruct",
                template="<|user|>\n{instruction}\n<|embed|>\n{text}",
                pooling="mean",
                pool_text_only=True,
                bidirectional=-1,
                instruction="Retrieve relevant passages",
            ),
            "none",
            "Muennighoff et al. 2024; generative too: its own head",
        ),
        Recipe(
            "llm2vec-mistral-7b",
            "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse",
            "mistralai/Mistral-7B-Instruct-v0.2",
            EmbeddingMethod("bidir", pooling="mean", bidirectional=-1),
            "none",
            "BehnamGhader et al. 2024",
            adapter_of="McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp",
        ),
        Recipe(
            "llm2vec-llama3-8b",
            "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-unsup-simcse",
            "meta-llama/Meta-Llama-3-8B-Instruct",
            EmbeddingMethod("bidir", pooling="mean", bidirectional=-1),
            "none",
            "BehnamGhader et al. 2024",
            adapter_of="McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
        ),
        Recipe(
            "sgpt-1.3b-nli",
            "Muennighoff/SGPT-1.3B-weightedmean-nli-bitfit",
            "EleutherAI/gpt-neo-1.3B",
            get_method("wmean"),
            "none",
            "Muennighoff 2022; a bare GPTNeoModel",
        ),
        Recipe(
            "prompteol-opt-1.3b",
            "facebook/opt-1.3b",
            None,
            get_method("prompteol"),
            "none (the tokenizer prepends </s> as BOS)",
            "Jiang et al. 2023",
        ),
        Recipe(
            "prompteol-llama-7b",
            "huggyllama/llama-7b",
            None,
            get_method("prompteol"),
            "none",
            "Jiang et al. 2023",
        ),
        Recipe(
            "bellm-llama2-7b",
            "SeanLee97/bellm-llama-7b-nli",
            "NousResearch/Llama-2-7b-hf",
            get_method("bellm"),
            "none",
            "Li & Li 2024 (BiLLM_START_INDEX=31: the last of 32 layers bidirectional)",
            adapter_of="NousResearch/Llama-2-7b-hf",
        ),
        Recipe(
            "gte-qwen2-7b-instruct",
            "Alibaba-NLP/gte-Qwen2-7B-instruct",
            "Qwen/Qwen2-7B",
            EmbeddingMethod(
                "last", template=QUERY_TEMPLATE, pooling="last", append_eos=True, instruction=E5_INSTRUCTION
            ),
            "<|endoftext|>: added by its tokenizer, else by keytok",
            "Li et al. 2023; causal as its transformers code and MTEB run it",
        ),
        Recipe(
            "qwen3-embedding-0.6b",
            "Qwen/Qwen3-Embedding-0.6B",
            "Qwen/Qwen3-0.6B-Base",
            EmbeddingMethod(
                "last", template=QWEN3_TEMPLATE, pooling="last", append_eos=True, instruction=E5_INSTRUCTION
            ),
            "<|endoftext|>: added by its tokenizer, else by keytok",
            "Zhang et al. 2025; a bare Qwen3Model",
        ),
        Recipe(
            "qwen3-embedding-8b",
            "Qwen/Qwen3-Embedding-8B",
            "Qwen/Qwen3-8B-Base",
            EmbeddingMethod(
                "last", template=QWEN3_TEMPLATE, pooling="last", append_eos=True, instruction=E5_INSTRUCTION
            ),
            "<|endoftext|>: added by its tokenizer, else by keytok",
            "Zhang et al. 2025; a bare Qwen3Model",
        ),
    )
}


def recipe_table() -> str:
    """The recipes as a Markdown table (the README's, and ``keytok models recipes --markdown``)."""
    rows = [r.row() for r in RECIPES.values()]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = (f"`{row[h]}`" if h == "template" else row[h] for h in head)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def missing_weights(recipe: Recipe, what: str, spec: str) -> KeytokError:
    """The one-line error for a recipe whose weights are not here."""
    fetch = f"huggingface-cli download {spec}"
    if recipe.adapter_of and what == "embedder":
        return KeytokError(
            f"preset '{recipe.name}': {spec} is a LoRA adapter over {recipe.adapter_of}; merge it into a model "
            f"folder (with its own package) and pass --model FOLDER --method {recipe.method.name} (with the options in 'keytok models recipes')"
        )
    return KeytokError(
        f"preset '{recipe.name}' needs its {what} {spec}, not in the Hugging Face cache: run '{fetch}' "
        "or set KEYTOK_ONLINE=1"
    )
