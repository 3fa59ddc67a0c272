"""Keep a busy server's memory from climbing with each new batch shape.

Measured with ``experiments/serve_memory.py`` (``experiments/results/serve_load.md``): a server's resident
memory rose 10-13 % as batches of new sizes arrived, and it was mostly the JVM. Lucene's searches and BM25
explanations allocate in the Java heap's young generation, which the JVM sizes up as the allocation rate
rises, touching fresh pages each time (+146 MiB over BM25 batches of 1 to 16 queries; the model's forwards
alone +33 MiB). :func:`settle` fixes the young generation at ``JVM_YOUNG`` (its pages are all touched in
the first seconds, then reused: +33 MiB), before the JVM starts. What the model's forwards leave is free
memory glibc keeps in its heaps: :func:`release` (``malloc_trim(0)``), after each batch, hands it back.
Off glibc (musl, macOS) :func:`release` does nothing; without the lucene extra :func:`settle` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["JVM_YOUNG", "release", "settle"]

#: the JVM's young generation in a server: Lucene's per-query garbage is small, so 32 MiB is plenty
JVM_YOUNG = "-Xmn32m"


def settle() -> bool:
    """Fix the JVM's young generation at :data:`JVM_YOUNG`, if this process has not started its JVM yet;
    whether it was done."""
    from keytok.engines.java import add_jvm_options

    return add_jvm_options(JVM_YOUNG)


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release() -> None:
    """Hand the free pages of glibc's heaps back to the system (after a batch); nothing off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
