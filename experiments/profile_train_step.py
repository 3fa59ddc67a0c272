"""Profile keytok train's steps on the CPU: tokens/s of a few steps, and (--profile) where one step's time goes.

Builds the run as ``keytok train`` does (same model, method, frozen cache, LoRA) on the first N qrels pairs,
then times ``steps`` optimiser steps. Other jobs may share the CPU: compare settings within one call.

  python experiments/profile_train_step.py --pairs 8 --steps 2 --micro-batch 8 --grad-checkpoint --profile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from keytok.training import trainer as tr
from keytok.training.data import read_source


def build(args: argparse.Namespace, out: str) -> tr._Run:
    config = tr.TrainConfig(
        model=args.model,
        method=args.method,
        train_layers=args.train_layers,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_rank,
        lora_dropout=args.lora_dropout,
        batch_size=args.pairs,
        micro_batch=args.micro_batch,
        grad_checkpoint=args.grad_checkpoint,
        max_length=args.max_length,
        max_steps=args.steps + 1,
        cache_dtype="fp32",
        device="cpu",
        threads=args.threads,
    )
    sets = [read_source("qrels", args.qrels, "", args.pairs, 0)]
    m = tr._load(config, lambda s: None)
    cache, _ = tr._frozen_cache(config, sets, m, tr.Path(out), None, lambda s: None)
    return tr._Run(config, sets, tr.Path(out), m, cache, [], lambda s: None, (time.perf_counter(), 0.0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="prompteol")
    p.add_argument("--qrels", default="/work/shared/data/beir/scifact:train")
    p.add_argument("--pairs", type=int, default=8, help="pairs per batch (texts = 2x)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--train-layers", type=int, default=30)
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--profile", action="store_true", help="torch.profiler table of the last step")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        run = build(args, out)
        run.train_step(0)  # warm-up (allocator, oneDNN primitives)
        tokens, started, cpu = 0, time.perf_counter(), time.process_time()
        for step in range(1, args.steps + 1):
            if args.profile and step == args.steps:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                    tokens += run.train_step(step)[1]
            else:
                tokens += run.train_step(step)[1]
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    print(
        f"{tokens / seconds:,.1f} tokens/s, {tokens / cpu:,.1f} tokens/CPU-s "
        f"({tokens} tokens in {seconds:.1f} s, {cpu:.1f} CPU-s, {args.steps} steps), "
        f"peak RSS {tr.peak_rss_mb():,} MiB",
        file=sys.stderr,
    )
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
