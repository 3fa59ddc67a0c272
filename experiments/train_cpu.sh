#!/usr/bin/env bash
# keytok train on 2 CPU cores: the shipped default's recipe (LoRA r 32 on all 30 layers, PromptEOL) cut to fit
# 2 cores and 8 GB: batches of 32, texts cut to 64 tokens, 12 steps at a 5x learning rate, no LoRA dropout (it
# cost a sixth of a CPU step) and no gradient checkpointing (batches of 32 x 64 tokens fit in 6.2 GB). 3 min 21 s
# on 2 quiet AVX2 cores.
# Timed with /usr/bin/time -v (wall, CPU, peak RSS); then its key tokens on everyday text beside the shipped
# default's, and a held-out retrieval check (SciFact's dev20 train queries over a 315-document sub-corpus).
# experiments/results/train_cpu.md holds the figures and what they mean.
#
#   bash experiments/train_cpu.sh [OUT] [SPLIT]   (from the repo root; OUT defaults to runs/cpu-recipe; SPLIT is
#                                                 train80, the default, to keep dev20 held out, or train)
set -euo pipefail
out=${1:-runs/cpu-recipe}
split=${2:-train80}
data=/tmp/keytok-scifact
[ -f "$data/qrels/train80.tsv" ] || (cd experiments && python split_qrels.py ../../shared/data/beir/scifact --out "$data")
# --recipe keytok-cpu is what `keytok train` runs without a GPU: every layer, LoRA r 32 (alpha 32, no dropout),
# lr 1e-3, 12 steps of 32, 64 tokens (keytok/training/recipes.py).
/usr/bin/time -v keytok train --model smollm2-135m --recipe keytok-cpu --qrels "$data:$split" --out "$out"
out=$(realpath "$out")
(cd experiments && python key_tokens_table.py --models smollm2-135m-keytok "$out")
(cd experiments && python dev_check_scifact.py --max-length 64 --distractors 100 --models "$out")
