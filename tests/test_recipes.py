"""Presets (keytok.models.recipes): each resolves to its settings and runs on its tiny-architecture twin;
hub ids resolve from a Hugging Face cache (a local one here: nothing is downloaded), and missing weights are a
one-line error saying what to download."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_architectures import build_tiny_architecture

from keytok.errors import KeytokError
from keytok.models.recipes import RECIPES, recipe_table

# preset -> (architecture of its twin, embedder shipped bare, base separate)
TWINS = {
    "e5-mistral-7b-instruct": ("mistral", True, True),
    "sfr-embedding-mistral": ("mistral", True, True),
    "gritlm-7b": ("mistral", False, False),
    "llm2vec-mistral-7b": ("mistral", False, True),
    "llm2vec-llama3-8b": ("llama", False, True),
    "sgpt-1.3b-nli": ("gpt_neo", True, True),
    "prompteol-opt-1.3b": ("opt", False, False),
    "prompteol-llama-7b": ("llama", False, False),
    "bellm-llama2-7b": ("llama", False, True),
    "gte-qwen2-7b-instruct": ("qwen2", False, True),
    "qwen3-embedding-0.6b": ("qwen3", True, True),
    "qwen3-embedding-8b": ("qwen3", True, True),
}
TEXTS = ["vitamin d deficiency is linked to bone loss .", "the cat sat on the mat"]


@pytest.fixture(scope="module", autouse=True)
def _one_cpu(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-twins")
    made: dict[tuple[str, bool, int], Path] = {}

    def twin(arch: str, bare: bool, seed: int = 0) -> Path:
        key = (arch, bare, seed)
        if key not in made:
            made[key] = build_tiny_architecture(root / f"{arch}-{bare}-{seed}", arch, bare=bare, seed=seed)
        return made[key]

    return twin


def test_every_preset_is_listed_by_the_cli_and_the_readme(capsys):
    from keytok.cli.main import main

    assert set(TWINS) == set(RECIPES)
    assert main(["models", "recipes"]) == 0
    out = capsys.readouterr().out
    for r in RECIPES.values():
        assert r.name in out and r.embedder in out and (r.base or "its own") in out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert recipe_table() in readme


@pytest.mark.parametrize("name", list(TWINS))
def test_preset_resolves_and_runs_on_its_twin(name, folders, monkeypatch):
    from keytok import KeyTokenModel

    arch, bare, separate = TWINS[name]
    recipe = RECIPES[name]
    embedder = folders(arch, bare, 0 if not separate or bare else 1)
    base = folders(arch, False) if separate else None
    monkeypatch.setitem(RECIPES, name, recipe.pointing_at(str(embedder), str(base) if base else None))
    assert (recipe.base is not None) == separate
    model = KeyTokenModel(name, dtype="fp32")
    assert model.method == recipe.method  # the preset's method, template, instruction and EOS rule
    assert model.encoder.head_spec == (str(base) if separate else None)
    # the same as spelling every setting out by hand
    by_hand = KeyTokenModel(str(embedder), recipe.method, dtype="fp32", head=str(base) if separate else None)
    np.testing.assert_array_equal(model.encode(TEXTS), by_hand.encode(TEXTS))
    assert [t.token_id for t in model.key_tokens(TEXTS[0], k=5)] == [
        t.token_id for t in by_hand.key_tokens(TEXTS[0], k=5)
    ]
    if recipe.method.append_eos:
        assert all(ids[-1] == model.tokenizer.eos_token_id for ids in model.encoder.tokenize(TEXTS).ids)
    # a named method still wins over the preset's
    assert KeyTokenModel(name, "mean", dtype="fp32").method.name == "mean"


def _into_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """Lay ``folder`` out as the Hugging Face cache stores a download of ``repo``."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)


def test_hub_ids_resolve_from_the_cache_and_missing_ones_say_what_to_download(
    folders, tmp_path, monkeypatch, capsys
):
    import huggingface_hub.constants

    from keytok import KeyTokenModel, Retriever, build_index
    from keytok.cli.main import main

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("KEYTOK_ONLINE", raising=False)
    recipe = RECIPES["e5-mistral-7b-instruct"]
    with pytest.raises(KeytokError, match="huggingface-cli download intfloat/e5-mistral-7b-instruct") as err:
        KeyTokenModel("e5-mistral-7b-instruct")
    assert "\n" not in str(err.value) and "KEYTOK_ONLINE=1" in str(err.value)
    _into_hub_cache(cache, recipe.embedder, folders("mistral", True))
    with pytest.raises(KeytokError, match=r"its base mistralai/Mistral-7B-v0\.1") as err:
        KeyTokenModel("e5-mistral-7b-instruct")
    assert "\n" not in str(err.value)
    _into_hub_cache(cache, recipe.base, folders("mistral", False))
    model = KeyTokenModel("e5-mistral-7b-instruct", dtype="fp32")
    assert model.method == recipe.method and model.encoder.head_spec == recipe.base
    assert main(["tokens", TEXTS[0], "--model", "e5-mistral-7b-instruct", "--dtype", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    docs = {f"d{i}": t for i, t in enumerate(TEXTS)}
    with build_index(docs, tmp_path / "idx", model="e5-mistral-7b-instruct", kinds="sparse", dtype="fp32"):
        pass
    with Retriever.open(tmp_path / "idx") as opened:  # the preset name reopens embedder, head and method
        assert opened.search("vitamin d", query_mode="expanded")
        assert opened.model.method == recipe.method
    with pytest.raises(KeytokError, match="LoRA adapter") as err:
        KeyTokenModel("llm2vec-mistral-7b")
    assert "\n" not in str(err.value)
