"""``bloat``: what an image could drop, by category, from its tables of contents and (for
``debug-info``) the section headers of its ELF binaries."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..formats import elf
from ..formats.tar import TarEntry
from .results import CATEGORIES, Finding, FindingList
from .usage import StoredFile, inode_of, layer_pass, walk_nodes

if TYPE_CHECKING:
    from ..image import Image
    from ..layer import Layer

#: Binaries whose section headers are read at once.
ELF_THREADS = 8
_READ_CHUNK = 1 << 20

#: Package manager caches (paths in the merged view); `~` is any home directory.
_CACHE_PATTERNS = [
    r"/var/lib/apt/lists/.+",
    r"/var/cache/apt/archives/.+",
    r"/var/cache/apt/[^/]+\.bin",
    r"/var/cache/(?:apk|yum|dnf)/.+",
    r"/(?:root|home/[^/]+)/\.cache/pip/.+",
    r"/(?:root|home/[^/]+)/\.conda/pkgs/.+",
    r"/(?:[^/]+/)*(?:conda|miniconda3?|anaconda3?|miniforge3?|mambaforge)/pkgs/.+",
    r"/opt/conda/pkgs/.+",
]
_CACHE_RE = re.compile("|".join(f"(?:{p})" for p in _CACHE_PATTERNS))
#: File names worth opening as ELF: executables and shared objects, kernel modules, objects.
_ELF_NAME = re.compile(r"\.(?:so(?:\.[0-9][^/]*)?|o|ko|node)$")


def _finding(category: str, sized: Iterable[tuple[str, int]]) -> Finding:
    """Bytes of every (path, size) given; each path once, largest first."""
    items = list(sized)
    by_path: dict[str, int] = {}
    for path, size in items:
        by_path[path] = max(size, by_path.get(path, 0))
    total = sum(size for _, size in items)
    paths = sorted(by_path, key=lambda p: (-by_path[p], p))
    return Finding(category, total, paths)


def _is_bytecode(path: str) -> bool:
    return path.endswith((".pyc", ".pyo")) or "/__pycache__/" in path


def _content_key(f: StoredFile) -> bytes:
    if f.entry.sha256 is not None:
        return f.entry.sha256
    digest = hashlib.sha256()
    with f.layer.open_entry(f.entry) as stream:
        while chunk := stream.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _duplicates(stored: list[StoredFile]) -> Finding:
    """Same content at several paths or in several layers: the copies after the first
    cost their size. Grouped by size first; then by digest (read from the index, or
    computed from the bytes when the index has none)."""
    by_size: dict[int, list[StoredFile]] = defaultdict(list)
    for f in stored:
        if f.entry.size:
            by_size[f.entry.size].append(f)
    wasted: list[tuple[str, int]] = []
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        by_content: dict[bytes, list[StoredFile]] = defaultdict(list)
        for f in group:
            by_content[_content_key(f)].append(f)
        for copies in by_content.values():
            if len(copies) > 1:
                wasted.append((copies[0].path, 0))
                wasted += [(c.path, size) for c in copies[1:]]
    total = sum(size for _, size in wasted)
    sizes: dict[str, int] = {}
    for path, _ in wasted:
        sizes[path] = 0
    for f in stored:  # order paths by the size of the file they hold
        if f.path in sizes:
            sizes[f.path] = max(sizes[f.path], f.entry.size)
    return Finding("duplicate-files", total, sorted(sizes, key=lambda p: (-sizes[p], p)))


def _debug_bytes(layer: Layer, entry: TarEntry) -> int:
    def read_at(offset: int, length: int) -> bytes:
        if offset < 0 or offset >= entry.size:
            return b""
        return layer.read_entry_range(entry.data_offset + offset, min(length, entry.size - offset))

    head = read_at(0, elf.HEADER_SIZE)
    found = elf.sections(head, read_at, entry.size)
    return 0 if found is None else elf.debug_bytes(found)


def debug_info(files: list[tuple[str, Layer, TarEntry]], threads: int = ELF_THREADS) -> Finding:
    """Bytes of ELF debug sections in ``files`` (path, layer, entry), reading only ELF
    headers, section tables and section-name tables, several binaries at a time."""
    candidates = [
        (path, layer, entry)
        for path, layer, entry in files
        if entry.size >= elf.HEADER_SIZE
        and (entry.mode & 0o111 or _ELF_NAME.search(path) or ".so." in path)
    ]
    results: list[tuple[str, int]] = []
    if candidates:
        with concurrent.futures.ThreadPoolExecutor(threads, "seekoci-elf") as pool:
            sizes = pool.map(lambda c: _debug_bytes(c[1], c[2]), candidates)
            results = [(c[0], n) for c, n in zip(candidates, sizes, strict=True) if n]
    return _finding("debug-info", results)


def bloat(img: Image) -> FindingList:
    passed = layer_pass(img, digests=True)
    by_key = {layer.digest or layer.name: layer for layer in img.layers}
    visible: list[tuple[str, Layer, TarEntry]] = []
    seen: set[int] = set()
    for path, node, _ in walk_nodes(passed.tree.root, "/"):
        inode = inode_of(node)
        if inode is None or inode.entry is None or id(inode) in seen:
            continue
        seen.add(id(inode))
        visible.append((path.replace("//", "/"), by_key[inode.layer], inode.entry))
    hidden = passed.hidden()

    def merged(select: Callable[[str], bool]) -> list[tuple[str, int]]:
        return [(path, entry.size) for path, _, entry in visible if select(path)]

    findings = [
        _finding("hidden-by-upper-layers", [(f.path, f.entry.size) for f in hidden]),
        _duplicates(passed.stored),
        _finding("python-bytecode", merged(_is_bytecode)),
        _finding("package-manager-caches", merged(lambda p: bool(_CACHE_RE.fullmatch(p)))),
        debug_info(visible),
        _finding("static-libraries", merged(lambda p: p.endswith(".a"))),
    ]
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return FindingList(sorted(findings, key=lambda f: (-f.bytes, order.get(f.category, 99))))
