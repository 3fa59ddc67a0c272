"""Sparse key-token vectors for retrieval: documents -> top-K key tokens, queries -> own tokens (+ top-M).

A document's vector is its top-K key tokens, ``lm_head(e)`` for its embedding ``e`` (the LM head read as a bag of words), with
non-negative weights; a query's vector is its own tokens weighted by IDF and, in ``expanded`` mode, its
top-M key tokens from one model pass. The score of a document is the dot product of the two vectors (an
inverted index: :mod:`keytok.engines.sparse`).

Pipeline of one embedding (documents and queries alike)::

    e -> calibration.apply(e) (optional PC1 adjustment) -> e - center * mean (optional) -> lm_head -> top-K

* ``center`` = α subtracts α x the mean embedding of the corpus (non-empty documents) from every vector
  before projection, documents and queries alike: a crude first-principal-component adjustment (the mean
  direction is dominated by what every text shares, which the LM head reads as function words). The mean
  comes from :meth:`SparseEncoder.fit_center` and is stored with the index.
* Special tokens (``tokenizer.all_special_ids``) are dropped; K counts the tokens that remain.
* Weight transforms of a logit ``s``: ``log1p`` = log(1 + max(s, 0)); ``relu`` = max(s, 0); ``raw`` =
  ``s - s_(K+1)``, the logit minus the text's (K+1)-th largest non-special logit. Raw logits can be
  negative (after centering most are), and Lucene and the native index need impacts >= 0, so ``raw``
  shifts each text's logits by its own threshold: every kept token gets a positive weight and the
  differences between a text's tokens are the raw logit differences. Zero weights are removed.

Queries (``query_mode``):

* ``llm-free``: the query's own tokens, each weighted by ``idf(t)`` (no model run: only the tokenizer).
  Each word of the query is looked up as the tokenizer produces it *and* in the variants
  ``"word"`` and ``" word"`` (with ``case_variants=True`` also ``"Word"``, ``" Word"``, ``"word"`` lower-cased),
  because a document's key tokens come in several forms of one word: SmolLM2 + PromptEOL on Cranfield,
  top-10 of one document: ``experimental, Ġexperimental, ĠExperimental, experiment, Ġexperiment, ...``.
  A word that is not one token in some form contributes that form's pieces.
* ``expanded``: own tokens as above, plus the query's top-M key tokens, each weighted
  ``expansion_weight x transform(s) x idf(t)``; a token in both parts gets the sum.

``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` (BM25's, always > 0) over the *sparse document matrix*
(df = number of documents that have ``t`` among their key tokens; :func:`document_frequency`). Without an
idf array every token gets weight 1.

* ``feedback``: own tokens as above, plus the key tokens of the query's top ``feedback_docs`` BM25
  documents (:meth:`SparseEncoder.feedback_queries`): pseudo-relevance feedback in which the feedback
  terms are the model's key tokens, already stored in the index. No model run at query time.

Defaults, chosen on SciFact's **train** qrels only (809 queries; ``python experiments/sweep_bm25.py
../shared/data/beir/scifact --split train --max-length 96``, table in
``experiments/results/sweep_bm25_scifact_train.md``), the same for every collection; nDCG@10 on train,
SmolLM2-135M, PromptEOL, documents cut to 96 tokens:

==========================  ===========  =====================================================
setting                     default      train nDCG@10 of the row it was chosen on
==========================  ===========  =====================================================
K (key tokens / document)   512          sparse expanded .1685 (K 256: .1678)
centring α                  0.5          .1685 (α 0: .1611, α 1: .1666 at their best K, M)
M (expansion tokens)        128          .1685 (M 64: .1664)
expansion weight            0.1          .1685 (0.3: .1497)
transform                   log1p        relu was no better in the first, larger run
feedback documents          3            sparse feedback .5064 (5: .4539, 10: .3681)
feedback tokens             128          .5064 (64: .5049)
==========================  ===========  =====================================================

Why: a document's top key tokens are mostly the model's generic reading of the text (near-synonyms and
topic words, few of its own rare words), so the sparse vectors need many of them (K = 512) and the query
needs its own tokens plus a light expansion (weight 0.1): at 0.3 the expansion's generic tokens outweigh
the query's own words. Half the corpus mean removed (α = 0.5) is the crude first-principal-component
adjustment: without it the function-word direction fills the top tokens; removing all of it (α = 1)
overshoots. LLM-free queries matched on their own tokens only reach .73 of dense on train (.1022 vs
.1404): key tokens rarely are the query's words. Feedback queries close that gap without the model
(.5064, 3.6 x dense): three BM25 documents already carry the key tokens that the query's own words miss.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from keytok.errors import KeytokError

__all__ = [
    "DEFAULT_CENTER",
    "DEFAULT_EXPANSION_WEIGHT",
    "DEFAULT_FEEDBACK_DOCS",
    "DEFAULT_FEEDBACK_TERMS",
    "DEFAULT_K",
    "DEFAULT_M",
    "DEFAULT_QUERY_MODE",
    "DEFAULT_TRANSFORM",
    "QUERY_MODES",
    "SPARSE_FIELDS",
    "TRANSFORMS",
    "SparseConfig",
    "SparseEncoder",
    "document_frequency",
    "idf_weights",
    "sparse_config",
    "token_display",
    "transform_weights",
]

Transform = Literal["log1p", "relu", "raw"]
QueryMode = Literal["expanded", "llm-free", "feedback"]
TRANSFORMS: tuple[str, ...] = ("log1p", "relu", "raw")
QUERY_MODES: tuple[str, ...] = ("expanded", "llm-free", "feedback")

DEFAULT_K = 512
DEFAULT_M = 128
DEFAULT_TRANSFORM: Transform = "log1p"
DEFAULT_CENTER = 0.5
DEFAULT_EXPANSION_WEIGHT = 0.1
DEFAULT_QUERY_MODE: QueryMode = "expanded"
DEFAULT_FEEDBACK_DOCS = 3
DEFAULT_FEEDBACK_TERMS = 128

_WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------------------------- helpers
def transform_weights(scores: np.ndarray, transform: str, threshold: np.ndarray | None = None) -> np.ndarray:
    """Non-negative weights of logits ``scores`` [n, k] (see the module docstring).

    ``threshold`` [n] is the (k+1)-th logit of each row, needed by ``raw``.
    """
    s = np.asarray(scores, dtype=np.float32)
    if transform == "log1p":
        return np.log1p(np.maximum(s, 0.0))
    if transform == "relu":
        return np.maximum(s, 0.0)
    if transform == "raw":
        if threshold is None:
            raise ValueError("the raw transform needs each row's (k+1)-th logit as threshold")
        return np.maximum(s - np.asarray(threshold, dtype=np.float32)[:, None], 0.0)
    raise KeytokError(f"unknown weight transform '{transform}' (choose from {', '.join(TRANSFORMS)})")


def document_frequency(docs: sp.spmatrix | sp.sparray) -> np.ndarray:
    """How many rows of ``docs`` (n x vocab) have a positive weight for each token: int64 [vocab]."""
    x = sp.csr_matrix(docs)
    x.eliminate_zeros()
    return np.bincount(x.indices, minlength=x.shape[1]).astype(np.int64)


def idf_weights(df: np.ndarray, n_docs: int) -> np.ndarray:
    """BM25's idf ``ln(1 + (N - df + 0.5) / (df + 0.5))`` for each token (float32 [vocab], always > 0)."""
    df = np.asarray(df, dtype=np.float64)
    if n_docs < 1:
        raise KeytokError("idf needs at least one document")
    return np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)


def token_display(tokenizer: Any, token_id: int, special_ids: set[int] | None = None) -> str:
    """A token for a terminal: a leading space shown as '▁', control characters escaped, specials in []."""
    if special_ids is not None and token_id in special_ids:
        return f"[{tokenizer.convert_ids_to_tokens(int(token_id))}]"
    text = tokenizer.decode([int(token_id)])
    lead = "▁" if text.startswith(" ") else ""
    body = text[1:] if lead else text
    if not body or not body.isprintable():
        body = body.encode("unicode_escape").decode("ascii") or "''"
    return lead + body


@dataclass(frozen=True)
class _TopK:
    """Top tokens of a batch of embeddings, specials removed: scores/ids [n, k], threshold [n]."""

    scores: np.ndarray
    ids: np.ndarray
    threshold: np.ndarray


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SparseConfig:
    """The settings that shape the sparse vectors: one object for :class:`SparseEncoder`, ``keytok index
    build``, the bench and the index's ``keytok.json`` (:meth:`params` / :meth:`from_params`).

    ``k_doc`` key tokens per document, ``m_query`` expansion tokens per query, the weight ``transform``,
    ``center`` (the share of the corpus mean removed before projection), the default ``query_mode``,
    ``expansion_weight``, ``case_variants`` (llm-free own tokens also in other cases), and the feedback
    queries' ``feedback_docs`` first-pass documents and ``feedback_terms`` tokens. See the module doc.
    """

    k_doc: int = DEFAULT_K
    m_query: int = DEFAULT_M
    transform: str = DEFAULT_TRANSFORM
    center: float = DEFAULT_CENTER
    query_mode: str = DEFAULT_QUERY_MODE
    expansion_weight: float = DEFAULT_EXPANSION_WEIGHT
    case_variants: bool = False
    feedback_docs: int = DEFAULT_FEEDBACK_DOCS
    feedback_terms: int = DEFAULT_FEEDBACK_TERMS

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise KeytokError(
                f"unknown weight transform '{self.transform}' (choose from {', '.join(TRANSFORMS)})"
            )
        if self.query_mode not in QUERY_MODES:
            raise KeytokError(
                f"unknown query mode '{self.query_mode}' (choose from {', '.join(QUERY_MODES)})"
            )
        for name, value in (
            ("K", self.k_doc),
            ("M", self.m_query),
            ("feedback_docs", self.feedback_docs),
            ("feedback_terms", self.feedback_terms),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise KeytokError(f"{name} must be a non-negative integer, got {value!r}")
        if self.k_doc < 1:
            raise KeytokError(f"K must be at least 1, got {self.k_doc}")
        if (
            not np.isfinite(self.center)
            or not np.isfinite(self.expansion_weight)
            or self.expansion_weight < 0
        ):
            raise KeytokError("center must be finite and expansion_weight finite and >= 0")
        for name, cast in (
            ("k_doc", int),
            ("m_query", int),
            ("center", float),
            ("expansion_weight", float),
            ("case_variants", bool),
            ("feedback_docs", int),
            ("feedback_terms", int),
        ):
            object.__setattr__(self, name, cast(getattr(self, name)))

    def params(self) -> dict[str, Any]:
        """The settings as ``keytok.json`` records them (``K``, ``M``, ...; JSON-ready)."""
        return {
            "K": self.k_doc,
            "M": self.m_query,
            "transform": self.transform,
            "center": self.center,
            "query_mode": self.query_mode,
            "expansion_weight": self.expansion_weight,
            "case_variants": self.case_variants,
            "feedback_docs": self.feedback_docs,
            "feedback_terms": self.feedback_terms,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SparseConfig:
        """The settings an index recorded with :meth:`params` (fields added later take their defaults)."""
        return cls(
            k_doc=int(params["K"]),
            m_query=int(params["M"]),
            transform=params["transform"],
            center=float(params["center"]),
            query_mode=params["query_mode"],
            expansion_weight=float(params["expansion_weight"]),
            case_variants=bool(params.get("case_variants", False)),
            feedback_docs=int(params.get("feedback_docs", DEFAULT_FEEDBACK_DOCS)),
            feedback_terms=int(params.get("feedback_terms", DEFAULT_FEEDBACK_TERMS)),
        )


SPARSE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SparseConfig))


def sparse_config(config: SparseConfig | None = None, **settings: Any) -> SparseConfig:
    """``config`` (default: the defaults) with the keyword ``settings`` (``k_doc=...``) replacing its fields."""
    bad = sorted(set(settings) - set(SPARSE_FIELDS))
    if bad:
        raise KeytokError(f"unknown sparse setting {bad[0]!r} (choose from {', '.join(SPARSE_FIELDS)})")
    base = config if config is not None else SparseConfig()
    return replace(base, **settings) if settings else base


# --------------------------------------------------------------------------------------------- encoder
class SparseEncoder:
    """Turn embeddings into sparse key-token vectors for documents and queries (see the module docstring).

    ``encoder`` is a :class:`keytok.encoding.encoder.Encoder` (needed for projection and for expanded
    queries); it may be None for LLM-free queries, then ``tokenizer`` and ``vocab_size`` must be given, and
    ``load_encoder``, when given, loads the model the first time projection needs it (an opened index
    loads its model only for the queries that need it).
    ``config``: the :class:`SparseConfig`; its fields may also be given as keywords (``k_doc=64``), which
    replace the config's. ``calibration`` is applied before projection, then ``center x mean`` is
    subtracted (``mean`` from :meth:`fit_center` or given). :meth:`params` is what index manifests record.
    """

    def __init__(
        self,
        encoder: Any = None,
        config: SparseConfig | None = None,
        *,
        calibration: Any = None,
        mean: np.ndarray | None = None,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        load_encoder: Callable[[], Any] | None = None,
        **settings: Any,
    ) -> None:
        self.config = sparse_config(config, **settings)
        if encoder is None and (tokenizer is None or vocab_size is None):
            raise KeytokError("a SparseEncoder without a model needs tokenizer and vocab_size")
        self._encoder = encoder
        self._load_encoder = load_encoder
        self.calibration = calibration
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._variant_cache: dict[tuple[str, bool], tuple[int, ...]] = {}

    # the settings, read from the config (replace it with dataclasses.replace to change one)
    k_doc = property(lambda self: self.config.k_doc)
    m_query = property(lambda self: self.config.m_query)
    transform = property(lambda self: self.config.transform)
    center = property(lambda self: self.config.center)
    query_mode = property(lambda self: self.config.query_mode)
    expansion_weight = property(lambda self: self.config.expansion_weight)
    case_variants = property(lambda self: self.config.case_variants)
    feedback_docs = property(lambda self: self.config.feedback_docs)
    feedback_terms = property(lambda self: self.config.feedback_terms)

    # ------------------------------------------------------------------ properties
    @property
    def encoder(self) -> Any:
        """The model's encoder (loaded by ``load_encoder`` on first use), or None without one."""
        if self._encoder is None and self._load_encoder is not None:
            self._encoder = self._load_encoder()
        return self._encoder

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the LM head's vocabulary."""
        if self._tokenizer is None:
            self._tokenizer = self.encoder.head_model.tokenizer
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Width of the sparse vectors (rows of the LM head)."""
        if self._vocab_size is None:
            self._vocab_size = int(self.encoder.vocab_size)
        return int(self._vocab_size)

    @property
    def special_ids(self) -> set[int]:
        """Token ids never used as key tokens."""
        return {int(i) for i in self.tokenizer.all_special_ids}

    def params(self) -> dict[str, Any]:
        """The settings that shape the vectors, for manifests (JSON-ready): the config's, the calibration's
        sha256 and the idf formula."""
        return self.config.params() | {
            "calibration_sha256": None if self.calibration is None else self.calibration.sha256,
            "idf": "ln(1 + (N - df + 0.5) / (df + 0.5)) over the sparse document vectors",
        }

    # ------------------------------------------------------------------ projection
    def fit_center(self, doc_embeddings: np.ndarray) -> np.ndarray:
        """Set :attr:`mean` to the mean of the (calibrated) non-zero rows of ``doc_embeddings``; return it."""
        x = np.asarray(doc_embeddings, dtype=np.float32)
        if self.calibration is not None:
            x = self.calibration.apply(x)
        nonzero = np.abs(x).sum(axis=1) > 0
        if not nonzero.any():
            raise KeytokError("cannot compute the corpus mean: every document embedding is empty")
        self.mean = x[nonzero].astype(np.float64).mean(axis=0).astype(np.float32)
        return self.mean

    def adjust(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings as projected: calibrated, then ``center x mean`` subtracted."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if self.calibration is not None:
            x = self.calibration.apply(x)
        if self.center:
            if self.mean is None:
                raise KeytokError(f"center={self.center} needs the corpus mean: call fit_center() first")
            if self.mean.shape != (x.shape[1],):
                raise KeytokError(
                    f"the stored corpus mean is {self.mean.shape[0]}-d, embeddings are {x.shape[1]}-d"
                )
            x = x - np.float32(self.center) * self.mean
        return x

    def _require_model(self, what: str) -> Any:
        if self.encoder is None:
            raise KeytokError(f"{what} needs the model; this SparseEncoder was made without one")
        return self.encoder

    def topk(self, embeddings: np.ndarray, k: int, batch: int = 512) -> _TopK:
        """Top-``k`` non-special tokens of ``lm_head(adjust(e))`` and each row's (k+1)-th logit."""
        enc = self._require_model("projection")
        x = self.adjust(embeddings)
        special = np.array(sorted(self.special_ids), dtype=np.int64)
        # A small vocabulary (tests, toy models) may hold fewer than k non-special tokens.
        k = max(1, min(k, self.vocab_size - special.size))
        want = min(k + 1 + special.size, self.vocab_size)
        scores = np.zeros((x.shape[0], k), dtype=np.float32)
        ids = np.zeros((x.shape[0], k), dtype=np.int64)
        thr = np.zeros(x.shape[0], dtype=np.float32)
        for lo in range(0, x.shape[0], batch):
            s, i = enc.logits_topk(x[lo : lo + batch], want)
            keep = ~np.isin(i, special)
            for r in range(s.shape[0]):
                rs, ri = s[r][keep[r]], i[r][keep[r]]
                scores[lo + r], ids[lo + r] = rs[:k], ri[:k]
                # with the whole vocabulary kept there is no (k+1)-th logit: the lowest kept one stands in
                thr[lo + r] = rs[k] if rs.size > k else rs[-1]
        return _TopK(scores, ids, thr)

    def vectors_from_topk(self, top: _TopK, k: int, rows_zero: np.ndarray | None = None) -> sp.csr_matrix:
        """CSR [n, vocab] of the first ``k`` tokens of ``top`` under the transform (zeros removed).

        ``rows_zero``: boolean [n], rows forced empty (documents with no text).
        """
        k = min(k, top.scores.shape[1])
        s, i = top.scores[:, :k], top.ids[:, :k]
        thr = top.threshold if k == top.scores.shape[1] else top.scores[:, k]
        w = transform_weights(s, self.transform, thr)
        if rows_zero is not None:
            w[np.asarray(rows_zero, dtype=bool)] = 0.0
        n = s.shape[0]
        m = sp.csr_matrix(
            (w.ravel(), i.ravel(), np.arange(0, n * k + 1, k)), shape=(n, self.vocab_size), dtype=np.float32
        )
        m.sum_duplicates()
        m.eliminate_zeros()
        return m

    def encode_documents_from_embeddings(self, emb: np.ndarray) -> sp.csr_matrix:
        """Sparse document vectors (CSR float32 [n, vocab], weights >= 0) from document embeddings.

        All-zero embedding rows (documents with no text) give empty rows.
        """
        x = np.asarray(emb, dtype=np.float32)
        empty = np.abs(x).sum(axis=1) == 0
        return self.vectors_from_topk(self.topk(x, self.k_doc), self.k_doc, rows_zero=empty)

    # ------------------------------------------------------------------ queries
    def _variants(self, word: str) -> tuple[int, ...]:
        key = (word, self.case_variants)
        hit = self._variant_cache.get(key)
        if hit is not None:
            return hit
        forms = {word, " " + word}
        if self.case_variants:
            # capitalise without lower-casing the rest: "DNA" stays "DNA", not "Dna"
            for w in (word.lower(), word[:1].upper() + word[1:]):
                forms |= {w, " " + w}
        tok = self.tokenizer
        ids: set[int] = set()
        for f in sorted(forms):
            ids.update(int(t) for t in tok(f, add_special_tokens=False)["input_ids"])
        out = tuple(sorted(ids))
        self._variant_cache[key] = out
        return out

    def own_tokens(self, text: str) -> list[int]:
        """The query's own token ids: its tokenisation plus each word's ``"word"``/``" word"`` forms."""
        tok = self.tokenizer
        ids = {int(t) for t in tok(text, add_special_tokens=False)["input_ids"]}
        for w in _WORD.findall(text):
            ids.update(self._variants(w))
        special = self.special_ids
        return sorted(t for t in ids if t not in special and 0 <= t < self.vocab_size)

    def encode_queries(
        self,
        texts: Sequence[str],
        idf: np.ndarray | None = None,
        *,
        embeddings: np.ndarray | None = None,
        mode: str | None = None,
        m_query: int | None = None,
        feedback: Sequence[sp.csr_matrix] | None = None,
    ) -> sp.csr_matrix:
        """Sparse query vectors (CSR float32 [n, vocab], weights >= 0).

        ``idf``: float [vocab] from :func:`idf_weights` over the index's documents (None: weight 1).
        ``mode`` overrides :attr:`query_mode`. In expanded mode the query embeddings are computed with the
        encoder unless ``embeddings`` are given. In feedback mode ``feedback[i]`` holds the key-token
        vectors of query ``i``'s first-pass documents (:meth:`feedback_queries`).
        """
        mode = mode or self.query_mode
        if mode not in QUERY_MODES:
            raise KeytokError(f"unknown query mode '{mode}' (choose from {', '.join(QUERY_MODES)})")
        m = self.m_query if m_query is None else int(m_query)
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise KeytokError(f"query {i + 1} is empty")
        if idf is not None:
            idf = np.asarray(idf, dtype=np.float32)
            if idf.shape != (self.vocab_size,):
                raise KeytokError(f"idf has shape {idf.shape}, expected ({self.vocab_size},)")
        rows, cols, vals = [], [], []
        for r, text in enumerate(texts):
            own = np.asarray(self.own_tokens(text), dtype=np.int64)
            rows.append(np.full(own.size, r))
            cols.append(own)
            vals.append(idf[own] if idf is not None else np.ones(own.size, np.float32))
        if not texts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        own_m = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(texts), self.vocab_size),
            dtype=np.float32,
        )
        if mode == "feedback":
            if feedback is None or len(feedback) != len(texts):
                raise KeytokError("feedback queries need each query's first-pass document vectors")
            return self.feedback_queries(own_m, feedback, idf)
        if mode == "llm-free" or m == 0 or self.expansion_weight == 0:
            own_m.eliminate_zeros()
            return own_m
        if embeddings is None:
            embeddings = self._require_model("expanded queries").encode(texts, desc="queries", queries=True)
        exp = self.vectors_from_topk(self.topk(embeddings, m), m)
        if idf is not None:
            exp = exp.multiply(idf[None, :]).tocsr()
        out = (own_m + exp.multiply(np.float32(self.expansion_weight))).tocsr().astype(np.float32)
        out.sum_duplicates()
        out.eliminate_zeros()
        return out

    def feedback_queries(
        self, own: sp.csr_matrix, feedback: Sequence[sp.csr_matrix], idf: np.ndarray | None
    ) -> sp.csr_matrix:
        """Own-token queries ``own`` [n, vocab] plus the key tokens of their first-pass documents.

        Pseudo-relevance feedback without the model (Rocchio, with the index's key-token vectors as the
        feedback documents' terms): the mean of ``feedback[i]`` (the top ``feedback_docs`` documents of a
        lexical first pass, e.g. BM25), times idf, cut to its ``feedback_terms`` best tokens; it and the
        own-token part are each scaled to a maximum of 1 and added. The query gets the related tokens
        the model put into the documents its words find, at the cost of one first-pass search.
        """
        rows = []
        for r in range(own.shape[0]):
            q = own[r].toarray().ravel().astype(np.float32)
            if q.max(initial=0.0) > 0:
                q /= q.max()
            fb_docs = sp.csr_matrix(feedback[r])
            if fb_docs.shape[0]:
                fb = np.asarray(fb_docs.mean(axis=0), dtype=np.float32).ravel()
                if idf is not None:
                    fb *= idf
                if 0 < self.feedback_terms < np.count_nonzero(fb):
                    cut = np.argpartition(-fb, self.feedback_terms)[self.feedback_terms :]
                    fb[cut] = 0.0
                if fb.max(initial=0.0) > 0:
                    q += fb / fb.max()
            rows.append(sp.csr_matrix(q))
        out = sp.vstack(rows, format="csr").astype(np.float32) if rows else own
        out.eliminate_zeros()
        return out
