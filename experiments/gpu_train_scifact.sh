#!/usr/bin/env bash
# What training on SciFact's *train* qrels buys the BM25 + key-token systems, measured without the test qrels.
#
# On a GPU: train smollm2-135m (PromptEOL kept; LoRA r 32 on every layer, the LM head frozen) twice with one
# recipe: on 80 % of the train queries ("train80", to choose the fusion weights on the other 20 %, "dev20":
# the split is sha256(query id) mod 5, see experiments/split_qrels.py) and on all of them (the model that
# is reported). Then encode SciFact (and Cranfield, for the full model) and write, under OUT:
#   fold.npz              the train80 model's SciFact corpus and query embeddings (fp16: to choose weights)
#   scifact_corpus.npz    the full model's SciFact corpus embeddings (fp32)
#   rest.npz              its SciFact query and Cranfield corpus + query embeddings (fp32)
#   adapter-N.safetensors its trained parameters (LoRA factors + final norm), for
#                         experiments/rebuild_trained.py to rebuild the model on another machine
#
# BEIR_DATA_DIR holds scifact/ (with qrels/train80.tsv: `python experiments/split_qrels.py
# ../shared/data/beir/scifact --out BEIR_DATA_DIR/scifact`) and cranfield/.
#
#   bash experiments/gpu_train_scifact.sh MODEL.gguf BEIR_DATA_DIR OUT_DIR
set -euo pipefail
model=$1 data=$2 out=$3
keytok() { python3 -c 'import sys; from keytok.cli.main import main; sys.exit(main(sys.argv[1:]))' "$@"; }
for split in train80 train; do
    keytok train --model "$model" --method prompteol --qrels "$data/scifact:$split" --max-length 256 \
        --train-layers 30 --lora-rank 32 --lora-alpha 32 --lr 2e-4 --epochs 4 --batch-size 64 \
        --cache-dtype fp32 --device cuda --out "/tmp/ckpt-$split"
done
encode() { (cd experiments && python3 bench_gpu.py --model "$1" --corpus "$data/$2" --dtypes fp32 --cpu-docs 4 \
    --save-embeddings "$3" --out "/tmp/bench-$2.md" | tail -4); }
encode /tmp/ckpt-train80 scifact /tmp/emb-fold
encode /tmp/ckpt-train scifact /tmp/emb-full
encode /tmp/ckpt-train cranfield /tmp/emb-full
python3 - "$out" <<'EOF'
import sys, numpy as np, torch
from safetensors.torch import save_file
out = sys.argv[1]
def load(p):
    f = np.load(p); return f["ids"], f["emb"]
ci, ce = load("/tmp/emb-fold/scifact_corpus.npz"); qi, qe = load("/tmp/emb-fold/scifact_queries.npz")
np.savez(f"{out}/fold.npz", corpus_ids=ci, corpus_emb=ce.astype(np.float16), query_ids=qi, query_emb=qe.astype(np.float16))
parts = {}
for name in ("scifact_queries", "cranfield_corpus", "cranfield_queries"):
    i, e = load(f"/tmp/emb-full/{name}.npz"); parts[f"{name}_ids"] = i; parts[f"{name}_emb"] = e
np.savez(f"{out}/rest.npz", **parts)
params = torch.load("/tmp/ckpt-train/train-state/state.pt", weights_only=False)["params"]
names = sorted(params)
for k in range(3):
    save_file({n: params[n].contiguous() for n in names[k::3]}, f"{out}/adapter-{k}.safetensors")
print("adapter tensors", len(names), sum(p.numel() for p in params.values()))
EOF
cp /tmp/emb-full/scifact_corpus.npz "$out/"
echo "=== keytok.json"; cat /tmp/ckpt-train/keytok.json
