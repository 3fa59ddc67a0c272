"""The registry of engine kinds an index folder can hold."""

from __future__ import annotations

KINDS: tuple[str, ...] = ("sparse", "dense", "lucene", "bm25", "bm25x", "impact")
