"""What every engine kind declares (:class:`Kind`); the kinds themselves are the modules beside this one.

A kind is one engine of an index folder seen from the pipeline: the storage class that holds it, the step
that builds it from the documents (their embeddings, key-token vectors or text), the form of query it
takes, how a batch of queries is searched and a hit explained, and what an update does to it. The
storage class knows none of this: it stores and searches what it is given.
"""

from __future__ import annotations

from typing import Any, ClassVar

import scipy.sparse as sp

__all__ = ["QUERY_FORMS", "Hits", "Kind"]

#: The query forms an engine takes: the text, the pooled embedding, a float key-token vector, or that
#: vector quantised to integers.
QUERY_FORMS = ("text", "embedding", "float sparse vector", "int sparse vector")

Hits = tuple[list[list[tuple[str, float]]], list[sp.csr_matrix | None]]  # per query: hits, explaining row


class Kind:
    """One engine kind (see the module doc). Subclasses set the class attributes and the steps they need.

        ``name``: the sub-folder and the name in ``--kind``/``--system``; ``about``: what it is, in a few words;
    ``query_form``: one of
        :data:`QUERY_FORMS`; ``uses_model``: whether its manifest records the model (checked on open; BM25
        reads text only); ``needs_vectors``: whether its build reads the documents' key-token vectors;
        ``needs_java``: built and searched by Lucene; ``updatable``: documents can be added and deleted in
        place; ``fusion_weights``: its default weight in a fused system, per part (``name`` or ``name:mode``);
    ``df_file``: the folder's document-frequency file whose idf weights its query vectors; ``native``: the
        float key-token engine that explains its hits and gives feedback queries their documents' vectors;
        ``built_from``: another kind whose engine its build reads (built too, then dropped, when not asked for);
        ``recorded``: ``keytok.json`` holds its settings under its name (:meth:`record`, :meth:`settings`).
    """

    name: ClassVar[str]
    about: ClassVar[str]
    query_form: ClassVar[str]
    uses_model: ClassVar[bool] = True
    needs_vectors: ClassVar[bool] = False
    needs_java: ClassVar[bool] = False
    updatable: ClassVar[bool] = False
    fusion_weights: ClassVar[tuple[tuple[str, float], ...]] = ()
    df_file: ClassVar[str | None] = None
    native: ClassVar[str | None] = None
    built_from: ClassVar[str | None] = None
    recorded: ClassVar[bool] = False

    # ------------------------------------------------------------------ storage
    def engine_class(self) -> Any:
        """The storage class (imported on first use: Lucene's needs Java)."""
        raise NotImplementedError

    @property
    def takes_query_mode(self) -> bool:
        """Whether its queries are key-token vectors, and so take a query mode."""
        return self.query_form in QUERY_FORMS[2:]

    # ------------------------------------------------------------------ build
    def build(self, job: Any) -> None:
        """Write the engine into ``job.tmp / name`` (``job``: :class:`keytok.pipeline.build.BuildJob`)."""
        raise NotImplementedError

    def record(self, job: Any) -> dict[str, Any] | None:
        """Its entry of ``keytok.json`` (its settings), or None."""
        return None

    def settings(self, record: dict[str, Any]) -> dict[str, Any]:
        """The :class:`~keytok.pipeline.build.BuildConfig` fields its ``keytok.json`` entry gives back."""
        return {}

    # ------------------------------------------------------------------ search
    def search(self, searcher: Any, texts: list[str], k: int, mode: str | None) -> Hits:
        """Every text's top-``k`` hits, and the query rows that explain them (None where none does)."""
        raise NotImplementedError

    def explain(
        self, searcher: Any, row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        """What made ``doc_id`` match: ``[(token or term, contribution), ...]``."""
        return []

    def marks(self, searcher: Any, text: str, labels: set[str]) -> list[tuple[int, int, str]]:
        """Where ``text`` holds what :meth:`explain` named (``labels``): ``[(start, end, label), ...]`` at real
        positions (:mod:`keytok.representations.marks`); none for an engine that names nothing."""
        return []

    def note(self, info: dict[str, Any]) -> str:
        """What the bench's row of it alone leaves unsaid, from the index's ``keytok.json``."""
        return ""

    # ------------------------------------------------------------------ update
    def add(self, tmp: Any, searcher: Any, new: Any) -> int:
        """Add ``new`` documents to the engine in the folder ``tmp``; the documents it holds afterwards."""
        raise NotImplementedError

    def delete(self, tmp: Any, ids: list[str], docs: int) -> int:
        """Take ``ids`` out of the engine in ``tmp`` (``docs``: documents left); the documents it holds."""
        raise NotImplementedError
