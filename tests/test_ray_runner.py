"""The Ray runner on a local 2-worker cluster with the tiny model: the same embeddings as the local loop,
and a worker killed mid-run is restarted by Ray and its chunk redone."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS

from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder
from keytok.encoding.ray_runner import encode_on_ray, ray_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ray_available(), reason="the ray extra is not installed"),
]


def _corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    ids = [f"d{i}" for i in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 16)))) for _ in range(n)]
    texts[3] = ""  # an empty text: a zero row, as the local loop gives it
    return ids, texts


def _encoder_actor_pids() -> list[int]:
    """Processes whose title Ray set to the encoder actor's (``ray::MapWorker(MapBatches(_ChunkEncoder))``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and b"_ChunkEncoder" in cmdline and b"ray::" in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_embeddings_and_the_build_reuses_them(
    ray_cluster, tiny_model_dir: Path, tmp_path: Path
):
    ids, texts = _corpus(40)
    encoder = Encoder(str(tiny_model_dir), "mean", dtype="fp32", max_length=32, threads=1)
    local = EmbeddingCache(tmp_path / "local").encode_corpus(
        encoder, ids, texts, chunk_size=6, progress=False
    )

    cache = EmbeddingCache(tmp_path / "ray")
    report = encode_on_ray(
        encoder, ids, texts, model=str(tiny_model_dir), chunk_size=6, cache=cache, workers=2
    )
    assert (report.chunks, report.cached, report.computed, report.workers) == (7, 0, 7, 2)
    assert report.texts == 39 and report.tokens > 0
    from_ray = cache.encode_corpus(encoder, ids, texts, chunk_size=6, progress=False)
    assert cache.last_report.reused == 7 and cache.last_report.computed == 0
    np.testing.assert_allclose(from_ray, local, rtol=1e-5, atol=1e-6)
    assert not from_ray[3].any()
    again = encode_on_ray(
        encoder, ids, texts, model=str(tiny_model_dir), chunk_size=6, cache=cache, workers=2
    )
    assert (again.cached, again.computed) == (7, 0)


def test_a_killed_worker_is_restarted_and_its_chunk_redone(ray_cluster, tiny_model_dir: Path, tmp_path: Path):
    ids, texts = _corpus(60, seed=1)
    encoder = Encoder(str(tiny_model_dir), "mean", dtype="fp32", max_length=32, threads=1)
    cache = EmbeddingCache(tmp_path / "ray")
    folder = cache.plan(encoder, ids, texts, chunk_size=2).folder
    killed: list[int] = []

    def kill_one_worker() -> None:
        # A worker writes chunks; once the first is on disk, kill the process of one encoder actor.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(folder.glob("chunk*.json")):
            time.sleep(0.02)
        for pid in _encoder_actor_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    report = encode_on_ray(
        encoder, ids, texts, model=str(tiny_model_dir), chunk_size=2, cache=cache, workers=2
    )
    killer.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert report.computed == 30
    records = [json.loads(f.read_text()) for f in sorted(folder.glob("chunk*.json"))]
    assert [r["chunk"] for r in records] == list(range(30))
    local = EmbeddingCache(tmp_path / "local").encode_corpus(
        encoder, ids, texts, chunk_size=2, progress=False
    )
    np.testing.assert_allclose(
        cache.encode_corpus(encoder, ids, texts, chunk_size=2, progress=False), local, rtol=1e-5, atol=1e-6
    )


def test_index_build_with_the_ray_runner_equals_the_local_build(
    ray_cluster, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    from keytok.cli.main import main
    from keytok.engines.manifest import Manifest

    folder = tmp_path / "beir"
    folder.mkdir()
    ids, texts = _corpus(30, seed=2)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i, t in zip(ids, texts, strict=True):
            fh.write(json.dumps({"_id": i, "title": "", "text": t or "x"}) + "\n")
    common = ["index", "build", str(folder), "--model", str(tiny_model_dir), "--kind", "sparse,dense",
              "--dtype", "fp32", "-K", "16", "--chunk-size", "4", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "local"), "--cache", str(tmp_path / "c1")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--cache", str(tmp_path / "c2"), "--runner", "ray",
                 "--ray-workers", "2"]) == 0  # fmt: skip
    assert "ray: 8 chunks (0 cached, 8 computed by 2 workers)" in capsys.readouterr().out
    # The key-token index is byte-identical: top-K and integer weights absorb the last-bit differences that
    # a worker's thread count makes in the floats (the driver here runs 2 torch threads, a worker 1).
    local = Manifest.load(tmp_path / "local" / "sparse").files
    remote = Manifest.load(tmp_path / "ray" / "sparse").files
    assert {n: f.sha256 for n, f in local.items()} == {n: f.sha256 for n, f in remote.items()}
    import faiss

    vectors = [faiss.read_index(str(tmp_path / run / "dense" / "index.faiss")) for run in ("local", "ray")]
    a, b = (v.reconstruct_n(0, v.ntotal) for v in vectors)
    assert a.shape == (30, 32)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_worker_with_other_weights_is_one_line_error(ray_cluster, tiny_model_dir: Path, tmp_path: Path):
    import shutil

    from safetensors.torch import load_file, save_file

    from keytok.errors import KeytokError

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[name] = weights[name] + 1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    ids, texts = _corpus(6)
    encoder = Encoder(str(tiny_model_dir), "mean", dtype="fp32", max_length=32, threads=1)
    cache = EmbeddingCache(tmp_path / "ray")
    with pytest.raises(KeytokError) as err:
        encode_on_ray(encoder, ids, texts, model=str(other), chunk_size=2, cache=cache, workers=1)
    message = str(err.value)
    assert message.startswith(
        "the Ray encode stopped: a Ray worker's encoder differs from the driver's in model_sha256"
    )
    assert "\n" not in message and "\x1b" not in message
    assert not list(cache.root.rglob("chunk*.json"))  # no chunk written by a worker with other weights
