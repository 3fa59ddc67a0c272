"""A minimal LoRA (Hu et al., 2021) for the trained top layers: no dependency, merged away before saving.

``W x`` becomes ``W x + (α / r) B A dropout(x)`` with A [r, in] (Kaiming-uniform) and B [out, r] (zeros), so
training starts from the base model exactly. BeLLM's settings: r = 32, α = 32, dropout 0.1, on every linear
layer of the attention and MLP blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from keytok.errors import KeytokError
from keytok.models.shipped import lora_delta

TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 1:
            raise KeytokError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / rank
        weight = base.weight
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, dtype=torch.float32, device=weight.device)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=torch.float32, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        low = self.dropout(x) @ self.lora_a.T.to(x.dtype)  # [..., r]
        # One GEMM adds the scaled update into the base output (no separate scale and add passes over
        # [tokens, out] activations, which cost a CPU step as much as the update's matmuls did).
        merged = torch.addmm(
            out.reshape(-1, out.shape[-1]),
            low.reshape(-1, low.shape[-1]).to(out.dtype),
            self.lora_b.T.to(out.dtype),
            alpha=self.scale,
        )
        return merged.view(out.shape)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        self.base.weight += lora_delta(self.lora_a, self.lora_b, self.scale).to(self.base.weight.dtype)
        return self.base


def add_lora(
    modules: Iterable[nn.Module], rank: int = 32, alpha: float = 32.0, dropout: float = 0.1
) -> list[nn.Parameter]:
    """Wrap every target linear layer inside ``modules`` with LoRA; return the new trainable parameters."""
    params: list[nn.Parameter] = []
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if name in TARGETS and isinstance(child, nn.Linear):
                    wrapped = LoRALinear(child, rank, alpha, dropout)
                    setattr(parent, name, wrapped)
                    params += [wrapped.lora_a, wrapped.lora_b]
    if not params:
        raise KeytokError(f"no linear layer named {', '.join(TARGETS)} to put LoRA on")
    return params


def merge_lora(model: Any) -> int:
    """Fold every :class:`LoRALinear` in ``model`` into its base layer; returns how many were merged."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                count += 1
    return count
