"""Search a keytok index folder: :class:`Searcher`, its :class:`Hit`, and TREC run files.

The model is loaded only when a query needs it (expanded sparse queries, dense search); LLM-free sparse
queries and BM25 need only the tokenizer or nothing. Before any query is encoded the model's sha256 and
the method are checked against the index.

**Opening checks every byte.** :class:`Searcher` reads ``keytok.json`` and every engine's
``manifest.json`` and rehashes (sha256) each file they list, so a truncated, deleted or altered file is
reported, by name, on open rather than as a wrong result later. Hashes are cached per process (keyed by
path, size, mtime, inode and ctime), so opening the same index again costs a ``stat`` per file; pass
``verify=False`` to skip the hashing for a huge index (sizes are still checked). ``keytok search`` verifies
by default too (``--no-verify`` skips it): on a 300-document index hashing adds ~10 ms to the open; it reads
every byte, about 1 s per GB here (sha256 at ~900 MiB/s).

**The structure is checked whatever ``verify`` is.** A hash only proves that a file is what its manifest
says, and whoever edits a file can rewrite the manifest too. Each engine checks its own files when it is
opened (on first use): document numbers, postings, ids, parameters (see each engine's ``open``); this
module checks the folder's df, corpus mean and ``keytok.json`` fields; :meth:`Searcher.check` does all of it
at once (``keytok index info --verify``).

The Lucene backend takes integer queries: the float query vector is quantised to 8 bits per query
(``round(q / q_scale)``, ``q_scale = max(q) / 255``) and scores are reported as
``lucene_score * q_scale * doc_scale``, on the same scale as the native backend's float scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.alignment.sparse import QUERY_MODES, SparseConfig, SparseEncoder, idf_weights, token_display
from keytok.errors import KeytokError
from keytok.indexes.build import DF_NAME, DOCS_NAME, IMPACT_DF_NAME, INFO_NAME, KINDS, MEAN_NAME, read_info
from keytok.indexes.engine import batch_lists, identity, one_line
from keytok.indexes.fusion import (
    DEFAULT_FUSION,
    DEFAULT_FUSION_DEPTH,
    DEFAULT_FUSION_WEIGHTS,
    FUSIONS,
    HYBRID_ALIASES,
    fuse,
)
from keytok.indexes.manifest import Manifest
from keytok.utils.atomic import atomic_path

__all__ = ["Hit", "Searcher", "write_trec_run"]

QUERY_LEVELS = 255  # integer query weights for the Lucene backend: 8 bits, like the document impacts
#: engines that take sparse query vectors (and so a query mode)
SPARSE_ENGINES = ("sparse", "lucene", "impact")


def _engine_class(kind: str) -> Any:
    if kind in ("sparse", "impact"):
        from keytok.indexes.sparse import SparseIndex

        return SparseIndex
    if kind == "dense":
        from keytok.indexes.dense import DenseIndex

        return DenseIndex
    from keytok.indexes.lucene import LuceneBM25Index, LuceneImpactIndex

    return LuceneImpactIndex if kind == "lucene" else LuceneBM25Index


@dataclass
class Hit:
    """One search result: document id, score, title, and the key tokens that matched with their contribution."""

    doc_id: str
    score: float
    title: str = ""
    matched: list[tuple[str, float]] = field(default_factory=list)
    rank: int = 0
    snippet: str = ""
    sources: dict[str, float] = field(default_factory=dict)  # fused systems: each engine's share

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = {
            "rank": self.rank,
            "doc_id": self.doc_id,
            "score": self.score,
            "title": self.title,
            "snippet": self.snippet,
            "matched": [{"token": t, "contribution": c} for t, c in self.matched],
        }
        if self.sources:
            d["sources"] = dict(self.sources)
        return d


class Searcher:
    """An opened keytok index folder (see the module doc); engines and the model are loaded on first use.

    ``encoder``: an already loaded :class:`~keytok.encoding.encoder.Encoder` to encode queries with (it
    must be the index's model and method); ``model``: a model spec to load instead of the one recorded in
    the index (e.g. when the model folder moved). Either is checked against the index's sha256.
    ``dtype``: the query encoder's precision; by default the one the documents were encoded in.
    ``verify``: rehash every file on open (the default; see the module doc); ``False`` checks sizes only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoder: Any = None,
        model: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        verify: bool = True,
        reuse_query_rows: bool = False,
        backend: str = "auto",
    ) -> None:
        self.path = Path(path)
        for _ in range(5):  # a rebuild may swap the folder while it is read: read it again
            self._identity = identity(self.path)
            self.info = read_info(self.path, verify=verify)
            for kind in self.info["kinds"]:
                Manifest.load(self.path / kind, verify=verify)
            if identity(self.path) == self._identity:
                break
        self._check_unchanged()
        self._model_spec = model
        self._dtype, self._device, self._backend = dtype, device, backend  # backend: encoding/backends.py
        self._encoder = None
        self._engines: dict[str, Any] = {}
        self._docs: dict[str, tuple[str, str]] | None = None
        self._sparse_encoder: SparseEncoder | None = None
        self._idf: np.ndarray | None = None
        self._impact_idf: np.ndarray | None = None
        self._verify = verify
        self._last_queries: tuple[tuple[str, ...], np.ndarray, dict[str, int]] | None = None
        self.reuse_query_rows = reuse_query_rows  # see query_embeddings
        if encoder is not None:
            self._check_model(encoder.model.fingerprint, encoder.model.name, encoder.method.key())
            self._encoder = encoder

    # ------------------------------------------------------------------ checks and lazy loading
    def _check_unchanged(self) -> None:
        # A rebuild swaps in a whole new folder (new inode). Parts are opened lazily, so reading one from a
        # newer build than the keytok.json read at open would mix two indexes: refuse instead.
        if identity(self.path) != self._identity:
            raise KeytokError(f"index {self.path} was replaced while it was open; open it again")

    @property
    def kinds(self) -> list[str]:
        """The engines this folder holds."""
        return list(self.info["kinds"])

    @property
    def expected_meta(self) -> dict[str, Any]:
        """What every sub-index's manifest must agree with."""
        i = self.info
        return {
            "model": i["model"],
            "model_sha256": i["model_sha256"],
            "method": i["method"],
            "calibration_sha256": i["calibration_sha256"],
            "vocab_size": i["vocab_size"],
        }

    def _check_model(self, fingerprint: str, name: str, method_key: str | None) -> None:
        i = self.info
        if fingerprint != i["model_sha256"]:
            raise KeytokError(
                f"index {self.path} was built with model {i['model']} (sha256 {i['model_sha256'][:12]}…), "
                f"not {name} (sha256 {fingerprint[:12]}…)"
            )
        if method_key is not None and method_key != i["method"]:
            from keytok.models.methods import EmbeddingMethod

            raise KeytokError(
                f"index {self.path} was built with method {EmbeddingMethod.from_key(i['method']).describe()}, "
                f"not {EmbeddingMethod.from_key(method_key).describe()}"
            )

    @property
    def encoder(self) -> Any:
        """The query encoder (loaded, and checked against the index, on first use)."""
        if self._encoder is None:
            from keytok.encoding.encoder import Encoder
            from keytok.models.loading import load_model
            from keytok.models.methods import EmbeddingMethod

            spec = self._model_spec or self._recorded_model_spec()
            loaded = load_model(spec)
            self._check_model(loaded.fingerprint, spec, None)
            self._encoder = Encoder(
                loaded,
                EmbeddingMethod.from_key(self.info["method"]),
                dtype=self._dtype or self.info.get("dtype", "auto"),
                device=self._device,
                max_length=int(self.info["max_length"]),
                backend=self._backend,
            )
            if self._sparse_encoder is not None:
                self._sparse_encoder.encoder = self._encoder
        return self._encoder

    def _recorded_model_spec(self) -> str:
        name, path = self.info["model"], self.info.get("model_path")
        # A packaged name resolves anywhere; a relative folder name only from the build's directory.
        from keytok.models.registry import MODEL_NAMES

        if name in MODEL_NAMES or Path(name).exists() or not path:
            return name
        return path

    def _tokenizer_only(self) -> Any:
        """The tokenizer of the index's model, without loading the weights (fingerprint still checked)."""
        from transformers import AutoTokenizer

        from keytok.models.loading import resolve_model_folder

        spec = self._model_spec or self._recorded_model_spec()
        folder, fingerprint = resolve_model_folder(spec)
        self._check_model(fingerprint, spec, None)
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # transformers raises many kinds
            raise KeytokError(f"cannot load the tokenizer of {spec}: {str(exc).splitlines()[0]}") from None

    def _file(self, role: str) -> Path | None:
        self._check_unchanged()
        entry = self.info["files"].get(role)
        return None if entry is None else self.path / entry["name"]

    def sparse_encoder(self, need_model: bool) -> SparseEncoder:
        """The :class:`SparseEncoder` the index was built with (the model attached when ``need_model``)."""
        if self._sparse_encoder is None:
            s = self.info["sparse"]
            cal = None
            cal_file = self._file("calibration")
            if cal_file is not None:
                from keytok.alignment.calibration import Calibration

                cal = Calibration.load(cal_file)
                if cal.sha256 != self.info["calibration_sha256"]:
                    raise KeytokError(
                        f"index {self.path}: {cal_file.name} is not the calibration it was built with"
                    )
            mean = None
            mean_file = self._file(MEAN_NAME)
            if mean_file is not None:
                mean = self._mean(mean_file)
            encoder = self.encoder if need_model else self._encoder
            self._sparse_encoder = SparseEncoder(
                encoder,
                SparseConfig.from_params(s),
                calibration=cal,
                mean=mean,
                tokenizer=None if encoder is not None else self._tokenizer_only(),
                vocab_size=int(self.info["vocab_size"]),
            )
        elif need_model and self._sparse_encoder.encoder is None:
            self._sparse_encoder.encoder = self.encoder
        return self._sparse_encoder

    def _npy(self, f: Path) -> np.ndarray:
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise KeytokError(f"index {self.path}: file {f.name} is unreadable ({one_line(exc)})") from None

    @property
    def idf(self) -> np.ndarray:
        """idf of every token over the index's sparse document vectors."""
        if self._idf is None:
            if self._file(DF_NAME) is None:
                raise KeytokError(
                    f"index {self.path} has no sparse vectors (built with kinds {', '.join(self.kinds)})"
                )
            self._idf = idf_weights(self._df(DF_NAME), int(self.info["docs"]))
        return self._idf

    @property
    def impact_idf(self) -> np.ndarray:
        """idf of every token over the index's model-weighted-term vectors (the ``impact`` engine)."""
        if self._impact_idf is None:
            if self._file(IMPACT_DF_NAME) is None:
                raise KeytokError(f"index {self.path} has no impact index (it has {', '.join(self.kinds)})")
            self._impact_idf = idf_weights(self._df(IMPACT_DF_NAME), int(self.info["docs"]))
        return self._impact_idf

    def _df(self, role: str) -> np.ndarray:
        """A document-frequency file, checked: one finite count per token, each from 0 to the number of
        documents. A crafted df outside that range gives a negative or NaN idf, and so silently wrong
        scores (the sha256 only proves the file is what keytok.json says)."""
        f = self._file(role)
        assert f is not None
        df = self._npy(f)
        docs, vocab = int(self.info["docs"]), int(self.info["vocab_size"])
        if df.shape != (vocab,) or df.dtype.kind not in "iuf":
            raise KeytokError(
                f"index {self.path}: file {f.name} has dtype {df.dtype.str} and shape {df.shape}, "
                f"not one count per token of the vocabulary ({vocab})"
            )
        if df.size and (not np.isfinite(df).all() or df.min() < 0 or df.max() > docs):
            raise KeytokError(f"index {self.path}: file {f.name} holds counts outside 0 to {docs} documents")
        return df

    def _mean(self, f: Path) -> np.ndarray:
        """The stored corpus mean, checked: one finite float per hidden dimension."""
        mean = self._npy(f)
        dim = int(self.info["hidden_size"])
        if mean.shape != (dim,) or mean.dtype.kind != "f" or not np.isfinite(mean).all():
            raise KeytokError(
                f"index {self.path}: file {f.name} is not {dim} finite floats (dtype {mean.dtype.str}, "
                f"shape {mean.shape})"
            )
        return mean

    def engine(self, backend: str) -> Any:
        """The opened engine for ``backend`` (checked against the index's model, method and calibration)."""
        if backend not in KINDS:
            raise KeytokError(f"unknown backend '{backend}' (choose from {', '.join(KINDS)})")
        if backend not in self.kinds:
            raise KeytokError(f"index {self.path} has no {backend} index (it has {', '.join(self.kinds)})")
        if backend not in self._engines:
            self._check_unchanged()
            # BM25 reads the text only: no model to check it against
            expected = None if backend in ("bm25", "bm25x") else self.expected_meta
            self._engines[backend] = _engine_class(backend).open(
                self.path / backend, expected_meta=expected, verify=self._verify
            )
        return self._engines[backend]

    def check(self) -> None:
        """Open every engine and read every file a search would read, so that damage a query would meet
        is reported now (``keytok index info --verify``); engines are otherwise opened on first use.

        Each engine checks its own structure on open (document numbers, postings, ids, parameters), and
        the folder's own files (df, corpus mean, docs.jsonl) are read and checked here. Raises
        :class:`KeytokError` naming the first faulty file.
        """
        for kind in self.kinds:
            self.engine(kind)
        for role in (DF_NAME, IMPACT_DF_NAME):
            if self._file(role) is not None:
                self._df(role)
        mean = self._file(MEAN_NAME)
        if mean is not None:
            self._mean(mean)
        self._doc_info()

    def _doc_info(self) -> dict[str, tuple[str, str]]:
        if self._docs is None:
            self._check_unchanged()
            docs: dict[str, tuple[str, str]] = {}
            f = self._file(DOCS_NAME)
            if f is None:
                raise KeytokError(f"index {self.path}: {INFO_NAME} does not list {DOCS_NAME}")
            try:
                with open(f, encoding="utf-8") as fh:
                    for line in fh:
                        d = json.loads(line)
                        docs[d["id"]] = (d.get("title", ""), d.get("snippet", ""))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise KeytokError(f"index {self.path}: {DOCS_NAME} is unreadable ({exc})") from None
            self._docs = docs
        return self._docs

    # ------------------------------------------------------------------ search
    def query_vectors(
        self,
        texts: Sequence[str],
        query_mode: str | None = None,
        embeddings: np.ndarray | None = None,
        backend: str = "sparse",
    ) -> sp.csr_matrix:
        """Sparse query vectors of ``texts`` as ``backend`` (sparse, lucene or impact) scores them.

        The impact engine's queries are weighted by the idf of its own vectors (where df is close to the
        words' document frequency), the key-token engines' by the idf of the key-token vectors.
        """
        mode = query_mode or self.info["sparse"]["query_mode"]
        if mode not in QUERY_MODES:
            raise KeytokError(f"unknown query mode '{mode}' (choose from {', '.join(QUERY_MODES)})")
        if mode == "expanded" and embeddings is None:
            embeddings = self.query_embeddings(texts)
        # expanded queries are projected through the LM head: the model is needed even with embeddings given
        enc = self.sparse_encoder(need_model=mode == "expanded")
        idf = self.impact_idf if backend == "impact" else self.idf
        feedback = self.feedback_vectors(texts, backend) if mode == "feedback" else None
        return enc.encode_queries(texts, idf, embeddings=embeddings, mode=mode, feedback=feedback)

    def feedback_vectors(self, texts: Sequence[str], backend: str = "sparse") -> list[sp.csr_matrix]:
        """For each text, the vectors of its top BM25 documents (feedback mode), from ``backend``'s
        native index (``impact``'s for impact queries, else the key-token index).
        """
        if "bm25" not in self.kinds:
            raise KeytokError(
                f"index {self.path}: feedback queries take their first pass from BM25, and it has no bm25 index"
            )
        native_name = "impact" if backend == "impact" else "sparse"
        if native_name not in self.kinds:
            raise KeytokError(f"index {self.path}: feedback queries need its {native_name} index")
        native = self.engine(native_name)
        n_fb = self.sparse_encoder(need_model=False).feedback_docs
        vocab = int(self.info["vocab_size"])
        out = []
        if n_fb == 0:
            return [sp.csr_matrix((0, vocab), dtype=np.float32) for _ in texts]
        ids, _ = self.engine("bm25").search_batch(list(texts), n_fb)
        for docs in ids:
            rows, cols, vals = [], [], []
            for r, d in enumerate(d for d in docs if d in native):
                tok, imp = native.doc_vector(d)
                rows.append(np.full(tok.size, r))
                cols.append(tok)
                vals.append(imp.astype(np.float32) * np.float32(native.scale))
            n = len(rows)
            out.append(
                sp.csr_matrix(
                    (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                    shape=(n, vocab),
                    dtype=np.float32,
                )
                if n
                else sp.csr_matrix((0, vocab), dtype=np.float32)
            )
        return out

    def query_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of query texts; the last batch is remembered (dense and expanded sparse share it).

        With ``reuse_query_rows`` set (the bench sets it, to time each query through search with the model
        apart), a query of the last batch searched again alone reuses its row. It is off by default: a
        batch-encoded row differs from the query encoded alone in the last bits (other padding, other matmul
        shapes), and a search must not depend on what was searched before it.
        """
        key = tuple(texts)
        last = self._last_queries
        reusable = last is not None and (
            last[0] == key or (self.reuse_query_rows and all(t in last[2] for t in key))
        )
        if not reusable:
            emb = self.encoder.encode(list(texts), desc="queries")
            last = self._last_queries = (key, emb, {t: i for i, t in enumerate(key)})
        return last[1] if last[0] == key else last[1][[last[2][t] for t in key]]

    @staticmethod
    def _int_query(row: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
        top = float(row.data.max()) if row.nnz else 0.0
        qscale = top / QUERY_LEVELS if top > 0 else 1.0
        q = row.copy()
        q.data = np.rint(q.data.astype(np.float64) / qscale)
        q.eliminate_zeros()
        return q.astype(np.int64), qscale

    def resolve_system(self, system: str) -> list[str]:
        """The parts of ``system``: one engine (``sparse``), or several joined by ``+`` and fused
        (``bm25+sparse``, ``bm25+sparse:feedback+sparse:expanded``); ``engine:mode`` gives a sparse engine
        its query mode. ``bm25+keytok``, ``bm25+keytok+dense`` and ``bm25+keytok-free`` name the fusions keytok recommends
        (:data:`keytok.indexes.fusion.HYBRID_ALIASES`).
        """
        if not isinstance(system, str) or not system.strip():
            raise KeytokError(f"system must be a non-empty string, got {system!r}")
        name = HYBRID_ALIASES.get(system.strip(), system.strip())
        parts = [p.strip() for p in name.split("+")]
        for part in parts:
            engine, _, mode = part.partition(":")
            if engine not in KINDS:
                choices = ", ".join([*KINDS, *HYBRID_ALIASES])
                raise KeytokError(
                    f"unknown system '{system}': '{engine}' is not an engine (choose from {choices})"
                )
            if mode and (mode not in QUERY_MODES or engine not in SPARSE_ENGINES):
                raise KeytokError(
                    f"system '{system}': '{part}' — only sparse, lucene and impact take a query mode "
                    f"({', '.join(QUERY_MODES)})"
                )
            if engine not in self.kinds:
                raise KeytokError(f"index {self.path} has no {engine} index (it has {', '.join(self.kinds)})")
        if len(set(parts)) != len(parts):
            raise KeytokError(f"system '{system}' names a part twice")
        return parts

    def fusion_settings(
        self, parts: Sequence[str], fusion: str | None = None, weights: Mapping[str, float] | None = None
    ) -> tuple[str, list[float]]:
        """Fusion method and per-engine weights: given ones, else the index's record, else the defaults."""
        rec = self.info.get("fusion") or {}
        method = fusion or rec.get("method") or DEFAULT_FUSION
        if method not in FUSIONS:
            raise KeytokError(f"unknown fusion '{method}' (choose from {', '.join(FUSIONS)})")
        table = dict(DEFAULT_FUSION_WEIGHTS) | dict(rec.get("weights") or {}) | dict(weights or {})
        return method, [float(table.get(p, table.get(p.partition(":")[0], 1.0))) for p in parts]

    def search_batch(
        self,
        queries: Mapping[str, str],
        k: int = 10,
        backend: str = "sparse",
        query_mode: str | None = None,
        explain: bool = False,
        *,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
        depth: int = DEFAULT_FUSION_DEPTH,
    ) -> dict[str, list[Hit]]:
        """Top-``k`` hits for every ``{query id: text}``, queries encoded in one batch.

        ``backend``: one engine, or a fused system (:meth:`resolve_system`): each engine returns its top
        ``max(k, depth)`` and the runs are fused per query with ``fusion`` (minmax, zscore, rrf) and
        ``weights`` (``{engine: weight}``); both default to the index's record. ``explain`` fills
        :attr:`Hit.matched` (the shared key tokens and their contributions; for BM25 the query's analysed
        terms and their BM25 weights in the document) and, for fused systems, :attr:`Hit.sources` (each
        engine's normalised contribution).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise KeytokError(f"k must be a positive integer, got {k!r}")
        qids = list(queries)
        texts = [queries[q] for q in qids]
        for q, t in zip(qids, texts, strict=True):
            if not isinstance(t, str) or not t.strip():
                raise KeytokError(f"query {q!r} is empty")
        parts = self.resolve_system(backend)
        if not qids:
            return {}
        if len(parts) == 1:
            results, explain_rows = self._engine_search(parts[0], texts, k, query_mode)
            return {
                q: self._hits(parts[0], hits, explain_rows[r], texts[r], explain)
                for r, (q, hits) in enumerate(zip(qids, results, strict=True))
            }
        method, w = self.fusion_settings(parts, fusion, weights)
        per_engine = {p: self._engine_search(p, texts, max(k, depth), query_mode) for p in parts}
        out: dict[str, list[Hit]] = {}
        for r, q in enumerate(qids):
            runs = [{d: s for d, s in per_engine[p][0][r]} for p in parts]
            fused = fuse([{q: run} for run in runs], method, w, depth=k).get(q, {})
            hits = list(fused.items())
            rows = self._hits(parts[0], hits, None, texts[r], False)
            if explain:
                from keytok.indexes.fusion import normalise

                norm = [normalise(run, method) for run in runs]
                for h in rows:
                    h.sources = {
                        p: wp * n.get(h.doc_id, 0.0) for p, wp, n in zip(parts, w, norm, strict=True)
                    }
                    for p, run in zip(parts, runs, strict=True):
                        if h.doc_id in run:
                            h.matched += [
                                (f"{t} ({p})", c)
                                for t, c in self._explain(p, per_engine[p][1][r], texts[r], h.doc_id)
                            ]
            out[q] = rows
        return out

    def _engine_search(
        self, backend: str, texts: list[str], k: int, query_mode: str | None
    ) -> tuple[list[list[tuple[str, float]]], list[sp.csr_matrix | None]]:
        """One engine's hits for every text, and the query vectors that explain them (sparse engines).

        ``backend`` may carry its query mode (``sparse:feedback``), which then wins over ``query_mode``.
        """
        backend, _, mode = backend.partition(":")
        query_mode = mode or query_mode
        eng = self.engine(backend)
        explain_rows: list[sp.csr_matrix | None] = [None] * len(texts)
        if backend in ("bm25", "bm25x"):
            return batch_lists(eng.search_batch(texts, k)), explain_rows
        if backend == "dense":
            return batch_lists(eng.search_batch(self.query_embeddings(texts), k)), explain_rows
        qv = self.query_vectors(texts, query_mode, backend="impact" if backend == "impact" else "sparse")
        if backend in ("sparse", "impact"):
            return batch_lists(eng.search_batch(qv, k)), [qv[r] for r in range(qv.shape[0])]
        doc_scale = float(eng.meta.get("scale", 1.0))
        rows, qscales = zip(*(self._int_query(qv[r]) for r in range(qv.shape[0])), strict=True)
        hits = batch_lists(eng.search_batch(sp.vstack(rows, format="csr"), k))
        results = [[(d, x * qs * doc_scale) for d, x in h] for h, qs in zip(hits, qscales, strict=True)]
        explain_rows = [q.astype(np.float32) * np.float32(qs) for q, qs in zip(rows, qscales, strict=True)]
        return results, explain_rows

    def _explain(
        self, backend: str, query_row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        """What made ``doc_id`` match: shared tokens with their contributions, or BM25's matched terms."""
        backend = backend.partition(":")[0]
        if backend in ("bm25", "bm25x"):
            return self.engine(backend).explain(text, doc_id)
        engine = "impact" if backend == "impact" else "sparse"
        if query_row is None or engine not in self.kinds:
            return []
        tok = self.sparse_encoder(need_model=False).tokenizer
        special = {int(i) for i in tok.all_special_ids}
        return [
            (token_display(tok, t, special), c) for t, c in self.engine(engine).explain(query_row, doc_id)
        ]

    def _hits(
        self,
        backend: str,
        hits: list[tuple[str, float]],
        query_row: sp.csr_matrix | None,
        text: str,
        explain: bool,
    ) -> list[Hit]:
        docs = self._doc_info()
        out = []
        for rank, (d, s) in enumerate(hits, start=1):
            title, snippet = docs.get(d, ("", ""))
            matched = (
                self._explain(backend, query_row, text, d)
                if explain and not backend.startswith("dense")
                else []
            )
            out.append(
                Hit(doc_id=d, score=float(s), title=title, matched=matched, rank=rank, snippet=snippet)
            )
        return out

    def search(
        self,
        query_text: str,
        k: int = 10,
        backend: str = "sparse",
        query_mode: str | None = None,
        *,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[Hit]:
        """Top-``k`` hits for one query, with what matched (see :meth:`search_batch`)."""
        return self.search_batch(
            {"q": query_text}, k, backend, query_mode, explain=True, fusion=fusion, weights=weights
        )["q"]

    def close(self) -> None:
        """Release the Lucene searchers."""
        for eng in self._engines.values():
            if hasattr(eng, "close"):
                eng.close()
        self._engines.clear()


# --------------------------------------------------------------------------------------------- runs
def write_trec_run(
    path: str | os.PathLike[str], results: Mapping[str, Sequence[Hit]], tag: str = "keytok"
) -> Path:
    """Write ``results`` as a TREC run file (``qid Q0 docid rank score tag``, rank from 1), atomically.

    Query ids, doc ids and the tag must not contain whitespace (the format is whitespace-separated).
    """
    if not tag or any(c.isspace() for c in tag):
        raise KeytokError(f"run tag {tag!r} must be non-empty and contain no whitespace")
    lines = []
    for qid, hits in results.items():
        if not qid or any(c.isspace() for c in qid):
            raise KeytokError(f"query id {qid!r} contains whitespace: it cannot be written to a TREC run")
        for rank, h in enumerate(hits, start=1):
            if any(c.isspace() for c in h.doc_id):
                raise KeytokError(
                    f"doc id {h.doc_id!r} contains whitespace: it cannot be written to a TREC run"
                )
            lines.append(f"{qid} Q0 {h.doc_id} {rank} {h.score:.6f} {tag}\n")
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return dest
