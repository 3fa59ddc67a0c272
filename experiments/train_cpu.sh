#!/usr/bin/env bash
# keytok train on 2 CPU cores: the shipped default's recipe cut to fit 60 minutes and 8 GB, timed with
# /usr/bin/time -v, then its key tokens on everyday text beside the shipped default's
# (experiments/results/train_cpu.md holds the figures and what they mean).
#
#   bash experiments/train_cpu.sh [OUT]      (from the repo root; OUT defaults to runs/cpu-recipe)
set -euo pipefail
out=${1:-runs/cpu-recipe}
/usr/bin/time -v keytok train --model smollm2-135m --method prompteol --qrels ../shared/data/beir/scifact:train \
    --train-layers 6 --lora-rank 32 --lora-alpha 32 --lr 2e-4 --epochs 3 --batch-size 64 --max-length 96 \
    --grad-checkpoint --save-every 5 --out "$out"
(cd experiments && python key_tokens_table.py --models smollm2-135m-keytok "../$out")
