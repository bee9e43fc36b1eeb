"""A layer: a range source + an index + caches -> entries and bytes.

``Layer`` keeps the layer's identity, the lifecycle of its index and lookups by name. The
index comes, in this order, from memory, the cache directory, a published index or a build
(:class:`seekoci.build.IndexBuild`, one forward pass that can stop early and resume).

Bytes come from :class:`seekoci.spans.SpanReader` (fetched, verified, kept, decoded span by
span) through the read pipeline (:mod:`seekoci.pipeline`), which fetches runs of spans with
large range requests and decodes them in parallel, in order.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

from . import formats
from . import spans as _spans
from .build import (
    CHUNK_SIZE,
    FORWARD_WINDOW,
    SCAN_GATE,
    IndexBuild,
    PassMeter,
    SpoolLost,
    Tee,
    exiting,
    scan_first_wanted,
    window_range,
)
from .cache import Cache
from .errors import FormatError
from .fileobj import RangeFile, Stream
from .formats.base import CHECK_COMPRESSED, ChunkTable, Span
from .formats.entries import EntryTable, NameLookup
from .formats.estargz import LEGACY_FOOTER_SIZE as LEGACY_STARGZ_FOOTER
from .formats.estargz import parse_footer as estargz_footer
from .formats.index import (
    LayerIndex,
    parse_cached,
    record_of,
    write_index,
)
from .formats.plugin import TAIL_BYTES
from .formats.tar import TarEntry, normalize_name
from .pipeline import MAX_WINDOW, BytesStream, SpanStream
from .source import RangeSource
from .spans import SpanReader
from .tree import Tree

if TYPE_CHECKING:
    from ._reopen import LayerOrigin
    from .fileinfo import FileInfo
    from .formats.pages import PagedEntries, PagedSpans
    from .remote import RemoteIndexes

__all__ = ["CHUNK_SIZE", "DEFAULT_SPAN_SIZE", "Layer", "Progress"]

log = logging.getLogger("seekoci")

#: Uncompressed bytes between checkpoints. 1 MiB keeps a small-file read near 0.5 MB of
#: compressed transfer while the index stays ~1-2% of the layer (windows are compressed).
DEFAULT_SPAN_SIZE = 1 << 20

#: progress(layer_digest_or_name, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]

TOOL = "seekoci 0.1.0"


class Layer:
    """One layer blob, readable by path or by offset in its uncompressed tar stream."""

    def __init__(
        self,
        source: RangeSource,
        *,
        cache: Cache,
        digest: str | None = None,
        media_type: str | None = None,
        size: int | None = None,
        annotations: dict[str, str] | None = None,
        span_size: int = DEFAULT_SPAN_SIZE,
    ) -> None:
        self.source = source
        self.digest = digest
        self.size_known = size is not None
        self.size = source.size if size is None else size
        self.annotations = dict(annotations or {})
        self.span_size = span_size
        self._cache = cache
        self._declared_media_type = media_type
        self._compression = formats.compression_of(media_type) if media_type else None
        self._index: LayerIndex | None = None
        self._index_source = "none"  # none | cache | built | partial
        self._format: formats.LayerFormat | None = None
        self._embedded_tried = False  # the blob's own TOC was looked for
        self._tail: bytes | None = None  # the blob's last bytes, once read
        self._seekable: bool | None = None  # ends with a zstd seek table
        self._tar: Layer | None = None  # tar-stream reads of a payload-space index
        self._passed: Layer | None = None  # a pass-built index of an embedded index's blob
        self._build: IndexBuild | None = None
        self._lock = threading.RLock()
        #: the index the span codec was looked up for, and that codec (under _codec_lock)
        self._span_codec_of: tuple[LayerIndex | None, formats.LayerFormat] | None = None
        self._codec_lock = threading.Lock()
        self.spans = SpanReader(
            source, cache, _Tables(self), name=self.name, codec=self._span_codec
        )
        self._by_name: dict[str, int] = {}  # name -> position in the entries
        self._named_upto = 0
        self._tree: Tree | None = None
        #: called as progress(name, bytes_done, bytes_total) while this layer's index builds
        self.progress: Progress | None = None
        #: indexes published in the registry (set by open_image for registry images)
        self.remote: RemoteIndexes | None = None
        self._remote_tried = False
        self._cache_refused = False  # the cached index was malformed: build instead
        self._building = threading.Event()  # a pass is open (readable without the lock)
        #: the last bytes a finished forward-only pass decoded (see _complete)
        self._pass_end: tuple[int, tuple[bytes, ...]] | None = None
        #: what this layer's passes wait on (readable without the layer's lock)
        self.pass_meter = PassMeter()

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.digest or self.source.name

    @property
    def compression(self) -> str:
        if self._compression is None:
            head = self.source.read_range(0, min(self.size, 512))
            try:
                self._compression = formats.detect_compression(head)
            except FormatError as exc:
                raise FormatError(f"layer {self.name}: {exc}") from None
        return self._compression

    @property
    def media_type(self) -> str:
        if self._declared_media_type:
            return self._declared_media_type
        return formats.media_type_for(self.compression)

    @property
    def format(self) -> str:
        """``tar``, ``estargz`` or ``zstd:chunked``: from the manifest's annotations, else
        from the blob's footer (one small range read, once)."""
        return self._layer_format().layer_format

    def _layer_format(self) -> formats.LayerFormat:
        """The most specific format plug-in of this layer (annotations, then the tail)."""
        if self._format is None:

            def tail() -> bytes:
                # a blob by digest never changes: its tail is kept in the cache directory
                n = min(self.size, TAIL_BYTES)
                key, at = self.digest or "", self.size - n
                kept = self._cache.load_range(key, at, n) if key else None
                if kept is None:
                    kept = self.source.read_range(at, n)
                    if key:
                        self._cache.save_range(key, at, kept)
                self._tail = kept
                return kept

            self._format = formats.detect(self.compression, self.annotations, tail)
        return self._format

    def random_access_known(self) -> bool | None:
        """:attr:`random_access` when it is known without a pass over the blob (at most a
        small read of its end), else None."""
        if self.compression != "zstd" or self._layer_format().layer_format != "tar":
            return True
        index = self._index
        if index is not None:
            return len(index.spans) > 1
        if self._seekable is None:  # one small read, once
            from .formats import seekable  # zstd layers only

            n = min(self.size, seekable.FOOTER_SIZE)
            self._seekable = bool(n) and seekable.is_seekable(
                self.source.read_range(self.size - n, n)
            )
        return True if self._seekable else None

    def format_notes(self) -> list[str]:
        """What a user should know about how this layer is read and verified (for
        ``inspect``): legacy stargz without digests, forward-only zstd, what verifies an
        embedded TOC."""
        notes: list[str] = []
        fmt = self._layer_format()
        if fmt.name == "estargz" and self._tail is not None:
            found = estargz_footer(self._tail)
            if found is not None and found[1] == LEGACY_STARGZ_FOOTER:
                notes.append(
                    "legacy stargz: no digests in its TOC"
                    + (
                        ", read through a pass checked against the layer digest"
                        if self.digest
                        else ""
                    )
                )
        if self._index is not None and self._index.verification:
            notes.append(self._index.verification)
        if self.random_access_known() is False:
            notes.append("single zstd frame: read forward only")
        return notes

    @property
    def hidden_names(self) -> frozenset[str]:
        """Root-level names of this layer's tar that the image's filesystem does not show
        (eStargz's landmark files and ``stargz.index.json``), from what is known without a
        read: the annotations, the format detected already, the embedded index in use."""
        fmt = self._format
        if fmt is None and self._index is not None and self._index.format:
            fmt = formats.get(self._index.format)
        if fmt is None and self._compression is not None:
            fmt = formats.detect(self._compression, self.annotations, None)
        return fmt.hidden_names if fmt is not None else frozenset()

    @property
    def random_access(self) -> bool:
        """True when, once indexed, any offset can be read without decoding from the start
        of the blob. Formats with their own TOC and uncompressed and gzip layers always can;
        a zstd layer only when it has several frames (a seek table says so at once,
        otherwise the index is built to find out)."""
        known = self.random_access_known()
        return known if known is not None else len(self.index().spans) > 1

    @property
    def index_status(self) -> str:
        """``none``, ``partial`` (a pass stopped early), ``cached`` (loaded from the cache
        directory), ``native`` or ``soci`` (published in the registry, read from there),
        ``embedded`` (the blob's own TOC) or ``built`` (by this process)."""
        if self._index is None and self._build is None and self.digest is not None:
            self._try_cache_dir()  # local only: a status never downloads an index
        build = self._build
        if build is not None and build.scanned and build.indexed:
            with self._lock:
                self._try_cache()  # the index a scan made behind it
        if self._index is None and self._build is not None:
            return "partial"
        if self._index is None:
            published = self.published_indexes()
            if published:
                return "native" if "native" in published else "soci"
        return self._index_source

    def published_indexes(self) -> list[str]:
        """Kinds of index published for this layer in the registry (``native``, ``soci``)."""
        if self.remote is None or self.digest is None:
            return []
        return self.remote.describe(self.digest)

    @property
    def uncompressed_size(self) -> int:
        known = self.uncompressed_size_known(self.index())
        return known if known is not None else self._tar_view().uncompressed_size

    def uncompressed_size_known(self, index: LayerIndex | None = None) -> int | None:
        """The tar stream's size when ``index`` (default: the one in use, if any)
        tells it without a pass: an embedded TOC with payload offsets only does not, unless
        the blob lays out its tar stream too (zstd:chunked's tar-split) or the manifest
        declares it (``io.containers.estargz.uncompressed-size``)."""
        index = index if index is not None else self._index
        if index is None:
            return None
        if index.tar_offsets:
            return index.uncompressed_size
        if index.tar_index is not None:  # the blob's own layout of its tar stream
            return index.tar_index().uncompressed_size
        declared = self.annotations.get("io.containers.estargz.uncompressed-size", "")
        return int(declared) if declared.isdigit() else None

    # -- the index --------------------------------------------------------------------------
    def _try_cache(self) -> bool:
        """Load an index without building one: the cache directory, then a published one
        (or take the index a scan-first pass has made behind it)."""
        if self._index is not None:
            return True
        build = self._build
        if build is not None and build.scanned and build.indexed:
            self._adopt(build)
            return True
        if self.digest is not None and self._try_cache_dir():
            return True
        if self._try_embedded():  # the blob's own TOC (eStargz, zstd:chunked)
            return True
        if self.digest is None:
            return False
        if self.remote is not None and self._build is None and not self._remote_tried:
            self._remote_tried = True
            loaded = self.remote.load(self.digest, media_type=self.media_type, blob_size=self.size)
            if loaded is not None:
                self._set_index(*loaded)
                return True
        return False

    # -- an index the blob carries ----------------------------------------------------------
    def _try_embedded(self) -> bool:
        """Use the index the blob carries (eStargz, zstd:chunked TOC), once. A layer with a
        digest takes it only when the manifest's annotations vouch for the TOC (a pass
        verifies against the digest instead); a malformed TOC is an error."""
        if self._embedded_tried or self._build is not None:
            return False
        self._embedded_tried = True
        if self.digest is not None and self._format is None:
            # a TOC must be vouched for by an annotation here: no tail read without one
            fmt = formats.detect(self.compression, self.annotations, None)
        else:
            fmt = self._layer_format()
        index = fmt.embedded_index(
            self.source.read_range,
            self.size,
            self.annotations,
            name=f"layer {self.name}",
            require_verified=self.digest is not None,
        )
        if index is None:
            return False
        index.layer_digest = self.digest or ""
        self._set_index(index, "embedded")
        return True

    def _tar_view(self) -> Layer:
        """A sibling layer over the same blob for tar-stream reads when the embedded index
        knows only where file payloads are: indexed from the blob's own layout of the tar
        stream when it has one (zstd:chunked's tar-split: no pass), else by a pass (eStargz;
        :meth:`_pass_view`)."""
        with self._lock:
            tar, index = self._tar, self._index
        if tar is not None:
            return tar
        if index is None or index.tar_index is None:
            return self._pass_view()
        made = index.tar_index()  # CPU only (the tar-split came with the TOC): no lock held
        made.layer_digest = self.digest or ""
        with self._lock:
            if self._tar is None:
                tar = self._sibling()
                tar._set_index(made, "embedded")
                self._tar = tar
            return self._tar

    def _pass_view(self) -> Layer:
        """A sibling layer over the same blob with a pass-built index: what an embedded
        index's layer publishes and saves (:meth:`pass_index`), and reads tar-stream ranges
        from when the blob has no layout of its tar stream."""
        with self._lock:
            if self._passed is None:
                self._passed = self._sibling()
            return self._passed

    def _sibling(self) -> Layer:
        sibling = Layer(
            self.source,
            cache=self._cache,
            digest=self.digest,
            media_type=self._declared_media_type,
            size=self.size if self.size_known else None,
            span_size=self.span_size,
        )
        sibling._embedded_tried = True
        sibling.remote = self.remote
        sibling.progress = self.progress
        return sibling

    def pass_index(self, progress: Progress | None = None) -> LayerIndex:
        """An index seekoci's index file can hold (what is published and saved):
        this layer's own, or -- when that is the blob's embedded TOC, whose spans are checked
        after decoding -- one built by a pass over the same blob."""
        index = self.index(progress)
        if index.format:
            return self._pass_view().index(progress)
        return index

    def _payload_space(self) -> bool:
        """Whether the index in use has payload offsets, not tar-stream ones."""
        with self._lock:
            self._try_cache()
            return self._index is not None and not self._index.tar_offsets

    def _try_cache_dir(self) -> bool:
        assert self.digest is not None
        if self._cache_refused:
            return False
        found = self._cache.index_reader(self.digest)
        if found is None:
            return False
        size, read = found
        where = f"cached index of layer {self.digest}"
        try:
            # pages checked now, parsed when a lookup needs them: a damaged file is
            # rebuilt here, a malformed page later (see _loaded_index_failed)
            index = parse_cached(read, size, expected_digest=self.digest, where=where)
        except (FormatError, OSError):
            return False  # damaged or from another version: rebuild and overwrite
        if index.blob_size != self.size:
            return False
        self._set_index(index, "cached")
        return True

    def _set_index(self, index: LayerIndex, source: str) -> None:
        self._index = index
        self._index_source = source
        self._compression = self._compression or index.compression
        self._tree = None
        if self._build is not None:
            self._build.close()
            self._build = None
            self._building.clear()

    def index(self, progress: Progress | None = None, *, tee: Tee | None = None) -> LayerIndex:
        """The complete index: loaded from the cache or built (and then saved).

        ``tee(tar_offset, data, entries)`` sees every uncompressed byte of a build that
        starts here (not one that an earlier lookup had started: see :meth:`pass_started`)."""
        with self._lock:
            if self._index is not None or self._try_cache():
                assert self._index is not None
                return self._index
            progress = progress or self.progress
            # one full build per layer among the processes sharing the cache directory:
            # the others wait, then find the index there
            lock = self._cache.build_lock(self.digest) if self.digest else contextlib.nullcontext()
            with lock:
                if self.digest is not None and self._try_cache_dir():
                    assert self._index is not None
                    return self._index
                for _ in range(2):  # once more with a pass of its own if a spool was lost
                    started = self._build is not None
                    build = self._builder()
                    build.keep_spans = False
                    build.forward = None  # a whole pass serves no forward reads
                    if tee is not None and not started:
                        build.tee = tee
                    try:
                        while not build.done:
                            build.step()
                            if progress is not None:
                                progress(self.name, build.fed, self.size)
                        build.wait_spans(None)  # a scan's index, made behind it
                    except SpoolLost:
                        self._abandon_build()
                        continue
                    except BaseException:
                        self._abandon_build()
                        raise
                    return self._adopt(build)
                raise AssertionError("a pass of its own does not spool")

    def pass_started(self) -> bool:
        """Whether a build pass stopped part way (a lookup indexed only as far as it needed)."""
        with self._lock:
            return self._build is not None

    def _builder(self, *, scan: bool = False) -> IndexBuild:
        if self._build is None:
            scan = scan and self.digest is not None and scan_first_wanted(self.size)
            self._build = IndexBuild(self, self.compression, scan=scan)
            self._building.set()
        return self._build

    @property
    def saves_index(self) -> bool:
        """Whether an index built here is saved (a layer digest and a cache directory)."""
        return self.digest is not None and self._cache.persistent

    def _indexed_in_background(self, build: IndexBuild) -> None:
        """The index behind a scan is made (on its thread): take it, unless a lookup takes
        it first (see :meth:`_try_cache`) or the pass was dropped. At the process's exit
        (the main thread gone) it waits a while for the layer, then leaves the index."""
        while not self._lock.acquire(timeout=1.0):
            if exiting():
                return
        try:
            if self._build is build and build.done:
                self._adopt(build)
        except Exception:  # an unwritable cache: the next lookup takes it, or rebuilds
            log.debug("layer %s: the index made after a scan was not kept", self.name)
        finally:
            self._lock.release()

    def _abandon_build(self) -> None:
        if self._build is not None:
            self._build.close()
            self._build = None
            self._building.clear()
        self._by_name.clear()
        self._named_upto = 0

    def _complete(self, build: IndexBuild) -> LayerIndex:
        build.wait_spans(None)  # the spans of the index behind a scan, all of them
        indexer = build.indexer
        # a forward-only stream (one zstd frame) has one span: a read of the tar's last bytes
        # right after the pass is served from what the pass ended with, not a decode anew
        # (and a scan's last bytes, which _advance may have taken already)
        if build.tail is not None or build.scan is None:
            self._pass_end = build.tail
        index = LayerIndex(
            layer_digest=self.digest or "",
            media_type=self.media_type,
            compression=build.compression,
            blob_size=build.fed,
            uncompressed_size=indexer.uncompressed_size,
            span_size=self.span_size,
            spans=list(build.spans),
            entries=build.entries,
            tool=TOOL,
            chunk_size=getattr(indexer, "chunk_size", 0),
        )

        def record(i: int) -> bytes:
            return record_of(indexer.chunk_table(i), indexer.packed_window(i))

        # windows stay where the indexer put them (a temporary file): location (i, length)
        index.window_locations = [
            (i, 36 * span.chunk_count + indexer.packed_length(i))
            for i, span in enumerate(index.spans)
        ]
        index.read_windows = lambda i, n: record(i)
        self._set_index(index, "built")
        if self.digest is not None and self._cache.persistent:  # verified in _finish
            try:
                self._cache.write_index(self.digest, lambda out: write_index(out, index, record))
            except OSError:
                pass  # an unwritable cache costs a rebuild next time, not this read
        return index

    def _adopt(self, build: IndexBuild) -> LayerIndex:
        """:meth:`_complete`, dropping the pass if that fails (the next lookup starts anew
        instead of failing the same way for ever)."""
        try:
            return self._complete(build)
        except BaseException:
            self._abandon_build()
            raise

    def _advance(self, until: Callable[[], bool], *, scan: bool = False) -> None:
        """Run the build until ``until()`` holds or the blob ends (``scan``: a lookup's, so
        a new pass scans first, see :mod:`seekoci.build`)."""
        build = self._builder(scan=scan)
        gate = SCAN_GATE.scanning() if build.scan is not None else contextlib.nullcontext()
        try:
            with gate:
                # once the whole blob is in, finish: no more bytes, and the digest is checked
                while not build.done and (build.read_all or not until()):
                    build.step()
        except BaseException:
            self._abandon_build()
            raise
        build.pause()  # the spans just decoded, for the reads that follow
        if build.done:
            if build.indexed:
                self._adopt(build)
            elif build.tail is not None:  # the scan's last bytes, until the index is made
                self._pass_end, build.tail = build.tail, None

    # -- lookups ----------------------------------------------------------------------------
    def _entries(self) -> Sequence[TarEntry]:
        if self._index is not None:
            return self._index.entries
        if self._build is not None:
            return self._build.scanner.entries
        return []

    def _index_names(self) -> None:
        entries = self._entries()
        if self._named_upto > len(entries):
            self._by_name.clear()
            self._named_upto = 0
        start = self._named_upto
        if isinstance(entries, EntryTable | NameLookup):  # names, no entries
            self._by_name.update(entries.name_map(start))
        else:
            for i in range(start, len(entries)):
                if not entries[i].unsafe:
                    self._by_name[entries[i].name] = i
        self._named_upto = len(entries)

    def _named(self, name: str) -> TarEntry | None:
        i = self._by_name.get(name)
        return None if i is None else self._entries()[i]

    def find(self, name: str, *, stop: threading.Event | None = None) -> TarEntry | None:
        """The entry stored under ``name`` (normalised), indexing only as far as needed.

        Without a complete index the pass runs until the entry and its data have gone by,
        so a file near the start of a layer costs only the bytes up to it. ``stop``: a
        lookup another thread may call off (then None means "not seen yet", not "absent";
        the pass stays resumable).
        """
        name = normalize_name(name)
        with self._lock:
            if self._index is not None or self._try_cache():
                entries = self._entries()
                # only the index pages, or the zTOC tables, that may hold it
                if isinstance(entries, NameLookup):
                    try:
                        return entries.lookup(name)
                    except FormatError as exc:
                        if not self._loaded_index_failed(exc):
                            raise
            if self._index is None and not self._try_cache():

                def seen() -> bool:
                    if stop is not None and stop.is_set():
                        return True
                    self._index_names()
                    entry = self._named(name)
                    if entry is None or self._build is None:
                        return False
                    end = entry.data_offset + entry.size
                    spans = self._build.spans
                    if self._build.forward is not None:  # its data went by (zstd pass)
                        return self._build.produced >= end
                    return bool(spans) and spans[-1].uncompressed_end >= end

                self._advance(seen, scan=True)
            self._index_names()
            return self._named(name)

    @property
    def building(self) -> bool:
        """True while an index pass over the blob is open (any thread may ask, at any time)."""
        return self._building.is_set()

    def indexed_locally(self) -> bool:
        """True when the complete index is at hand without the network (built here, or in
        the cache directory)."""
        with self._lock:
            if self._index is not None:
                return True
            return self.digest is not None and self._build is None and self._try_cache_dir()

    def complete(self) -> bool:
        """True when every entry of the layer is known and checked (its index loaded or
        built, or a scan-first pass went to the end: its checkpoints may still be in the
        making, :meth:`index` waits for them)."""
        with self._lock:
            if self._index is not None or self._try_cache():
                return True
            return self._build is not None and self._build.scanned

    def entries(self) -> Sequence[TarEntry]:
        """Every entry of the layer (builds the whole index)."""
        entries = self.index().entries
        if getattr(entries, "paged", False):  # a native index read by range
            try:
                cast("PagedEntries", entries).load_all()
            except FormatError as exc:
                with self._lock:
                    if not self._loaded_index_failed(exc):
                        raise
                return self.index().entries
        return entries

    def _loaded_index_failed(self, problem: FormatError) -> bool:
        """A page of an index loaded lazily (from the cache directory or the registry)
        turned out malformed: forget that index and build instead (a build replaces a cached
        file). False when there is nothing to fall back from (a build of this process)."""
        source = self._index_source
        if source not in ("cached", "native", "soci"):
            return False
        if source == "cached":
            self._cache_refused = True
        else:  # a published index the registry holds: say so, once
            log.warning("seekoci: published index of layer %s unusable: %s", self.name, problem)
            self._remote_tried = True
        self._index = None
        self._index_source = "none"
        self._tree = None
        self._by_name.clear()
        self._named_upto = 0
        return True

    def tree(self) -> Tree:
        with self._lock:
            if self._tree is None:
                self._tree = Tree.from_entries(self.entries(), layer=self.digest or self.name)
            return self._tree

    # -- bytes ------------------------------------------------------------------------------
    def _spans(self) -> Sequence[Span]:
        if self._index is not None:
            return self._index.spans
        if self._build is not None:
            return self._build.spans
        return []

    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the uncompressed tar stream."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        if self._payload_space():  # an embedded TOC that knows only where payloads are
            return self._tar_view().read_range(offset, length)
        return self._read_spans(offset, length)

    def stream_range(self, offset: int, length: int, *, window: int = MAX_WINDOW) -> Stream:
        """Bytes ``[offset, offset + length)`` of the tar stream as pieces, in order,
        fetched in large requests and inflated in parallel at most ``window`` bytes ahead of
        the reader (see :mod:`seekoci.pipeline`). Close it when done early."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        if self._payload_space():
            return self._tar_view().stream_range(offset, length, window=window)
        return self.stream_entry_range(offset, length, window=window)

    def read_entry_range(self, offset: int, length: int) -> bytes:
        """:meth:`read_range` in the space of this layer's entries' ``data_offset`` (the tar
        stream, or an embedded index's payload space): ``entry.data_offset + k`` is byte
        ``k`` of the entry's file whichever index the layer is read through."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        return self._read_spans(offset, length)

    def stream_entry_range(self, offset: int, length: int, *, window: int = MAX_WINDOW) -> Stream:
        """:meth:`stream_range` in the space of this layer's entries' ``data_offset`` (the
        tar stream, or an embedded index's payload space)."""
        found = self._locate(offset, length)
        if found is None:
            return BytesStream(b"")
        if isinstance(found, bytes):
            return BytesStream(found)
        spans, first, end = found
        return SpanStream(self.spans, spans, first, offset, end, window=window)

    def _read_spans(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the index's uncompressed space (the tar
        stream, or an embedded index's payload space)."""
        found = self._locate(offset, length)
        if found is None:
            return b""
        if isinstance(found, bytes):
            return found
        spans, first, end = found
        span = spans[first]
        if span.uncompressed_end >= end and span.uncompressed_size <= _spans.LARGE_SPAN:
            # one span: its reader fetches only the chunks up to ``end`` (a small read)
            a, b = offset - span.uncompressed_start, end - span.uncompressed_start
            if span.check != CHECK_COMPRESSED:  # checked after decoding (an embedded TOC)
                return self.spans.decoded(span)[a:b]
            return self.spans.data(span, b)[a:b]
        with SpanStream(self.spans, spans, first, offset, end) as stream:
            return b"".join(stream)

    def _locate(self, offset: int, length: int) -> tuple[Sequence[Span], int, int] | bytes | None:
        """The spans of the layer (indexed at least as far as the range), the one that
        holds ``offset``, and where the range ends; None for an empty range; the bytes
        themselves when a forward-only pass (one zstd frame) still holds them."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = offset + length
        with self._lock:
            build = self._build
            if self._index is None and build is not None and build.scan is not None:
                served = self._from_scan(build, offset, end)
                if served is not None:
                    return served
            if self._index is None and not self._try_cache():
                self._advance(
                    lambda: (
                        (bool(self._spans()) and self._spans()[-1].uncompressed_end >= end)
                        or self._forward_has(offset, end)
                    )
                )
                build = self._build
                served = build.forward_range(offset, end) if build is not None else None
                if served is not None:  # a forward-only read, from the pass
                    return served
            if self._pass_end is not None:
                served = window_range(*self._pass_end, offset, end)
                if served is not None:  # the end of a finished forward-only pass
                    return served
                self._pass_end = None  # the reader moved on: its 32 MiB are not held on to
            spans = self._spans()
            paged = getattr(spans, "paged", False)  # a native index read by range
            if paged:  # its last page may not be loaded
                total = self._index.uncompressed_size if self._index is not None else 0
            else:
                total = spans[-1].uncompressed_end if spans else 0
            end = min(end, total)
            if offset >= end:
                return None
            if self._index is None:  # a pass under way: what it has found so far
                spans = list(spans)
                starts = [s.uncompressed_start for s in spans]
                return spans, bisect.bisect_right(starts, offset) - 1, end
        if paged:
            return spans, cast("PagedSpans", spans).locate(offset), end
        return spans, bisect.bisect_right(self._span_starts(), offset) - 1, end

    def _from_scan(self, build: IndexBuild, offset: int, end: int) -> bytes | None:
        """``[offset, end)`` from a scan-first pass's window (scanning on to it if need be);
        else None once the index behind the scan has the spans up to ``end`` (or the pass
        was dropped: its spool was lost, and a pass of its own takes over)."""
        # a quarter of the window to spare: it drops whole decoded pieces as the scan goes
        if (
            not build.done
            and offset >= build.forward_start
            and end - offset <= FORWARD_WINDOW * 3 // 4
        ):
            self._advance(lambda: self._forward_has(offset, end), scan=True)
            if self._build is not build:  # taken (the index was made) or dropped
                return None
        served = build.forward_range(offset, end)
        if served is None and self._pass_end is not None:
            served = window_range(*self._pass_end, offset, end)
        if served is not None:
            return served
        try:
            build.wait_spans(end)
        except SpoolLost:
            self._abandon_build()
            return None
        except BaseException:
            self._abandon_build()
            raise
        return None  # the caller takes the index if it is made (_try_cache)

    def _forward_has(self, offset: int, end: int) -> bool:
        """Whether a zstd pass went past ``end`` and still holds ``[offset, end)`` (a file
        at the end of the tar counts once the end-of-archive is seen)."""
        build = self._build
        if build is None or build.forward is None:
            return False
        return build.produced >= end and build.forward_start <= offset

    def _span_codec(self) -> formats.LayerFormat:
        """The plug-in that decodes the spans of the index in use (asked once a span: the
        65k chunks of a TOC layer read whole, so it is looked up once an index)."""
        index = self._index
        with self._codec_lock:
            known = self._span_codec_of
        if known is not None and known[0] is index:
            return known[1]
        if index is not None and index.format:
            codec = formats.get(index.format, where=f"layer {self.name}")
        else:  # (compression may read the blob's head: not under the lock)
            codec = formats.codec_for(self.compression, where=f"layer {self.name}")
        with self._codec_lock:
            self._span_codec_of = (index, codec)
        return codec

    def _span_starts(self) -> list[int]:
        index = self._index
        assert index is not None
        starts = getattr(index, "_starts", None)
        if starts is None:
            starts = [s.uncompressed_start for s in index.spans]
            index._starts = starts  # type: ignore[attr-defined]
        return starts

    # -- files ------------------------------------------------------------------------------
    def open_entry(self, entry: TarEntry, name: str | None = None) -> RangeFile:
        if entry.type == "hardlink":
            target = self._link_target(entry)
            if target is None or target.type != "file":
                raise FileNotFoundError(
                    f"hard link {entry.name!r} in layer {self.name} points at missing "
                    f"{entry.linkname!r}"
                )
            entry = target
        return RangeFile(  # entry offsets are in the index's space: _read_spans
            self._read_spans,
            entry.data_offset,
            entry.size,
            name or "/" + entry.name,
            open_stream=lambda offset, length, window: self.stream_entry_range(
                offset, length, window=window
            ),
        )

    def _link_target(self, link: TarEntry) -> TarEntry | None:
        """The entry a hard link names, as it stood when the link was extracted: the last
        entry of that name *before* the link (a later one replaces the name, not the link)."""
        name = normalize_name(link.linkname)
        self.find(name)  # index at least that far
        with self._lock:
            entries = self._entries()
            names = entries.names if isinstance(entries, EntryTable | NameLookup) else None
            for i in range(self._position(entries, link) - 1, -1, -1):
                if (names[i] if names is not None else entries[i].name) == name:
                    candidate = entries[i]
                    if not candidate.unsafe:
                        return candidate
        return None

    @staticmethod
    def _position(entries: Sequence[TarEntry], entry: TarEntry) -> int:
        i = bisect.bisect_left(entries, entry.header_offset, key=lambda e: e.header_offset)
        while i < len(entries) and entries[i] is not entry:
            i += 1
        return i

    def open(self, path: str) -> RangeFile:
        entry = self._lookup(path)
        if entry.type == "dir":
            raise IsADirectoryError(f"{path}: is a directory (layer {self.name})")
        if entry.type not in ("file", "hardlink"):
            raise FileNotFoundError(f"{path}: not a regular file (layer {self.name})")
        return self.open_entry(entry, path)

    def _lookup(self, path: str) -> TarEntry:
        entry = self.find(path)
        if entry is None:
            node = self.tree().lookup(path)
            if node is None:
                raise FileNotFoundError(f"{path}: no such file in layer {self.name}")
            if node.entry is None:  # a directory implied by deeper names
                return TarEntry(normalize_name(path), "dir", 0, 0o755, 0, 0, 0.0)
            return node.entry
        return entry

    def stat(self, path: str) -> FileInfo:
        from .fileinfo import entry_info

        return entry_info(self._lookup(path), "/" + normalize_name(path), self.digest or self.name)

    def listdir(self, path: str = "/") -> list[str]:
        return self.tree().listdir(path)

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        return self.tree().walk(top)

    def build_index(self, progress: Progress | None = None) -> None:
        self.index(progress)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for this layer's queued cache-directory writes (see ``Image.flush``), and
        for the index a scan-first pass that went to the end makes behind it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            build = self._build
            scanned = build is not None and build.scanned
        if scanned:
            assert build is not None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not build.wait_indexed(left):
                return False
            with self._lock:
                if self._build is build and not self._try_cache():
                    return False  # the index failed: the next lookup or index() says why
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._cache.flush(left)

    def __repr__(self) -> str:
        return (
            f"<seekoci.Layer {self.name} {self.media_type} size={self.size} "
            f"index={self._index_source}>"
        )

    def _repr_html_(self) -> str:
        from .html import layers_table

        return layers_table([self])

    # -- pickling: another process opens the layer again (seekoci/_reopen.py) --------------
    #: how to open this layer again (set by open_image and open_layer); None: not picklable
    origin: LayerOrigin | None = None

    def __reduce__(self) -> tuple[object, ...]:
        from ._reopen import reduce_layer

        return reduce_layer(self)


class _Tables:
    """A layer's windows and chunk tables, for its span reader: from the complete index,
    else from the build pass under way."""

    def __init__(self, layer: Layer) -> None:
        self._layer = layer

    def loaded_index(self) -> LayerIndex | None:
        return self._layer._index

    def window(self, span: Span) -> bytes | None:
        index, build = self._layer._index, self._layer._build
        if index is not None:
            return index.window(span.index)
        if build is None:  # another thread's pass failed and was dropped meanwhile
            raise FormatError(f"layer {self._layer.name}: its index pass was abandoned; retry")
        return build.window(span.index)

    def chunk_table(self, span: Span) -> ChunkTable | None:
        if not span.chunk_size:
            return None
        index, build = self._layer._index, self._layer._build
        if index is not None:
            return index.chunk_table(span.index)
        if build is None:
            raise FormatError(f"layer {self._layer.name}: its index pass was abandoned; retry")
        return build.chunk_table(span.index)
