"""The HTTP API of ``keytok serve`` and the page at ``/``, over keytok's public API only.

Endpoints (JSON in, JSON out; the OpenAPI page is at ``/docs``):

* ``POST /search`` ``{"query" | "queries", "k", "system", "fusion", "weights", "tokens"}``: the fields of
  :class:`keytok.Hit` for each query: rank, doc id, score, title, snippet, ``matched`` (the key tokens, or
  BM25's terms, shared with the query and what each contributed) and, for a fused system, ``sources`` (each
  engine's share of the score); and ``marks``, where the title and the snippet hold what matched
  (:meth:`keytok.Retriever.marks`: real positions, by the tokenizer's offsets or Lucene's analyzer). With
  ``tokens`` (a count), also each query's key tokens as ``/tokens`` gives them, from the search's forward.
* ``POST /tokens`` ``{"text" | "texts", "k"}``: each text's key tokens with their scores, whether they occur
  in the text, and the character ``spans`` where they do.
* ``POST /explain`` ``{"query", "doc_id"}``: the tokens a query shares with one document and each one's share
  of its sparse score.
* ``GET /health``, ``GET /info`` (the ``keytok index describe`` record, the systems, the limits, the batches).

The index is opened, verified (every file rehashed) and warmed (model loaded, each engine searched once)
before the server listens, and is only read. Requests that need the model share forwards
(:mod:`keytok.serve.batching`). A bad request gets a 4xx and ``{"error": "field: what is wrong"}`` in one
line; nothing that goes wrong reaches the client as a traceback. Files are served from ``static/`` only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from keytok._version import __version__
from keytok.api import KeyTokenModel, Retriever
from keytok.errors import KeytokError
from keytok.serve import memory
from keytok.serve.batching import Batcher
from keytok.serve.limits import Limits, RequestError

__all__ = ["create_app"]

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("keytok.serve")


# ------------------------------------------------------------------------------------------ requests
class _Body(BaseModel):
    # strict: "5" is not a k, 1.0 is not a k, true is not a k; unknown fields are named, not ignored
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchRequest(_Body):
    """``POST /search``: one ``query`` or a list of ``queries``."""

    query: StrictStr | None = None
    queries: list[StrictStr] | None = None
    k: StrictInt = 10
    system: StrictStr | None = None
    fusion: StrictStr | None = None
    weights: dict[StrictStr, StrictFloat | StrictInt] | None = None
    tokens: StrictInt | None = None  # also the query's top key tokens, from the search's own forward


class TokensRequest(_Body):
    """``POST /tokens``: one ``text`` or a list of ``texts``."""

    text: StrictStr | None = None
    texts: list[StrictStr] | None = None
    k: StrictInt = 10


class ExplainRequest(_Body):
    """``POST /explain``."""

    query: StrictStr
    doc_id: StrictStr


def _one_or_many(
    one: str | None, many: list[str] | None, one_name: str, many_name: str
) -> tuple[list[str], bool]:
    """The texts of a request that gives ``one`` text or ``many``, and whether it gave one."""
    if (one is None) == (many is None):
        raise RequestError(
            400, one_name, f"give either {one_name} (a string) or {many_name} (a list of strings)"
        )
    return ([one], True) if one is not None else (list(many or []), False)


# ------------------------------------------------------------------------------------------ the work
class Service:
    """What the endpoints call: the opened index and model, the limits, and the batcher they share."""

    def __init__(self, retriever: Retriever | None, model: KeyTokenModel | None, limits: Limits) -> None:
        if retriever is None and model is None:
            raise KeytokError("keytok serve needs an index folder, or a model for key tokens only")
        self.retriever = retriever
        self._model = model
        self.limits = limits
        self.batcher = Batcher(limits.max_batch, limits.batch_wait_ms, after=memory.release)
        self.record = retriever.describe() if retriever is not None else None

    @property
    def model(self) -> KeyTokenModel:
        """The model of /tokens: the index's (with its calibration), or the one served alone."""
        if self._model is None:
            assert self.retriever is not None
            self._model = self.retriever.model
        return self._model

    def warm(self) -> None:
        """Load the model and every engine now, so that no request pays for it (and a fault shows at start)."""
        self.model.key_tokens("keytok", k=1)
        if self.retriever is not None:
            for kind in self.retriever.kinds:
                self.retriever.search_batch(["keytok"], k=1, system=kind, explain=True)

    def info(self) -> dict[str, Any]:
        """The ``/info`` record."""
        out: dict[str, Any] = {
            "keytok_version": __version__,
            "index": self.record,
            "systems": self.retriever.systems if self.retriever is not None else [],
            "default_system": self.default_system,
            "limits": {
                "max_k": self.limits.max_k,
                "max_query_chars": self.limits.max_query_chars,
                "max_body_bytes": self.limits.max_body_bytes,
                "max_batch": self.limits.max_batch,
                "batch_wait_ms": self.limits.batch_wait_ms,
            },
            "batches": self.batcher.stats.as_dict(),
        }
        model = self.model
        out["model"] = {"name": model.name, "method": model.method.name, "precision": model.precision}
        return out

    @property
    def default_system(self) -> str | None:
        """``sparse`` when the index has it, else its first engine; None without an index."""
        if self.retriever is None:
            return None
        return self.retriever.default_system

    def need_index(self, endpoint: str) -> Retriever:
        if self.retriever is None:
            raise RequestError(
                404, endpoint, "this server has no index (started with --model only): use /tokens"
            )
        return self.retriever

    # -- search
    async def search(self, req: SearchRequest) -> dict[str, Any]:
        retriever = self.need_index("search")
        texts, single = _one_or_many(req.query, req.queries, "query", "queries")
        field = "query" if single else "queries"
        texts = (
            [self.limits.check_text(texts[0], "query")] if single else self.limits.check_texts(texts, field)
        )
        k = self.limits.check_k(req.k)
        n_tokens = self.limits.check_k(req.tokens, "tokens") if req.tokens is not None else 0
        system = req.system if req.system is not None else self.default_system
        assert system is not None
        try:
            checked = retriever.check_system(system, fusion=req.fusion, weights=req.weights)
        except KeytokError as exc:
            said = str(exc)
            bad = (
                "fusion"
                if said.startswith("unknown fusion")
                else "weights"
                if said.startswith("weight ")
                else "system"
            )
            raise RequestError(400, bad, str(exc)) from None
        weights = tuple(sorted((req.weights or {}).items()))
        group = ("search", system, req.fusion, weights)

        def run(payloads: Sequence[tuple[list[str], int, int]]) -> list[list[dict[str, Any]]]:
            every = [t for texts_, _, _ in payloads for t in texts_]
            deepest = max(k_ for _, k_, _ in payloads)
            found = retriever.search_batch(
                every, k=deepest, system=system, explain=True, fusion=req.fusion, weights=req.weights
            )
            most_tokens = max(n for _, _, n in payloads)
            # the queries' key tokens from the embeddings the search just made: no second forward
            tokens = retriever.query_key_tokens(every, k=most_tokens) if most_tokens else None
            out, row = [], 0
            for texts_, k_, n in payloads:
                answers = []
                for i, text in enumerate(texts_):
                    answer = {
                        "query": text,
                        "hits": [_hit_json(retriever, h, system) for h in found[str(row + i)][:k_]],
                    }
                    if n and tokens is not None:
                        answer["tokens"] = _token_rows(self.model, text, tokens[row + i][:n])
                    answers.append(answer)
                out.append(answers)
                row += len(texts_)
            return out

        answers = await self.batcher.submit(group, run, (texts, k, n_tokens), size=len(texts))
        head = {"system": system, "parts": checked["parts"], "fusion": checked["fusion"], "k": k}
        return head | (answers[0] if single else {"results": answers})

    # -- tokens
    async def tokens(self, req: TokensRequest) -> dict[str, Any]:
        texts, single = _one_or_many(req.text, req.texts, "text", "texts")
        texts = (
            [self.limits.check_text(texts[0], "text")] if single else self.limits.check_texts(texts, "texts")
        )
        k = self.limits.check_k(req.k)
        model = self.model

        def run(payloads: Sequence[tuple[list[str], int]]) -> list[list[dict[str, Any]]]:
            every = [t for texts_, _ in payloads for t in texts_]
            deepest = max(k_ for _, k_ in payloads)
            rows = model.key_tokens(every, k=deepest)
            out, row = [], 0
            for texts_, k_ in payloads:
                out.append([_token_rows(model, t, rows[row + i][:k_]) for i, t in enumerate(texts_)])
                row += len(texts_)
            return out

        rows = await self.batcher.submit(("tokens",), run, (texts, k), size=len(texts))
        results = [{"text": t, "tokens": r} for t, r in zip(texts, rows, strict=True)]
        head = {"model": model.name, "method": model.method.name, "k": k}
        return head | (results[0] if single else {"results": results})

    # -- explain
    async def explain(self, req: ExplainRequest) -> dict[str, Any]:
        retriever = self.need_index("explain")
        query = self.limits.check_text(req.query, "query")
        if not retriever.can_explain:
            raise RequestError(
                404, "explain", f"index {retriever.path.name} has no sparse engine to explain with"
            )
        if not req.doc_id.strip():
            raise RequestError(400, "doc_id", "is empty")

        def run(payloads: Sequence[tuple[str, str]]) -> list[Any]:
            out: list[Any] = []
            for q, d in payloads:
                try:
                    doc = retriever.document(d)
                except KeytokError:
                    out.append(RequestError(404, "doc_id", f"{d!r} is not a document of this index"))
                    continue
                matched = retriever.explain(q, d)
                out.append(
                    doc
                    | {
                        "query": q,
                        "score": float(sum(c for _, c in matched)),
                        "matched": [{"token": t, "contribution": c} for t, c in matched],
                    }
                )
            return out

        return await self.batcher.submit(("explain",), run, (query, req.doc_id))


def _hit_json(retriever: Retriever, hit: Any, system: str) -> dict[str, Any]:
    """A hit as JSON, with ``marks``: where its title and snippet hold what matched (:meth:`Retriever.marks`)."""
    marks = retriever.marks(hit, system)
    return hit.as_dict() | {
        "marks": {
            f: [{"start": a, "end": b, "part": p, "term": t} for a, b, p, t in m] for f, m in marks.items()
        }
    }


def _token_rows(model: KeyTokenModel, text: str, tokens: Sequence[Any]) -> list[dict[str, Any]]:
    """Key tokens as JSON, each with the character spans of ``text`` where its token id occurs."""
    spans: dict[int, list[list[int]]] = {}
    try:
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            while a < b and text[a].isspace():  # a word-start token's offsets may take its space
                a += 1
            if a < b:
                spans.setdefault(int(tid), []).append([int(a), int(b)])
    except (NotImplementedError, KeyError, TypeError, ValueError):  # a slow tokenizer has no offsets
        spans = {}
    return [t.as_dict() | {"spans": spans.get(int(t.token_id), [])} for t in tokens]


# ------------------------------------------------------------------------------------------ the app
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


_UNION_TAGS = {"str", "int", "float", "bool", "list[str]", "dict[str,union[float,int]]"}


def _validation_message(exc: RequestValidationError) -> str:
    """The first fault pydantic found, as ``field: what is wrong``."""
    errors = exc.errors()
    if not errors:
        return "body: invalid request"
    e = errors[0]
    # a union's member types show up in the location (weights.bm25.float): leave them out
    loc = [str(x) for x in e.get("loc", ()) if x != "body" and str(x) not in _UNION_TAGS]
    if e.get("type") == "json_invalid":
        return f"body: not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
    field = ".".join(loc) if loc else "body"
    msg = str(e.get("msg", "is invalid"))
    if e.get("type") == "missing":
        msg = "is required"
    elif e.get("type") == "extra_forbidden":
        msg = "is not a field of this request"
    return f"{field}: {msg}"


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets a 413 before any of it reaches the app."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = _error(413, f"body: over the limit of {self.max_bytes} bytes (--max-body-bytes)")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await too_big(scope, receive, send)
                    return
            except ValueError:
                await _error(400, "body: Content-Length is not a number")(scope, receive, send)
                return
        # read the (bounded) body now, so a chunked body is held to the limit too, then replay it
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    retriever: Retriever | None = None,
    model: KeyTokenModel | None = None,
    limits: Limits | None = None,
    *,
    warm: bool = True,
) -> Any:
    """The ASGI app of ``keytok serve`` over an opened index (``retriever``) or a model alone (tokens only).

    ``warm`` loads the model and every engine before the app is returned (a fault shows here, not in a
    request). Run it with any ASGI server (``uvicorn.run(create_app(...))``); it is read-only.
    """
    limits = limits or Limits()
    service = Service(retriever, model, limits)
    if warm:
        service.warm()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="keytok",
        version=__version__,
        description="Key tokens of texts, and search with the key tokens that matched.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(_r: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(KeytokError)
    async def _keytok_error(_r: Request, exc: KeytokError) -> JSONResponse:
        return _error(400, f"request: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(r: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return _error(exc.status_code, f"{r.url.path}: {detail.lower()}")

    @app.exception_handler(Exception)
    async def _fault(r: Request, exc: Exception) -> JSONResponse:
        log.error("keytok serve: %s %s failed: %s: %s", r.method, r.url.path, type(exc).__name__, exc)
        return _error(
            500, f"server: {type(exc).__name__} while answering {r.url.path} (see the server's log)"
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the server is up, and what it serves."""
        return {"status": "ok", "index": service.record["path"] if service.record else None}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The index's ``keytok index describe`` record, its systems, the limits and the batches so far."""
        return service.info()

    @app.post("/search")
    async def search(req: SearchRequest) -> dict[str, Any]:
        """Top-k hits of a query (or of each of several), with what matched and each engine's share."""
        return await service.search(req)

    @app.post("/tokens")
    async def tokens(req: TokensRequest) -> dict[str, Any]:
        """Key tokens of a text (or of each of several), with scores and where they occur in the text."""
        return await service.tokens(req)

    @app.post("/explain")
    async def explain(req: ExplainRequest) -> dict[str, Any]:
        """The tokens a query shares with one document and each one's share of its sparse score."""
        return await service.explain(req)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return BodyLimit(app, limits.max_body_bytes)
