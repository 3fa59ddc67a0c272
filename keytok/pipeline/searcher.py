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

What each engine takes as a query, how it is searched and how a hit is explained is its kind's
(:mod:`keytok.pipeline.kinds`); the searcher encodes the queries in the form a kind asks for, from the
index's record, and fuses the runs of a system's parts.
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

from keytok.engines.engine import identity, one_line, read_unchanged
from keytok.engines.fusion import DEFAULT_FUSION, DEFAULT_FUSION_DEPTH, FUSIONS, fuse
from keytok.engines.manifest import Manifest
from keytok.errors import KeytokError
from keytok.pipeline.folder import DF_NAME, DOCS_NAME, IMPACT_DF_NAME, INFO_NAME, MEAN_NAME, read_info
from keytok.pipeline.kinds import (
    DEFAULT_FUSION_WEIGHTS,
    DEFAULT_SYSTEM,
    FEEDBACK_FIRST_PASS,
    KINDS,
    REGISTRY,
    SYSTEM_ALIASES,
    VECTOR_SETTINGS,
    Kind,
)
from keytok.representations.queries import feedback_matrix
from keytok.representations.sparse import QUERY_MODES, SparseConfig, SparseEncoder, idf_weights
from keytok.utils.atomic import atomic_path

__all__ = ["Hit", "Searcher", "write_trec_run"]


def _read_folder(path: Path, verify: bool) -> tuple[Any, dict[str, Any]]:
    """The folder's identity, and its ``keytok.json`` with every engine's manifest checked."""
    ident = identity(path)
    info = read_info(path, verify=verify)
    for kind in info["kinds"]:
        Manifest.load(path / kind, verify=verify)
    return ident, info


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
        self._identity, self.info = read_unchanged(self.path, lambda: _read_folder(self.path, verify))
        self._model_spec = model
        self._dtype, self._device, self._backend = dtype, device, backend  # backend: encoding/backends.py
        self._encoder = None
        self._engines: dict[str, Any] = {}
        self._docs: dict[str, tuple[str, str]] | None = None
        self._sparse_encoder: SparseEncoder | None = None
        self._token_labels: dict[int, str] = {}  # token id -> as Hit.matched names it (marks)
        self._idf: dict[str, np.ndarray] = {}
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
                head=self.info.get("head"),
                backend=self._backend,
            )
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

    @property
    def sparse_encoder(self) -> SparseEncoder:
        """The :class:`SparseEncoder` the index was built with: its settings, calibration and corpus mean,
        and the model's tokenizer; the model itself is loaded only when a projection needs it."""
        if self._sparse_encoder is None:
            mean_file = self._file(MEAN_NAME)
            self._sparse_encoder = SparseEncoder(
                self._encoder,
                SparseConfig.from_params(self.info[VECTOR_SETTINGS]),
                calibration=self._calibration(),
                mean=None if mean_file is None else self._mean(mean_file),
                tokenizer=None if self._encoder is not None else self._tokenizer_only(),
                vocab_size=int(self.info["vocab_size"]),
                load_encoder=lambda: self.encoder,
            )
        return self._sparse_encoder

    def _calibration(self) -> Any:
        """The calibration the vectors were made with (checked against keytok.json), or None."""
        cal_file = self._file("calibration")
        if cal_file is None:
            return None
        from keytok.representations.calibration import Calibration

        cal = Calibration.load(cal_file)
        if cal.sha256 != self.info["calibration_sha256"]:
            raise KeytokError(f"index {self.path}: {cal_file.name} is not the calibration it was built with")
        return cal

    def _npy(self, f: Path) -> np.ndarray:
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise KeytokError(f"index {self.path}: file {f.name} is unreadable ({one_line(exc)})") from None

    @property
    def idf(self) -> np.ndarray:
        """idf of every token over the index's key-token document vectors."""
        return self.idf_of(DF_NAME)

    @property
    def impact_idf(self) -> np.ndarray:
        """idf of every token over the index's model-weighted-term vectors."""
        return self.idf_of(IMPACT_DF_NAME)

    def idf_of(self, role: str) -> np.ndarray:
        """idf of every token from the folder's document-frequency file ``role``."""
        if role not in self._idf:
            if self._file(role) is None:
                raise KeytokError(
                    f"index {self.path} has no {role} for the idf (built with kinds {', '.join(self.kinds)})"
                )
            self._idf[role] = idf_weights(self._df(role), int(self.info["docs"]))
        return self._idf[role]

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
        kind = REGISTRY.get(backend)
        if kind is None:
            raise KeytokError(f"unknown backend '{backend}' (choose from {', '.join(KINDS)})")
        if backend not in self.kinds:
            raise KeytokError(f"index {self.path} has no {backend} index (it has {', '.join(self.kinds)})")
        if backend not in self._engines:
            self._check_unchanged()
            # a kind that reads the text only has no model to check it against
            expected = self.expected_meta if kind.uses_model else None
            self._engines[backend] = kind.engine_class().open(
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
        backend: str | None = None,
    ) -> sp.csr_matrix:
        """Sparse query vectors of ``texts`` as the key-token kind ``backend`` (default: the default system's)
        scores them: weighted by the idf of the vectors it indexes (the kind's ``df_file``).
        """
        kind = self._query_kind(backend)
        mode = query_mode or self.info[VECTOR_SETTINGS]["query_mode"]
        if mode not in QUERY_MODES:
            raise KeytokError(f"unknown query mode '{mode}' (choose from {', '.join(QUERY_MODES)})")
        if mode == "expanded" and embeddings is None:
            embeddings = self.query_embeddings(texts)
        # expanded queries are projected through the LM head: the model is needed even with embeddings given
        enc = self.sparse_encoder
        idf = self.idf_of(kind.df_file)
        feedback = self.feedback_vectors(texts, kind.name) if mode == "feedback" else None
        return enc.encode_queries(texts, idf, embeddings=embeddings, mode=mode, feedback=feedback)

    def feedback_vectors(self, texts: Sequence[str], backend: str | None = None) -> list[sp.csr_matrix]:
        """For each text, the vectors of its top first-pass (BM25) documents (feedback mode), from the
        float index of the key-token kind ``backend`` (its ``native``).
        """
        first = FEEDBACK_FIRST_PASS
        if first not in self.kinds:
            raise KeytokError(
                f"index {self.path}: feedback queries take their first pass from {first}, and it has no {first} index"
            )
        native_name = self._query_kind(backend).native
        if native_name not in self.kinds:
            raise KeytokError(f"index {self.path}: feedback queries need its {native_name} index")
        native = self.engine(native_name)
        n_fb = self.sparse_encoder.feedback_docs
        vocab = int(self.info["vocab_size"])
        out = []
        if n_fb == 0:
            return [sp.csr_matrix((0, vocab), dtype=np.float32) for _ in texts]
        ids, _ = self.engine(first).search_batch(list(texts), n_fb)
        scale = np.float32(native.scale)
        for docs in ids:
            vectors = [native.doc_vector(d) for d in docs if d in native]
            out.append(
                feedback_matrix([(tok, imp.astype(np.float32) * scale) for tok, imp in vectors], vocab)
            )
        return out

    def _query_kind(self, backend: str | None) -> Kind:
        """The key-token kind ``backend`` (default: the default system's)."""
        kind = REGISTRY.get(backend or DEFAULT_SYSTEM)
        if kind is None or not kind.takes_query_mode:
            choices = ", ".join(k for k, v in REGISTRY.items() if v.takes_query_mode)
            raise KeytokError(f"'{backend}' takes no key-token query vectors (choose from {choices})")
        return kind

    def query_embeddings(self, texts: Sequence[str], *, remember: bool = True) -> np.ndarray:
        """Embeddings of query texts; the last batch is remembered (dense and expanded sparse share it).

        With ``reuse_query_rows`` set (the bench sets it, to time each query through search with the model
        apart), a query of the last batch searched again alone reuses its row. It is off by default: a
        batch-encoded row differs from the query encoded alone in the last bits (other padding, other matmul
        shapes), and a search must not depend on what was searched before it.

        ``remember=False`` runs the model on ``texts`` as a search on a fresh searcher would, and keeps the
        remembered batch as it was: the bench's "model ms/query" times each query alone this way.
        """
        key = tuple(texts)
        last = self._last_queries
        reusable = (
            remember
            and last is not None
            and (last[0] == key or (self.reuse_query_rows and all(t in last[2] for t in key)))
        )
        if not reusable:
            emb = self.encoder.encode(list(texts), desc="queries", queries=True)
            if not remember:
                return emb
            last = self._last_queries = (key, emb, {t: i for i, t in enumerate(key)})
        assert last is not None
        return last[1] if last[0] == key else last[1][[last[2][t] for t in key]]

    def resolve_system(self, system: str) -> list[str]:
        """The parts of ``system``: one engine (``sparse``), or several joined by ``+`` and fused
        (``bm25+sparse``, ``bm25+sparse:feedback+sparse:expanded``); ``engine:mode`` gives a sparse engine
        its query mode. ``bm25+keytok``, ``bm25+keytok+dense`` and ``bm25+keytok-free`` name the fusions keytok recommends
        (:data:`keytok.pipeline.kinds.SYSTEM_ALIASES`).
        """
        if not isinstance(system, str) or not system.strip():
            raise KeytokError(f"system must be a non-empty string, got {system!r}")
        name = SYSTEM_ALIASES.get(system.strip(), system.strip())
        parts = [p.strip() for p in name.split("+")]
        for part in parts:
            engine, _, mode = part.partition(":")
            if engine not in KINDS:
                choices = ", ".join([*KINDS, *SYSTEM_ALIASES])
                raise KeytokError(
                    f"unknown system '{system}': '{engine}' is not an engine (choose from {choices})"
                )
            if mode and (mode not in QUERY_MODES or not REGISTRY[engine].takes_query_mode):
                takers = ", ".join(k for k, v in REGISTRY.items() if v.takes_query_mode)
                raise KeytokError(
                    f"system '{system}': '{part}' — only {takers} take a query mode ({', '.join(QUERY_MODES)})"
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
        backend: str = DEFAULT_SYSTEM,
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
                from keytok.engines.fusion import normalise

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
        self.engine(backend)  # checked: the index holds it
        return REGISTRY[backend].search(self, texts, k, mode or query_mode)

    def _explain(
        self, backend: str, query_row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        """What made ``doc_id`` match: shared tokens with their contributions, or BM25's matched terms."""
        return REGISTRY[backend.partition(":")[0]].explain(self, query_row, text, doc_id)

    def token_label(self, token_id: int) -> str:
        """A token of the index's tokenizer as :attr:`Hit.matched` names it (``▁bone``; specials in [])."""
        from keytok.representations.sparse import token_display

        labels = self._token_labels
        if token_id not in labels:
            tok = self.sparse_encoder.tokenizer
            labels[token_id] = token_display(tok, token_id, {int(i) for i in tok.all_special_ids})
        return labels[token_id]

    def marks(self, hit: Hit, backend: str = DEFAULT_SYSTEM) -> dict[str, list[tuple[int, int, str, str]]]:
        """Where the hit's title and snippet hold what matched (its :attr:`Hit.matched`, from a search of
        ``backend`` with ``explain``): ``{"title": [...], "snippet": [...]}``, each ``(start, end, part,
        token or term)`` at the positions the part's own tokenizer or analyzer gives (see
        :mod:`keytok.representations.marks`), sorted."""
        parts = self.resolve_system(backend)
        labels: dict[str, set[str]] = {p: set() for p in parts}
        for label, _ in hit.matched:
            if len(parts) == 1:
                labels[parts[0]].add(label)
                continue
            for p in parts:  # a fused system's entries end with " (part)"
                if label.endswith(f" ({p})"):
                    labels[p].add(label[: -len(p) - 3])
                    break
        out: dict[str, list[tuple[int, int, str, str]]] = {}
        for field_name, text in (("title", hit.title), ("snippet", hit.snippet)):
            spans = []
            for p in parts:
                if labels[p] and text:
                    kind = REGISTRY[p.partition(":")[0]]
                    spans += [(a, b, p, t) for a, b, t in kind.marks(self, text, labels[p])]
            out[field_name] = sorted(spans)
        return out

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
            matched = self._explain(backend, query_row, text, d) if explain else []
            out.append(
                Hit(doc_id=d, score=float(s), title=title, matched=matched, rank=rank, snippet=snippet)
            )
        return out

    def search(
        self,
        query_text: str,
        k: int = 10,
        backend: str = DEFAULT_SYSTEM,
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
