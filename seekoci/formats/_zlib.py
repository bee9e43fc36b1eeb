"""Block-level inflate through the system zlib (ctypes).

Building checkpoints needs ``inflate(..., Z_BLOCK)`` and the ``data_type`` bits it reports,
which Python's ``zlib`` module does not expose. ``indexed_gzip`` does expose checkpoints, but
fed from a stream it seeks backwards and re-reads 2-5x the compressed bytes (measured on this
project's probe: 10.5 MB read for a 5.2 MB blob at 64 KiB spacing), which means either
spooling the blob to disk or fetching it several times. Driving zlib ourselves gives one
forward pass at zlib's native speed, with the checkpoint rule we choose.

The library: zlib-ng when the ``zlib-ng`` Python package is installed (its extension module
carries zlib-ng and exports the native ``zng_`` API, whose ``zng_stream`` has the same layout
as zlib's ``z_stream`` on every platform where ``unsigned long`` is as wide as ``size_t``),
else the system zlib. Same ``Z_BLOCK`` semantics and ``data_type`` bits, so the same
checkpoints either way; zlib-ng inflates ~1.4x faster here (docs/performance.md, "Index
build"). ``SEEKOCI_INFLATE=zlib`` forces the system zlib.

Only the build pass uses this module; resuming at a checkpoint is pure ``zlib`` (see
:mod:`seekoci.formats.gzip`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import FormatError

Z_OK = 0
Z_NO_FLUSH = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_BLOCK = 5

#: ``data_type`` bits after ``inflate(Z_BLOCK)`` (zlib.h): low 3 bits are the unused bits of
#: the last input byte, 64 = inside the final block, 128 = just after an end-of-block code.
DT_UNUSED_BITS = 7
DT_LAST_BLOCK = 64
DT_BLOCK_END = 128

WINDOW_SIZE = 32768


class _ZStream(ctypes.Structure):
    # zlib.h z_stream; uInt is 32-bit, uLong is the platform's C long.
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


class _Library(NamedTuple):
    """The entry points of one loaded inflate library."""

    name: str  # "zlib-ng x.y.z" / "zlib x.y.z"
    init: Any  # (strm, window_bits) -> rc
    inflate: Any
    end: Any
    reset: Any
    get_dictionary: Any
    crc32: Any  # (crc, buf, len) -> crc


_lib: _Library | None = None
_lib_lock = threading.Lock()


def _bind(lib: Any, prefix: str) -> tuple[Any, ...]:
    strm = ctypes.POINTER(_ZStream)
    inflate = getattr(lib, prefix + "inflate")
    inflate.argtypes = [strm, ctypes.c_int]
    end = getattr(lib, prefix + "inflateEnd")
    end.argtypes = [strm]
    reset = getattr(lib, prefix + "inflateReset")
    reset.argtypes = [strm]
    get_dict = getattr(lib, prefix + "inflateGetDictionary")
    get_dict.argtypes = [strm, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)]
    crc32 = getattr(lib, prefix + "crc32")
    # zlib: uLong crc32(uLong, const Bytef *, uInt); zlib-ng: uint32_t for both integers
    word = ctypes.c_uint32 if prefix else ctypes.c_ulong
    crc32.argtypes = [word, ctypes.c_void_p, ctypes.c_uint]
    crc32.restype = word
    return inflate, end, reset, get_dict, crc32


def _load_zlib_ng() -> _Library | None:
    if ctypes.sizeof(ctypes.c_ulong) != ctypes.sizeof(ctypes.c_size_t):
        return None  # zng_stream's size_t fields would not match _ZStream (Windows)
    try:
        from zlib_ng import zlib_ng  # type: ignore[import-not-found,unused-ignore]

        lib = ctypes.CDLL(zlib_ng.__file__)
        version = lib.zlibng_version
        version.restype = ctypes.c_char_p
        init = lib.zng_inflateInit2
        init.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        bound = _bind(lib, "zng_")
    except (ImportError, OSError, AttributeError):
        return None
    return _Library(f"zlib-ng {version().decode()}", init, *bound)


def _load_zlib() -> _Library:
    names = [ctypes.util.find_library("z"), "libz.so.1", "libz.dylib", "zlib1.dll"]
    last: OSError | None = None
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            last = exc
    else:
        raise FormatError(
            "building a gzip index needs the system zlib library (libz), "
            f"which could not be loaded: {last}"
        )
    lib.zlibVersion.restype = ctypes.c_char_p
    version = lib.zlibVersion()
    init2 = lib.inflateInit2_
    init2.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]

    def init(strm: Any, window_bits: int) -> int:
        return int(init2(strm, window_bits, version, ctypes.sizeof(_ZStream)))

    return _Library(f"zlib {version.decode()}", init, *_bind(lib, ""))


def _load() -> _Library:
    global _lib
    with _lib_lock:
        if _lib is None:
            choice = os.environ.get("SEEKOCI_INFLATE", "").strip().lower()
            found = None if choice == "zlib" else _load_zlib_ng()
            _lib = found or _load_zlib()
        return _lib


def library_name() -> str:
    """The inflate library the build pass uses (``zlib-ng 2.x`` or ``zlib 1.x``)."""
    return _load().name


def _library_crc32(data: bytes, crc: int = 0) -> int:
    if not data:
        return crc
    return int(_load().crc32(crc, data, len(data)))


def _pick_crc32() -> Any:
    try:  # ISA-L's folding CRC: ~30 GB/s here, against ~2 (zlib-ng) and ~0.5 (zlib)
        from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]

        return isal_zlib.crc32
    except ImportError:
        return _library_crc32


#: ``crc32(data, crc=0)``: CRC-32 of ``data`` continuing ``crc``, the fastest one installed
#: (python-isal's, else the inflate library's). The build pass checks every member's CRC.
crc32: Callable[[bytes, int], int] = _pick_crc32()


class BlockInflater:
    """A raw-deflate inflater that stops at every block boundary.

    ``feed(data)`` then repeated ``step()`` calls: each returns the output produced until the
    next block end (or until input or the output buffer runs out).
    """

    def __init__(self, out_buffer_size: int = 1 << 18) -> None:
        self._lib = _load()
        self._strm = _ZStream()
        rc = self._lib.init(ctypes.byref(self._strm), -15)
        if rc != Z_OK:
            raise FormatError(f"zlib inflateInit2 failed ({rc})")
        self._out = ctypes.create_string_buffer(out_buffer_size)
        self._out_size = out_buffer_size
        self._in: bytes = b""
        self._in_addr = 0
        self._in_pos = 0
        self._in_stop = 0
        self._dict = ctypes.create_string_buffer(WINDOW_SIZE)
        self._dict_len = ctypes.c_uint(0)
        self.finished = False
        #: The last step stopped for want of input, not at a block end nor with its output
        #: full: another step before more input is fed produces nothing (a call saved, and
        #: with it a hand-over of the GIL: half the steps of an index build).
        self.starved = False
        self._open = True

    # -- input -----------------------------------------------------------------------------
    def feed(self, data: bytes, start: int = 0, stop: int | None = None) -> None:
        """Give the next compressed bytes, ``data[start:stop]`` (replacing whatever input was
        left unused) without copying them."""
        stop = len(data) if stop is None else stop
        if not 0 <= start <= stop <= len(data):
            raise ValueError("bad input range")
        if data is not self._in:
            self._in = data
            self._in_addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        self._in_pos = start
        self._in_stop = stop
        self._strm.next_in = self._in_addr + start
        self._strm.avail_in = stop - start

    @property
    def avail_in(self) -> int:
        return int(self._strm.avail_in)

    def unused_input(self) -> bytes:
        """Input bytes not consumed (after the end of the deflate stream)."""
        n = self.avail_in
        return self._in[self._in_stop - n : self._in_stop] if n else b""

    # -- output ----------------------------------------------------------------------------
    def step(self, flush: int = Z_BLOCK, max_out: int | None = None) -> bytes:
        """Inflate until a block boundary (``Z_BLOCK``), the end of input, or ``max_out``
        bytes of output (at most the buffer size)."""
        strm = self._strm
        room = self._out_size if max_out is None else min(max_out, self._out_size)
        strm.next_out = ctypes.addressof(self._out)
        strm.avail_out = room
        rc = self._lib.inflate(ctypes.byref(strm), flush)
        produced = room - strm.avail_out
        self.starved = (
            strm.avail_in == 0
            and strm.avail_out > 0
            and not (flush == Z_BLOCK and strm.data_type & DT_BLOCK_END)
        )
        if rc == Z_STREAM_END:
            self.finished = True
        elif rc not in (Z_OK, Z_BUF_ERROR):
            msg = strm.msg.decode("ascii", "replace") if strm.msg else f"zlib error {rc}"
            raise FormatError(f"corrupt deflate data: {msg}")
        return ctypes.string_at(ctypes.addressof(self._out), produced) if produced else b""

    @property
    def total_in(self) -> int:
        return int(self._strm.total_in)

    @property
    def total_out(self) -> int:
        return int(self._strm.total_out)

    @property
    def data_type(self) -> int:
        return int(self._strm.data_type)

    def at_block_boundary(self) -> bool:
        """True right after an end-of-block code of a block that was not the last one."""
        dt = self.data_type
        return bool(dt & DT_BLOCK_END) and not (dt & DT_LAST_BLOCK)

    def window(self) -> bytes:
        """The last up-to-32 KiB of output (zlib's sliding window)."""
        rc = self._lib.get_dictionary(
            ctypes.byref(self._strm), self._dict, ctypes.byref(self._dict_len)
        )
        if rc != Z_OK:
            raise FormatError(f"zlib inflateGetDictionary failed ({rc})")
        return self._dict.raw[: self._dict_len.value]

    def reset(self) -> None:
        """Start a new raw deflate stream (next gzip member)."""
        rc = self._lib.reset(ctypes.byref(self._strm))
        if rc != Z_OK:
            raise FormatError(f"zlib inflateReset failed ({rc})")
        self.finished = False
        self.starved = False

    def close(self) -> None:
        if self._open:
            self._lib.end(ctypes.byref(self._strm))
            self._open = False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
