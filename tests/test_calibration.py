"""PC1 calibration: a synthetic case with a known answer, file round trips, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from keytok.analyses.pc1 import fit_pc1_shift, fit_remove_pc1, spectral_variation
from keytok.errors import KeytokError
from keytok.representations.calibration import Calibration

D, N, C = 32, 400, -5.0
META = {"model": "base-A", "method": "mean", "fit_method": "sgpt-like"}


def _orth(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return x - np.outer(x @ u, u)


@pytest.fixture(scope="module")
def synthetic():
    """base = a_i·u + small noise ⟂ u, with a_i ≈ 10 > 0, so u is the dominant (uncentred) direction;
    embedder = base + C·u + smaller noise ⟂ u. The known answer: u_1 = u, v_1 = C, v_j ≈ 0 for j > 1."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    a = 10.0 + rng.normal(size=N)
    base = np.outer(a, u) + _orth(0.5 * rng.normal(size=(N, D)), u)
    embedder = base + C * u + _orth(0.05 * rng.normal(size=(N, D)), u)
    return u, base, embedder


def test_variation_known_answer(synthetic):
    u, base, embedder = synthetic
    fit = spectral_variation(base, embedder)
    assert fit.components.shape == (D, D) and fit.variation.shape == (D,) and fit.n_texts == N
    # Sign fixed so the base projects positively on u_1, and here that is +u.
    assert fit.components[0] @ u > 0.9999
    assert fit.variation[0] == pytest.approx(C, abs=0.01)
    # The shift is all along u: other directions see only the ⟂ noise and the slight tilt of u_1 away from u
    # (measured max ≈ 0.03), under 1 % of |v_1|.
    assert np.abs(fit.variation[1:]).max() < 0.01 * abs(C)
    assert np.all(np.diff(fit.singular_values) <= 0)
    assert spectral_variation(base, embedder, n_components=3).components.shape == (3, D)


def test_sign_convention_is_deterministic(synthetic):
    _, base, embedder = synthetic
    fit = spectral_variation(base, embedder, n_components=4)
    # Negating every vector flips u_j (to keep the mean projection positive) but leaves v_j unchanged.
    neg = spectral_variation(-base, -embedder, n_components=4)
    assert np.allclose(neg.components, -fit.components)
    assert np.allclose(neg.variation, fit.variation)
    torch_fit = spectral_variation(torch.from_numpy(base), torch.from_numpy(embedder), n_components=4)
    assert np.allclose(torch_fit.variation, fit.variation, atol=1e-4)


def test_apply_moves_base_onto_embedder_along_u1(synthetic):
    u, base, embedder = synthetic
    cal = fit_pc1_shift(base, embedder, META)
    assert cal.mode == "add" and cal.coefficient == pytest.approx(C, abs=0.01)
    assert cal.meta["n_texts"] == str(N) and cal.meta["created_by"] == "keytok"
    assert cal.direction.dtype == np.float32 and np.linalg.norm(cal.direction) == pytest.approx(1.0, abs=1e-6)
    adjusted = cal.apply(base)
    assert adjusted.dtype == base.dtype and adjusted.shape == base.shape
    # Before: every row is |C| = 5 away; after: only the ⟂ noise (norm ≈ 0.05·√D ≈ 0.28) is left.
    before = np.linalg.norm(embedder - base, axis=1).mean()
    after = np.linalg.norm(embedder - adjusted, axis=1).mean()
    assert before == pytest.approx(5.0, abs=0.01)
    assert after < 0.35
    assert abs(((embedder - adjusted) @ u).mean()) < 0.01
    # One vector, and torch in float32 / bf16 agree with numpy and keep dtype and shape.
    assert np.allclose(cal.apply(base[0]), adjusted[0])
    t = torch.from_numpy(base.astype(np.float32))
    out = cal.apply(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.allclose(out.numpy(), adjusted, atol=1e-4)
    out_bf16 = cal.apply(t.to(torch.bfloat16))
    assert out_bf16.dtype == torch.bfloat16
    assert np.allclose(out_bf16.float().numpy(), adjusted, atol=0.1)
    with pytest.raises(KeytokError, match="calibration has dimension 32"):
        cal.apply(np.zeros((2, 16)))


def test_remove_mode_zeroes_the_u1_projection(synthetic):
    _, _, embedder = synthetic
    cal = fit_remove_pc1(embedder, {"model": "emb", "method": "prompteol"})
    assert cal.mode == "remove" and cal.meta["fit_method"] == "self"
    # Mean projection of the fitting vectors on u_1 (a_i + C ≈ 5 on average).
    assert cal.coefficient == pytest.approx(5.0, abs=0.2)
    u1 = cal.direction.astype(np.float64)
    assert np.abs(cal.apply(embedder) @ u1).max() < 1e-4
    assert np.abs(embedder @ u1).min() > 1.0
    half = fit_remove_pc1(embedder, {"model": "emb", "method": "prompteol"}, strength=0.5)
    assert np.allclose(half.apply(embedder) @ u1, 0.5 * (embedder @ u1), atol=1e-4)
    # Components orthogonal to u_1 are untouched.
    assert np.allclose(_orth(cal.apply(embedder), u1), _orth(embedder, u1), atol=1e-5)


@pytest.mark.parametrize("name", ["cal.safetensors", "cal.npz", "cal.bin"])
def test_save_load_round_trip(tmp_path, synthetic, name):
    _, base, embedder = synthetic
    cal = fit_pc1_shift(base, embedder, META)
    path = cal.save(tmp_path / name)
    assert path == tmp_path / name and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    back = Calibration.load(path, expect_model="base-A", expect_method="mean")
    assert np.array_equal(back.direction, cal.direction)
    assert back.coefficient == cal.coefficient and back.mode == "add" and back.strength == 1.0
    assert back.meta == cal.meta
    assert back.sha256 == cal.sha256
    assert np.array_equal(back.apply(base), cal.apply(base))
    if name != "cal.safetensors":
        # Readable with pickle forbidden: nothing in the npz is an object array.
        with np.load(path, allow_pickle=False) as npz:
            assert json.loads(str(npz["header"]))["format"] == "keytok-calibration"


def test_sha256_tracks_content(synthetic):
    _, base, embedder = synthetic
    cal = fit_pc1_shift(base, embedder, META)
    other = fit_pc1_shift(base, embedder, {**META, "model": "base-B"})
    assert cal.sha256 != other.sha256
    assert len(cal.sha256) == 64


def test_load_refuses_mismatch(tmp_path, synthetic):
    _, base, embedder = synthetic
    path = fit_pc1_shift(base, embedder, META).save(tmp_path / "c.safetensors")
    with pytest.raises(
        KeytokError, match=r"calibration .*c\.safetensors was fitted for model base-A, not base-B"
    ):
        Calibration.load(path, expect_model="base-B")
    with pytest.raises(KeytokError, match="was fitted for method mean, not last"):
        Calibration.load(path, expect_model="base-A", expect_method="last")


@pytest.mark.parametrize("name", ["c.safetensors", "c.npz"])
def test_corrupted_files_are_refused(tmp_path, synthetic, name):
    _, base, embedder = synthetic
    path = fit_pc1_shift(base, embedder, META).save(tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeytokError, match=rf"{name} is not a keytok calibration file \("):
        Calibration.load(path)
    # One flipped byte inside the direction's float data (the end of the file for safetensors, which stores
    # the header first; the npz's zip CRC catches it there).
    flipped = bytearray(data)
    flipped[-20 if name.endswith(".safetensors") else len(data) // 2] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(KeytokError, match=rf"{name} is not a keytok calibration file \("):
        Calibration.load(path)
    path.write_bytes(b"garbage, not a calibration at all")
    with pytest.raises(KeytokError, match=rf"{name} is not a keytok calibration file \("):
        Calibration.load(path)
    path.write_bytes(b"")
    with pytest.raises(KeytokError, match=rf"{name} is not a keytok calibration file"):
        Calibration.load(path)


def test_foreign_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    st = tmp_path / "model.safetensors"
    save_file({"direction": np.ones(4, dtype=np.float32)}, str(st))
    with pytest.raises(KeytokError, match=r"not a keytok calibration file \(format is None"):
        Calibration.load(st)
    npz = tmp_path / "other.npz"
    np.savez(npz, x=np.arange(3))
    with pytest.raises(KeytokError, match=r"not a keytok calibration file \(npz has no header"):
        Calibration.load(npz)
    with pytest.raises(KeytokError, match=r"absent\.npz: calibration file not found"):
        Calibration.load(tmp_path / "absent.npz")


def test_fit_requires_meta(synthetic):
    _, base, embedder = synthetic
    with pytest.raises(ValueError, match="lacks fit_method"):
        fit_pc1_shift(base, embedder, {"model": "m", "method": "mean"})
    with pytest.raises(ValueError, match="shapes differ"):
        spectral_variation(base, embedder[:10])


def test_more_components_than_the_rank_keeps_them_all() -> None:
    rng = np.random.default_rng(3)
    base, embedder = rng.normal(size=(6, D)), rng.normal(size=(6, D))
    fit = spectral_variation(base, embedder, n_components=10)  # 6 texts: 6 directions at most
    assert fit.components.shape == (6, D) and fit.variation.shape == (6,)
