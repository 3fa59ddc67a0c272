"""Unpack what ``experiments/gpu_train_scifact.sh`` sent back into the layout the other scripts read.

The GPU machine returns few files (``fold.npz``, ``scifact_corpus.npz``, ``rest.npz``); this writes
``FOLD/scifact_{corpus,queries}.npz`` (the train80 model, for ``sweep_fusion_trained.py``) and
``FULL/<name>_{corpus,queries}.npz`` for SciFact and Cranfield (the reported model, for
``import_embeddings.py``), each file holding ``ids`` and float32 ``emb``.

    python experiments/unpack_gpu_run.py OUT --fold /tmp/fold_emb --full /tmp/trained_emb
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import run_script, write_npz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the folder gpu_train_scifact.sh wrote")
    ap.add_argument("--fold", required=True, help="where the train80 model's embeddings go")
    ap.add_argument("--full", required=True, help="where the reported model's embeddings go")
    args = ap.parse_args()
    run, fold, full = Path(args.run), Path(args.fold), Path(args.full)
    with np.load(run / "fold.npz", allow_pickle=False) as f:
        for part in ("corpus", "query"):
            name = "corpus" if part == "corpus" else "queries"
            emb = f[f"{part}_emb"].astype(np.float32)
            write_npz(fold / f"scifact_{name}.npz", ids=f[f"{part}_ids"], emb=emb)
    with np.load(run / "scifact_corpus.npz", allow_pickle=False) as f:
        write_npz(full / "scifact_corpus.npz", ids=f["ids"], emb=f["emb"])
    with np.load(run / "rest.npz", allow_pickle=False) as f:
        for name in ("scifact_queries", "cranfield_corpus", "cranfield_queries"):
            write_npz(full / f"{name}.npz", ids=f[f"{name}_ids"], emb=f[f"{name}_emb"])
    print(
        f"{fold}: the train80 model's SciFact embeddings; {full}: the full model's SciFact and Cranfield ones"
    )
    return 0


if __name__ == "__main__":
    run_script(main)
