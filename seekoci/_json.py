"""JSON documents from outside the process -- a registry's answers, manifests, configs,
TOCs, index pages, model headers, Docker's config: :func:`loads` is ``json.loads`` for
them."""

from __future__ import annotations

from json import loads as _loads
from typing import IO, Any

#: A parsed value costs tens of bytes of memory (an empty object 64, a list 56, a string
#: 50 and up) for as little as two bytes of text (``{},`` or ``[[[``), so a text inflated
#: from a small compressed body can cost a thousand times that body once parsed: 90 KB of
#: index pages became 6.2 GB and 55 s. Such a text's values -- counted by the commas and
#: opening brackets before them: every value but a container's first follows a comma, and
#: a container's first follows its bracket -- may number at most this many per byte of the
#: body it came from, plus ``_SLACK``. Valid texts of the most compressible kind hold
#: about 7 (TOCs, tar-splits and index pages of 130k empty files); ~60 takes hundreds of
#: identical xattrs on every file, which is what a caller's ``min_values`` is for.
VALUES_PER_PACKED_BYTE = 64
_SLACK = 64

#: The most memory a bounded text may take once decoded when it is not all Latin-1: one
#: character past U+00FF makes Python keep every character of the text in 2 bytes, one
#: past U+FFFF in 4 -- and a string value of it as well. (A text of Latin-1 is kept as
#: it came, within its reader's own bound.) A text inflated from a large body may take
#: ``WIDE_DECODED_PER_PACKED_BYTE`` per byte of that body instead: a valid zstd:chunked
#: TOC of 430k files (~140 MiB) with one emoji in one name decodes to 560 MiB.
MAX_WIDE_DECODED = 512 << 20
#: A TOC packs ~6x (the bench layer's: 17.5 MB from 3.0 MB), 23 bytes a packed byte once
#: decoded at 4 bytes a character. ``packed`` is every byte the reader was served for the
#: text (a TOC's range, padding after its frame included): a body under 2 MiB stops at
#: ``MAX_WIDE_DECODED``, and a larger one buys 256 decoded bytes a byte, padded or not.
#: (The values bound, counted the same way, allows far more: 64 values of ~70 bytes each.)
WIDE_DECODED_PER_PACKED_BYTE = 256
#: ... and never more than this: a TOC at its readers' 512 MiB cap, from a body of 8 MiB
#: or more (a native index's directory may inflate to 1 GiB: its wide form stops here).
MOST_WIDE_DECODED = 2 << 30

# bytes.translate(None, _DROP) keeps a value's marks and the lead bytes of characters past
# U+00FF (C4-DF: two-byte sequences from U+0100; E0-EF: three-byte; F0 and up: four-byte)
_MARKS = b",[{"
_DROP = bytes(b for b in range(256) if b not in _MARKS and b < 0xC4)
_BELOW_4 = bytes(range(0xF0))


def loads(
    data: str | bytes | bytearray,
    *,
    packed: int | None = None,
    max_values: int | None = None,
    min_values: int = 0,
) -> Any:
    """``json.loads(data)``, where a document nested deeper than the parser can follow,
    or holding more than it may, is a ``ValueError``, like any other document it cannot
    read.

    ``packed`` is the size of the compressed body ``data`` was inflated from: the values
    it may hold follow from it (``VALUES_PER_PACKED_BYTE``), and never fewer than
    ``min_values`` (for a document a layer has one of, which cannot multiply).
    ``max_values`` bounds them outright, for a text read whole from a source that does not
    say how small it was. Pass a bounded text as bytes: its width is checked before it is
    decoded (:func:`wide_limit`).

    json's scanner goes one call deeper per array or object level, and past the
    interpreter's recursion limit (about 1,000 levels: a 1 KB body of ``[``) it raises
    ``RecursionError``, which the ``except ValueError`` around each parse of something
    read from outside would let through as a bare traceback."""
    check(data, packed=packed, max_values=max_values, min_values=min_values)
    try:
        return _loads(data)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply to read") from None


def limit(packed: int, min_values: int = 0) -> int:
    """How many values a text inflated from ``packed`` bytes may hold."""
    return max(min_values, VALUES_PER_PACKED_BYTE * packed + _SLACK)


def wide_limit(packed: int | None) -> int:
    """The most bytes a text not all Latin-1, inflated from ``packed`` bytes, may take once
    decoded."""
    if packed is None:
        return MAX_WIDE_DECODED
    return min(MOST_WIDE_DECODED, max(MAX_WIDE_DECODED, WIDE_DECODED_PER_PACKED_BYTE * packed))


def check(
    data: str | bytes | bytearray,
    *,
    packed: int | None = None,
    max_values: int | None = None,
    min_values: int = 0,
    whole: bool = True,
) -> None:
    """A ``ValueError`` if ``data`` holds more than :func:`loads` with these arguments may
    read (for a text parsed some other way, a line at a time: not ``whole``, its width is
    the parser's to bound)."""
    if packed is not None:
        most = limit(packed, min_values)
        max_values = most if max_values is None else min(max_values, most)
    if max_values is None:
        return
    if isinstance(data, str):  # (no reader of bounded texts passes one: counted alike)
        data = data.encode("utf-8", "surrogatepass")
    values, width = _marks(data)
    if width > 1 and whole and len(data) * width > (wide := wide_limit(packed)):
        raise ValueError(
            f"the JSON document's {len(data)} bytes would decode to {len(data) * width} "
            f"({width} bytes a character); at most {wide} are allowed"
            + (f" for {packed} compressed bytes" if packed is not None else "")
        )
    if values >= max_values:
        raise ValueError(
            f"the JSON document holds {values + 1} or more values"
            + (f", from {packed} compressed bytes" if packed is not None else "")
            + f"; at most {max_values} are read"
        )


def _marks(data: bytes | bytearray) -> tuple[int, int]:
    """(values, bytes a character once decoded, 1, 2 or 4) of a bounded text, 16 MiB at
    a time (a text of nothing but marks keeps them all)."""
    values = width = 0
    step = 16 << 20
    for at in range(0, len(data), step):
        marks = data[at : at + step].translate(None, _DROP)  # (~1.1 GB/s; a short result)
        wide = len(marks.translate(None, _MARKS))
        values += len(marks) - wide
        if wide:
            width = max(width, 4 if marks.translate(None, _BELOW_4) else 2)
    # an ASCII text whose escapes name characters past U+00FF (not \u00XX) makes string
    # values of 2 or 4 bytes a character: taken as 4, what a surrogate pair's makes
    # (a backslash looked for first: memchr, where a two-byte search takes 8 ms for 8 MB)
    if width < 4 and data.find(b"\\") >= 0 and data.count(b"\\u") > data.count(b"\\u00"):
        width = 4
    return values, max(width, 1)


def load(handle: IO[str] | IO[bytes]) -> Any:
    """:func:`loads` of what ``handle`` holds."""
    return loads(handle.read())
