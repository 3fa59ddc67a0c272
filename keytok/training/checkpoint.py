"""Checkpoint folders of ``keytok train`` and the resumable training state inside them.

A finished run's ``--out`` folder is a plain Hugging Face model folder that every keytok command takes as
``--model``::

    OUT/config.json, model.safetensors      the full model, LoRA merged (save_pretrained, no quantization_config)
    OUT/tokenizer*.json ...                 the tokenizer
    OUT/keytok.json                         base model (name + sha256), method (template, pooling,
                                            bidirectional layers), trained layers, training arguments, data,
                                            loss history and evaluations
    OUT/train-state/state.pt                step, trainable weights, optimizer, scheduler, RNG (resume)
    OUT/train-state/run.json                the settings the state belongs to
    OUT/train-state/frozen-*.safetensors    the cached lower-layer outputs
    OUT/train-state/lock                    held (flock) by the run writing the folder

Every file is written atomically (:mod:`keytok.utils.atomic`): a run stopped at any moment (``kill -9``
included) resumes from its last saved state, and a reader never sees half a model. A run holds
:func:`run_lock` on its folder: a second ``keytok train`` on the same folder is refused instead of
overwriting the first one's state, and the holder deletes the temporary files that a killed run left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_path, atomic_write_text

CHECKPOINT_FORMAT = 1
STATE_DIR = "train-state"


def state_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / STATE_DIR


@contextlib.contextmanager
def run_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the training lock of ``out`` (``train-state/lock``), or raise KeytokError if a live run holds it.

    An ``fcntl.flock`` lock, so the kernel releases it when its holder dies (``kill -9`` too): a killed run
    never blocks the next one. Holding it, the temporary files in the folder are a dead run's and are deleted
    (:func:`remove_leftovers`).
    """
    path = state_dir(out) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeytokError(f"{out}: another keytok train is running in this folder") from None
        remove_leftovers(out)
        yield


def remove_leftovers(out: str | os.PathLike[str]) -> list[Path]:
    """Delete what a run killed while writing left behind; returns what was deleted.

    The temporary files of :func:`keytok.utils.atomic.atomic_path` in the state folder (a half-written state
    or frozen cache, which can be gigabytes) and the temporary folders of :func:`export_checkpoint` in
    ``out``. Only safe under :func:`run_lock`: a live run's temporary files look the same.
    """
    out = Path(out)
    found = [*state_dir(out).glob(".*.tmp"), *(p for p in out.glob(".export.*") if p.is_dir())]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def save_state(out: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write the resumable training state (tensors and plain values only) atomically."""
    with atomic_path(state_dir(out) / "state.pt") as tmp:
        torch.save(state, tmp)


def load_state(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved training state of ``out``, or None if there is none."""
    path = state_dir(out) / "state.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KeytokError(
            f"{path}: cannot read the training state ({str(exc).splitlines()[0][:80]})"
        ) from exc


def save_run(out: str | os.PathLike[str], run: dict[str, Any]) -> None:
    atomic_write_text(state_dir(out) / "run.json", json.dumps(run, indent=2, sort_keys=True))


def load_run(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = state_dir(out) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KeytokError(f"{path} is not valid JSON ({exc.msg})") from exc


def export_checkpoint(
    out: str | os.PathLike[str], model: Any, tokenizer: Any, record: dict[str, Any]
) -> Path:
    """Save ``model`` (LoRA already merged) + tokenizer + ``keytok.json`` into ``out``.

    The files are written to a temporary folder beside them, then each is renamed into place, ``keytok.json``
    last; any model files of an earlier export that the new one does not have are removed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=out))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in saved:
            raise KeytokError("internal: exported config.json still carries quantization_config")
        record = {"keytok_checkpoint": CHECKPOINT_FORMAT, **record}
        (tmp / "keytok.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
        new = {p.name for p in tmp.iterdir()}
        for old in out.iterdir():
            if old.is_file() and old.name not in new and old.suffix in {".safetensors", ".bin", ".json"}:
                old.unlink()
        for name in [*sorted(new - {"keytok.json"}), "keytok.json"]:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
