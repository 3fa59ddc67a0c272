"""The server's limits on what one request may ask, and the one-line refusals when a request goes past them.

Every limit is a flag of ``keytok serve`` (the flag is named in the refusal, so whoever hits it knows what
to raise); the defaults let a page or an application work and keep one request from holding the model for
long: at most 100 hits, 1,000 characters a text, 32 texts a request, 64 KiB a body.
"""

from __future__ import annotations

from dataclasses import dataclass

from keytok.errors import KeytokError

__all__ = ["Limits", "RequestError"]


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a one-line message that names the field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field

    @property
    def message(self) -> str:
        """``field: what is wrong``, one line."""
        return " ".join(str(self).split())


@dataclass(frozen=True)
class Limits:
    """What one request may ask of ``keytok serve`` (each field is the flag of the same name)."""

    max_k: int = 100  # --max-k: hits or key tokens per text
    max_query_chars: int = 1000  # --max-query-chars: characters of one query or text
    max_body_bytes: int = 65536  # --max-body-bytes: bytes of a request body
    max_batch: int = 32  # --max-batch: texts in one request, and texts in one model forward
    batch_wait_ms: float = 5.0  # --batch-wait-ms: how long a forward waits for more texts to join it

    def __post_init__(self) -> None:
        for name in ("max_k", "max_query_chars", "max_body_bytes", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KeytokError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise KeytokError(f"--batch-wait-ms must lie in [0, 1000], got {self.batch_wait_ms!r}")

    def check_k(self, k: int, field: str = "k") -> int:
        """``k`` if it lies in [1, max_k], else a 400 naming ``field``."""
        if not 1 <= k <= self.max_k:
            raise RequestError(400, field, f"must lie in [1, {self.max_k}] (--max-k), got {k}")
        return k

    def check_text(self, text: str, field: str) -> str:
        """``text`` if it is not blank and at most ``max_query_chars`` long, else a 400 naming ``field``."""
        if not text.strip():
            raise RequestError(400, field, "is empty")
        if len(text) > self.max_query_chars:
            raise RequestError(
                400,
                field,
                f"is {len(text)} characters, over the limit of {self.max_query_chars} (--max-query-chars)",
            )
        if "\x00" in text:
            raise RequestError(400, field, "contains a NUL character")
        return text

    def check_texts(self, texts: list[str], field: str) -> list[str]:
        """Each text checked (``field[i]`` named), and at most ``max_batch`` of them."""
        if not texts:
            raise RequestError(400, field, "is an empty list")
        if len(texts) > self.max_batch:
            raise RequestError(
                400, field, f"has {len(texts)} texts, over the limit of {self.max_batch} (--max-batch)"
            )
        return [self.check_text(t, f"{field}[{i}]") for i, t in enumerate(texts)]
