"""Package a ``keytok train`` LoRA run as a shipped model: its trained parameters into ``keytok/models/shipped``.

The run's trained tensors (``adapter-*.safetensors``: LoRA factors + final norm, fp32) become one
``params.safetensors`` with the LoRA factors in fp16 (half the bytes; ``--check`` measures what that costs in
embeddings and key tokens against the fp32 factors) and the norms in fp32, beside the run's ``keytok.json``
(the loss history left out). The two sha256 it prints (parameters, record) go into ``keytok/models/registry.py``.

    python experiments/ship_default.py experiments/models/scifact-prompteol --name smollm2-135m-keytok --check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import EVERYDAY_TEXTS as CHECK_TEXTS
from _common import run_script
from safetensors.torch import load_file, save_file

from keytok.utils.hashing import sha256_file


def pack(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    params: dict[str, torch.Tensor] = {}
    for f in sorted(run.glob("adapter-*.safetensors")):
        params |= load_file(str(f))
    packed = {
        name: (t.to(torch.float16) if ".lora_" in name else t.to(torch.float32)).contiguous()
        for name, t in sorted(params.items())
    }
    record = json.loads((run / "keytok.json").read_text())
    record.pop("loss_history", None)
    return packed, record


def check(name: str, params_fp32: dict[str, torch.Tensor], record: dict) -> None:
    """Embeddings and top-10 key tokens of the fp16-factor merge against the fp32-factor merge."""
    import shutil
    import tempfile

    import numpy as np

    from keytok import KeyTokenModel
    from keytok.models import shipped as sh
    from keytok.models.registry import SHIPPED_MODELS

    half_dir = sh.prepare(SHIPPED_MODELS[name])
    t = record["training"]
    with tempfile.TemporaryDirectory() as tmp:
        full_dir = Path(tmp) / "fp32"
        shutil.copytree(half_dir, full_dir)
        weights = sh.merge_params(
            load_file(str(sh.base_dir(SHIPPED_MODELS[name]) / "model.safetensors")),
            params_fp32,
            t["lora_alpha"] / t["lora_rank"],
            "fp32 factors",
        )
        save_file(weights, str(full_dir / "model.safetensors"), {"format": "pt"})
        half, full = KeyTokenModel(str(half_dir)), KeyTokenModel(str(full_dir))
        a, b = half.encode(CHECK_TEXTS), full.encode(CHECK_TEXTS)
        cos = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        same = sum(
            len(
                {k.token for k in half.key_tokens(text, k=10)}
                & {k.token for k in full.key_tokens(text, k=10)}
            )
            for text in CHECK_TEXTS
        )
    print(
        f"fp16 factors against fp32: min cosine {cos.min():.6f}; "
        f"top-10 key tokens shared {same}/{10 * len(CHECK_TEXTS)}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="folder with adapter-*.safetensors and keytok.json")
    ap.add_argument("--name", default="smollm2-135m-keytok")
    ap.add_argument("--check", action="store_true", help="compare the fp16 merge with the fp32 one")
    args = ap.parse_args()
    run = Path(args.run)
    packed, record = pack(run)
    out = Path(__file__).resolve().parents[1] / "keytok" / "models" / "shipped" / args.name
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / "params.safetensors"), {"format": "pt"})
    (out / "keytok.json").write_text(json.dumps(record, indent=1) + "\n")
    digest = sha256_file(out / "params.safetensors")
    size = (out / "params.safetensors").stat().st_size
    print(f"{out / 'params.safetensors'}: {len(packed)} tensors, {size / 2**20:.1f} MiB, sha256 {digest}")
    print(f"{out / 'keytok.json'}: sha256 {sha256_file(out / 'keytok.json')}")
    if args.check:
        params32: dict[str, torch.Tensor] = {}
        for f in sorted(run.glob("adapter-*.safetensors")):
            params32 |= load_file(str(f))
        check(args.name, params32, record)
    return 0


if __name__ == "__main__":
    run_script(main)
