"""Choosing the numeric precision and device the model runs in.

``auto`` picks, per machine:

* CUDA: bf16 where the GPU supports it, else fp16 (weights cast; GPUs run half precision natively);
* CPU with AMX or AVX-512-BF16: bf16 *autocast* (fp32 master weights and residual stream, matmuls
  in bf16), with each layer's attention block (q/k/v/o projections, rotary, SDPA) kept in fp32.
  Autocast rather than bf16 weights because it keeps the key tokens closer to fp32; attention in
  fp32 because that is where bf16 moves them most. On 1,000 SciFact documents (SmolLM2-135M, 2
  AVX-512-BF16 cores, experiments/bench_precision.py), top-10 agreement with fp32 / speed vs fp32:
  bf16 weights 95.9 % / 1.85x; autocast 97.4 % / 1.64x; autocast with fp32 attention 98.5 % / 1.44x.
  One-off checks: only the q/k projections in fp32 gives 97.9 % (same documents); in a smaller
  check (120 documents, 512 tokens: all-bf16 97.7 %), SDPA alone in fp32 changed nothing, and
  bf16-rounded weights with fp32 maths gave 99.4 %: the activations' rounding is what moves the
  key tokens.
  ``KEYTOK_ATTENTION_FP32=0`` (or ``Precision.fp32_attention``) trades that agreement for 12-15 % speed;
* other CPUs (AVX2 only): fp32. Without bf16 units bf16 is emulated and is slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from keytok.errors import KeytokError

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX) or AVX-512-BF16 instructions."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the weights' dtype and, when used, the autocast dtype."""

    name: str  # fp32 | bf16 | fp16
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    device: torch.device
    fp32_last: int = 0  # under autocast: the last N decoder layers run in fp32 (see Fp32Layers)
    fp32_attention: bool = False  # under autocast: attention blocks run in fp32 (see keep_attention_fp32)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        how = f"autocast {self.name}" if self.autocast_dtype is not None else f"{self.name} weights"
        if self.autocast_dtype is not None and self.fp32_attention:
            how += ", attention fp32"
        if self.autocast_dtype is not None and self.fp32_last:
            how += f" (last {self.fp32_last} layers fp32)"
        return f"{how} on {self.device.type}"


def resolve_precision(dtype: str = "auto", device: str | torch.device | None = None) -> Precision:
    """Turn ``--dtype`` and ``--device`` into a :class:`Precision`."""
    if dtype not in DTYPE_CHOICES:
        raise KeytokError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPE_CHOICES)})")
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KeytokError("device cuda requested but torch sees no CUDA GPU")
    if dtype == "auto":
        if dev.type == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "bf16" if cpu_has_fast_bf16() else "fp32"
    if dtype == "fp32":
        return Precision("fp32", torch.float32, None, dev)
    half = torch.bfloat16 if dtype == "bf16" else torch.float16
    if dev.type == "cuda":
        return Precision(dtype, half, None, dev)
    # On CPU: fp32 master weights + autocast, attention blocks in fp32 (see module doc).
    return Precision(dtype, torch.float32, half, dev, fp32_attention=_attention_fp32_wanted())


def _attention_fp32_wanted() -> bool:
    return os.environ.get("KEYTOK_ATTENTION_FP32", "1").strip().lower() not in ("0", "false", "no", "off")


class Fp32Layers:
    """Run the given modules (decoder layers, attention blocks) outside autocast, in fp32, while installed.

    bf16 rounding errors accumulate through the residual stream; running the last few layers in
    fp32 removes the part that reaches the pooled vector last, at the cost of those layers' speed.
    For the last layers it is installed per forward pass (like the bidirectional hooks), so a shared
    model is left untouched; attention blocks keep theirs for good (see :func:`keep_attention_fp32`).
    """

    def __init__(self, layers: list[torch.nn.Module], when: Callable[[], bool] | None = None) -> None:
        """``when``: checked at each call; the module runs as before (under autocast) while it is False."""
        self.layers = layers
        self._saved = [vars(layer).get("forward") for layer in layers]  # e.g. a torch.compile-d forward
        for layer in layers:
            original = layer.forward

            def forward(*args: object, _original=original, **kwargs: object) -> object:
                if when is not None and not when():
                    return _original(*args, **kwargs)
                with torch.autocast(device_type=_device_type(args, kwargs), enabled=False):
                    return _original(*(_fp32(a) for a in args), **{k: _fp32(v) for k, v in kwargs.items()})

            layer.forward = forward

    def remove(self) -> None:
        for layer, saved in zip(self.layers, self._saved, strict=True):
            restore_forward(layer, saved)


def keep_attention_fp32(layers: Iterable[torch.nn.Module], enabled: bool = True) -> int:
    """Run (``enabled``) or stop running each decoder layer's attention block outside autocast, in fp32.

    Returns how many attention blocks the layers have (those without a ``self_attn`` are left alone).
    The wrapper is installed once per block and reads a flag at call time, rather than being installed
    per forward pass: torch.compile-d layers trace into it, and a new wrapper per pass would recompile
    them. Outside autocast it changes nothing.
    """
    count = 0
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            continue
        wrapped = hasattr(attn, "_keytok_fp32")
        if enabled and not wrapped:
            Fp32Layers([attn], when=lambda attn=attn: attn._keytok_fp32)
        if enabled or wrapped:
            attn._keytok_fp32 = enabled
        count += 1
    return count


def restore_forward(layer: torch.nn.Module, saved: object) -> None:
    """Undo an instance-level ``layer.forward = ...``: put ``saved`` back, or the class's forward if None."""
    if saved is not None:
        layer.forward = saved
    elif "forward" in vars(layer):
        del layer.forward


def _fp32(x: object) -> object:
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    if isinstance(x, tuple):
        return tuple(_fp32(t) for t in x)
    return x


def _device_type(args: tuple, kwargs: dict) -> str:
    for x in (*args, *kwargs.values()):
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"
