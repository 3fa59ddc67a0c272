"""Training recipes: a name gives every setting, a given setting wins, and the CLI is the library's train()."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from keytok.errors import KeytokError
from keytok.training.recipes import RECIPES, recipe_settings, resolve_recipe


def _pairs(folder):
    from test_training import _toy_data

    return _toy_data(folder)[0]


def test_auto_picks_the_recipe_for_the_device_and_unknown_names_are_refused():
    assert resolve_recipe("auto", "cpu").name == "keytok-cpu"
    assert resolve_recipe("auto", "cuda:0").name == "keytok-gpu"
    assert resolve_recipe("bellm").settings["method"] == "bellm"
    with pytest.raises(KeytokError, match=r"^recipe 'fast': unknown; choose one of auto, keytok-cpu"):
        resolve_recipe("fast")


def test_a_given_setting_wins_over_the_recipe_and_none_means_not_given():
    recipe, settings = recipe_settings("keytok-cpu", {"device": "cpu", "lr": 5e-4, "batch_size": None})
    assert recipe is RECIPES["keytok-cpu"]
    assert settings["lr"] == 5e-4 and settings["batch_size"] == 32 and settings["train_layers"] == "all"
    assert settings["save_every"] == 2  # a kill on 2 CPU cores costs at most two ~15 s steps


def test_the_cli_trains_what_the_library_trains_with_the_cpu_recipe(tiny_model_dir, tmp_path, capsys):
    import keytok
    from keytok.cli.main import main

    pairs = _pairs(tmp_path)
    by_cli, by_api = tmp_path / "cli", tmp_path / "api"
    flags = ["--max-steps", "2", "--batch-size", "4", "--dtype", "fp32", "--lr", "5e-4"]
    argv = ["train", "--pairs", str(pairs), "--model", str(tiny_model_dir), "--recipe", "keytok-cpu"]
    assert main([*argv, "--out", str(by_cli), *flags]) == 0
    assert "recipe keytok-cpu:" in capsys.readouterr().err
    keytok.train(
        by_api,
        pairs=[str(pairs)],
        model=str(tiny_model_dir),
        recipe="keytok-cpu",
        max_steps=2,
        batch_size=4,
        dtype="fp32",
        lr=5e-4,
    )
    record = json.loads((by_cli / "keytok.json").read_text())
    assert record["trained_layers"] == [0, 1, 2, 3]  # "all" of the tiny model's 4 layers
    training = record["training"]
    assert training["lr"] == 5e-4 and training["max_length"] == 64 and training["lora_dropout"] == 0.0
    assert json.loads(training["method"])["name"] == "prompteol"
    a, b = load_file(str(by_cli / "model.safetensors")), load_file(str(by_api / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_bad_train_layers_is_one_line(tmp_path, capsys):
    from keytok.cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "--pairs", "x.tsv", "--out", str(tmp_path / "o"), "--train-layers", "most"])
    assert "expected a number of layers or 'all', got 'most'" in capsys.readouterr().err
