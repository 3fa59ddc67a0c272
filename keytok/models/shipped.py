"""Trained key-token models shipped inside the keytok package, merged once into their packaged base.

A ``keytok train`` LoRA run changes ~10 M values of a 135 M-parameter model: the LoRA factors of every trained
linear layer and the final norm. keytok ships those (``keytok/models/shipped/NAME/``: ``params.safetensors``,
LoRA factors in fp16 and norms in fp32, and ``keytok.json``, the run's record), not the 540 MB model. On first
use (or ``keytok models prepare NAME``) they are merged into the packaged base model, as the GGUF conversion
is done once:

1. the parameter file is checked against the sha256 pinned in :data:`keytok.models.registry.SHIPPED_MODELS`
   and its tensors against the base's layers (names, shapes, every trained tensor present), so a damaged or
   foreign file is refused in one line before anything is written;
2. the base model's converted weights (sha256-checked GGUF → safetensors) get ``W + (α / r) · B A`` on each
   LoRA target and the norms replaced, in float32, the arithmetic of :meth:`LoRALinear.merged`;
3. the folder (weights, config, tokenizer, ``keytok.json``) is written atomically to
   ``$KEYTOK_CACHE/models/<fingerprint>``; the fingerprint is the sha256 of the base's and the parameters'
   sha256s, so indexes built with the model name the same model on every machine.

The merge is deterministic: the same base and parameters give the same ``model.safetensors`` bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError
from keytok.models.registry import PACKAGED_MODELS, ShippedModel
from keytok.utils.atomic import atomic_dir
from keytok.utils.hashing import cache_dir, sha256_file, sha256_text

MERGE_VERSION = 1
PARAMS_FILE = "params.safetensors"
RECORD_FILE = "keytok.json"
_LORA = re.compile(r"^(?P<layer>.+)\.lora_(?P<part>[ab])$")


def shipped_dir(model: ShippedModel) -> Path:
    """The package folder holding a shipped model's parameters and record."""
    return Path(__file__).parent / "shipped" / model.name


def fingerprint(model: ShippedModel) -> str:
    """The merged model's identity: its base's sha256 and its parameters' sha256, hashed together."""
    return sha256_text(f"{PACKAGED_MODELS[model.base].sha256}+{model.params_sha256}")


def merged_dir(model: ShippedModel) -> Path:
    return cache_dir() / "models" / fingerprint(model)


def base_dir(model: ShippedModel) -> Path:
    """The base model's converted folder (its GGUF checked by sha256, converted once)."""
    from keytok.models.loading import convert_gguf

    packaged = PACKAGED_MODELS[model.base]
    return convert_gguf(packaged.gguf_path(), packaged.sha256)


def read_record(model: ShippedModel) -> dict[str, Any]:
    """The shipped run record (``keytok.json``): method, fusion weights, training recipe and data."""
    path = shipped_dir(model) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeytokError(f"model '{model.name}': {path} is missing; reinstall keytok") from exc
    except json.JSONDecodeError as exc:
        raise KeytokError(
            f"model '{model.name}': {path} is not valid JSON ({exc.msg}); reinstall keytok"
        ) from exc
    base = record.get("base_model") if isinstance(record, dict) else None
    if not isinstance(base, dict) or base.get("sha256") != PACKAGED_MODELS[model.base].sha256:
        raise KeytokError(f"model '{model.name}': {path} does not name the base {model.base} by its sha256")
    # The record sets the method and the fusion weights of every index built with the model: pinned like
    # the parameters, so an edited one is refused rather than silently followed.
    _check_pinned(model, path, model.record_sha256)
    return record


def _check_pinned(model: ShippedModel, path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise KeytokError(
            f"model '{model.name}': {path} has sha256 {actual[:12]}…, expected {expected[:12]}… "
            "(damaged or replaced); reinstall keytok"
        )


def read_params(model: ShippedModel, path: Path | None = None) -> dict[str, Any]:
    """The shipped tensors, after checking the file's sha256 (a damaged file is refused in one line)."""
    from safetensors.torch import load_file

    path = path or shipped_dir(model) / PARAMS_FILE
    if not path.is_file():
        raise KeytokError(f"model '{model.name}': {path} is missing; reinstall keytok")
    _check_pinned(model, path, model.params_sha256)
    return load_file(str(path))


def lora_delta(a: Any, b: Any, scale: float) -> Any:
    """The float32 update ``(α / r) · B A`` that merging a LoRA pair adds to its weight: one formula for
    ``keytok train``'s export and for the shipped merge, so both give the same bytes."""
    return (b.float() @ a.float()) * scale


def merge_params(base: dict[str, Any], params: dict[str, Any], scale: float, where: str) -> dict[str, Any]:
    """``base`` (a state dict) with the LoRA pairs of ``params`` folded in and its other tensors replaced.

    Every tensor of ``params`` must land on a base tensor of the same shape: a parameter file made for
    another model is refused, not half-applied.
    """
    import torch

    merged = dict(base)
    pairs: dict[str, dict[str, Any]] = {}
    for name, tensor in params.items():
        match = _LORA.match(name)
        if match:
            pairs.setdefault(match["layer"], {})[match["part"]] = tensor
            continue
        if name not in base or base[name].shape != tensor.shape:
            raise KeytokError(f"{where}: tensor {name} {tuple(tensor.shape)} has no place in the base model")
        merged[name] = tensor.to(base[name].dtype).clone()
    for layer, parts in sorted(pairs.items()):
        weight_name = f"{layer}.weight"
        if set(parts) != {"a", "b"} or weight_name not in base:
            raise KeytokError(
                f"{where}: LoRA factors of {layer} are incomplete or have no place in the base model"
            )
        a, b = parts["a"], parts["b"]
        weight = base[weight_name]
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise KeytokError(f"{where}: LoRA factors of {layer} do not fit its weight {tuple(weight.shape)}")
        with torch.no_grad():
            merged[weight_name] = weight + lora_delta(a, b, scale).to(weight.dtype)
    return merged


def check_merge(folder: Path, model: ShippedModel) -> str | None:
    """None when ``folder`` is a complete merge of ``model``; else what is wrong with it."""
    record_path = folder / "keytok-merge.json"
    if not record_path.is_file():
        return "missing" if not folder.exists() else "no merge record"
    try:
        record = json.loads(record_path.read_text())
        if record.get("merge_version") != MERGE_VERSION or record.get("fingerprint") != fingerprint(model):
            return "made by another keytok version or from other parameters"
        for name, size in record["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                return f"{name} is missing or has the wrong size"
    except Exception as exc:  # a record edited by hand: rebuild rather than trust it
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def prepare(model: ShippedModel) -> Path:
    """The merged model folder of ``model`` in the cache, merged now if it is not there or not whole."""
    out = merged_dir(model)
    if check_merge(out, model) is None:
        return out
    import shutil

    from safetensors.torch import load_file, save_file

    record = read_record(model)
    params = read_params(model)
    base_folder = base_dir(model)
    training = record.get("training")
    training = training if isinstance(training, dict) else {}
    rank, alpha = training.get("lora_rank"), training.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise KeytokError(f"model '{model.name}': its record lacks lora_rank / lora_alpha")
    base = load_file(str(base_folder / "model.safetensors"))
    merged = merge_params(base, params, alpha / rank, f"model '{model.name}'")
    record = {**record, "shipped": {"name": model.name, "params_sha256": model.params_sha256}}
    with atomic_dir(out) as tmp:
        save_file(
            {k: v.contiguous() for k, v in merged.items()}, str(tmp / "model.safetensors"), {"format": "pt"}
        )
        for f in sorted(base_folder.iterdir()):
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("keytok"):
                shutil.copyfile(f, tmp / f.name)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        (tmp / "keytok-merge.json").write_text(
            json.dumps(
                {"merge_version": MERGE_VERSION, "fingerprint": fingerprint(model), "files": files}, indent=2
            )
        )
    return out
