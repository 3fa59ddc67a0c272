"""keytok's public Python API: a model that embeds texts and reads their key tokens, and indexes to search.

Everything here is importable from :mod:`keytok` itself (``keytok.KeyTokenModel``, ``keytok.Retriever``, ...);
the command line is a thin layer over the same functions. This module wraps the inner ones
(:class:`keytok.encoding.encoder.Encoder`, :class:`keytok.representations.sparse.SparseEncoder`,
:func:`keytok.pipeline.build.build_index`, :class:`keytok.pipeline.searcher.Searcher`) without changing what
they compute, so a vector made here is the vector ``keytok index build`` makes with the same settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import scipy.sparse as sp

from keytok.errors import KeytokError
from keytok.models.registry import DEFAULT_MODEL
from keytok.pipeline.kinds import DEFAULT_KINDS, DEFAULT_SYSTEM, NATIVE_KIND
from keytok.representations.sparse import SparseConfig, SparseEncoder, sparse_config

if TYPE_CHECKING:
    from keytok.encoding.encoder import Encoder, EncodeStats
    from keytok.models.loading import LoadedModel
    from keytok.models.methods import EmbeddingMethod
    from keytok.pipeline.build import BuildSummary
    from keytok.pipeline.searcher import Hit, Searcher
    from keytok.pipeline.update import UpdateSummary
    from keytok.representations.calibration import Calibration
    from keytok.representations.projection import KeyToken
    from keytok.training.trainer import TrainResult

__all__ = ["KeyTokenModel", "Retriever", "add_documents", "build_index", "delete_documents", "merge_indexes"]


Texts = str | Sequence[str]


def _as_list(texts: Texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray) or not isinstance(texts, Iterable):
        raise KeytokError(f"{what} must be a string or a sequence of strings, not {type(texts).__name__}")
    return list(texts)


def _one_row(vector: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, weights) of one vector: a 1-row sparse matrix, a 1-D array or ``{token id: weight}``."""
    if isinstance(vector, Mapping):
        ids = np.fromiter((int(t) for t in vector), dtype=np.int64, count=len(vector))
        w = np.fromiter((float(v) for v in vector.values()), dtype=np.float64, count=len(vector))
    else:
        x = sp.csr_matrix(
            vector.reshape(1, -1) if isinstance(vector, np.ndarray) and vector.ndim == 1 else vector
        )
        if x.shape[0] != 1:
            raise KeytokError(
                f"decode takes one vector, not {x.shape[0]} rows: decode each row (e.g. [model.decode(v) for v in m])"
            )
        x.sum_duplicates()
        ids, w = x.indices.astype(np.int64), x.data.astype(np.float64)
    if ids.size and (ids.min() < 0 or ids.max() >= width):
        raise KeytokError(f"token ids must lie in [0, {width}), the model's vocabulary")
    return ids, w


class KeyTokenModel:
    """An embedding LLM with its LM head: dense embeddings, key tokens, sparse key-token vectors.

    ``model``: a packaged name (``smollm2-135m``, ``gemma3-270m``), a ``.gguf`` file, a model folder (a saved
    Hugging Face model or a ``keytok train`` checkpoint), a hub id in the local cache, or another
    :class:`KeyTokenModel` or an already loaded model (its weights are shared, e.g. to compare two methods
    on one model).
    ``method``: an embedding method preset (``prompteol``, ``mean``, ``last``, ``wmean``, ``bellm``,
    ``instruct``, ``bidir``), optionally with options (``"mean:bidirectional=2"``); None takes the model's own
    method (a checkpoint's record, a preset's), else ``prompteol``; a dict changes fields of that own method. ``dtype``: ``auto`` (chosen per machine), ``fp32``, ``bf16`` or ``fp16``.
    ``backend``: where the forward pass runs, ``auto``, ``torch``, ``onnx`` or ``onnx-int8``
    (:mod:`keytok.encoding.backends`).
    ``head``: take the LM head from another base model. ``calibration``: a PC1 adjustment (a file written
    by :meth:`Calibration.save`, or a :class:`Calibration`) applied before every projection.

    The sparse settings are those of ``keytok index build``: a
    :class:`~keytok.representations.sparse.SparseConfig` as ``sparse``, or its fields as keywords (``k_doc`` key
    tokens per document, ``m_query`` expansion tokens per query, the weight ``transform`` (``log1p``,
    ``relu``, ``raw``), ``center`` (the share of the corpus mean embedding subtracted before projection),
    ``expansion_weight``, ...), which replace the config's.

    An opened index hands over its own parts: its :class:`~keytok.encoding.encoder.Encoder` as ``model`` and
    its :class:`~keytok.representations.sparse.SparseEncoder` (settings, calibration, corpus mean) as
    ``sparse``; they are used as they are.

    >>> model = KeyTokenModel("smollm2-135m")                     # doctest: +SKIP
    >>> [t.display for t in model.key_tokens("Vitamin D deficiency is linked to bone loss.", k=3)]
    ['Vitamin', 'vitamin', 'Lack']
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | KeyTokenModel | LoadedModel | Encoder = DEFAULT_MODEL,
        method: str | EmbeddingMethod | None = None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        max_length: int = 512,
        batch_tokens: int | None = None,
        head: str | None = None,
        calibration: str | os.PathLike[str] | Calibration | None = None,
        sparse: SparseConfig | SparseEncoder | None = None,
        backend: str = "auto",
        **sparse_settings: Any,
    ) -> None:
        from keytok.encoding.encoder import Encoder

        self._calibration_path: Path | None = None
        if isinstance(sparse, SparseEncoder):
            if not isinstance(model, Encoder) or sparse.encoder is not model:
                raise KeytokError("a SparseEncoder is taken with the Encoder it projects with, as model")
            if calibration is not None or sparse_settings:
                raise KeytokError("a SparseEncoder carries its own calibration and settings: give none")
            self._encoder, self._sparse = model, sparse
            return
        loaded: Any = model
        if isinstance(model, KeyTokenModel):
            loaded = model.encoder.model
        elif isinstance(model, str | os.PathLike):
            loaded = os.fspath(model)
        encoder = Encoder(
            loaded,
            method,
            dtype=dtype,
            device=device,
            max_length=max_length,
            batch_tokens=batch_tokens,
            head=head,
            backend=backend,
        )
        cal, cal_path = None, None
        if calibration is not None:
            from keytok.representations.calibration import Calibration

            if isinstance(calibration, Calibration):
                cal = calibration
            else:
                cal_path = Path(calibration)
                cal = Calibration.load(
                    cal_path, expect_model=encoder.model.fingerprint, expect_method=encoder.method.key()
                )
            if cal.dim != encoder.model.hidden_size:
                raise KeytokError(
                    f"the calibration is {cal.dim}-d; {encoder.model.name} embeds in {encoder.model.hidden_size}-d"
                )
        config = sparse_config(sparse, **sparse_settings)
        self._encoder = encoder
        self._calibration_path = cal_path
        self._sparse = SparseEncoder(encoder, config, calibration=cal)

    # ------------------------------------------------------------------ what it is
    @property
    def encoder(self) -> Encoder:
        """The inner :class:`keytok.encoding.encoder.Encoder` (batching, precision, LM-head projection)."""
        return self._encoder

    @property
    def name(self) -> str:
        """The model as it was named (packaged name, path or hub id)."""
        return str(self._encoder.model.name)

    @property
    def fingerprint(self) -> str:
        """sha256 of the model's weights, recorded in indexes and calibrations."""
        return str(self._encoder.model.fingerprint)

    @property
    def method(self) -> EmbeddingMethod:
        """The embedding method (prompt template, pooling, bidirectional layers)."""
        return self._encoder.method

    @property
    def precision(self) -> str:
        """The precision texts are encoded in, e.g. ``fp32 on cpu``."""
        return str(self._encoder.precision.describe())

    @property
    def dim(self) -> int:
        """Size of a dense embedding (the model's hidden size)."""
        return int(self._encoder.model.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Width of a sparse vector (rows of the LM head)."""
        return int(self._encoder.vocab_size)

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the LM head's vocabulary."""
        return self._encoder.head_model.tokenizer

    @property
    def calibration(self) -> Calibration | None:
        """The PC1 adjustment applied before projection, if any."""
        return self._sparse.calibration

    @property
    def center_mean(self) -> np.ndarray | None:
        """The corpus mean embedding that ``center`` subtracts (set by :meth:`fit_center`), or None."""
        return self._sparse.mean

    @property
    def sparse_config(self) -> SparseConfig:
        """The :class:`~keytok.representations.sparse.SparseConfig` of this model's sparse vectors."""
        return self._sparse.config

    @property
    def sparse_settings(self) -> dict[str, Any]:
        """The settings that shape the sparse vectors (K, M, transform, center, ...), as index manifests record them."""
        return self._sparse.params()

    @property
    def meta(self) -> dict[str, Any]:
        """What an index must record to be searched with this model: pass it to ``SparseIndex.build`` or
        ``DenseIndex.build``, and opening checks it (model sha256, method, calibration, vocabulary)."""
        cal = self._sparse.calibration
        return {
            "model": self.name,
            "model_sha256": self.fingerprint,
            "method": self.method.key(),
            "calibration_sha256": None if cal is None else cal.sha256,
            "vocab_size": self.vocab_size,
        }

    @property
    def last_stats(self) -> EncodeStats | None:
        """What the last encoding call did (texts, tokens, seconds, padding, truncations), or None."""
        return getattr(self._encoder, "last_stats", None)

    def __repr__(self) -> str:
        cal = ", calibrated" if self.calibration is not None else ""
        return f"KeyTokenModel({self.name!r}, method={self.method.name!r}, {self.precision}{cal})"

    # ------------------------------------------------------------------ dense
    def encode(self, texts: Texts, *, normalize: bool = False, progress: bool = False) -> np.ndarray:
        """Dense embeddings as float32: ``[n, dim]`` for a sequence of texts, ``[dim]`` for one string.

        These are the pooled last-layer states, before any calibration. ``normalize`` L2-normalises them
        (for cosine similarity); ``progress`` shows a progress bar.
        """
        items = _as_list(texts)
        emb = self._encoder.encode(items, normalize=normalize, show_progress=progress)
        return emb[0] if isinstance(texts, str) else emb

    # ------------------------------------------------------------------ key tokens
    @overload
    def key_tokens(self, texts: str, k: int = 10) -> list[KeyToken]: ...
    @overload
    def key_tokens(self, texts: Sequence[str], k: int = 10) -> list[list[KeyToken]]: ...
    def key_tokens(self, texts: Texts, k: int = 10) -> list[KeyToken] | list[list[KeyToken]]:
        """The top-``k`` key tokens of a text (a list of :class:`KeyToken`), or of each of several texts.

        The embedding (calibrated when the model has a calibration) is projected through the LM head;
        each :class:`KeyToken` has its rank, ``token`` (the vocabulary entry), ``display`` (``▁`` for a word
        start), raw logit ``score`` and ``in_input`` (whether the token occurs in the text).
        """
        from keytok.representations.projection import key_tokens

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise KeytokError(f"k must be a positive integer, got {k!r}")
        items = _as_list(texts)
        rows = key_tokens(self._encoder, items, k=k, calibration=self.calibration)
        return rows[0] if isinstance(texts, str) else rows

    def align(
        self,
        texts: Sequence[str],
        ks: Sequence[int] = (1, 5, 10),
        cap: int | None = None,
        *,
        progress: bool = False,
    ) -> dict[str, float | int]:
        """Alignment of the key tokens with the texts' own tokens (Nie et al.): Hit@K, LAR and GAR.

        Returns ``{"n", "n_skipped", "hit@K" for each K in ks, "lar", "gar"}``; ``cap`` caps LAR's window
        (the paper's code uses 10).
        """
        from keytok.analyses.alignment import alignment_report

        items = _as_list(texts)
        if not items:
            raise KeytokError("align needs at least one text")
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise KeytokError(f"ks must be positive integers, got {list(ks)!r}")
        inputs = [self._encoder.input_token_ids(t) for t in items]
        depth = max(max(ks), max(len(x) for x in inputs), cap or 0)
        emb = self._encoder.encode(items, show_progress=progress)
        if self.calibration is not None:
            emb = self.calibration.apply(emb)
        _, ranked = self._encoder.logits_topk(emb, depth)
        return alignment_report(inputs, [list(r) for r in ranked], ks=tuple(ks), cap=cap)

    def calibrate(
        self,
        texts: Sequence[str],
        *,
        mode: str = "add",
        embedder: str | EmbeddingMethod | KeyTokenModel = "prompteol",
        strength: float = 1.0,
        components: int = 10,
        source: str | None = None,
        progress: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> Calibration:
        """Fit a PC1 adjustment of this model and method on ``texts``; save it with :meth:`Calibration.save`.

        Mode ``add`` (the paper's): embed the texts with this model (the base) and with ``embedder`` (a method
        of the same model, or another :class:`KeyTokenModel`), take the uncentred SVD of the base embeddings
        and shift them by v1·u1, v1 = mean((embedder − base)·u1). Mode ``remove``: remove the first singular
        direction of this model's own embeddings. ``strength`` scales the adjustment; ``report`` receives
        one-line progress messages (the texts embedded, the variation along the first ``components``
        directions); ``source`` is recorded in the calibration's meta.
        """
        from keytok.analyses.pc1 import fit_pc1_shift, fit_remove_pc1, spectral_variation

        if mode not in ("add", "remove"):
            raise KeytokError(f"calibration mode must be add or remove, not {mode!r}")
        items = _as_list(texts)
        if not items:
            raise KeytokError("calibrate needs at least one text")
        say = report or (lambda _message: None)
        say(f"embedding {len(items)} texts with {self.name} / {self.method.describe()}")
        base = self._encoder.encode(items, show_progress=progress, desc="base")
        meta = {"model": self.fingerprint, "model_name": self.name, "method": self.method.key()}
        if source is not None:
            meta["source"] = str(source)
        if mode == "remove":
            return fit_remove_pc1(base, meta | {"fit_method": "self"}, strength=strength)
        other = embedder if isinstance(embedder, KeyTokenModel) else self._with_method(embedder)
        say(f"embedding {len(items)} texts with {other.name} / {other.method.describe()}")
        emb = other.encoder.encode(items, show_progress=progress, desc="embedder")
        fit = spectral_variation(base, emb, n_components=max(components, 1))
        shown = ", ".join(f"v{j + 1}={v:+.3f}" for j, v in enumerate(fit.variation[:components]))
        say(f"variation along the first components: {shown}")
        cal = fit_pc1_shift(
            base, emb, meta | {"fit_method": other.method.key(), "fit_model": other.fingerprint}
        )
        cal.strength = float(strength)
        return cal

    def _with_method(self, method: str | EmbeddingMethod) -> KeyTokenModel:
        """This model's weights under another embedding method, same precision and lengths."""
        p = self._encoder.precision
        return KeyTokenModel(
            self,
            method,
            dtype=p.name,
            device=str(p.device),
            max_length=self._encoder.max_length,
            batch_tokens=self._encoder.batch_tokens,
            backend=self._encoder.backend,
        )

    # ------------------------------------------------------------------ sparse
    def fit_center(self, texts_or_embeddings: Sequence[str] | np.ndarray) -> np.ndarray:
        """Fix the corpus mean that ``center`` subtracts before projection, from texts or their embeddings.

        :meth:`encode_document` calls it on its first batch when no mean is set; call it yourself to take
        the mean over a whole corpus first. Returns the mean (float32 ``[dim]``).
        """
        if isinstance(texts_or_embeddings, np.ndarray):
            emb = texts_or_embeddings
        else:
            emb = self._encoder.encode(_as_list(texts_or_embeddings), desc="documents")
        return self._sparse.fit_center(emb)

    def encode_document(
        self, texts: Texts, *, embeddings: np.ndarray | None = None, progress: bool = False
    ) -> sp.csr_matrix:
        """Sparse document vectors: CSR float32 ``[n, vocab_size]``, each row a text's top ``k_doc`` key tokens.

        Weights are ``transform(logit)`` of the LM head's scores after calibration and centring, all > 0;
        special tokens are left out. With ``center`` > 0 and no corpus mean yet, the mean of this batch is
        taken (and kept for later batches and queries; see :meth:`fit_center`). ``embeddings`` skips the
        model pass for texts already embedded with :meth:`encode`.
        """
        items = _as_list(texts)
        if embeddings is None:
            embeddings = self._encoder.encode(items, show_progress=progress, desc="documents")
        emb = np.asarray(embeddings, dtype=np.float32).reshape(len(items), -1)
        if self._sparse.center and self._sparse.mean is None:
            self._sparse.fit_center(emb)
        return self._sparse.encode_documents_from_embeddings(emb)

    def encode_query(
        self, texts: Texts, *, expand: bool = True, idf: np.ndarray | sp.spmatrix | None = None
    ) -> sp.csr_matrix:
        """Sparse query vectors: CSR float32 ``[n, vocab_size]`` (one row for one string).

        A query keeps its own tokens (each word also as ``word`` and ``▁word``), weighted by ``idf``; with
        ``expand`` it also gets its top ``m_query`` key tokens (one model pass) weighted
        ``expansion_weight × transform(logit) × idf``. ``idf``: float ``[vocab_size]``, or the document
        vectors (the output of :meth:`encode_document`) to compute BM25's idf over; None weighs every token 1.
        """
        from keytok.representations.sparse import document_frequency, idf_weights

        items = _as_list(texts, "queries")
        if idf is not None and sp.issparse(idf):
            if idf.shape[1] != self.vocab_size:
                raise KeytokError(
                    f"document vectors have {idf.shape[1]} columns, the vocabulary {self.vocab_size}"
                )
            idf = idf_weights(document_frequency(idf), idf.shape[0])
        if expand and self._sparse.center and self._sparse.mean is None:
            raise KeytokError(
                f"center={self._sparse.center} needs the corpus mean: encode the documents first "
                "(encode_document or fit_center), or make the model with center=0"
            )
        return self._sparse.encode_queries(items, idf, mode="expanded" if expand else "llm-free")

    def decode(self, vector: Any, k: int | None = None) -> list[tuple[str, float]]:
        """The tokens of one sparse vector and their weights, largest first: ``[(token, weight), ...]``.

        ``vector``: a row of :meth:`encode_document` / :meth:`encode_query` (a 1-row sparse matrix), a 1-D
        array over the vocabulary, or ``{token id: weight}``. Tokens are shown as in ``keytok tokens`` (``▁``
        for a word start, ``[..]`` for a special token). ``k`` keeps the first ``k``.
        """
        from keytok.representations.sparse import token_display

        ids, w = _one_row(vector, self.vocab_size)
        keep = w != 0
        ids, w = ids[keep], w[keep]
        order = np.lexsort((ids, -w))
        if k is not None:
            order = order[: max(0, int(k))]
        tok = self.tokenizer
        special = {int(i) for i in tok.all_special_ids}
        return [(token_display(tok, int(ids[i]), special), float(w[i])) for i in order]


# --------------------------------------------------------------------------------------------- indexes
class Retriever:
    """An index folder built by :func:`build_index` or ``keytok index build``, opened for search.

    Open with :meth:`open`. The model is loaded only when a query needs it (expanded sparse queries, dense
    search); LLM-free sparse queries and BM25 need only the tokenizer or nothing. Use it as a context
    manager, or call :meth:`close`, to release the Lucene searchers.
    """

    def __init__(self, searcher: Searcher, summary: BuildSummary | None = None) -> None:
        """Wrap an opened :class:`keytok.pipeline.searcher.Searcher`; use :meth:`open` instead."""
        self._searcher = searcher
        self._model: KeyTokenModel | None = None
        self.summary = summary
        """What the build did (counts, timings, size of each part), when this retriever came from :func:`build_index`."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | KeyTokenModel | None = None,
        dtype: str | None = None,
        device: str | None = None,
        verify: bool = True,
        backend: str = "auto",
    ) -> Retriever:
        """Open the index folder ``path``.

        ``model``: a loaded :class:`KeyTokenModel` to encode queries with, or a model spec to load instead
        of the one the index records (e.g. when the model folder moved); either must be the index's model
        and method (sha256 checked). ``dtype``: the query precision, by default the documents'. ``backend``:
        where the query model runs (``auto``, ``torch``, ``onnx``, ``onnx-int8``; :mod:`keytok.encoding.backends`).
        Opening rehashes every file of the folder against its manifests (sha256; cached per process), so a
        damaged file is named here; ``verify=False`` checks only their sizes, for a huge index.
        """
        from keytok.pipeline.searcher import Searcher

        if isinstance(model, KeyTokenModel):
            searcher = Searcher(path, encoder=model.encoder, dtype=dtype, device=device, verify=verify)
        else:
            searcher = Searcher(
                path,
                model=None if model is None else os.fspath(model),
                dtype=dtype,
                device=device,
                verify=verify,
                backend=backend,
            )
        return cls(searcher)

    @property
    def path(self) -> Path:
        """The index folder."""
        return self._searcher.path

    @property
    def info(self) -> dict[str, Any]:
        """The index's description (``keytok.json``): model, method, precision, sparse settings, counts."""
        return dict(self._searcher.info)

    @property
    def kinds(self) -> list[str]:
        """The engines the folder holds (``sparse``, ``dense``, ``lucene``, ``bm25``)."""
        return self._searcher.kinds

    @property
    def default_system(self) -> str:
        """The system :meth:`search` uses when none is named, if the folder holds it; else its first engine."""
        kinds = self.kinds
        return DEFAULT_SYSTEM if DEFAULT_SYSTEM in kinds else kinds[0]

    @property
    def can_explain(self) -> bool:
        """Whether :meth:`explain` works here: it needs the native key-token index."""
        return NATIVE_KIND in self.kinds

    @property
    def searcher(self) -> Searcher:
        """The inner :class:`keytok.pipeline.searcher.Searcher`."""
        return self._searcher

    @property
    def model(self) -> KeyTokenModel:
        """The index's model with the index's sparse settings (loaded on first use)."""
        if self._model is None:
            s = self._searcher
            self._model = KeyTokenModel(s.encoder, sparse=s.sparse_encoder)
        return self._model

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        system: str = DEFAULT_SYSTEM,
        query_mode: str | None = None,
        explain: bool = True,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[Hit]:
        """The top-``k`` documents for ``query``, best first, as :class:`Hit` (doc id, score, title, snippet).

        ``system``: an engine of the index (``sparse``, ``dense``, ``lucene``, ``bm25``) or any other system
        the index's searcher offers. ``query_mode``: ``expanded`` or ``llm-free`` (default: the index's).
        ``explain`` fills :attr:`Hit.matched` with the key tokens shared with the query and what each
        contributed (sparse systems; BM25's analysed terms for BM25), and :attr:`Hit.sources` with each
        engine's share for a fused system (``bm25+keytok``, ``bm25+keytok-free``, or engines joined by
        ``+``; ``fusion`` and ``weights`` override the index's fusion method and per-part weights).
        """
        if not isinstance(query, str):
            raise KeytokError(f"query must be a string, not {type(query).__name__} (use search_batch)")
        return self._searcher.search_batch(
            {"q": query},
            k,
            backend=system,
            query_mode=query_mode,
            explain=explain,
            fusion=fusion,
            weights=weights,
        )["q"]

    def search_batch(
        self,
        queries: Mapping[str, str] | Sequence[str],
        k: int = 10,
        *,
        system: str = DEFAULT_SYSTEM,
        query_mode: str | None = None,
        explain: bool = False,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, list[Hit]]:
        """:meth:`search` for many queries, encoded in one batch: ``{query id: hits}``.

        ``queries``: ``{query id: text}``, or a list of texts (then the ids are ``"0"``, ``"1"``, ...).
        The result can be written with :func:`write_trec_run`.
        """
        if isinstance(queries, str):
            raise KeytokError("queries must be a mapping or a list of texts, not one string (use search)")
        batch = dict(queries) if isinstance(queries, Mapping) else {str(i): q for i, q in enumerate(queries)}
        return self._searcher.search_batch(
            batch, k, backend=system, query_mode=query_mode, explain=explain, fusion=fusion, weights=weights
        )

    def explain(self, query: str, doc_id: str, *, query_mode: str | None = None) -> list[tuple[str, float]]:
        """The tokens ``query`` shares with document ``doc_id`` and each one's share of its sparse score.

        The contributions, largest first, sum to the document's ``sparse`` score for the query.
        """
        from keytok.representations.sparse import token_display

        s = self._searcher
        engine = s.engine(NATIVE_KIND)
        q = s.query_vectors([query], query_mode)
        tok = s.sparse_encoder.tokenizer
        special = {int(i) for i in tok.all_special_ids}
        return [(token_display(tok, t, special), c) for t, c in engine.explain(q[0], doc_id)]

    def query_key_tokens(self, queries: Sequence[str], k: int = 10) -> list[list[KeyToken]]:
        """The top-``k`` key tokens of each query with the index's model (as :meth:`KeyTokenModel.key_tokens`).

        When ``queries`` are the batch this retriever searched last, the embeddings that search made are
        reused: the search and its queries' key tokens cost one forward together.
        """
        from keytok.representations.projection import key_tokens

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise KeytokError(f"k must be a positive integer, got {k!r}")
        if isinstance(queries, str):
            raise KeytokError("queries must be a list of texts, not one string")
        texts = list(queries)
        s = self._searcher
        emb = s.query_embeddings(texts)
        return key_tokens(s.encoder, texts, k=k, calibration=self.model.calibration, embeddings=emb)

    def marks(self, hit: Hit, system: str = DEFAULT_SYSTEM) -> dict[str, list[tuple[int, int, str, str]]]:
        """Where ``hit``'s title and snippet hold the key tokens or BM25 terms that matched (``hit`` from
        :meth:`search` with ``system`` and ``explain``): ``{"title": [...], "snippet": [...]}``, each entry
        ``(start, end, part, token or term)``, a character span of that text.

        A key token is marked where the index's tokenizer puts that very token (``▁a`` is not marked inside
        "at"), a BM25 term on the word Lucene's analyzer made it from; a piece that continues a word only in
        a word whose first piece matched too, and never a lone letter (:mod:`keytok.representations.marks`).
        """
        return self._searcher.marks(hit, system)

    def describe(self) -> dict[str, Any]:
        """What the folder holds, as ``keytok index describe --json`` prints it: model, engines, counts, sizes."""
        from keytok.pipeline.describe import describe_index

        return describe_index(self.path)

    @property
    def systems(self) -> list[str]:
        """The systems :meth:`search` takes on this index: its engines, then the fusions keytok recommends
        (``bm25+keytok``, ...) whose parts it holds. Any other ``+``-join of its engines works too."""
        from keytok.pipeline.kinds import SYSTEM_ALIASES

        held = set(self.kinds)
        fused = [
            name
            for name, parts in SYSTEM_ALIASES.items()
            if all(p.partition(":")[0] in held for p in parts.split("+"))
        ]
        return [*self.kinds, *fused]

    def check_system(
        self, system: str, *, fusion: str | None = None, weights: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Check a system and its fusion settings as :meth:`search` would take them, without searching.

        Returns ``{"parts": [...], "fusion": method or None, "weights": {part: weight} or None}`` (the
        fusion and weights a fused system will use; None for one engine). Raises :class:`KeytokError`, in
        one line, for an unknown system or engine, an unknown fusion, or a weight that names no part of the
        system or is not a finite number >= 0.
        """
        s = self._searcher
        parts = s.resolve_system(system)
        for name, w in (weights or {}).items():
            if name not in parts and name not in {p.partition(":")[0] for p in parts}:
                raise KeytokError(f"weight {name!r} names no part of system {system!r} ({', '.join(parts)})")
            if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w < 0:
                raise KeytokError(f"weight {name!r} must be a finite number >= 0, not {w!r}")
        method, w = s.fusion_settings(parts, fusion, weights)
        if len(parts) == 1:
            return {"parts": parts, "fusion": None, "weights": None}
        return {"parts": parts, "fusion": method, "weights": dict(zip(parts, w, strict=True))}

    def document(self, doc_id: str) -> dict[str, str]:
        """A document's ``{"doc_id", "title", "snippet"}`` as the index stores them for display.

        Raises :class:`KeytokError` when ``doc_id`` is not in the index.
        """
        docs = self._searcher._doc_info()
        if not isinstance(doc_id, str) or doc_id not in docs:
            raise KeytokError(f"doc id {doc_id!r} is not in index {self.path}")
        title, snippet = docs[doc_id]
        return {"doc_id": doc_id, "title": title, "snippet": snippet}

    def close(self) -> None:
        """Release the Lucene searchers (the folder stays as it is)."""
        self._searcher.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self._searcher.info
        return f"Retriever({str(self.path)!r}: {i['docs']:,} documents, {', '.join(self.kinds)}, model {i['model']})"


def _write_corpus(docs: Mapping[str, Any] | Sequence[str], folder: Path) -> Path:
    """Documents given in memory as a BEIR ``corpus.jsonl`` in ``folder``."""
    items = docs.items() if isinstance(docs, Mapping) else ((str(i), d) for i, d in enumerate(docs))
    path = folder / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, doc in items:
            if isinstance(doc, str):
                title, text = "", doc
            elif isinstance(doc, Mapping):
                title, text = doc.get("title", ""), doc.get("text", "")
            else:
                raise KeytokError(
                    f"document {doc_id!r} is {type(doc).__name__}: give a text or {{'title': ..., 'text': ...}}"
                )
            fh.write(
                json.dumps({"_id": str(doc_id), "title": title, "text": text}, ensure_ascii=False) + "\n"
            )
    return path


def build_index(
    corpus: str | os.PathLike[str] | Mapping[str, Any] | Sequence[str],
    path: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | KeyTokenModel = DEFAULT_MODEL,
    method: str | None = None,
    kinds: str | Sequence[str] = DEFAULT_KINDS,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> Retriever:
    """Build an index folder at ``path`` and open it: what ``keytok index build`` does, from Python.

    ``corpus``: a BEIR folder or ``corpus.jsonl``, or documents in memory: ``{doc id: text}``,
    ``{doc id: {"title": ..., "text": ...}}`` or a list of texts (ids ``"0"``, ``"1"``, ...).
    ``model``: a :class:`KeyTokenModel` (its method, precision, calibration and sparse settings are used)
    or a model spec with ``method``. ``kinds``: the engines to build, any of ``sparse``, ``dense``,
    ``lucene``, ``bm25`` (the last two need the ``lucene`` extra). ``options`` go to
    :func:`keytok.pipeline.build.build_index` (``k_doc``, ``transform``, ``center``, ``m_query``,
    ``query_mode``, ``factory``, ``bits``, ``on_empty``, ``cache``, ``chunk_size``, ...) and override the
    model's settings. Embeddings are cached in ``$KEYTOK_CACHE/embeddings`` (or ``cache``), so building
    again with other sparse settings does not run the model again. Returns a :class:`Retriever` whose
    ``summary`` describes the build.
    """
    from keytok.pipeline.build import build_index as _build
    from keytok.pipeline.searcher import Searcher

    with tempfile.TemporaryDirectory(prefix="keytok-build-") as tmp:
        if isinstance(corpus, str | os.PathLike):
            source: str | os.PathLike[str] = corpus
        else:
            source = _write_corpus(corpus, Path(tmp))
        args: dict[str, Any] = {"kinds": kinds, "overwrite": overwrite, "progress": progress}
        encoder = None
        if isinstance(model, KeyTokenModel):
            if method is not None:
                raise KeytokError("method is the KeyTokenModel's own: give it when making the model")
            encoder = model.encoder
            args.update(encoder=encoder, sparse=model.sparse_config)
            if model.calibration is not None:
                cal_path = model._calibration_path
                if cal_path is None:
                    cal_path = model.calibration.save(Path(tmp) / "calibration.safetensors")
                args["calibration"] = cal_path
        else:
            args |= {"model": os.fspath(model), "method": method}  # None: the model's own (resolve_method)
        summary = _build(source, path, **(args | options))
    return Retriever(Searcher(path, encoder=encoder, verify=False), summary)  # just built


def merge_indexes(
    shards: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | KeyTokenModel | None = None,
    overwrite: bool = False,
    threads: int = 2,
) -> Retriever:
    """Merge the N shard folders of one corpus into the index folder ``path`` and open it: what ``keytok
    index merge`` does, from Python.

    The shards are built with ``build_index(..., shard=(I, N))`` (or ``keytok index build --shard I/N``),
    on one machine or several; the merged folder is the one a single build of the whole corpus gives, and
    no document is encoded again (:mod:`keytok.pipeline.merge`). ``corpus``: the corpus, if it moved from
    the path the shards record. ``model``: the shards' model as a :class:`KeyTokenModel` or a spec, if it
    moved (sha256 checked). Returns a :class:`Retriever` whose ``summary`` describes the merge.
    """
    from keytok.pipeline.merge import merge_indexes as _merge
    from keytok.pipeline.searcher import Searcher

    encoder = model.encoder if isinstance(model, KeyTokenModel) else None
    spec = None if model is None or encoder is not None else os.fspath(model)
    summary = _merge(
        shards, path, corpus=corpus, model=spec, encoder=encoder, overwrite=overwrite, threads=threads
    )
    return Retriever(Searcher(path, encoder=encoder, verify=False), summary)  # just built


def add_documents(
    path: str | os.PathLike[str],
    corpus: str | os.PathLike[str] | Mapping[str, Any] | Sequence[str],
    *,
    model: KeyTokenModel | None = None,
    wait: float = 120.0,
    verify: bool = True,
    progress: bool = False,
) -> UpdateSummary:
    """Add documents to the index folder ``path``: what ``keytok index add`` does, from Python.

    ``corpus``: a BEIR folder or ``corpus.jsonl``, or documents in memory as :func:`build_index` takes
    them. They are encoded with the index's own recorded model and settings (``model``: that model already
    loaded, checked against the index's sha256) and added to every engine in one atomic write that holds
    the folder's write lock (``wait`` seconds for another writer, then a one-line error), so concurrent
    writers lose nothing and a killed one leaves the index as it was. An id already in the index, or an
    engine that cannot be updated in place (``bm25``, ``bm25x``), is refused in one line
    (:mod:`keytok.pipeline.update`). Returns an :class:`~keytok.pipeline.update.UpdateSummary`.
    """
    from keytok.pipeline.update import add_documents as _add

    encoder = model.encoder if model is not None else None
    with tempfile.TemporaryDirectory(prefix="keytok-add-") as tmp:
        source = corpus if isinstance(corpus, str | os.PathLike) else _write_corpus(corpus, Path(tmp))
        return _add(path, source, encoder=encoder, wait=wait, verify=verify, progress=progress)


def delete_documents(
    path: str | os.PathLike[str],
    doc_ids: Sequence[str],
    *,
    wait: float = 120.0,
    verify: bool = True,
) -> UpdateSummary:
    """Delete ``doc_ids`` from every engine of the index folder ``path``: what ``keytok index delete`` does.

    One atomic write under the folder's write lock, as :func:`add_documents`; an id not in the index is
    refused in one line and nothing changes. No model is loaded. Returns an
    :class:`~keytok.pipeline.update.UpdateSummary`.
    """
    from keytok.pipeline.update import delete_documents as _delete

    return _delete(path, doc_ids, wait=wait, verify=verify)


def train(
    out: str | os.PathLike[str],
    *,
    qrels: Sequence[str] = (),
    pairs: Sequence[str] = (),
    triplets: Sequence[str] = (),
    corpus: Sequence[str] = (),
    model: str | None = None,
    recipe: str = "auto",
    corpus_pairs: int = 1,
    limit: int | None = None,
    sts_root: str | os.PathLike[str] | None = None,
    restart: bool = False,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> TrainResult:
    """Train an embedder for key tokens and write it to ``out``: what ``keytok train`` does.

    Data, any number of each: ``qrels`` ("FOLDER[:SPLIT]", (query, judged document) pairs of a BEIR folder),
    ``pairs`` (scored STS pairs), ``triplets`` (NLI triplets), ``corpus`` (BEIR folders whose documents alone
    make the pairs: title ↔ body, inverse cloze, crops). ``recipe`` names the starting settings
    (:data:`keytok.training.recipes.RECIPES`; ``auto``: ``keytok-cpu`` without a GPU, ``keytok-gpu`` with one);
    ``settings`` are :class:`~keytok.training.trainer.TrainConfig` fields put over the recipe's, plus
    ``bidirectional`` (the method's bidirectional last layers). The same call run again resumes a stopped run.
    ``out`` becomes a model folder that every ``model=`` takes.
    """
    from keytok.models.methods import get_method
    from keytok.models.registry import DEFAULT_BASE_MODEL
    from keytok.training.data import read_source
    from keytok.training.recipes import recipe_settings
    from keytok.training.trainer import TrainConfig
    from keytok.training.trainer import train as _train

    say = log or (lambda message: None)
    if limit is not None and limit < 0:
        raise KeytokError(f"limit must be >= 0, got {limit}")
    if corpus_pairs < 1:
        raise KeytokError(f"corpus_pairs must be >= 1, got {corpus_pairs}")
    bidirectional = settings.pop("bidirectional", None)
    chosen, values = recipe_settings(recipe, settings)
    method = get_method(values.pop("method"), bidirectional=bidirectional)
    if bidirectional is None and method.pooling == "last" and method.bidirectional == 1:
        # One bidirectional last layer changes nothing under last-token pooling: the last token sees all.
        method = get_method(method.name, bidirectional=2)
        say(f"{method.name}: the last 2 layers bidirectional (1 is a no-op under last-token pooling)")
    sources = [("pairs", s) for s in pairs] + [("triplets", s) for s in triplets]
    sources += [("qrels", s) for s in qrels] + [("corpus", s) for s in corpus]
    if not sources:
        raise KeytokError("no training data: give qrels, pairs, triplets or corpus")
    seed = values.get("seed", 0)
    sets = [
        read_source(kind, spec, sts_root, limit or None, seed, per_doc=corpus_pairs) for kind, spec in sources
    ]
    for s in sets:
        say(s.summary())
    say(f"recipe {chosen.name}: {chosen.summary}")
    config = TrainConfig(model=model or DEFAULT_BASE_MODEL, method=method.key(), **values)
    kwargs = {"log": log} if log is not None else {}
    return _train(config, sets, out, sts_root=sts_root, restart=restart, **kwargs)
