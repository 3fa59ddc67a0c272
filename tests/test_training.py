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
    assert record["peak_rss_mb"] > 0 and record["training"]["micro_batch"] == 0
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
    args = [
        "train",
        "--pairs",
        str(pairs),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--recipe",
        "bellm",
    ]
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
        "--micro-batch",
        "3",
        "--grad-checkpoint",
    ]
    assert main(args) == 0
    capsys.readouterr()
    record = json.loads((out / "keytok.json").read_text())
    # bellm's single bidirectional layer would be a no-op under last-token pooling: the CLI trains with 2
    assert record["bidirectional_layers"] == [2, 3]
    assert record["training"]["micro_batch"] == 3 and record["training"]["grad_checkpoint"] is True
    assert main(["tokens", "the cat sat", "--model", str(out), "--json", "-k", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["method"] == "bellm" and len(shown[0]["tokens"]) == 3
    assert main(["train", "--pairs", str(tmp_path / "missing.tsv"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv" in err[0]
    assert main(["train", "--out", str(out)]) == 1
    assert main(["train", "--pairs", str(pairs), "--out", str(out), "--micro-batch", "-1"]) == 1
    assert capsys.readouterr().err.strip().endswith("--micro-batch must be >= 0 (0: the whole batch), got -1")


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

    with pytest.raises(KeytokError, match=r"^train_layers must be >= 1 or 'all', got 0$"):
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
        == "keytok: error: --train-layers must be >= 1 or 'all', got 0"
    )


# -- micro-batches (gradient caching), gradient checkpointing ----------------------------------------------


def _toy_embedder(dropout: float):
    """A small embedder with dropout over integer "texts": a lookup, dropout, a linear layer."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(20, 6)
    drop = torch.nn.Dropout(dropout)
    proj = torch.nn.Linear(6, 4)

    def embed(texts):
        return proj(drop(table(torch.tensor([int(t) for t in texts]))))

    return embed, [table.weight, proj.weight, proj.bias]


def _toy_objective(emb):
    q, d = emb.split(len(emb) // 2)
    return angle_objective("qrels", [q, d], None, LossWeights())


def _grads(params):
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def test_cached_backward_replays_each_chunks_dropout_masks():
    from keytok.training.gradcache import cached_backward

    embed, params = _toy_embedder(dropout=0.5)
    texts = [str(i) for i in range(14)]  # 7 (query, document) pairs, chunks of 3: 3 + 3 + 3 + 3 + 2
    chunks = [texts[i : i + 3] for i in range(0, 14, 3)]
    # Reference: the same chunks embedded in one autograd graph (every activation kept), one backward pass.
    torch.manual_seed(1)
    loss, _ = _toy_objective(torch.cat([embed(c) for c in chunks]))
    loss.backward()
    expected, rng_after = _grads(params), torch.get_rng_state()
    torch.manual_seed(1)
    got_loss, _ = cached_backward(embed, texts, _toy_objective, chunk=3)
    assert got_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, b in zip(_grads(params), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.get_rng_state(), rng_after)  # random numbers consumed as the plain pass does
    # A wrong replay (other masks in the second pass) gives other gradients: the check above has teeth.
    torch.manual_seed(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("keytok.training.gradcache.RngState.restore", lambda self: None)
        cached_backward(embed, texts, _toy_objective, chunk=3)
    assert not all(torch.allclose(a, b) for a, b in zip(_grads(params), expected, strict=True))


def test_cached_backward_without_dropout_equals_the_whole_batch():
    from keytok.training.gradcache import cached_backward

    embed, params = _toy_embedder(dropout=0.0)
    texts = [str(i) for i in range(14)]
    loss, _ = _toy_objective(embed(texts))
    loss.backward()
    expected = _grads(params)
    for chunk in (1, 3, 13):
        cached_backward(embed, texts, _toy_objective, chunk=chunk)
        for a, b in zip(_grads(params), expected, strict=True):  # float rounding: sums in another order
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _step_gradients(model_dir, sets, out, **kw) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and parameter gradients of the first planned step of a run with ``kw``, on the tiny model."""
    from keytok.training import trainer as T

    config = _config(model_dir, **kw)
    quiet = lambda _: None  # noqa: E731
    torch.manual_seed(config.seed)  # the LoRA initialisation
    m = T._load(config, quiet)
    cache, _ = T._frozen_cache(config, sets, m, out, None, quiet)
    run = T._Run(config, sets, out, m, cache, [], quiet, (0.0, 0.0))
    for layer in run.top:
        layer.train()
    with torch.no_grad():  # B = 0 at the start would give A no gradient: start from a trained-like point
        for name, p in run.named.items():
            if "lora_b" in name:
                p.normal_(0, 0.5)
    k, rows = run.plan[0]
    texts = [t for g in zip(*(sets[k].texts[i] for i in rows), strict=True) for t in g]
    scores = torch.tensor([sets[k].scores[i] for i in rows]) if sets[k].kind == "pairs" else None

    def objective(emb):
        return angle_objective(sets[k].kind, list(emb.split(len(rows))), scores, config.losses)

    torch.manual_seed(7)  # the dropout masks
    loss, _ = run.backward(texts, objective)
    return loss.item(), {n: p.grad.clone() for n, p in run.named.items()}


def _assert_same_gradients(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every tensor within 1e-5 of the expected one relative to its norm: float rounding of sums done in
    another order (other padding, other chunks) is ~1e-6; a wrong dropout mask or a lost negative is ~1."""
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        error = (got[name] - g).norm().item()
        assert error <= 1e-5 * g.norm().item() + 1e-12, (name, error, g.norm().item())


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory):
    return _sets(*_toy_data(tmp_path_factory.mktemp("toy")))


@pytest.mark.parametrize(
    ("dropout", "options"),
    [
        (0.0, {"micro_batch": 3}),
        (0.0, {"grad_checkpoint": True}),
        (0.0, {"micro_batch": 3, "grad_checkpoint": True}),
        (0.1, {"grad_checkpoint": True}),  # the recomputation replays the dropout masks
    ],
)
def test_micro_batch_and_grad_checkpoint_give_the_whole_batch_gradients(
    tiny_model_dir, toy_sets, tmp_path, dropout, options
):
    # micro_batch 3: 16 texts (8 pairs) in 6 forward passes, each padded to its own longest text.
    loss, whole = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=dropout)
    got_loss, got = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=dropout, **options)
    assert got_loss == pytest.approx(loss, rel=1e-5)
    assert any(g.abs().max() > 0 for g in whole.values())
    _assert_same_gradients(got, whole)


def test_micro_batches_with_dropout_equal_one_graph_over_the_same_chunks(tiny_model_dir, toy_sets, tmp_path):
    # With dropout on, each micro-batch draws its own masks (not a whole-batch pass's): the gradients must be
    # those of the same chunks embedded in one graph, which gradient checkpointing reproduces too.
    one_graph = []

    def chunked_in_one_graph(self, texts, objective):
        # The micro-batches are cut from the batch sorted by length, longest first (less padding).
        lengths = self.cache.lengths(texts)
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        chunks = [[texts[j] for j in order[i : i + 3]] for i in range(0, len(order), 3)]
        emb = torch.cat([self.embedder(chunk) for chunk in chunks])
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        loss, terms = objective(emb[back])
        loss.backward()
        one_graph.append(True)
        return loss.detach(), terms

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("keytok.training.trainer._Run.backward", chunked_in_one_graph)
        loss, expected = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=0.1)
    assert one_graph  # the reference ran
    for options in ({"micro_batch": 3}, {"micro_batch": 3, "grad_checkpoint": True}):
        got_loss, got = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=0.1, **options)
        assert got_loss == pytest.approx(loss, rel=1e-5)
        _assert_same_gradients(got, expected)


def test_length_buckets_give_the_one_padded_pass_gradients(tiny_model_dir, toy_sets, tmp_path):
    # The trained layers run a batch in length buckets (here about one text each) instead of one block
    # padded to its longest text: the same loss and gradients, the rows back in batch order.
    from keytok.training import trainer as T

    loss, whole = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "BUCKET_TOKENS", 8)
        mp.setattr(T.Embedder.__init__, "__defaults__", (False, 8))
        buckets = []
        plan = T.plan_batches
        mp.setattr(T, "plan_batches", lambda *a, **k: buckets.append(plan(*a, **k)) or buckets[-1])
        got_loss, got = _step_gradients(tiny_model_dir, toy_sets, tmp_path, lora_dropout=0.0)
    assert len(buckets[0]) > 3  # several buckets ran
    assert got_loss == pytest.approx(loss, rel=1e-5)
    _assert_same_gradients(got, whole)


def test_micro_batch_training_matches_whole_batch_training(tiny_model_dir, toy_sets, tmp_path):
    # Two optimiser steps end at the same parameters and losses (dropout off: masks drawn per micro-batch
    # differ from a whole-batch draw). micro_batch and grad_checkpoint may change when a run resumes.
    from keytok.training import checkpoint as ckpt
    from keytok.training.trainer import train

    quiet = lambda _: None  # noqa: E731
    states = []
    for name, options in (("whole", {}), ("micro", {"micro_batch": 3, "grad_checkpoint": True})):
        config = _config(tiny_model_dir, lora_dropout=0.0, lora_rank=0, **options)
        train(config, toy_sets, tmp_path / name, log=quiet, stop_after=2)
        states.append(ckpt.load_state(tmp_path / name))
    (a, b) = states
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)
    for name, p in a["params"].items():
        torch.testing.assert_close(
            b["params"][name], p, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    # The micro-batched run continues with whole batches.
    done = train(
        _config(tiny_model_dir, lora_dropout=0.0, lora_rank=0), toy_sets, tmp_path / "micro", log=quiet
    )
    assert done.resumed_from == 2 and done.steps == 24


def test_progress_bar_and_log_lines(tiny_model_dir, toy_sets, tmp_path, capsys):
    from keytok.training.trainer import train

    lines = []
    train(_config(tiny_model_dir, log_every=2), toy_sets, tmp_path / "run", log=lines.append, stop_after=4)
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/24", "4/24"]  # every log_every steps, no bar needed
    assert all("loss" in line and "tokens/s" in line and "min left" in line for line in steps)
    assert all("steps/s" in line or "s/step" in line for line in steps)  # slow steps: seconds per step
    train(_config(tiny_model_dir), toy_sets, tmp_path / "run", log=lines.append, stop_after=2, progress=True)
    bar = capsys.readouterr().err
    assert "training" in bar and "4/24" in bar and "loss" in bar and "tok/s" in bar


# -- kill -9 and resume ---------------------------------------------------------------------------------------

# A training run in a child process, as `keytok train` runs. Modes: "slow" pauses after each saved state (time
# to watch the state and kill the run between any two steps); "die-in-export" SIGKILLs itself once the exported
# model.safetensors is renamed into place, before the other files and keytok.json.
_CHILD = r"""
import json, os, signal, sys, time
from keytok.training import checkpoint as ckpt
from keytok.training.data import read_pairs, read_triplets
from keytok.training.losses import LossWeights
from keytok.training.trainer import TrainConfig, train

config, pairs, triplets, out, mode = json.loads(sys.argv[1])
if mode == "slow":
    save_state = ckpt.save_state
    ckpt.save_state = lambda *a: (save_state(*a), time.sleep(0.3))
elif mode == "die-in-export":
    replace = os.replace
    def replace_then_die(src, dst):
        replace(src, dst)
        if str(dst).endswith("model.safetensors"):
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.os.replace = replace_then_die
config = TrainConfig(**config | {"losses": LossWeights(**config["losses"])})
train(config, [read_pairs(pairs, "."), read_triplets(triplets, ".")], out, log=lambda m: None)
"""


def _child(args: list, stderr_file) -> object:
    import json
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stderr=stderr_file)


def _wait_for_step(out, at_least: int, proc, timeout: float = 180.0) -> int:
    """Poll the saved state until its step reaches ``at_least`` (the child still running)."""
    import time

    from keytok.training import checkpoint as ckpt

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        state = ckpt.load_state(out) if (ckpt.state_dir(out) / "state.pt").is_file() else None
        if state is not None and state["step"] >= at_least:
            return int(state["step"])
        time.sleep(0.05)
    raise AssertionError(f"no saved step >= {at_least} within {timeout} s")


@pytest.mark.slow  # four child processes (~35 s on 2 shared cores)
def test_kill_9_at_any_moment_resumes_to_the_uninterrupted_result(tiny_model_dir, tmp_path):
    import dataclasses
    import json
    import signal

    from safetensors.torch import load_file

    from keytok.training import checkpoint as ckpt
    from keytok.training.trainer import train

    pairs, triplets = _toy_data(tmp_path)
    config = _config(tiny_model_dir, max_steps=12, save_every=1, threads=1)  # dropout 0.1: the RNG matters
    reference = train(config, _sets(pairs, triplets), tmp_path / "reference", log=lambda m: None)
    out = tmp_path / "killed"
    args = [dataclasses.asdict(config), str(pairs), str(triplets), str(out)]
    with open(tmp_path / "child.err", "w") as err:
        run = _child([*args, "slow"], err)  # killed between steps 2 and 12
        killed_at = _wait_for_step(out, 2, run)
        with pytest.raises(KeytokError, match="another keytok train is running"):
            train(config, _sets(pairs, triplets), out, log=lambda m: None)
        run.kill()
        assert run.wait() == -signal.SIGKILL
        run = _child([*args, "slow"], err)  # resumed, killed again a few steps later
        again = _wait_for_step(out, killed_at + 3, run)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL and again < config.max_steps
        run = _child([*args, "die-in-export"], err)  # resumed to the end, killed halfway through the export
        assert run.wait() == -signal.SIGKILL
        assert ckpt.load_state(out)["step"] == 12 and not (out / "keytok.json").exists()
        assert list(out.glob(".export.*"))  # the dead export's temporary folder
        run = _child([*args, "plain"], err)  # run again: the export is redone
        assert run.wait() == 0, (tmp_path / "child.err").read_text()[-2000:]
    assert not list(out.glob(".export.*")) and not list(ckpt.state_dir(out).glob(".*.tmp"))
    a = load_file(str(reference.out / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    record = json.loads((out / "keytok.json").read_text())
    assert record["loss_history"] == reference.history
    assert record["peak_rss_mb"] > 0 and record["training"]["micro_batch"] == 0


def test_training_from_a_model_with_fusion_weights_keeps_them(trained, tmp_path):
    """Adapting a model that carries fusion weights (as the shipped default does) keeps them in the result."""
    import json
    import shutil

    from keytok.training.trainer import train

    result, sets = trained
    base = tmp_path / "with-fusion"
    shutil.copytree(result.out, base, ignore=shutil.ignore_patterns("train-state"))
    record = json.loads((base / "keytok.json").read_text())
    record["fusion"] = {"method": "zscore", "weights": {"sparse:expanded": 0.5, "dense": 0.3}}
    (base / "keytok.json").write_text(json.dumps(record))
    adapted = train(_config(str(base), max_steps=2), sets, tmp_path / "adapted", log=lambda m: None)
    fusion = json.loads((adapted.out / "keytok.json").read_text())["fusion"]
    assert fusion == {**record["fusion"], "inherited_from": str(base)}
    assert "fusion" not in json.loads((result.out / "keytok.json").read_text())


def test_a_short_run_caches_only_the_texts_its_steps_read(tiny_model_dir, tmp_path):
    from keytok.training.trainer import plan_steps, train

    pairs, triplets = _toy_data(tmp_path)
    sets = _sets(pairs, triplets)
    config = _config(tiny_model_dir, max_steps=2, batch_size=4)
    steps = plan_steps(sets, 4, config.epochs, 2, config.seed)
    read = {t for k, rows in steps for i in rows for t in sets[k].texts[i]}
    every = {t for s in sets for t in s.unique_texts()}
    assert len(read) < len(every)  # else the test shows nothing
    result = train(config, sets, tmp_path / "out", log=lambda m: None)
    assert result.cache.startswith(f"{len(read):,} texts,")
