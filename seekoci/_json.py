"""JSON documents from outside the process -- a registry's answers, manifests, configs,
TOCs, index pages, model headers, Docker's config: :func:`loads` is ``json.loads`` for
them."""

from __future__ import annotations

from json import loads as _loads
from typing import IO, Any


def loads(data: str | bytes | bytearray) -> Any:
    """``json.loads(data)``, where a document nested deeper than the parser can follow is
    a ``ValueError``, like any other document it cannot read.

    json's scanner goes one call deeper per array or object level, and past the
    interpreter's recursion limit (about 1,000 levels: a 1 KB body of ``[``) it raises
    ``RecursionError``, which the ``except ValueError`` around each parse of something
    read from outside would let through as a bare traceback."""
    try:
        return _loads(data)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply to read") from None


def load(handle: IO[str] | IO[bytes]) -> Any:
    """:func:`loads` of what ``handle`` holds."""
    return loads(handle.read())
