"""First-principal-component (PC1) calibration of embeddings (Nie, Zhang & Wu, arXiv 2406.17378, §spectral).

The paper's observation: take H, the base LM's embeddings of N texts, and its SVD *without mean-centring*;
the right singular vectors u_j span the embedding space. Contrastive training of an embedder from that base
moves its embeddings mostly along u_1: the variation v_j = mean_i[(ĥ_i − h_i)·u_j] is concentrated in v_1,
and u_1 mostly scores function tokens ("the", "and"). Two adjustments follow:

* ``mode="add"``: ``h + λ·u_1`` with λ = v_1 fitted between a base and an embedder
  (:func:`keytok.analyses.pc1.fit_pc1_shift`).
  It moves base-LM embeddings the way training would, so the base LM head ranks key tokens first.
* ``mode="remove"``: ``e − strength·(e·u_1)·u_1`` with u_1 from an embedder's own vectors
  (:func:`keytok.analyses.pc1.fit_remove_pc1`): drops the shared function-word direction without a second model.

This module holds the adjustment as it is applied, saved and loaded (:class:`Calibration`); the fits that
make one, and the spectral analysis behind them, are :mod:`keytok.analyses.pc1`.

A :class:`Calibration` is saved as ``.safetensors`` or ``.npz`` (never pickle) and carries the model
fingerprint and embedding method it was fitted for, so that applying it to the wrong vectors is refused.

Sign convention: an SVD's singular vectors are defined up to sign. Each u_j is flipped so that the mean
projection of the base embeddings on it is positive (ties: its largest-magnitude entry is positive), which makes
v_j and λ reproducible; ``λ·u_1`` itself never depends on the sign.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_path, atomic_write_bytes

__all__ = [
    "FORMAT",
    "Calibration",
    "as_float64_2d",
]

FORMAT = "keytok-calibration"
FORMAT_VERSION = "1"
Mode = Literal["add", "remove"]
_MODES = ("add", "remove")
# Re-normalising an already unit float32 vector would flip low bits and change the content hash after a
# save/load round trip, so only vectors clearly off unit length are normalised.
_UNIT_TOL = 1e-5


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_float64_2d(x: Any, name: str) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().to("cpu").float().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_texts, dim], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


class _Invalid(Exception):
    """A structural fault found while reading a calibration file."""


@dataclass
class Calibration:
    """A one-direction adjustment of embeddings, with the model and method it was fitted for.

    ``direction``: unit vector u_1 (float32, shape (d,)); ``coefficient``: λ (for ``add``) or, for ``remove``,
    the mean projection of the fitting vectors on u_1 (informational); ``mode``: ``"add"`` applies
    ``x + strength·λ·u_1``, ``"remove"`` applies ``x − strength·(x·u_1)·u_1``; ``strength`` defaults to 1.0
    (the paper's adjustment). ``meta`` (str → str) records at least ``model`` (model fingerprint), ``method``
    (embedding method spec the calibration applies to), ``fit_method`` (embedder it was measured against, or
    ``"self"``), ``n_texts`` and ``created_by`` (= ``"keytok"``).
    """

    direction: np.ndarray
    coefficient: float
    mode: Mode = "add"
    strength: float = 1.0
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = _as_direction(self.direction)
        norm = float(np.linalg.norm(d.astype(np.float64)))
        if norm == 0.0:
            raise ValueError("calibration direction is the zero vector")
        if abs(norm - 1.0) > _UNIT_TOL:
            d = (d.astype(np.float64) / norm).astype(np.float32)
        self.direction = d
        self.coefficient = float(self.coefficient)
        self.strength = float(self.strength)
        if not math.isfinite(self.coefficient) or not math.isfinite(self.strength):
            raise ValueError("calibration coefficient and strength must be finite")
        if self.mode not in _MODES:
            raise ValueError(f"calibration mode must be 'add' or 'remove', not {self.mode!r}")
        self.meta = {str(k): str(v) for k, v in self.meta.items()}
        self.meta.setdefault("created_by", "keytok")

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.direction.shape[0])

    def apply(self, x: Any) -> Any:
        """Adjust one vector (d,) or a batch (..., d); returns the same type, dtype and device as ``x``.

        Arithmetic runs in float64 for numpy and at least float32 for torch, then casts back, so bf16/fp16
        inputs do not lose the projection to rounding.
        """
        if _is_torch(x):
            return self._apply_torch(x)
        arr = np.asarray(x)
        self._check_dim(arr.shape)
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float32)
        xf = arr.astype(np.float64, copy=False)
        u = self.direction.astype(np.float64)
        if self.mode == "add":
            out = xf + (self.strength * self.coefficient) * u
        else:
            out = xf - self.strength * (xf @ u)[..., None] * u
        return out.astype(out_dtype, copy=False)

    def _apply_torch(self, x: Any) -> Any:
        import torch

        self._check_dim(tuple(x.shape))
        if x.is_floating_point():
            work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            out_dtype = x.dtype
        else:
            work = out_dtype = torch.float32
        xf = x.to(work)
        u = torch.from_numpy(self.direction).to(device=x.device, dtype=work)
        if self.mode == "add":
            out = xf + (self.strength * self.coefficient) * u
        else:
            out = xf - self.strength * (xf @ u).unsqueeze(-1) * u
        return out.to(out_dtype)

    def _check_dim(self, shape: tuple[int, ...]) -> None:
        if len(shape) == 0 or shape[-1] != self.dim:
            raise KeytokError(
                f"calibration has dimension {self.dim} but the embeddings have shape {tuple(shape)} "
                f"(model {self.meta.get('model', '?')})"
            )

    @property
    def sha256(self) -> str:
        """Hash of the content (format, mode, coefficient, strength, meta, direction bytes).

        It does not depend on the file format, so a calibration saved as .npz and as .safetensors hashes the
        same; use :func:`keytok.utils.hashing.sha256_file` for the bytes of one file.
        """
        head = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "mode": self.mode,
            "coefficient": repr(self.coefficient),
            "strength": repr(self.strength),
            "meta": self.meta,
        }
        h = hashlib.sha256(json.dumps(head, sort_keys=True).encode("utf-8"))
        h.update(self.direction.astype("<f4").tobytes())
        return h.hexdigest()

    def _header(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "mode": self.mode,
            "meta": json.dumps(self.meta, sort_keys=True),
            # safetensors has no checksum of its own: this catches flipped bytes in the tensor data.
            "sha256": self.sha256,
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "direction": np.ascontiguousarray(self.direction, dtype=np.float32),
            "coefficient": np.array([self.coefficient], dtype=np.float64),
            "strength": np.array([self.strength], dtype=np.float64),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration atomically: safetensors if ``path`` ends in ``.safetensors``, else npz.

        The npz form stores its header as a JSON string array and loads with ``allow_pickle=False``.
        """
        p = Path(path)
        if p.suffix == ".safetensors":
            from safetensors.numpy import save

            atomic_write_bytes(p, save(self._tensors(), metadata=self._header()))
        else:
            with atomic_path(p) as tmp, open(tmp, "wb") as fh:
                # A file handle, not a name: np.savez would append ".npz" to a name without it.
                np.savez(fh, **self._tensors(), header=np.array(json.dumps(self._header(), sort_keys=True)))
        return p

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], expect_model: str | None = None, expect_method: str | None = None
    ) -> Calibration:
        """Read a calibration written by :meth:`save` (the format is detected from the bytes).

        Raises KeytokError if the file is missing, is not a valid keytok calibration, or was fitted for another
        model (``expect_model``) or embedding method (``expect_method``) than the caller's.
        """
        p = Path(path)
        if not p.exists():
            raise KeytokError(f"{p}: calibration file not found")
        if not p.is_file():
            raise KeytokError(f"{p}: calibration path is not a file")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise KeytokError(f"{p}: cannot read calibration file ({exc.strerror})") from None
        try:
            tensors, header = _read_npz(data) if data[:4] == b"PK\x03\x04" else _read_safetensors(data)
            cal = _from_parts(tensors, header)
        except _Invalid as exc:
            raise KeytokError(f"{p} is not a keytok calibration file ({exc})") from None
        except Exception as exc:  # parsers raise many types (zipfile, json, safetensors, numpy) for bad bytes
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise KeytokError(f"{p} is not a keytok calibration file ({reason})") from None
        for key, expected in (("model", expect_model), ("method", expect_method)):
            if expected is not None and cal.meta.get(key) != expected:
                raise KeytokError(
                    f"calibration {p} was fitted for {key} {cal.meta.get(key, '(unrecorded)')}, not {expected}"
                )
        return cal


def _as_direction(x: Any) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().to("cpu").float().numpy()
    d = np.asarray(x, dtype=np.float32)
    if d.ndim == 2 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 1 or d.shape[0] < 1:
        raise ValueError(f"calibration direction must be a vector (d,), got shape {d.shape}")
    d = np.ascontiguousarray(d, dtype=np.float32)
    if not np.isfinite(d).all():
        raise ValueError("calibration direction contains NaN or infinite values")
    return d


def _read_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors.numpy import load

    if len(data) < 8:
        raise _Invalid(f"{len(data)} bytes, too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _Invalid("truncated safetensors header")
    try:
        head = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Invalid("unreadable safetensors header") from None
    if not isinstance(head, dict):
        raise _Invalid("unreadable safetensors header")
    meta = head.get("__metadata__") or {}
    return load(data), meta


def _read_npz(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            tensors = {k: npz[k] for k in npz.files}
    except zipfile.BadZipFile as exc:
        raise _Invalid(f"corrupted npz: {exc}") from None
    if "header" not in tensors:
        raise _Invalid("npz has no header")
    try:
        header = json.loads(str(tensors.pop("header")))
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise _Invalid("npz header is not JSON") from None
    if not isinstance(header, dict):
        raise _Invalid("npz header is not a JSON object")
    return tensors, header


def _from_parts(tensors: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> Calibration:
    if header.get("format") != FORMAT:
        raise _Invalid(f"format is {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") != FORMAT_VERSION:
        raise _Invalid(f"format version {header.get('version')!r} is not supported (this keytok reads 1)")
    mode = header.get("mode")
    if mode not in _MODES:
        raise _Invalid(f"unknown mode {mode!r}")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except (ValueError, TypeError, RecursionError):
        raise _Invalid("meta is not JSON") from None
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _Invalid("meta is not a string-to-string mapping")
    missing = [k for k in ("direction", "coefficient", "strength") if k not in tensors]
    if missing:
        raise _Invalid(f"missing {', '.join(missing)}")
    direction = tensors["direction"]
    if direction.ndim != 1 or direction.dtype != np.float32:
        raise _Invalid(f"direction must be float32 (d,), got {direction.dtype} {direction.shape}")
    for key in ("coefficient", "strength"):
        if tensors[key].shape != (1,):
            raise _Invalid(f"{key} must hold one value, got shape {tensors[key].shape}")
    try:
        cal = Calibration(
            direction=direction,
            coefficient=float(tensors["coefficient"][0]),
            mode=mode,
            strength=float(tensors["strength"][0]),
            meta=meta,
        )
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if "sha256" in header and header["sha256"] != cal.sha256:
        raise _Invalid("content checksum mismatch, the file is corrupted")
    return cal
