#!/usr/bin/env python
"""What opening a native sparse index costs at 1 M and 10 M documents: the structural check, the sha256
verification and the verified stamps, each against the floor of mapping the files with no check at all.

A synthetic index (``--postings`` distinct token ids per document over a 49,152-id vocabulary, Gamma(2, 1)
weights, 8-bit impacts) is streamed into ``--work``/``docs-N`` by ``SparseIndex.build_from_chunks`` (kept there
for later runs; ``--fresh`` rebuilds). Then each way of opening runs ``--repeat`` times, each in its own child
process (so no in-process cache helps), and the median wall time is printed:

- ``mapped only``: ``doc_ids.json`` parsed and every ``.npy`` memory-mapped, nothing checked: what an open
  cost before the structural check existed (the floor);
- ``structure``: ``SparseIndex.open(verify=False)``, stamps off: sizes and every structural invariant (document numbers
  within the segment, sorted unique postings, indptr bounds, ids, parameters);
- ``sha256 + structure``: ``open(verify=True)`` with the stamp store off (``KEYTOK_VERIFY_STAMPS=0``): every
  file rehashed, as a first open of a folder that came from elsewhere;
- ``stamped``: ``open(verify=True)`` once the folder's files are stamped as verified and structurally checked on
  this machine (:mod:`keytok.utils.stamps`): neither the hashing nor the structural check is redone.

The page cache is warm (the files were just written or read): a cold disk adds its read time to the hashing
and the structural check alike. Run: ``python experiments/bench_open.py --docs 1000000 10000000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

VOCAB = 49_152
STRIDE = 383  # prime, coprime with VOCAB: k * STRIDE mod VOCAB differs for every k < VOCAB

_OPEN = "import sys, time, keytok; S = keytok.SparseIndex; t = time.perf_counter(); S.open(sys.argv[1], verify={}); "
CHILD = {
    "mapped only": (
        "import json, sys, time, numpy as np, pathlib; p = pathlib.Path(sys.argv[1]); t = time.perf_counter(); "
        "json.loads((p / 'doc_ids.json').read_text()); "
        "[np.load(f, mmap_mode='r') for f in sorted(p.glob('*.npy')) + sorted(p.glob('*/*.npy'))]; "
    ),
    "structure": _OPEN.format(False),
    "sha256 + structure": _OPEN.format(True),  # run with stamps off
    "stamped": _OPEN.format(True),
}
_TIMED = "print(time.perf_counter() - t)"


def chunks(n_docs: int, postings: int, chunk_docs: int, seed: int):
    for j, lo in enumerate(range(0, n_docs, chunk_docs)):
        rng = np.random.default_rng([seed, j])
        rows = min(chunk_docs, n_docs - lo)
        start = rng.integers(0, VOCAB, size=(rows, 1))
        cols = (start + STRIDE * np.arange(postings)) % VOCAB
        cols.sort(axis=1)
        data = rng.gamma(2.0, 1.0, size=rows * postings).astype(np.float32)
        indptr = np.arange(0, rows * postings + 1, postings, dtype=np.int64)
        x = sp.csr_matrix((data, cols.ravel().astype(np.int32), indptr), shape=(rows, VOCAB))
        yield [f"doc{lo + i}" for i in range(rows)], x


def build(path: Path, n_docs: int, postings: int) -> float:
    import keytok

    t0 = time.perf_counter()
    keytok.SparseIndex.build_from_chunks(
        path,
        chunks(n_docs, postings, 100_000, 0),
        {"model": "synthetic", "vocab_size": VOCAB},
        scale=12.0 / 255,
    )
    return time.perf_counter() - t0


def child_seconds(code: str, path: Path, env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code + _TIMED, str(path)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        times.append(float(out.stdout.split()[-1]))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--postings", type=int, default=128, help="distinct tokens per document (default 128)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "keytok-bench-open")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="rebuild the synthetic indexes")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()

    stamps = Path(tempfile.mkdtemp(prefix="keytok-stamps-"))
    env = {**os.environ, "KEYTOK_CACHE": str(stamps)}
    lines = [
        "| documents | postings | on disk | build s | mapped only s | structure s | "
        "sha256 + structure s | stamped s | structure cost (s over mapped) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in args.docs:
        path = args.work / f"docs-{n}"
        built = float("nan")
        if args.fresh or not (path / "manifest.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            built = build(path, n, args.postings)
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        row = {}
        for way, code in CHILD.items():
            way_env = env if way == "stamped" else {**env, "KEYTOK_VERIFY_STAMPS": "0"}
            if way == "stamped":
                child_seconds(code, path, env, 1)  # stamps the files
            row[way] = child_seconds(code, path, way_env, args.repeat)
        lines.append(
            f"| {n:,} | {n * args.postings:,} | {disk / 1e9:.2f} GB | {built:.1f} | "
            + " | ".join(f"{row[w]:.2f}" for w in CHILD)
            + f" | {row['structure'] - row['mapped only']:.2f} |"
        )
        print(lines[0], lines[1], lines[-1], sep="\n", flush=True)
    shutil.rmtree(stamps, ignore_errors=True)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    note = (
        f"\nCPU: {cpu}, {os.cpu_count()} cores; median of {args.repeat} child processes each, the open alone timed (imports "
        "excluded); page cache warm. Command: `python experiments/bench_open.py --docs "
        + " ".join(str(d) for d in args.docs)
        + "`."
    )
    print(note)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n" + note + "\n")


if __name__ == "__main__":
    main()
