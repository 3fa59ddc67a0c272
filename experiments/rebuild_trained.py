"""Rebuild a ``keytok train`` checkpoint from its trained parameters, on a machine without the run's files.

A LoRA run trains ~10 M parameters (the LoRA factors and the final norm); the merged model folder is the
whole model (540 MB). ``experiments/gpu_train_scifact.sh`` sends back only the trained parameters
(``adapter-N.safetensors``) and the run's ``keytok.json``; this script loads the base model, puts LoRA on the
same layers, loads the parameters, merges them as ``keytok train`` does on export, and writes the checkpoint
folder. The base model is checked by its sha256 against the record. ``experiments/import_embeddings.py``
then checks the result: its embeddings must equal the GPU's (cosine >= 0.9999 on sampled documents).

    python experiments/rebuild_trained.py /work/trained_run --out results/train/scifact-prompteol
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import run_script
from safetensors.torch import load_file

from keytok.errors import KeytokError
from keytok.models.loading import load_model
from keytok.training.checkpoint import export_checkpoint
from keytok.training.lora import add_lora, merge_lora


def read_record(folder: Path) -> dict:
    """The run's keytok.json: the file itself, or the part of the run's ``log`` after ``=== keytok.json``."""
    if (folder / "keytok.json").is_file():
        return json.loads((folder / "keytok.json").read_text())
    log = (folder / "log").read_text() if (folder / "log").is_file() else ""
    if "=== keytok.json\n" not in log:
        raise KeytokError(f"{folder}: neither keytok.json nor a log holding it")
    return json.loads(log.split("=== keytok.json\n", 1)[1])


def fusion_record(path: Path) -> dict:
    """The model's fusion record from the sweep: the method and weights of its best BM25 + key tokens + dense
    row, and the impact weight of its best BM25 + impact row under that method."""
    sweep = json.loads(path.read_text())
    main_row = sweep["chosen"]["bm25+sparse+dense"]
    method = main_row["method"]
    impact = max(
        (r for r in sweep["table"] if "impact" in r and r["method"] == method), key=lambda r: r["nDCG@10"]
    )
    return {
        "method": method,
        "weights": {
            "sparse:expanded": main_row["sparse:expanded"],
            "dense": main_row["dense"],
            "impact": impact["impact"],
        },
        "chosen_on": f"{sweep['queries']} held-out train queries (dev20), {path.name}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="folder with adapter-*.safetensors and keytok.json (or the run's log)")
    ap.add_argument("--base", default="smollm2-135m", help="the base model, as this machine names it")
    ap.add_argument("--data", default=None, help="the training data's path on this machine (recorded)")
    ap.add_argument(
        "--fusion",
        default=None,
        help="experiments/sweep_fusion_trained.py's JSON: record its chosen fusion (method and weights) in the model",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    run = Path(args.run)
    record = read_record(run)
    training = record["training"]
    loaded = load_model(args.base)
    if loaded.fingerprint != record["base_model"]["sha256"]:
        raise KeytokError(
            f"{args.base} has sha256 {loaded.fingerprint[:12]}…, the run trained {record['base_model']['sha256'][:12]}…"
        )
    model = loaded.model
    decoder = model.get_decoder()
    layers = list(decoder.layers)[min(record["trained_layers"]) :]
    # The tensors keytok train trains: the LoRA factors (or the layers whole) and the final norm.
    trainable = (
        add_lora(layers, training["lora_rank"], training["lora_alpha"], 0.0)
        if training["lora_rank"]
        else [p for layer in layers for p in layer.parameters()]
    ) + list(decoder.norm.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {names[id(p)] for p in trainable}
    params = {}
    for f in sorted(run.glob("adapter-*.safetensors")):
        params |= load_file(f)
    if set(params) != expected:
        lacking, foreign = sorted(expected - set(params)), sorted(set(params) - expected)
        raise KeytokError(
            f"{run}: the adapter files lack {len(lacking)} of the {len(expected)} trained tensors {lacking[:2]} "
            f"and hold {len(foreign)} others {foreign[:2]}"
        )
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            named[name].copy_(value)
    merge_lora(model)
    record = {k: v for k, v in record.items() if k != "keytok_checkpoint"}
    record["base_model"]["name"] = args.base
    training["model"] = args.base
    if args.data:
        for d in record.get("data", []):
            d["source"] = args.data
    record["rebuilt"] = {
        "from": f"{len(params)} trained tensors ({sum(v.numel() for v in params.values()):,} values)"
    }
    if args.fusion:
        record["fusion"] = fusion_record(Path(args.fusion))
    out = export_checkpoint(args.out, model, loaded.tokenizer, record)
    print(f"{out}: {args.base} with {len(params)} trained tensors merged")
    return 0


if __name__ == "__main__":
    run_script(main)
