"""keytok train: AnglE losses on hand-worked examples, the frozen-layer cache, training and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from keytok.errors import KeytokError
from keytok.training.losses import (
    LossWeights,
    angle_loss,
    angle_objective,
    angle_values,
    cosent_loss,
    in_batch_negative_loss,
)


def unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


# -- losses --------------------------------------------------------------------------------------------


def test_cosent_two_pairs_by_hand():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cos = 1, 0 (lengths do not matter)
    # Pair 0 is scored lower but is more similar: log(1 + exp(20 (1 - 0))).
    wrong = cosent_loss(u, v, torch.tensor([0.2, 0.9]))
    assert wrong.item() == pytest.approx(math.log1p(math.exp(20.0)), rel=1e-6)
    right = cosent_loss(u, v, torch.tensor([0.9, 0.2]))
    assert right.item() == pytest.approx(math.log1p(math.exp(-20.0)), abs=1e-7)
    # Equal scores: no ordered couple, loss log(1) = 0.
    assert cosent_loss(u, v, torch.tensor([0.5, 0.5])).item() == 0.0


def test_cosent_three_pairs_by_hand():
    cos = [0.5, 0.8, 0.2]
    u = torch.tensor([[1.0, 0.0]] * 3)
    v = torch.tensor([unit(math.acos(c)) for c in cos])
    loss = cosent_loss(u, v, torch.tensor([1.0, 2.0, 3.0]), tau=20.0)
    # Couples (i, j) with y_i < y_j: (0,1) 20(0.5-0.8) = -6, (0,2) 20(0.5-0.2) = 6, (1,2) 20(0.8-0.2) = 12.
    expected = math.log(1 + math.exp(-6) + math.exp(6) + math.exp(12))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_angle_values_by_hand():
    def val(u, v):
        return angle_values(torch.tensor([u]), torch.tensor([v])).item()

    # (a + ib) conj(c + id): u = 1, v = i -> -i: Re + Im = -1, |.| = 1.
    assert val([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert val([3.0, 4.0], [3.0, 4.0]) == pytest.approx(1.0)  # u = v: w = 1
    assert val([1.0, 0.0], [1.0, 1.0]) == pytest.approx(0.0)  # 1 (1 - i) / sqrt2: Re + Im = 0
    assert val([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(1.0)  # |-1|


def test_angle_values_equal_complex_arithmetic():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    uc = torch.complex(u[:, :4], u[:, 4:])
    vc = torch.complex(v[:, :4], v[:, 4:])
    w = uc * vc.conj() / (u.norm(dim=1) * v.norm(dim=1))[:, None]
    expected = (w.real + w.imag).sum(1).abs()
    torch.testing.assert_close(angle_values(u, v), expected)


def test_angle_loss_by_hand():
    u = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    v = torch.tensor([[3.0, 4.0], [1.0, 1.0]])  # angle values 1 and 0
    # Pair 1 is scored lower and has the lower value: log(1 + exp(1 * (0 - 1))).
    assert angle_loss(u, v, torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log1p(math.exp(-1)))
    assert angle_loss(u, v, torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log1p(math.exp(1)))


def test_in_batch_negatives_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Logits 20 on the diagonal, 0 elsewhere: -log(e^20 / (e^20 + 1)) per row.
    assert in_batch_negative_loss(a, a).item() == pytest.approx(math.log1p(math.exp(-20)), abs=1e-7)
    # Hard negatives equal to the positives swapped: each row has e^20 twice and 1 twice.
    n = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = in_batch_negative_loss(a, a, n)
    assert loss.item() == pytest.approx(math.log(2 + 2 * math.exp(-20)), rel=1e-6)
    # A wrong positive: anchor 0 sees (0, 1) as its positive: -log(1 / (1 + e^20)).
    wrong = in_batch_negative_loss(
        a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), rows=torch.tensor([True, False])
    )
    assert wrong.item() == pytest.approx(math.log1p(math.exp(20)), rel=1e-6)
    assert in_batch_negative_loss(a, a, rows=torch.tensor([False, False])).item() == 0.0


def test_objective_weights_and_kinds():
    g = torch.Generator().manual_seed(1)
    u, v, n = (torch.randn(4, 6, generator=g, requires_grad=True) for _ in range(3))
    scores = torch.tensor([0.1, 0.9, 0.5, 1.0])
    w = LossWeights(cosine=1.0, ibn=0.5, angle=0.02)
    total, terms = angle_objective("pairs", [u, v], scores, w)
    rows = scores >= w.positive_min
    assert terms["ibn"] == pytest.approx(in_batch_negative_loss(u, v, rows=rows).item())
    assert terms["cosine"] == pytest.approx(cosent_loss(u, v, scores).item())
    assert terms["angle"] == pytest.approx(angle_loss(u, v, scores).item())
    assert total.item() == pytest.approx(terms["cosine"] + 0.5 * terms["ibn"] + 0.02 * terms["angle"])
    total.backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()

    total, terms = angle_objective("triplets", [u, v, n], None, w)
    ones_zeros = torch.tensor([1.0] * 4 + [0.0] * 4)
    assert terms["cosine"] == pytest.approx(
        cosent_loss(torch.cat([u, u]), torch.cat([v, n]), ones_zeros).item()
    )
    assert terms["ibn"] == pytest.approx(in_batch_negative_loss(u, v, n).item())
    total, terms = angle_objective("qrels", [u, v], None, w)
    assert set(terms) == {"ibn"}
    with pytest.raises(KeytokError):
        LossWeights(cosine=0, ibn=0, angle=0)
    with pytest.raises(KeytokError):
        angle_objective("nli", [u, v], None, w)


# -- frozen-layer cache, split forward --------------------------------------------------------------------

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "vitamin d deficiency is linked to bone loss in older adults",
    "aspirin reduces the risk of heart attack",
    "cancer cells",
    "the study results were not increased",
]


@pytest.mark.parametrize(
    ("method", "split", "cache_dtype"),
    [
        ("bellm", 2, "fp32"),  # bidirectional last layer among the trained ones
        ("bellm:bidirectional=3", 2, "fp32"),  # a bidirectional layer inside the cached part
        ("prompteol", 1, "fp32"),  # all causal
        ("instruct", 3, "fp32"),  # mean over the text only
        ("bellm", 2, "bf16"),  # the default cache precision: close, not equal
    ],
)
def test_frozen_cache_plus_top_layers_equals_full_forward(tiny_model, method, split, cache_dtype):
    from keytok.encoding.encoder import Encoder, pool_hidden
    from keytok.training.frozen import SplitDecoder, build_frozen_cache

    enc = Encoder(tiny_model, method, dtype="fp32", batch_tokens=40)  # several padded batches
    full = torch.from_numpy(enc.encode(TEXTS))
    cache = build_frozen_cache(enc, TEXTS, split, dtype=cache_dtype)
    assert cache.tokens == sum(len(x) for x in enc.tokenize(TEXTS).ids)
    top = SplitDecoder(tiny_model.model, enc.method.bidirectional)
    # Another grouping than the cache pass's, in another order: padding must not matter.
    order = [5, 0, 3, 1, 4, 2]
    hidden, pad, spans = cache.batch([TEXTS[i] for i in order])
    out = top.run(hidden, pad, split, top.n_layers, final_norm=True)
    got = pool_hidden(out, pad, enc.method.pooling, spans if enc.method.pool_text_only else None)
    tol = {"atol": 1e-5, "rtol": 1e-5} if cache_dtype == "fp32" else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(got, full[order], **tol)


def test_frozen_cache_file_roundtrip(tiny_model, tmp_path):
    from keytok.encoding.encoder import Encoder
    from keytok.training.frozen import FrozenCache, build_frozen_cache

    enc = Encoder(tiny_model, "bellm", dtype="fp32")
    cache = build_frozen_cache(enc, TEXTS, 2, dtype="bf16")
    cache.save(tmp_path / "c.safetensors")
    again = FrozenCache.load(tmp_path / "c.safetensors", cache.key)
    assert again is not None and again.texts == cache.texts and again.spans == cache.spans
    assert torch.equal(again.states, cache.states)
    assert FrozenCache.load(tmp_path / "c.safetensors", cache.key + "x") is None
    (tmp_path / "c.safetensors").write_bytes(b"damaged")
    assert FrozenCache.load(tmp_path / "c.safetensors", cache.key) is None
    with pytest.raises(KeytokError, match="not in the frozen-layer cache"):
        cache.batch(["never cached"])


def test_frozen_cache_runs_attention_in_the_encoders_precision(tiny_model_dir):
    # The cache pass runs the layers itself under autocast: its attention must follow the encoder's policy.
    from dataclasses import replace

    from keytok.encoding.encoder import Encoder
    from keytok.models.bidirectional import decoder_layers
    from keytok.models.loading import load_model
    from keytok.training.frozen import build_frozen_cache

    model = load_model(str(tiny_model_dir))  # a private copy: the attention wrappers stay on it
    seen = []
    decoder_layers(model.model)[0].self_attn.q_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    enc = Encoder(model, "bellm", dtype="bf16")
    for fp32_attention, expected in ((True, torch.float32), (False, torch.bfloat16)):
        enc.precision = replace(enc.precision, fp32_attention=fp32_attention)
        seen.clear()
        build_frozen_cache(enc, TEXTS, 2, dtype="fp32")
        assert seen and set(seen) == {expected}


def test_lora_starts_at_base_and_merges_exactly():
    from keytok.training.lora import LoRALinear, add_lora, merge_lora

    torch.manual_seed(0)
    block = torch.nn.Sequential()
    block.add_module("q_proj", torch.nn.Linear(8, 6))
    x = torch.randn(3, 8)
    before = block.q_proj(x)
    params = add_lora([block], rank=4, alpha=8, dropout=0.0)
    assert isinstance(block.q_proj, LoRALinear) and len(params) == 2
    torch.testing.assert_close(block(x), before)  # B = 0 at the start
    with torch.no_grad():
        block.q_proj.lora_b.normal_()
    trained = block(x)
    assert not torch.allclose(trained, before)
    assert merge_lora(block) == 1 and isinstance(block.q_proj, torch.nn.Linear)
    torch.testing.assert_close(block(x), trained, atol=1e-5, rtol=1e-5)


# -- training, checkpoints, resume ---------------------------------------------------------------------------


def _toy_data(folder):
    """Scored pairs and triplets over the tiny model's vocabulary: a sentence and a one-word variant are
    similar, two unrelated sentences are not."""
    import random

    from conftest import WORDS

    rng = random.Random(0)
    content = WORDS[27:]
    sentences = [" ".join(rng.sample(content, rng.randint(3, 6))) for _ in range(40)]

    def variant(s: str) -> str:
        words = s.split()
        words[rng.randrange(len(words))] = rng.choice(content)
        return " ".join(words)

    pairs, triplets = [], []
    for i, s in enumerate(sentences):
        other = sentences[(i + 7) % len(sentences)]
        pairs.append(f"{s}\t{variant(s)}\t{rng.uniform(4, 5):.2f}")
        pairs.append(f"{s}\t{other}\t{rng.uniform(0, 1):.2f}")
        triplets.append(f"{s}\t{variant(s)}\t{other}")
    (folder / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    (folder / "triplets.tsv").write_text("\n".join(triplets) + "\n")
    return folder / "pairs.tsv", folder / "triplets.tsv"


def _config(model_dir, **kw):
    from keytok.training.trainer import TrainConfig

    base = dict(
        model=str(model_dir),
        method="bellm",
        train_layers=2,
        lora_rank=4,
        lora_alpha=8.0,
        lr=5e-3,
        batch_size=8,
        max_steps=24,
        dtype="fp32",
        cache_dtype="fp32",
        save_every=5,
        log_every=100,
    )
    return TrainConfig(**(base | kw))


def _sets(pairs_tsv, triplets_tsv):
    from keytok.training.data import read_pairs, read_triplets

    return [read_pairs(str(pairs_tsv), "."), read_triplets(str(triplets_tsv), ".")]


def _data_loss(model, sets) -> float:
    """The AnglE objective over each whole data set (one batch), embedded by the Encoder."""
    from keytok.encoding.encoder import Encoder

    enc = Encoder(model, "bellm", dtype="fp32")
    total = 0.0
    for s in sets:
        groups = list(zip(*s.texts, strict=True))
        parts = [torch.from_numpy(enc.encode(list(g))) for g in groups]
        scores = torch.tensor(s.scores) if s.kind == "pairs" else None
        total += angle_objective(s.kind, parts, scores, LossWeights())[0].item()
    return total


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from keytok.training.trainer import train

    folder = tmp_path_factory.mktemp("train")
    sets = _sets(*_toy_data(folder))
    result = train(_config(tiny_model_dir), sets, folder / "ckpt", log=lambda m: None)
    return result, sets


def test_short_training_lowers_the_loss(trained, tiny_model_dir):
    result, sets = trained
    before = _data_loss(str(tiny_model_dir), sets)
    after = _data_loss(result.loaded, sets)
    assert after < 0.8 * before, (before, after)
    assert result.steps == 24 and len(result.history) == 24


def test_checkpoint_reloads_to_identical_embeddings(trained):
    import json

    from keytok.encoding.encoder import Encoder
    from keytok.models.loading import load_model

    result, _ = trained
    in_memory = Encoder(result.loaded, "bellm", dtype="fp32").encode(TEXTS)
    reloaded = load_model(str(result.out))
    assert reloaded.recorded_method is not None
    enc = Encoder(reloaded, dtype="fp32")  # no method: the recorded one
    assert enc.method.name == "bellm" and enc.method.bidirectional == 1
    assert (enc.encode(TEXTS) == in_memory).all()
    record = json.loads((result.out / "keytok.json").read_text())
    assert record["bidirectional_layers"] == [3] and record["trained_layers"] == [2, 3]
    assert record["base_model"]["sha256"] and len(record["loss_history"]) == 24
    assert "quantization_config" not in json.loads((result.out / "config.json").read_text())
    assert not any("lora" in k for k in reloaded.model.state_dict())


def test_resume_continues_where_it_stopped(trained, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from keytok.training.trainer import train

    result, sets = trained
    out = tmp_path / "resumed"
    stopped = train(_config(tiny_model_dir), sets, out, log=lambda m: None, stop_after=7)
    assert stopped.steps == 7 and not (out / "keytok.json").exists()
    # The state saved at the stop, then the same command again.
    done = train(_config(tiny_model_dir), sets, out, log=lambda m: None)
    assert done.resumed_from == 7 and done.steps == 24
    assert [h["loss"] for h in done.history] == pytest.approx([h["loss"] for h in result.history], rel=1e-4)
    a, b = load_file(str(result.out / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    with pytest.raises(KeytokError, match="other settings"):
        train(_config(tiny_model_dir, lr=1e-3), sets, out, log=lambda m: None)


def test_cli_train_then_tokens(tiny_model_dir, tmp_path, capsys):
    import json

    from keytok.cli.main import main

    pairs, _ = _toy_data(tmp_path)
    out = tmp_path / "ckpt"
    args = ["train", "--pairs", str(pairs), "--model", str(tiny_model_dir), "--out", str(out)]
    args += [
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--train-layers",
        "1",
        "--lora-rank",
        "0",
        "--dtype",
        "fp32",
    ]
    assert main(args) == 0
    capsys.readouterr()
    # bellm's single bidirectional layer would be a no-op under last-token pooling: the CLI trains with 2
    assert json.loads((out / "keytok.json").read_text())["bidirectional_layers"] == [2, 3]
    assert main(["tokens", "the cat sat", "--model", str(out), "--json", "-k", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["method"] == "bellm" and len(shown[0]["tokens"]) == 3
    assert main(["train", "--pairs", str(tmp_path / "missing.tsv"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv" in err[0]
    assert main(["train", "--out", str(out)]) == 1


def test_readers(shared_data, tmp_path):
    from keytok.data.sts import STSPair
    from keytok.training.data import read_pairs, read_qrels, read_triplets, sick_triplets

    pairs = read_pairs("STSB-train", shared_data / "sts", limit=100)
    assert len(pairs) == 100 and min(pairs.scores) >= 0.0 and max(pairs.scores) <= 1.0
    sick = read_triplets("SICK-train", shared_data / "sts")
    assert len(sick) == 532 and all(len(t) == 3 and t[1] != t[2] for t in sick.texts)
    qrels = read_qrels(str(shared_data / "beir" / "scifact"))
    assert len(qrels) == 919 and all(q and d for q, d in qrels.texts)
    # By hand: entailment in either direction is a positive, contradiction a hard negative.
    made = sick_triplets(
        [
            STSPair("a", "b", 4.0, "ENTAILMENT"),
            STSPair("c", "a", 3.0, "ENTAILMENT"),
            STSPair("a", "x", 1.0, "CONTRADICTION"),
            STSPair("b", "y", 2.0, "NEUTRAL"),
        ]
    )
    assert made == [("a", "b", "x"), ("a", "c", "x")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\n")
    with pytest.raises(KeytokError, match=r"bad\.tsv line 1: expected 3"):
        read_pairs(str(bad), ".")
    bad.write_text("one\ttwo\t3\none\ttwo\t3\n")
    with pytest.raises(KeytokError, match="same score"):
        read_pairs(str(bad), ".")


def test_library_errors_name_arguments_and_the_command_names_flags(tmp_path, capsys):
    from keytok.cli.common import cli_flags
    from keytok.cli.main import main
    from keytok.training.trainer import TrainConfig

    with pytest.raises(KeytokError, match=r"^train_layers must be >= 1, got 0$"):
        TrainConfig(train_layers=0)
    want = r"^x: pass --restart or --train-layers, not train_layersx$"
    with pytest.raises(KeytokError, match=want), cli_flags(train_layers="--train-layers"):
        raise KeytokError("x: pass restart=True or train_layers, not train_layersx")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"a cat {i}\ta dog {i}\t{i % 5}\n" for i in range(6)))
    rc = main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "out"), "--train-layers", "0"])
    assert rc == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "keytok: error: --train-layers must be >= 1, got 0"
    )
