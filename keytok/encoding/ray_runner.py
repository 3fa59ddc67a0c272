"""Encode a corpus on a Ray cluster, into the same embedding cache the local build resumes from.

The forward pass sets the cost of every index, and a corpus of millions of documents wants many cores or
GPUs, often on several machines. keytok does not run a process pool of its own for that: it hands the
chunks of :class:`~keytok.encoding.cache.EmbeddingCache` to a Ray Data pipeline whose map stage is a pool
of actors, each holding one keytok encoder (one per GPU, or per group of CPU cores). Each actor writes the
chunks it encodes into the cache folder exactly as the local loop would (the .npy, then the record that
marks it complete), so:

* the local build that follows finds every chunk cached and only projects them: the index is the one a
  local build gives (same chunks, each encoded by itself, same floats at the same precision);
* a run killed at any point, driver or worker, resumes from the chunks already written, on the same
  cluster or another one; Ray itself restarts a killed worker and retries its chunk.

Every worker must see the cache folder (a local cluster does; across machines, put ``KEYTOK_CACHE`` on a
shared file system) and must encode at the driver's precision, since the precision is part of the cache
key: a worker whose key differs refuses to start.

``ray`` is an optional extra: ``pip install 'keytok[ray]'``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keytok.encoding.cache import DEFAULT_CHUNK, CachePlan, ChunkTask, EmbeddingCache
from keytok.errors import KeytokError

__all__ = ["RayReport", "encode_on_ray", "model_spec", "ray_available"]


def ray_available() -> bool:
    """Whether the ``ray`` extra (Ray Data) is installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class RayReport:
    """What one :func:`encode_on_ray` call did."""

    chunks: int
    cached: int
    computed: int
    texts: int
    tokens: int
    seconds: float
    workers: int

    def summary(self) -> str:
        """One line for progress output."""
        rate = self.tokens / self.seconds if self.seconds else 0.0
        return (
            f"ray: {self.chunks} chunks ({self.cached} cached, {self.computed} computed by {self.workers} "
            f"workers), {self.texts} texts / {self.tokens:,} tokens in {self.seconds:.1f} s ({rate:,.0f} tokens/s)"
        )


def model_spec(encoder: Any) -> str:
    """What a worker loads to get the driver's weights: a packaged name (each machine prepares its own
    copy), else the folder the weights came from, else the name (a hub id). The fingerprint check in the
    worker catches a spec that loads other weights."""
    from keytok.models.registry import PACKAGED_MODELS

    loaded = encoder.model
    if loaded.name in PACKAGED_MODELS or loaded.path is None:
        return str(loaded.name)
    return str(loaded.path)


class _ChunkEncoder:
    """A Ray actor: one encoder, loaded once, writing each chunk it is given into the cache folder."""

    def __init__(self, spec: dict[str, Any], expected_key: dict[str, Any], cache_root: str) -> None:
        from keytok.encoding.encoder import Encoder

        self.encoder = Encoder(
            spec["model"],
            spec["method"],
            dtype=spec["dtype"],
            device=spec["device"],
            max_length=spec["max_length"],
            batch_tokens=spec["batch_tokens"],
            threads=spec["threads"],
        )
        self.cache = EmbeddingCache(cache_root)
        key = self.cache.key(self.encoder, expected_key["corpus"], expected_key["chunk_size"])
        differs = [k for k in key if k != "model" and key[k] != expected_key.get(k)]
        if differs:
            raise KeytokError(
                "a Ray worker's encoder differs from the driver's in "
                + ", ".join(f"{k} ({key[k]} vs {expected_key.get(k)})" for k in differs)
                + ": give the workers the driver's model, method, precision and max_length"
            )
        self.folder = self.cache.folder_for(self.encoder, expected_key["corpus"], expected_key["chunk_size"])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        texts_out, tokens_out = [], []
        for i in range(len(batch["chunk"])):
            task = ChunkTask(
                int(batch["chunk"][i]),
                int(batch["lo"][i]),
                int(batch["hi"][i]),
                str(batch["ids_hash"][i]),
                str(batch["texts_hash"][i]),
            )
            _, encoded, tokens = self.cache.encode_chunk(
                self.encoder, self.folder, task, [str(t) for t in batch["texts"][i]]
            )
            texts_out.append(encoded)
            tokens_out.append(tokens)
        return {"chunk": batch["chunk"], "texts": np.array(texts_out), "tokens": np.array(tokens_out)}


def encode_on_ray(
    encoder: Any,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    model: str | None = None,
    corpus_checksum: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    cache: EmbeddingCache | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
) -> RayReport:
    """Encode the chunks of ``texts`` not yet in ``cache`` on a Ray cluster; the caller then builds locally.

    ``encoder`` is the driver's :class:`~keytok.encoding.encoder.Encoder` (its model, method, precision and
    ``max_length`` form the cache key; the workers build the same encoder from ``model``, the model spec a
    worker can load: a packaged name, a folder or a hub id; default: :func:`model_spec`). Workers run on
    the driver's device type: with a CUDA driver, one GPU per worker; on CPUs, ``cpus_per_worker`` cores
    (and torch threads) each. ``workers``: actors in the pool (default: as many as the cluster's GPUs, or
    CPUs / ``cpus_per_worker``). ``address``: join a running cluster (``"auto"``, ``"ray://host:10001"``);
    default: start a local one and shut it down afterwards.
    """
    if not ray_available():
        raise KeytokError("the Ray runner needs the ray extra: pip install 'keytok[ray]'")
    import ray

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise KeytokError(f"ray_workers must be a positive integer, got {workers!r}")
    if not isinstance(cpus_per_worker, int) or cpus_per_worker < 1:
        raise KeytokError(f"cpus_per_worker must be a positive integer, got {cpus_per_worker!r}")
    cache = cache if cache is not None else EmbeddingCache()
    txt = list(texts)
    plan = cache.plan(encoder, doc_ids, txt, corpus_checksum=corpus_checksum, chunk_size=chunk_size)
    if not plan.todo:
        return RayReport(plan.report.chunks, plan.report.reused, 0, 0, 0, 0.0, 0)
    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        ray.init(**init, **({"address": address} if address is not None else {}))
    try:
        workers = _pool_size(ray.cluster_resources(), encoder, workers, cpus_per_worker, len(plan.todo))
        spec = {
            "model": model or model_spec(encoder),
            "method": encoder.method,
            "dtype": encoder.precision.name,
            "device": encoder.precision.device.type,
            "max_length": int(encoder.max_length),
            "batch_tokens": encoder.batch_tokens,
            "threads": cpus_per_worker,
        }
        started = time.perf_counter()
        done = _run_pool(plan, txt, spec, str(cache.root), workers, cpus_per_worker)
        seconds = time.perf_counter() - started
    finally:
        if started_here:
            ray.shutdown()
    return RayReport(
        chunks=plan.report.chunks,
        cached=plan.report.reused,
        computed=len(done),
        texts=sum(int(r["texts"]) for r in done),
        tokens=sum(int(r["tokens"]) for r in done),
        seconds=seconds,
        workers=workers,
    )


def _pool_size(
    resources: dict[str, float], encoder: Any, workers: int | None, per_worker: int, chunks: int
) -> int:
    """Actors for the pool: as asked, else what the cluster holds; never more than there are chunks."""
    on_gpu = encoder.precision.device.type == "cuda"
    if on_gpu and not resources.get("GPU"):
        raise KeytokError("the driver encodes on CUDA but the Ray cluster has no GPU")
    if workers is None:
        workers = int(resources["GPU"]) if on_gpu else int(resources.get("CPU", 1)) // per_worker
    return max(1, min(workers, chunks))


def _run_pool(
    plan: CachePlan, texts: list[str], spec: dict[str, Any], cache_root: str, workers: int, per_worker: int
) -> list[dict[str, Any]]:
    """The Ray Data pipeline: one row per chunk to do, mapped by a pool of :class:`_ChunkEncoder` actors."""
    import ray.data

    rows = [
        {
            "chunk": t.chunk,
            "lo": t.lo,
            "hi": t.hi,
            "ids_hash": t.ids_hash,
            "texts_hash": t.texts_hash,
            "texts": texts[t.lo : t.hi],
        }
        for t in plan.todo
    ]
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        return (
            ray.data.from_items(rows)
            .map_batches(
                _ChunkEncoder,
                fn_constructor_args=(spec, plan.key, cache_root),
                batch_size=1,
                concurrency=workers,
                num_cpus=per_worker,
                num_gpus=1 if spec["device"] == "cuda" else None,
            )  # Ray Data restarts a dead actor and retries its chunk by default (max_restarts=-1)
            .take_all()
        )
    except ray.exceptions.RayError as exc:
        raise KeytokError(f"the Ray encode stopped: {_ray_reason(exc)}") from None


def _ray_reason(exc: Exception) -> str:
    """One line out of a Ray error: the worker's KeytokError message when there is one, else its first line.

    Ray passes a worker's exception back as text (with the remote traceback), not as the exception object.
    """
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    for line in reversed(lines):
        if "KeytokError: " in line:
            return line.split("KeytokError: ", 1)[1]
    return next((line for line in lines if line), type(exc).__name__)
