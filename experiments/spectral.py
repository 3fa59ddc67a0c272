"""Spectral analysis (Nie et al. §4): where does an embedder's change from its base model lie?

For N texts: H = base embeddings, Ĥ = embedder embeddings of the same texts. SVD of H (not mean-centred)
gives directions u_j; the variation along each is v_j = mean_i[(ĥ_i − h_i)·u_j]. The paper finds the change
concentrated in v_1 (u_1 mostly boosts function tokens). This script prints v_j for the first 50 components,
the share of the total squared variation in the first, the top tokens of ±u_1 through the LM head, and
saves a bar plot.

    python experiments/spectral.py --model smollm2-135m --base mean --embedder prompteol --texts 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import command_line, run_script, write_text

from keytok.analyses.pc1 import spectral_variation
from keytok.data.sts import load_sts
from keytok.encoding.encoder import Encoder
from keytok.models.loading import load_model

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--base", default="mean", help="method giving the base model's embeddings")
    p.add_argument("--embedder", default="prompteol", help="the embedder's method")
    p.add_argument("--embedder-model", default=None, help="the embedder's model (default: --model)")
    p.add_argument("--texts", type=int, default=1000, help="STS-B train sentences to use")
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=str(HERE / "results" / "spectral.md"))
    args = p.parse_args(argv)

    texts = sorted({s for pair in load_sts("STSB-train", DATA / "sts") for s in (pair.s1, pair.s2)})
    np.random.default_rng(0).shuffle(texts)
    texts = texts[: args.texts]
    base_model = load_model(args.model)
    base_enc = Encoder(base_model, args.base, dtype=args.dtype)
    h = base_enc.encode(texts, show_progress=True, desc="base")
    emb_model = base_model if args.embedder_model in (None, args.model) else load_model(args.embedder_model)
    emb_enc = Encoder(emb_model, args.embedder, dtype=args.dtype)
    e = emb_enc.encode(texts, show_progress=True, desc="embedder")
    fit = spectral_variation(h, e, n_components=args.components)
    v = fit.variation
    share1 = float(v[0] ** 2 / np.sum(v**2))
    _, plus = base_enc.logits_topk(fit.components[0], 10)
    _, minus = base_enc.logits_topk(-fit.components[0], 10)
    tok = base_model.tokenizer

    def show(ids: np.ndarray) -> str:
        return ", ".join(repr(tok.decode([int(i)])) for i in ids[0])

    emb_label = args.embedder_model or args.model
    lines = [
        f"# Spectral analysis: {args.model} / {args.base} (base) vs {emb_label} / {args.embedder} (embedder)",
        "",
        f"{len(texts)} STS-B train sentences. Uncentred SVD of the base embeddings; v_j = mean((ĥ − h)·u_j).",
        "",
        f"- |v_1| share of Σ v_j² over the first {len(v)} components: **{share1:.1%}**",
        f"- v_1 = {v[0]:+.3f}; largest |v_j| for j > 1: {np.max(np.abs(v[1:])):.3f} (j = {int(np.argmax(np.abs(v[1:]))) + 2})",
        f"- singular values σ_1..σ_5: {', '.join(f'{s:.1f}' for s in fit.singular_values[:5])}",
        f"- top tokens of +u_1: {show(plus)}",
        f"- top tokens of −u_1: {show(minus)}",
        "",
        "| j | σ_j | v_j |",
        "|---|---|---|",
        *[f"| {j + 1} | {fit.singular_values[j]:.2f} | {v[j]:+.3f} |" for j in range(len(v))],
        "",
        f"![v_j](spectral_{Path(args.out).stem}.png)",
        "",
        command_line(__file__, argv),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = write_text(args.out, text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(1, len(v) + 1), v)
    ax.set_xlabel("component j (uncentred SVD of base embeddings)")
    ax.set_ylabel("v_j = mean((ĥ − h)·u_j)")
    ax.set_title(f"{args.model}: {args.base} → {args.embedder}")
    fig.tight_layout()
    fig.savefig(out.parent / f"spectral_{out.stem}.png", dpi=110)
    return 0


if __name__ == "__main__":
    run_script(main)
