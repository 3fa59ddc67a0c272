"""Named training recipes: the settings that made a model, by name, so a user starts from a measured one.

A recipe fills every setting the user did not give; an explicit setting always wins. ``auto`` picks the
recipe for the hardware the run will use: the CPU recipe where there is no GPU (it fits an hour of two cores
and 8 GB), the GPU recipe (the shipped default's) where there is one. Where each recipe's numbers come from:
``experiments/results/train_cpu.md`` (CPU), ``experiments/gpu_train_scifact.sh`` (GPU), and
``experiments/results/train_bellm.md`` (the BeLLM paper's STS recipe on the top layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keytok.errors import KeytokError

# train_layers may be this word: every decoder layer of the model, whatever its depth.
ALL_LAYERS = "all"


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings (``TrainConfig`` field -> value) and what it is for."""

    name: str
    summary: str
    settings: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "keytok-cpu",
            "the key-token recipe cut to two CPU cores: every layer, LoRA r 32 without dropout, 12 steps of 32 "
            "at lr 1e-3, texts cut to 64 tokens (3.4 min and 6.2 GB peak on 2 AVX2 cores; keeps the shipped "
            "default's key tokens)",
            {
                "method": "prompteol",
                "train_layers": ALL_LAYERS,
                "lora_rank": 32,
                "lora_alpha": 32.0,
                "lora_dropout": 0.0,
                "lr": 1e-3,
                "epochs": 1.0,
                "max_steps": 12,
                "batch_size": 32,
                "max_length": 64,
                "cache_dtype": "bf16",
                "save_every": 2,  # a step is ~15 s on 2 cores: a kill costs at most two
            },
        ),
        Recipe(
            "keytok-gpu",
            "the shipped default's recipe: every layer, LoRA r 32 (dropout 0.1), 4 epochs of 64 at lr 2e-4, "
            "texts cut to 256 tokens (under a minute on an H200; hours on two CPU cores)",
            {
                "method": "prompteol",
                "train_layers": ALL_LAYERS,
                "lora_rank": 32,
                "lora_alpha": 32.0,
                "lora_dropout": 0.1,
                "lr": 2e-4,
                "epochs": 4.0,
                "max_steps": 0,
                "batch_size": 64,
                "max_length": 256,
                "cache_dtype": "fp32",
                "save_every": 10,
            },
        ),
        Recipe(
            "bellm",
            "BeLLM's STS recipe on the top layers: the BeLLM prompt, the last 2 layers bidirectional, the top 4 "
            "layers trained (LoRA r 32, dropout 0.1), 1 epoch of 32 at lr 2e-4, texts cut to 128 tokens",
            {
                "method": "bellm",
                "train_layers": 4,
                "lora_rank": 32,
                "lora_alpha": 32.0,
                "lora_dropout": 0.1,
                "lr": 2e-4,
                "epochs": 1.0,
                "max_steps": 0,
                "batch_size": 32,
                "max_length": 128,
                "cache_dtype": "bf16",
                "save_every": 50,
            },
        ),
    )
}

RECIPE_NAMES = ("auto", *RECIPES)


def resolve_recipe(name: str, device: str | None = None) -> Recipe:
    """The recipe called ``name``; ``auto`` is ``keytok-gpu`` when training runs on a CUDA GPU, else ``keytok-cpu``."""
    if name == "auto":
        return RECIPES["keytok-gpu" if _on_gpu(device) else "keytok-cpu"]
    if name not in RECIPES:
        raise KeytokError(f"recipe {name!r}: unknown; choose one of {', '.join(RECIPE_NAMES)}")
    return RECIPES[name]


def recipe_settings(name: str, given: Mapping[str, Any]) -> tuple[Recipe, dict[str, Any]]:
    """The recipe's settings with every given (not None) setting put over them; ``given["device"]``, if
    any, is where ``auto`` looks for a GPU."""
    recipe = resolve_recipe(name, given.get("device"))
    settings = dict(recipe.settings)
    settings.update({k: v for k, v in given.items() if v is not None})
    return recipe, settings


def _on_gpu(device: str | None) -> bool:
    if device is not None:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()
