"""Images with known contents for the insight tests, and an independent model of them.

The model (:func:`model`) applies the declared entries the simplest way: a dict of path ->
entry, whiteouts deleting a path and everything under it. Expectations are computed from
that model and from the declarations, never by calling seekoci.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from imagebuilder import (
    Entry,
    dir,
    file,
    hardlink,
    image,
    layer,
    opaque,
    random_bytes,
    symlink,
    text_bytes,
    whiteout,
)

HELLO_C = b"""
#include <stdio.h>
static int square(int x) { return x * x; }
int main(int argc, char **argv) { printf("%d %s\\n", square(argc), argv[0]); return 0; }
"""


def build_elf(workdir: Path) -> tuple[bytes, bytes]:
    """An unstripped binary built with ``gcc -g`` and its stripped twin."""
    src = workdir / "hello.c"
    src.write_bytes(HELLO_C)
    out = workdir / "hello"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(out), str(src)], check=True)
    stripped = workdir / "hello-stripped"
    subprocess.run(["strip", "-o", str(stripped), str(out)], check=True)
    return out.read_bytes(), stripped.read_bytes()


def debug_section_bytes(data: bytes, workdir: Path) -> int:
    """Bytes of .debug_* sections by ``readelf -S -W`` (binutils), independently of seekoci."""
    path = workdir / "probe.elf"
    path.write_bytes(data)
    text = subprocess.run(
        ["readelf", "-S", "-W", str(path)], check=True, capture_output=True, text=True
    ).stdout
    total = 0
    for line in text.splitlines():
        fields = line.replace("[ ", "[").split()
        if (
            len(fields) > 6
            and fields[1].startswith((".debug", ".zdebug"))
            and fields[2] != "NOBITS"
        ):
            total += int(fields[5], 16)
    return total


@dataclass
class Known:
    base: object  # imagebuilder.Layer
    upper: object
    base_image: object  # imagebuilder.Image
    image: object
    elf: bytes
    elf_stripped: bytes
    upper3: object = None
    image3: object = None


SHARED = text_bytes("insight-shared", 7000)


def known_layers(workdir: Path) -> Known:
    elf, stripped = build_elf(workdir)
    base = layer(
        dir("etc"),
        file("etc/keep.txt", b"kept as it is\n"),
        file("etc/same-size.txt", b"a" * 100),
        file("etc/grow.txt", b"b" * 50),
        file("etc/gone.txt", b"c" * 30, mode=0o600),
        dir("opt"),
        dir("opt/tool"),
        file("opt/tool/a.bin", random_bytes("tool-a", 1000)),
        file("opt/tool/b.bin", random_bytes("tool-b", 2000)),
        dir("data"),
        file("data/big.bin", random_bytes("big-old", 200_000)),
        dir("usr"),
        dir("usr/lib"),
        file("usr/lib/libfoo.a", random_bytes("libfoo", 4000)),
        dir("usr/lib/python3"),
        dir("usr/lib/python3/m"),
        file("usr/lib/python3/m/mod.py", b"print('hi')\n"),
        dir("usr/lib/python3/m/__pycache__"),
        file("usr/lib/python3/m/__pycache__/mod.cpython-311.pyc", random_bytes("pyc", 500)),
        dir("usr/share"),
        file("usr/share/a.txt", SHARED),
        file("usr/share/b.txt", SHARED),
        symlink("usr/share/link", "a.txt"),
        dir("var"),
        dir("var/lib"),
        dir("var/lib/apt"),
        dir("var/lib/apt/lists"),
        file("var/lib/apt/lists/deb.debian.org_Packages", text_bytes("apt", 3000)),
    )
    upper = layer(
        dir("etc"),
        file("etc/same-size.txt", b"z" * 100),
        file("etc/grow.txt", b"B" * 80),
        whiteout("etc/gone.txt"),
        whiteout("opt/tool"),
        dir("data"),
        file("data/big.bin", random_bytes("big-new", 150_000)),
        hardlink("data/big-link", "data/big.bin"),
        dir("app"),
        file("app/new.txt", b"new in the upper layer\n"),
        dir("app/bin"),
        file("app/bin/hello", elf, mode=0o755),
        file("app/bin/hello-stripped", stripped, mode=0o755),
        producer="pigz",
    )
    # an opaque directory over the base's /usr/share: a.txt stored again unchanged, c.txt new
    upper3 = layer(
        dir("usr"),
        dir("usr/share"),
        opaque("usr/share"),
        file("usr/share/a.txt", SHARED),
        file("usr/share/c.txt", b"c\n"),
        producer="zstd",
    )
    return Known(
        upper3=upper3,
        image3=image(base, upper3),
        base=base,
        upper=upper,
        base_image=image(base),
        image=image(base, upper),
        elf=elf,
        elf_stripped=stripped,
    )


def model(*layers: object) -> dict[str, Entry]:
    """Path (absolute) -> the entry a container would see, directories included."""
    seen: dict[str, Entry] = {}
    for lay in layers:
        entries: tuple[Entry, ...] = lay.entries  # type: ignore[attr-defined]
        for e in entries:
            base = e.name.rpartition("/")[2]
            parent = e.name.rpartition("/")[0]
            if base == ".wh..wh..opq":  # everything below the directory, not itself
                below = "/" + parent + "/" if parent else "/"
                for path in [p for p in seen if p.startswith(below)]:
                    del seen[path]
            elif base.startswith(".wh."):
                gone = "/" + (parent + "/" if parent else "") + base[4:]
                for path in [p for p in seen if p == gone or p.startswith(gone + "/")]:
                    del seen[path]
        for e in entries:
            if not e.name.rpartition("/")[2].startswith(".wh."):
                seen[e.path] = e
    return seen


def content(seen: dict[str, Entry], path: str) -> Entry:
    """A hard link's target entry (in the model), else the entry itself."""
    e = seen[path]
    return seen["/" + e.linkname] if e.type == "hardlink" else e


def expected_du(seen: dict[str, Entry], top: str, depth: int) -> list[tuple[str, int, int]]:
    """(path, size, files) for every directory down to ``depth`` below ``top``."""
    dirs = {"/"} | {p for p, e in seen.items() if e.type == "dir"}
    for p in list(seen):  # implied parents
        parts = p.strip("/").split("/")
        dirs |= {"/" + "/".join(parts[:i]) for i in range(1, len(parts))}
    base_depth = 0 if top == "/" else top.count("/")
    out = []
    for d in sorted(dirs):
        level = (0 if d == "/" else d.count("/")) - base_depth
        inside = d == top or d.startswith(top.rstrip("/") + "/")
        if not inside or level > depth:
            continue
        inodes: dict[str, int] = {}  # target path -> size: hard links once
        for p, e in seen.items():
            if (d == "/" or p.startswith(d + "/")) and e.type in ("file", "hardlink"):
                target = "/" + e.linkname if e.type == "hardlink" else p
                inodes[target] = content(seen, p).size
        out.append((d, sum(inodes.values()), len(inodes)))
    return out
