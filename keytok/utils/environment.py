"""Environment variables set only around the call that needs them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["scoped_environ"]


@contextlib.contextmanager
def scoped_environ(**values: str) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the ``with`` block, then put back what was there (or nothing).

    The process's environment is shared by every library in it and by every child process it starts: a
    variable one call needs must not outlive that call.
    """
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in before.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
