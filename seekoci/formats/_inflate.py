"""The fastest raw-deflate decoder at hand, for decoding spans.

python-isal's ``isal_zlib`` inflates about twice as fast as zlib (measured here, one
core, a 16 MB shared-library corpus: 513 MB/s against 179 MB/s; zlib-ng 477 MB/s) and
releases the GIL like zlib, so spans decoded on two threads use both cores. It is a
dependency of the default install; without it (a platform with no wheel) spans decode
with zlib, byte for byte the same. The index build keeps ctypes zlib: it must stop at
deflate block boundaries (``Z_BLOCK``), which isal's zlib-compatible API does not offer.
"""

from __future__ import annotations

import zlib
from typing import Any

_fast: Any
try:
    from isal import isal_zlib as _fast
except ImportError:  # pragma: no cover - a platform without isal wheels
    _fast = None

_ng: Any
try:
    from zlib_ng import zlib_ng as _ng  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - zlib-ng is a dependency
    _ng = None

#: the exceptions a corrupt stream raises, from any of the decoders
INFLATE_ERRORS: tuple[type[Exception], ...] = tuple(
    m.error for m in (zlib, _fast, _ng) if m is not None
)

#: which decoder spans are decoded with ("isal" or "zlib"), for reports and benchmarks
INFLATER = "zlib" if _fast is None else "isal"


def _cut_stream_module() -> Any:
    """The decoder for the start of a span: the library the build pass measured its chunk
    marks with (zlib-ng when it builds, as by default; else zlib), so that the chunks a mark
    names decode to at least the mark."""
    from ._zlib import library_name

    if _ng is not None and library_name().startswith("zlib-ng"):
        return _ng
    return zlib


def raw_inflater(window: bytes | None, *, whole: bool = True) -> Any:
    """A decompressobj for raw deflate (no header) primed with ``window`` (up to 32 KiB of
    history), from isal when it is installed, else zlib; both answer ``decompress(data,
    max_length)``, ``unconsumed_tail``, ``unused_data`` and ``eof`` alike.

    ``whole=False``: the input is only the start of the stream (the first chunks of a
    span). Then the build's own library: chunk marks promise what it makes of a cut stream,
    and decoders differ there -- isal keeps back the last bytes of an unfinished block
    (measured: 7,934 bytes where zlib gave 7,936), zlib gives less than zlib-ng (1,000
    random 4 KiB reads of a 257 MB file: 3 of them needed a second request with zlib
    against marks zlib-ng measured)."""
    if not whole:
        module: Any = _cut_stream_module()
    else:
        module = _fast if _fast is not None else zlib
    return module.decompressobj(-15, zdict=window) if window else module.decompressobj(-15)


def gzip_inflater() -> Any:
    """A decompressobj for one gzip member (header, deflate data, CRC-32 and size checked),
    from isal when it is installed, else zlib."""
    module = _fast if _fast is not None else zlib
    return module.decompressobj(31)


#: isal's reader of gzip members back to back, written in C: one call decodes them all and
#: leaves the GIL once, not once a member. A name of isal's own (``_GzipReader``, what its
#: ``igzip`` reads with), so looked up, not imported: an isal without it leaves each
#: chunk to its own call (see :func:`gunzip_members`)
_members_reader: Any = getattr(_fast, "_GzipReader", None)
#: what it raises for members that are not whole or not gzip (EOFError: cut short;
#: OSError: BadGzipFile, a bad CRC-32 or length)
_MEMBERS_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, ValueError, *INFLATE_ERRORS)


def gunzip_members(data: bytes | bytearray | memoryview, size: int) -> bytearray | None:
    """Whole gzip members back to back in ``data``, decoded by one call into a buffer of
    ``size`` bytes: None unless they decode to exactly ``size`` bytes (each member's CRC-32
    and length checked by the reader), or when isal has no such reader."""
    if _members_reader is None:
        return None
    out = bytearray(size)
    view = memoryview(out)
    done = 0
    try:
        reader = _members_reader(data)
        while done < size:
            n = reader.readinto(view[done:])
            if not n:
                return None  # short
            done += n
        if reader.read(1):
            return None  # longer than said
    except _MEMBERS_ERRORS:
        return None
    return out
