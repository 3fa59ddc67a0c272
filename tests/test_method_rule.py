"""One rule for the method (keytok.models.methods.resolve_method): the one the caller names, else the one the
checkpoint records, else PromptEOL. Checked through every entry point: the CLI, KeyTokenModel, build_index,
Retriever.open and the bench, on a tiny checkpoint that records BeLLM with 2 bidirectional layers."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import WORDS

from keytok.models.methods import get_method, resolve_method

RECORDED = get_method("bellm:bidirectional=2")


@pytest.fixture(scope="module", autouse=True)
def _one_cpu(isolated_cache_one_cpu):
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """The tiny Llama as a keytok train checkpoint that records its method."""
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "keytok.json").write_text(json.dumps({"method": RECORDED.key()}))
    return folder


DOCS = {f"d{i}": " ".join(WORDS[i : i + 8]) for i in range(12)}


def test_the_rule():
    assert resolve_method(None) == get_method("prompteol")
    assert resolve_method(None, RECORDED.key()) == RECORDED
    assert resolve_method("mean", RECORDED.key()) == get_method("mean")
    changed = resolve_method({"bidirectional": 3}, RECORDED.key())
    assert (changed.template, changed.pooling, changed.bidirectional) == (RECORDED.template, "last", 3)
    assert resolve_method({"pooling": "mean"}) == get_method("prompteol", pooling="mean")


def test_key_token_model(checkpoint, tiny_model_dir):
    from keytok import KeyTokenModel

    assert KeyTokenModel(str(checkpoint), dtype="fp32").method == RECORDED
    assert KeyTokenModel(str(checkpoint), "mean", dtype="fp32").method == get_method("mean")
    assert KeyTokenModel(str(checkpoint), {"bidirectional": 3}, dtype="fp32").method.bidirectional == 3
    assert KeyTokenModel(str(tiny_model_dir), dtype="fp32").method == get_method("prompteol")


def test_build_index_and_retriever_open(checkpoint, tmp_path):
    import keytok

    with keytok.build_index(DOCS, tmp_path / "idx", model=str(checkpoint), kinds="sparse") as built:
        assert built.info["method"] == RECORDED.key()  # was PromptEOL whatever the checkpoint recorded
    with keytok.Retriever.open(tmp_path / "idx") as opened:
        assert opened.model.method == RECORDED
    with keytok.Retriever.open(tmp_path / "idx", model=str(checkpoint)) as opened:
        assert opened.model.method == RECORDED
    with keytok.build_index(
        DOCS, tmp_path / "m", model=str(checkpoint), method="mean", kinds="sparse"
    ) as built:
        assert built.info["method"] == get_method("mean").key()


def test_cli(checkpoint, tmp_path, capsys):
    from keytok.cli.main import main

    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat on the mat\nvitamin d deficiency\n")
    for extra, want in (
        ([], RECORDED),
        (["--bidirectional", "3"], get_method(RECORDED.key(), bidirectional=3)),
        (["--method", "mean"], get_method("mean")),
    ):
        assert (
            main(["align", str(texts), "--model", str(checkpoint), "--dtype", "fp32", "--json", *extra]) == 0
        )
        assert json.loads(capsys.readouterr().out)["method"] == want.key()
    out = tmp_path / "idx"
    assert main(["index", "build", str(_corpus(tmp_path)), "--out", str(out), "--model", str(checkpoint),
                 "--kind", "sparse", "--dtype", "fp32", "--no-progress"]) == 0  # fmt: skip
    assert json.loads((out / "keytok.json").read_text())["method"] == RECORDED.key()


def _corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in DOCS.items()))
    return path


def test_bench(checkpoint, tmp_path, capsys):
    from keytok.cli.main import main

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    shutil.copy(_corpus(tmp_path), root / "corpus.jsonl")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "the cat"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    out = tmp_path / "bench"
    argv = ["bench", str(root), "--out", str(out), "--model", str(checkpoint), "--kinds", "sparse"]
    assert main([*argv, "--ann", "none", "--dtype", "fp32", "--bidirectional", "3"]) == 0
    capsys.readouterr()
    info = json.loads((out / "index" / "keytok.json").read_text())
    assert info["method"] == get_method(RECORDED.key(), bidirectional=3).key()
