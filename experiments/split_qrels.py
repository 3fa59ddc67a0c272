"""Split a BEIR folder's train qrels into train80 and dev20 (``is_dev``: sha256 of the query id mod 5).

``experiments/gpu_train_scifact.sh`` trains on ``FOLDER:train80`` to choose fusion weights on the dev20 queries
(``experiments/sweep_fusion_trained.py``, which applies the same rule). Writes ``qrels/train80.tsv`` and
``qrels/dev20.tsv`` into ``--out`` (a copy of the BEIR folder: the shared data stays read-only).

    python experiments/split_qrels.py ../shared/data/beir/scifact --out /tmp/data/scifact
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import is_dev, run_script, write_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="a BEIR folder with qrels/train.tsv")
    ap.add_argument("--out", required=True, help="the BEIR folder to write (copied from CORPUS if absent)")
    args = ap.parse_args()
    src, out = Path(args.corpus), Path(args.out)
    if not out.exists():
        shutil.copytree(src, out)
    head, *rows = (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    parts = {"train80": [r for r in rows if not is_dev(r.split("\t")[0])]}
    parts["dev20"] = [r for r in rows if is_dev(r.split("\t")[0])]
    for name, lines in parts.items():
        write_text(out / "qrels" / f"{name}.tsv", "\n".join([head, *lines]) + "\n")
        print(
            f"{out / 'qrels' / f'{name}.tsv'}: {len(lines)} judgements, {len({r.split(chr(9))[0] for r in lines})} queries"
        )
    return 0


if __name__ == "__main__":
    run_script(main)
