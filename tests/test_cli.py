"""The key-token commands end to end, through keytok.cli.main.main, on the tiny model."""

import json

import pytest

from keytok.cli.main import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_on_every_command(capsys):
    from keytok.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"tokens", "calibrate", "align", "models"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: keytok " + name in capsys.readouterr().out


def test_tokens_json(capsys, tiny_model_dir):
    code, out, _ = run(
        capsys,
        "tokens",
        "vitamin d deficiency",
        "the cat sat",
        "--model",
        tiny_model_dir,
        "-k",
        5,
        "--json",
        "--dtype",
        "fp32",
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["text"] for r in rows] == ["vitamin d deficiency", "the cat sat"]
    for row in rows:
        toks = row["tokens"]
        assert [t["rank"] for t in toks] == [1, 2, 3, 4, 5]
        scores = [t["score"] for t in toks]
        assert scores == sorted(scores, reverse=True)
        assert all({"token", "display", "in_input", "special", "token_id"} <= set(t) for t in toks)


def test_tokens_table(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "tokens", "the cat sat", "--model", tiny_model_dir, "--method", "mean")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "the cat sat" and "in input" in lines[1]
    assert len(lines) == 3 + 10


@pytest.mark.parametrize(
    "argv, fault",
    [
        (["tokens", "   "], "text 1 is empty"),
        (["tokens", "hi", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["tokens", "hi", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["tokens", "hi", "-k", "0"], "-k must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_1(capsys, tiny_model_dir, argv, fault):
    if "--model" not in argv:
        argv = [*argv, "--model", str(tiny_model_dir)]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert fault in err
    assert err.count("\n") == 1 and err.startswith("keytok: error: ")


def test_calibrate_then_apply_and_refuse_other_model_or_method(capsys, tiny_model_dir, tmp_path):
    import shutil

    texts = tmp_path / "texts.txt"
    texts.write_text(
        "\n".join(
            [
                "the cat sat on the mat",
                "vitamin d deficiency",
                "aspirin reduces risk",
                "cancer patients study results",
                "the dog ran in the park",
                "protein gene cell",
            ]
        )
    )
    cal = tmp_path / "cal.safetensors"
    code, _, err = run(
        capsys,
        "calibrate",
        texts,
        "--model",
        tiny_model_dir,
        "--method",
        "mean",
        "--embedder-method",
        "prompteol",
        "--out",
        cal,
    )
    assert code == 0, err
    assert cal.is_file() and "v1=" in err

    code, out, _ = run(
        capsys,
        "tokens",
        "the cat",
        "--model",
        tiny_model_dir,
        "--method",
        "mean",
        "--calibration",
        cal,
        "--json",
    )
    assert code == 0 and json.loads(out)[0]["calibrated"] is True

    code, _, err = run(
        capsys, "tokens", "the cat", "--model", tiny_model_dir, "--method", "last", "--calibration", cal
    )
    assert code == 1 and "method" in err

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[name] = weights[name] + 1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run(
        capsys, "tokens", "the cat", "--model", other, "--method", "mean", "--calibration", cal
    )
    assert code == 1 and "model" in err and err.count("\n") == 1
    del torch


def test_align_reports_the_three_metrics(capsys, tiny_model_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\nvitamin d deficiency linked to bone loss\n")
    code, out, _ = run(capsys, "align", texts, "--model", tiny_model_dir, "--method", "mean", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["n"] == 2
    for key in ("hit@1", "hit@5", "hit@10", "lar", "gar"):
        assert 0.0 <= report[key] <= 1.0


def test_tokens_says_when_a_text_was_cut(capsys, tiny_model_dir):
    long_text = " ".join(["vitamin deficiency and bone loss"] * 40)
    code, out, err = run(
        capsys, "tokens", long_text, "short text", "--model", tiny_model_dir, "--max-length", 32, "--json"
    )
    assert code == 0 and len(json.loads(out)) == 2  # the note goes to stderr, stdout stays JSON
    assert "note: 1 of 2 texts were cut to --max-length 32 tokens" in err
    code, _, err = run(capsys, "tokens", "short text", "--model", tiny_model_dir, "--max-length", 32)
    assert code == 0 and "were cut" not in err
