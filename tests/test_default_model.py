"""The shipped default model: its parameters merge into the same bytes every time, a damaged or foreign
parameter file is refused before anything is written, and its key tokens are content words, not filler."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from keytok.errors import KeytokError
from keytok.models import shipped
from keytok.models.registry import DEFAULT_BASE_MODEL, DEFAULT_MODEL, SHIPPED_MODELS
from keytok.utils.hashing import sha256_file

# Ten everyday texts from outside every data set of the repo (experiments/everyday_texts.txt, after the three of
# issue 23, which experiments/key_tokens_table.py also shows).
EVERYDAY = (
    (Path(__file__).resolve().parents[1] / "experiments" / "everyday_texts.txt").read_text().splitlines()[3:]
)

DEFAULT = SHIPPED_MODELS[DEFAULT_MODEL]


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """The default's shipped folder copied to tmp_path, with shipped_dir and the cache pointed there."""
    folder = tmp_path / "shipped"
    shutil.copytree(shipped.shipped_dir(DEFAULT), folder)
    monkeypatch.setattr(shipped, "shipped_dir", lambda model: folder)
    monkeypatch.setenv("KEYTOK_CACHE", str(tmp_path / "cache"))
    return folder


def test_the_default_is_the_shipped_trained_model():
    import inspect

    import keytok
    from keytok.cli.common import DEFAULT_MODEL as CLI_DEFAULT
    from keytok.pipeline.build import BuildConfig

    assert DEFAULT_MODEL == "smollm2-135m-keytok" and DEFAULT.base == DEFAULT_BASE_MODEL
    assert CLI_DEFAULT == DEFAULT_MODEL and BuildConfig().model == DEFAULT_MODEL
    assert inspect.signature(keytok.KeyTokenModel).parameters["model"].default == DEFAULT_MODEL
    assert shipped.read_record(DEFAULT)["fusion"]["method"] == "zscore"


@pytest.mark.parametrize("offset", [0, 1000, -8])
def test_a_damaged_parameter_file_is_refused_in_one_line_and_nothing_is_written(package_copy, offset):
    path = package_copy / shipped.PARAMS_FILE
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KeytokError) as err:
        shipped.prepare(DEFAULT)
    message = str(err.value)
    assert "\n" not in message and "damaged or replaced" in message and str(path) in message
    models = shipped.merged_dir(DEFAULT).parent
    assert not models.exists() or not any(models.iterdir())  # no merge, no half-written folder


def test_a_missing_or_foreign_record_is_refused(package_copy):
    record = package_copy / shipped.RECORD_FILE
    record.write_text(record.read_text().replace('"sha256": "b179', '"sha256": "0179', 1))
    with pytest.raises(KeytokError, match="does not name the base smollm2-135m"):
        shipped.prepare(DEFAULT)
    record.write_text("{not json")
    with pytest.raises(KeytokError, match="is not valid JSON"):
        shipped.prepare(DEFAULT)
    record.unlink()
    with pytest.raises(KeytokError, match="is missing; reinstall keytok"):
        shipped.prepare(DEFAULT)


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace('"sparse:expanded": 0.5', '"sparse:expanded": 5.0'),  # a re-weighted fusion
        lambda text: text.replace('\\"name\\":\\"prompteol\\"', '\\"name\\":\\"mean\\"', 1),  # method
    ],
)
def test_an_edited_record_is_refused_in_one_line_and_nothing_is_written(package_copy, edit):
    record = package_copy / shipped.RECORD_FILE
    text = record.read_text()
    assert edit(text) != text
    record.write_text(edit(text))
    with pytest.raises(KeytokError) as err:
        shipped.prepare(DEFAULT)
    assert (
        "\n" not in str(err.value)
        and "damaged or replaced" in str(err.value)
        and str(record) in str(err.value)
    )
    assert not shipped.merged_dir(DEFAULT).exists()


def test_a_record_of_the_wrong_shape_is_refused_in_one_line(package_copy):
    record = package_copy / shipped.RECORD_FILE
    for text in ('{"base_model": "smollm2-135m"}', "[1, 2]", '"text"'):
        record.write_text(text)
        with pytest.raises(KeytokError, match="does not name the base smollm2-135m by its sha256"):
            shipped.prepare(DEFAULT)


def test_merge_params_by_hand():
    base = {"l.weight": torch.ones(2, 3), "norm.weight": torch.zeros(3)}
    a = torch.tensor([[1.0, 0.0, 2.0]])  # [r=1, in=3]
    b = torch.tensor([[1.0], [-1.0]])  # [out=2, r=1]
    params = {"l.lora_a": a.half(), "l.lora_b": b.half(), "norm.weight": torch.full((3,), 0.5)}
    merged = shipped.merge_params(base, params, 2.0, "test")
    assert torch.equal(merged["l.weight"], torch.tensor([[3.0, 1.0, 5.0], [-1.0, 1.0, -3.0]]))
    assert torch.equal(merged["norm.weight"], torch.full((3,), 0.5))
    assert torch.equal(base["l.weight"], torch.ones(2, 3))  # the base is not modified


@pytest.mark.parametrize(
    "params, fault",
    [
        ({"other.weight": torch.zeros(3)}, "has no place in the base model"),
        ({"norm.weight": torch.zeros(4)}, "has no place in the base model"),
        ({"l.lora_a": torch.zeros(1, 3)}, "incomplete"),
        ({"x.lora_a": torch.zeros(1, 3), "x.lora_b": torch.zeros(2, 1)}, "no place in the base model"),
        ({"l.lora_a": torch.zeros(1, 4), "l.lora_b": torch.zeros(2, 1)}, "do not fit its weight"),
    ],
)
def test_merge_params_refuses_foreign_tensors(params, fault):
    base = {"l.weight": torch.ones(2, 3), "norm.weight": torch.zeros(3)}
    with pytest.raises(KeytokError, match=fault):
        shipped.merge_params(base, params, 1.0, "test")


def test_read_params_checks_the_pinned_sha256(package_copy, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"model.norm.weight": torch.ones(576)}, str(foreign))
    with pytest.raises(KeytokError, match="damaged or replaced"):
        shipped.read_params(DEFAULT, foreign)
    assert len(shipped.read_params(DEFAULT)) == 421


@pytest.mark.slow
def test_the_shipped_parameters_merge_into_the_same_bytes_every_time():
    first = shipped.prepare(DEFAULT)
    digest = sha256_file(first / "model.safetensors")
    shutil.rmtree(first)
    again = shipped.prepare(DEFAULT)
    assert again == first and sha256_file(again / "model.safetensors") == digest
    # a merged folder that lost a file is re-merged, not trusted
    (again / "config.json").unlink()
    assert sha256_file(shipped.prepare(DEFAULT) / "model.safetensors") == digest


def _filler_count(model_name: str) -> tuple[int, list[str]]:
    from keytok import KeyTokenModel

    model = KeyTokenModel(model_name)
    fillers = [t.display for text in EVERYDAY for t in model.key_tokens(text, k=10) if t.filler]
    return len(fillers), fillers


@pytest.mark.slow
def test_the_default_key_tokens_are_content_words_and_the_base_is_not():
    count, fillers = _filler_count(DEFAULT_MODEL)
    assert count <= 10, f"{count}/100 filler tokens: {fillers}"
    base_count, _ = _filler_count(DEFAULT_BASE_MODEL)
    assert base_count > 10  # the same bar fails on the untrained base (~6 in 10 there)


def test_filler_classification():
    from keytok.representations.projection import KeyToken

    def token(text: str, special: bool = False) -> KeyToken:
        return KeyToken(1, 0, text, text, 1.0, False, special)

    assert [token(t).filler for t in (" the", "The", "\n", " ,", "s", " R", " cat", "Vitamin", "D3")] == [
        True,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert token("<|im_end|>", special=True).filler


def test_shipped_files_are_package_data():
    cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "models/shipped/*/*.safetensors" in cfg and "models/shipped/*/*.json" in cfg
