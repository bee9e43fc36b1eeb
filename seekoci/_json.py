"""JSON documents from outside the process -- a registry's answers, manifests, configs,
TOCs, index pages, model headers, Docker's config: :func:`loads` is ``json.loads`` for
them."""

from __future__ import annotations

from json import loads as _loads
from typing import IO, Any

#: A parsed value costs tens of bytes of memory (an empty object 64, a list's slot 8, a
#: string 50 and up) for as little as two bytes of text (``{},``), so a text inflated
#: from a small compressed body can cost a thousand times that body once parsed: 90 KB
#: of index pages became 6.2 GB and 55 s. Such a text's values -- counted by its commas:
#: every value but a container's first follows one -- may number at most this many per
#: byte of the body it came from (plus ``_SLACK``). Valid texts hold at most 7: TOCs,
#: tar-splits and index pages of 130k empty files, their test writer's and skopeo's
#: (docs/reliability.md). There is no floor: an index of many tiny pages would multiply it.
VALUES_PER_PACKED_BYTE = 64
_SLACK = 64


def loads(
    data: str | bytes | bytearray, *, packed: int | None = None, max_values: int | None = None
) -> Any:
    """``json.loads(data)``, where a document nested deeper than the parser can follow,
    or holding more values than it may, is a ``ValueError``, like any other document it
    cannot read.

    ``packed`` is the size of the compressed body ``data`` was inflated from: the values
    it may hold follow from it (``VALUES_PER_PACKED_BYTE``). ``max_values`` bounds them
    outright, for a text read whole from a source that does not say how small it was.

    json's scanner goes one call deeper per array or object level, and past the
    interpreter's recursion limit (about 1,000 levels: a 1 KB body of ``[``) it raises
    ``RecursionError``, which the ``except ValueError`` around each parse of something
    read from outside would let through as a bare traceback."""
    check(data, packed=packed, max_values=max_values)
    try:
        return _loads(data)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply to read") from None


def check(
    data: str | bytes | bytearray, *, packed: int | None = None, max_values: int | None = None
) -> None:
    """A ``ValueError`` if ``data`` holds more JSON values than :func:`loads` with these
    arguments may read (for a text parsed some other way, a line at a time)."""
    if packed is not None:
        limit = VALUES_PER_PACKED_BYTE * packed + _SLACK
        max_values = limit if max_values is None else min(max_values, limit)
    if max_values is None or len(data) < max_values:  # (fewer commas than that, surely)
        return
    commas = data.count(",") if isinstance(data, str) else data.count(b",")
    if commas >= max_values:
        raise ValueError(
            f"the JSON document holds {commas + 1} or more values"
            + (f", from {packed} compressed bytes" if packed is not None else "")
            + f"; at most {max_values} are read"
        )


def load(handle: IO[str] | IO[bytes]) -> Any:
    """:func:`loads` of what ``handle`` holds."""
    return loads(handle.read())
