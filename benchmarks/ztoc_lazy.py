"""A SOCI-only cold read's index step on a zTOC of ~150k entries: decoding it whole
(``decode_ztoc`` + ``ztoc_to_layer_index``, what a read did before) against the lazy reader
(``lazy_layer_index``), each followed by what a read of one file needs: a lookup of its name
(the tables it finds checked), and, for the lazy reader, what a listing needs too (every
table checked, the name map).

    python benchmarks/ztoc_lazy.py [ENTRIES]

The zTOC is synthetic but shaped like a Python image's layer (names ~60 bytes deep in
site-packages, owner names, RFC 3339 times, an empty xattrs vector per entry). Times are
CPU seconds of this process (``time.process_time``), the best of 5: a shared machine's
load moves wall time more than CPU time.
"""

from __future__ import annotations

import hashlib
import sys
import time

from seekoci.formats.ztoc import (
    Ztoc,
    ZtocFile,
    decode_ztoc,
    encode_ztoc,
    lazy_layer_index,
    tar_zinfo_blob,
    ztoc_to_layer_index,
)

DIGEST = "sha256:" + "ab" * 32


def synthetic(count: int) -> bytes:
    files = []
    offset = 512
    for i in range(count):
        d = i // 50
        size = 1000 + (i * 37) % 5000
        name = f"usr/lib/python3.11/site-packages/pkg{d // 100}/mod{d}/file{i}.py"
        when = "2024-01-02T03:04:05.123456789Z"
        files.append(ZtocFile(name, "reg", offset, size, "", 0o644, 0, 0, "root", "root", when))
        offset += (size + 511) // 512 * 512 + 512
    usize = offset - 512 + 1024
    span = 4 << 20
    spans = -(-usize // span)
    digests = ["sha256:" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(spans)]
    ztoc = Ztoc("0.9", "bench", usize, usize, "uncompressed", spans - 1, digests,
                tar_zinfo_blob(span, usize), files)  # fmt: skip
    return encode_ztoc(ztoc)


def best(run: object, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        run()  # type: ignore[operator]
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 150_000
    data = synthetic(count)
    i = count * 2 // 3
    wanted = f"usr/lib/python3.11/site-packages/pkg{i // 5000}/mod{i // 50}/file{i}.py"

    def eager() -> None:
        ztoc = decode_ztoc(data)
        index = ztoc_to_layer_index(
            ztoc, layer_digest=DIGEST, media_type="m", blob_size=ztoc.compressed_size
        )
        names = {e.name: i for i, e in enumerate(index.entries)}
        assert index.entries[names[wanted]].name == wanted

    def lazy() -> None:  # what a read of one file does: look its name up
        index = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=decode_size)
        found = index.entries.lookup(wanted)  # type: ignore[attr-defined]
        assert found is not None and found.name == wanted

    def lazy_whole() -> None:  # what a listing does: every table checked
        index = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=decode_size)
        names = index.entries.name_map()  # type: ignore[attr-defined]
        assert index.entries[names[wanted]].name == wanted

    decode_size = decode_ztoc(data).compressed_size
    sha = best(lambda: hashlib.sha256(data).digest())
    before, after, whole = best(eager, 3), best(lazy), best(lazy_whole)
    print(f"zTOC: {count} entries, {len(data):,} bytes; sha256 of it: {sha:.3f} s")
    print(f"decode whole + index + lookup:  {before:.3f} s CPU")
    print(f"lazy index + every table + map: {whole:.3f} s CPU ({before / whole:.1f}x)")
    print(f"lazy index + one lookup:        {after:.3f} s CPU ({before / after:.1f}x)")


if __name__ == "__main__":
    main()
