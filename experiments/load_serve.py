"""Load test of ``keytok serve`` on loopback: concurrent clients, mixed /search and /tokens, batched or not.

For each mode it starts ``keytok serve INDEX`` on a free loopback port, warms it, and runs CLIENTS threads
for SECONDS, each sending, at random, ``POST /search`` (``--system``, default bm25+keytok) or ``POST
/tokens`` with a query of the collection, one request after another. It reports requests/s, p50/p99
latency, errors (any non-2xx or failed request) and the server's RSS after warm-up and at the end, and the
texts per model forward the server saw (its ``/info`` batches). Modes: ``batched`` (``--max-batch 32``,
``--batch-wait-ms 5``, the defaults) and ``unbatched`` (``--max-batch 1 --batch-wait-ms 0``: one forward per
request), in the same run so the ratio is fair on a shared machine.

    python experiments/load_serve.py INDEX --clients 16 --seconds 60 --out experiments/results/serve_load.md

(``--queries``: the texts sent; by default the queries of the corpus the index was built from.)

``run_load`` is the client part alone (the test suite runs it briefly against its own server).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "batched": ["--max-batch", "32", "--batch-wait-ms", "5"],
    "unbatched": ["--max-batch", "1", "--batch-wait-ms", "0"],
}


def run_load(
    url: str,
    texts: list[str],
    *,
    clients: int = 16,
    seconds: float = 60.0,
    system: str = "bm25+keytok",
    k: int = 10,
    search_share: float = 0.5,
    seed: int = 0,
    max_requests: int = 1_000_000,
) -> dict[str, Any]:
    """``clients`` threads sending mixed /search and /tokens requests to ``url`` for ``seconds`` (or until
    ``max_requests`` in all); returns counts, requests/s, latency percentiles (ms) and the errors seen."""
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"search": [], "tokens": []}
    errors: list[str] = []
    sent = [0]

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with requests.Session() as http:
            while time.perf_counter() < deadline:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                text = rng.choice(texts)
                if rng.random() < search_share:
                    kind, body = "search", {"query": text, "k": k, "system": system}
                else:
                    kind, body = "tokens", {"text": text, "k": k}
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}{kind}", json=body, timeout=60)
                    ok = r.status_code == 200 and (
                        "hits" in r.json() if kind == "search" else "tokens" in r.json()
                    )
                    fault = None if ok else f"{kind}: HTTP {r.status_code} {r.text[:200]}"
                except (requests.RequestException, ValueError) as exc:
                    fault = f"{kind}: {type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    if fault is None:
                        latencies[kind].append(dt)
                    else:
                        errors.append(fault)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.perf_counter() - start
    every = np.array(latencies["search"] + latencies["tokens"]) * 1000
    done = int(every.size)
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": done + len(errors),
        "ok": done,
        "errors": len(errors),
        "error_examples": errors[:5],
        "rps": done / elapsed if elapsed else 0.0,
        "p50_ms": float(np.percentile(every, 50)) if done else float("nan"),
        "p99_ms": float(np.percentile(every, 99)) if done else float("nan"),
        "search": len(latencies["search"]),
        "tokens": len(latencies["tokens"]),
    }


class Server:
    """``keytok serve`` in a child process on a free loopback port (``index`` None: flags say ``--model``);
    ``url`` once it listens."""

    def __init__(self, index: str | os.PathLike[str] | None, *flags: str, timeout: float = 600.0) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [
            sys.executable,
            "-m",
            "keytok.cli.main",
            "serve",
            *([str(index)] if index else []),
            "--port",
            "0",
            *flags,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.url = ""
        self.log: list[str] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                break
            self.log.append(line)
            if "serving" in line and "http://" in line:
                self.url = line.split("http://", 1)[1].split()[0]
                self.url = "http://" + self.url
                break
        if not self.url:
            self.close()
            raise RuntimeError("keytok serve did not start:\n" + "".join(self.log))
        # keep reading its output so that it never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout or []:
            self.log.append(line)

    def rss(self) -> int:
        """The server process's resident memory, bytes."""
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def info(self) -> dict[str, Any]:
        return requests.get(f"{self.url}info", timeout=30).json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(index: str, mode: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One mode: start the server, warm it, load it, and read its memory and batches."""
    with Server(index, *MODES[mode]) as server:
        ready_rss = server.rss()
        warm = run_load(
            server.url, texts, clients=args.clients, seconds=args.warmup, system=args.system, seed=99
        )
        if warm["errors"]:
            raise RuntimeError(f"warm-up failed: {warm['error_examples']}")
        before = server.info()["batches"]
        start_rss = server.rss()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:  # RSS every tenth of the run: growth that levels off is no leak
            while not stop.wait(args.seconds / 10):
                samples.append(server.rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        row = run_load(server.url, texts, clients=args.clients, seconds=args.seconds, system=args.system)
        stop.set()
        sampler.join()
        end_rss = server.rss()
        info = server.info()
        after = info["batches"]
    args.info = info
    calls = after["calls"] - before["calls"]
    row |= {
        "mode": mode,
        "rss_ready_mib": ready_rss / 2**20,
        "rss_start_mib": start_rss / 2**20,
        "rss_end_mib": end_rss / 2**20,
        "rss_growth": end_rss / start_rss - 1,
        "rss_samples_mib": [round(x / 2**20) for x in samples],
        "forwards": calls,
        "texts_per_forward": (after["texts"] - before["texts"]) / calls if calls else 0.0,
        "largest_batch": after["largest"],
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    base = next((r for r in rows if r["mode"] == "unbatched"), None)
    lines = [
        "| mode | requests/s | vs unbatched | p50 ms | p99 ms | requests | errors | texts per call | "
        "RSS ready MiB | RSS start MiB | RSS end MiB | RSS growth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['rps'] / base['rps']:.2f}x" if base and base["rps"] else "-"
        lines.append(
            f"| {r['mode']} | {r['rps']:.1f} | {ratio} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests']:,} | "
            f"{r['errors']} | {r['texts_per_forward']:.1f} | {r['rss_ready_mib']:.0f} | {r['rss_start_mib']:.0f} | "
            f"{r['rss_end_mib']:.0f} | {100 * r['rss_growth']:+.1f} % |"
        )
    lines.append("")
    for r in rows:
        lines.append(
            f"RSS of the {r['mode']} server every {args.seconds / 10:g} s (MiB): {r['rss_samples_mib']}"
        )
    ix = info.get("index") or {}
    head = [
        "# keytok serve under load",
        "",
        f"`python experiments/load_serve.py {args.index} --clients {args.clients} --seconds {args.seconds:g} "
        f"--system {args.system}`: {args.clients} concurrent clients on loopback for {args.seconds:g} s per mode, "
        f"half `POST /search` ({args.system}, k=10), half `POST /tokens` (k=10), with the {len(args.texts_used):,} "
        f"queries of `{args.queries}`. Index: {ix.get('docs', '?')} documents ({', '.join(ix.get('engines', []))}), "
        f"model {ix.get('model', '?')}, {ix.get('precision', '?')}. Both modes in one run on the same machine "
        f"(a shared 2-core CPU: compare the ratio, not the absolute figures). RSS start: after a "
        f"{args.warmup:g} s warm-up with the same load; ready: when the server first listened.",
        "",
        "*batched*: `--max-batch 32 --batch-wait-ms 5` (the defaults); *unbatched*: `--max-batch 1 "
        "--batch-wait-ms 0`, one forward per request. Texts per call: texts the server passed to one model "
        "call (one `search_batch` or `key_tokens`), from its `/info` batches.",
        "",
        f"Load average of the machine (1, 5, 15 min) before the run: {', '.join(f'{x:.1f}' for x in args.load[0])}; "
        f"after: {', '.join(f'{x:.1f}' for x in args.load[1])} ({os.cpu_count()} CPUs).",
        "",
    ]
    return "\n".join([*head, *lines, ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", help="an index folder with sparse and bm25 (for bm25+keytok)")
    p.add_argument(
        "--queries",
        default=None,
        help="a BEIR queries.jsonl: the texts sent (default: the queries of the corpus the index was built from)",
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of the same load before measuring")
    p.add_argument("--system", default="bm25+keytok")
    p.add_argument("--modes", default="batched,unbatched")
    p.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = p.parse_args()
    if args.queries is None:
        corpus = json.loads((Path(args.index) / "keytok.json").read_text(encoding="utf-8"))["corpus"]["path"]
        args.queries = str(Path(corpus) / "queries.jsonl")
    with open(args.queries, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    args.texts_used = texts
    args.load = [os.getloadavg()]
    rows = [measure(args.index, mode, texts, args) for mode in args.modes.split(",")]
    args.load.append(os.getloadavg())
    out = table(rows, args, args.info)
    print(out)
    if args.out:
        Path(args.out).write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
