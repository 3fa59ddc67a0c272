"""``keytok serve``: an HTTP API over an index (search, key tokens, explanations) and a page to look at them.

:func:`create_app` makes the ASGI app (FastAPI) over a :class:`keytok.Retriever` or a
:class:`keytok.KeyTokenModel`; :class:`Limits` holds what one request may ask. Needs the ``serve`` extra
(``pip install keytok[serve]``: FastAPI and uvicorn).
"""

from keytok.serve.app import create_app
from keytok.serve.limits import Limits

__all__ = ["Limits", "create_app"]
