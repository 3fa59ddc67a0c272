"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): the gradient of an in-batch objective over a large batch, with the activations of only a few texts
in memory at a time.

A contrastive loss couples every text of the batch (each query scores every document), so the batch cannot be
split into independent smaller batches without losing negatives. It need not be: the loss depends on the
model only through the batch's embeddings, so by the chain rule

    d loss / d θ = Σ_i (d loss / d e_i) · (d e_i / d θ).

:func:`cached_backward` therefore (1) embeds the batch in chunks without keeping activations, (2) computes the
loss on all the embeddings at once and its gradient with respect to each of them, (3) embeds each chunk again
with autograd on and back-propagates that chunk's slice of the embedding gradient. The parameter gradients
accumulate to those of one backward pass over the batch as it was embedded in (1), at the price of a second
forward pass.

Dropout makes step (3) recompute (1) exactly only if it draws the same masks: the random-number state before
each chunk of (1) is saved and put back for the same chunk in (3) (GradCache's ``RandContext``), and the state
after (1) is restored at the end, so the call consumes random numbers as a plain chunked forward pass would.
Chunks draw their own masks, so with dropout on the result is a different (equally valid) dropout sample from
a whole-batch pass's; without dropout it equals a whole-batch pass up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RngState", "cached_backward"]


@dataclass(frozen=True)
class RngState:
    """The torch random-number state that dropout on ``device`` draws from (CPU, and the CUDA device if any)."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device | str = "cpu") -> RngState:
        device = torch.device(device)
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def cached_backward(
    embed: Callable[[Sequence[str]], torch.Tensor],
    texts: Sequence[str],
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
    chunk: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, Any]:
    """Back-propagate ``objective(embed(texts))`` into the parameters, embedding ``chunk`` texts at a time.

    ``embed`` maps texts to embeddings [n, d] (rows in order); ``objective`` maps all the batch's embeddings
    to ``(loss, extra)``. Parameter gradients accumulate (``.grad`` is added to, as by ``loss.backward()``);
    returns the detached loss and ``extra``. ``device`` is where ``embed`` runs (its dropout's RNG).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    states, parts = [], []
    with torch.no_grad():
        for part in chunks:
            states.append(RngState.capture(device))
            parts.append(embed(part))
    after = RngState.capture(device)
    embeddings = torch.cat(parts).detach().requires_grad_(True)
    loss, extra = objective(embeddings)
    loss.backward()
    assert embeddings.grad is not None
    grads = embeddings.grad.split([len(p) for p in parts])
    for part, state, grad in zip(chunks, states, grads, strict=True):
        state.restore()
        embed(part).backward(grad)
    after.restore()
    return loss.detach(), extra
