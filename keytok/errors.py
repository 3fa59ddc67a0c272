"""User-facing errors.

Every fault a user can cause (bad input file, unknown model, mismatched index or
calibration, corrupted file) raises :class:`KeytokError` with a one-line message
that names the input and the fault. The CLI prints it without a traceback.
"""

from __future__ import annotations


class KeytokError(Exception):
    """A fault in the user's input or environment, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class KeytokWarning(UserWarning):
    """Input keytok accepts but the user should know about (see :mod:`keytok.data.contract`)."""
