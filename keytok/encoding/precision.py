"""Choosing the numeric precision and device the model runs in.

``auto`` picks, per machine:

* CUDA: bf16 where the GPU supports it, else fp16 (weights cast; GPUs run half precision natively);
* CPU with AMX or AVX-512-BF16: bf16 *autocast* (fp32 master weights, matmuls in bf16 on the
  tile units, 2-3x faster than fp32). Autocast rather than bf16 weights because it keeps the
  key tokens closer to fp32 (REFERENCE.md §4: 98.8 % vs 96 % top-10 agreement);
* other CPUs (AVX2 only, e.g. the AMD EPYC machines seen here): fp32. Without bf16 units,
  bf16 is emulated and is slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
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

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        how = f"autocast {self.name}" if self.autocast_dtype is not None else f"{self.name} weights"
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
    # On CPU: fp32 master weights + autocast (see module doc).
    return Precision(dtype, torch.float32, half, dev)
