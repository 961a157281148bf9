"""The library's error base class.

Every error that ``ssl_lib`` raises on purpose (bad input, a missing store, an unknown method or
profile, a failed step) derives from :class:`SslCtError`, so a caller can catch the library's
errors in one ``except`` and let programming errors through. Subclasses keep the built-in class
they had before (``ValueError``, ``RuntimeError``) as a second base, so older ``except`` clauses
still match.
"""

from __future__ import annotations

__all__ = ["SslCtError"]


class SslCtError(Exception):
    """Base of every error ``ssl_lib`` raises on purpose; its message names the file and what is wrong."""
