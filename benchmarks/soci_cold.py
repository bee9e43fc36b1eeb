"""A SOCI-only cold read of one small file from a layer of ~150k entries, wall time.

    python benchmarks/soci_cold.py [ENTRIES] [OTHER_TREE]

Builds a gzip layer of ENTRIES small files (default 150,000; a Python image's
site-packages in shape), pushes it to a ``docker-registry`` on loopback, publishes a SOCI
index for it (``seekoci index --push --format soci``, 4 MiB spans) and reads one file in a
fresh process with an empty cache directory, three times: the time from ``open_image`` to
the bytes in hand (the zTOC fetched whole, checked, turned into an index; one span
fetched). With OTHER_TREE (a checkout of another seekoci), the same runs with that code
too, for a before/after in one session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "integration")]

from imagebuilder import file, image, layer  # noqa: E402
from servers import RegistryServer  # noqa: E402

READ = """
import json, sys, time
start = time.perf_counter()
import seekoci
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
data = img.read_bytes(sys.argv[3])
took = time.perf_counter() - start
assert img.layers[0].index_status == "soci", img.layers[0].index_status
print(json.dumps({"seconds": took, "bytes": len(data)}))
"""


def name_of(i: int) -> str:
    return f"usr/lib/python3.11/site-packages/pkg{i // 5000}/mod{i // 50}/file{i}.py"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 150_000
    trees = {"this tree": HERE.parent}
    if len(sys.argv) > 2:
        trees["other tree"] = Path(sys.argv[2]).resolve()
    work = Path(tempfile.mkdtemp(prefix="seekoci-soci-"))
    started = time.perf_counter()
    big = layer(*(file(name_of(i), b"x = %d\n" % i) for i in range(count)), tar_format="gnu")
    print(f"layer: {count} entries, {len(big.tar):,} B tar, {big.size:,} B gzip "
          f"({time.perf_counter() - started:.0f} s to make)")  # fmt: skip
    registry = RegistryServer(work / "registry").start()
    try:
        registry.push("soci/big", "v1", image(big))
        ref = registry.ref("soci/big", "v1")
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        pushed = subprocess.run(
            [sys.executable, "-m", "seekoci", "index", ref, "--push", "--format", "soci",
             "--min-layer-size", "0", "--cache-dir", str(work / "publisher")],
            capture_output=True, text=True, env=env, cwd=work, timeout=1800,
        )  # fmt: skip
        if pushed.returncode:
            raise SystemExit(pushed.stderr)
        print(pushed.stdout.strip().splitlines()[-1])
        target = "/" + name_of(count * 2 // 3)
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            times = []
            for round_ in range(3):
                cache = work / f"cache-{label.replace(' ', '-')}-{round_}"
                run = subprocess.run(
                    [sys.executable, "-c", READ, ref, str(cache), target],
                    capture_output=True, text=True, env=env, cwd=work, timeout=600,
                )  # fmt: skip
                if run.returncode:
                    raise SystemExit(run.stderr)
                times.append(json.loads(run.stdout)["seconds"])
            print(f"{label} ({tree}): " + ", ".join(f"{t:.2f} s" for t in times)
                  + f"; best {min(times):.2f} s")  # fmt: skip
    finally:
        registry.stop()


if __name__ == "__main__":
    main()
