"""Key tokens: the top tokens of an embedding projected through an LM head, shown readably."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from keytok.encoding.encoder import Encoder
from keytok.representations.calibration import Calibration


@dataclass(frozen=True)
class KeyToken:
    """One of a text's key tokens."""

    rank: int
    token_id: int
    token: str  # the vocabulary entry as stored (e.g. "Ġbone", "▁bone")
    text: str  # the decoded string (e.g. " bone")
    score: float  # raw logit
    in_input: bool  # the token id occurs in the text's own tokenisation
    special: bool  # a special token (<bos>, <|im_end|>, ...)

    @property
    def display(self) -> str:
        """The token for a terminal: a leading space shown as '▁', control characters escaped."""
        if self.special:
            return f"[{self.token}]"
        text = self.text
        lead = "▁" if text.startswith(" ") else ""
        body = text.lstrip(" ") if lead else text
        body = body.encode("unicode_escape").decode("ascii") if not body.isprintable() or not body else body
        return lead + (body or "''")

    @property
    def filler(self) -> bool:
        """True for a token that carries no topic: a special token, whitespace, punctuation, a single
        character or a function word (scikit-learn's English stop words), whatever its case or leading space.

        The share of such tokens among a text's top key tokens is how noisy a model's key tokens are.
        """
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        body = self.text.strip()
        return (
            self.special
            or len(body) <= 1
            or not any(c.isalnum() for c in body)
            or body.lower() in ENGLISH_STOP_WORDS
        )

    def as_dict(self) -> dict:
        """JSON-ready form, with :attr:`display`."""
        return asdict(self) | {"display": self.display}


def key_tokens(
    encoder: Encoder,
    texts: Sequence[str],
    k: int = 10,
    calibration: Calibration | None = None,
    embeddings: np.ndarray | None = None,
) -> list[list[KeyToken]]:
    """Top-k key tokens of each text (optionally after a PC1 calibration of its embedding)."""
    if embeddings is None:
        embeddings = encoder.encode(texts)
    if calibration is not None:
        embeddings = calibration.apply(embeddings)
    scores, ids = encoder.logits_topk(embeddings, k)
    tok = encoder.head_model.tokenizer
    special_ids = set(tok.all_special_ids)
    result = []
    for text, row_ids, row_scores in zip(texts, ids, scores, strict=True):
        present = set(encoder.input_token_ids(text))
        pieces = tok.convert_ids_to_tokens([int(i) for i in row_ids])
        row = [
            KeyToken(
                rank=r + 1,
                token_id=int(i),
                token=str(piece),
                text=tok.decode([int(i)]),
                score=float(s),
                in_input=int(i) in present,
                special=int(i) in special_ids,
            )
            for r, (i, s, piece) in enumerate(zip(row_ids, row_scores, pieces, strict=True))
        ]
        result.append(row)
    return result


def format_table(text: str, tokens: Sequence[KeyToken]) -> str:
    """A plain-text table: rank, token, score, in input."""
    width = max([len(t.display) for t in tokens] + [5])
    lines = [text, f"{'rank':>4}  {'token':<{width}}  {'score':>8}  in input", "-" * (width + 27)]
    for t in tokens:
        lines.append(f"{t.rank:>4}  {t.display:<{width}}  {t.score:>8.3f}  {'yes' if t.in_input else ''}")
    return "\n".join(lines)
