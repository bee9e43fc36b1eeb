"""Requests and sequential round trips of each CLI command, cold and warm.

    python benchmarks/round_trips.py

Starts a ``docker-registry`` on loopback (the integration tests' servers), pushes a
three-layer image (a ~12 MB middle layer), publishes its native index (``seekoci index
--push``) into one repository and nothing into another, then runs each command in a fresh
process through a counting proxy that adds 50 ms to every request: *cold* with an empty
cache directory, *warm* again with the same one. A round trip is counted once however many
requests go out together (the longest chain of requests each sent after the one before
was answered), and each run's wall time (a fresh interpreter included). Prints a Markdown
table; ``nox -s bench`` runs the same through ``test_round_trips.py`` and writes
``docs/performance-round-trips.md``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "integration")]

from imagebuilder import file, image, layer, random_bytes, text_bytes  # noqa: E402
from servers import CountingProxy, RegistryServer  # noqa: E402

DELAY = 0.05


@dataclasses.dataclass
class Row:
    command: str
    holds: str  # what the registry holds beside the image
    ref: str  # "tag" or "digest"
    cold: tuple[int, int, float]  # requests, sequential round trips, wall seconds
    warm: tuple[int, int, float]

    def markdown(self) -> str:
        (cr, ct, cs), (wr, wt, ws) = self.cold, self.warm
        return (
            f"| `{self.command}` | {self.holds} | {self.ref} | {cr} / {ct} | {cs:.2f} s "
            f"| {wr} / {wt} | {ws:.2f} s |"
        )


HEADER = (
    "| command | registry holds | reference | cold: requests / round trips | cold: time "
    "| warm: requests / round trips | warm: time |\n|---|---|---|---:|---:|---:|---:|"
)


def run(args: list[str], cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "seekoci", *args, "--cache-dir", str(cache)],
        capture_output=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"seekoci {' '.join(args)}: {done.stderr.decode()}")


def measure(work: Path) -> list[Row]:
    """Every command, cold then warm, against a registry started in ``work``."""
    registry = RegistryServer(work / "registry").start()
    try:
        big = layer(
            file("opt/random.bin", random_bytes("rtt-random", 6 << 20)),
            file("opt/needle.txt", b"needle\n" * 100),
            file("opt/text.txt", text_bytes("rtt-text", 8 << 20)),
            producer="python",
        )
        img = image(layer(file("etc/base.txt", b"base\n")), big, layer(file("top.txt", b"top\n")))
        digest = ""
        for repo in ("rtt/published", "rtt/plain"):
            digest = registry.push(repo, "v1", img)
        run(["index", registry.ref("rtt/published", "v1"), "--push"], work / "publisher")
        proxy = CountingProxy(registry.url, delay=DELAY)
        rows: list[Row] = []
        commands = [
            ("cat REF /opt/needle.txt", ["cat", "{ref}", "/opt/needle.txt"]),
            ("stat REF /opt/needle.txt", ["stat", "{ref}", "/opt/needle.txt"]),
            (
                "get REF /opt/needle.txt -o F",
                ["get", "{ref}", "/opt/needle.txt", "-o", "{out}", "--force"],
            ),
            ("ls REF /opt", ["ls", "{ref}", "/opt"]),
            ("inspect REF", ["inspect", "{ref}"]),
            ("index REF", ["index", "{ref}"]),
        ]
        for repo in ("rtt/published", "rtt/plain"):
            for how, tag in (("tag", "v1"), ("digest", digest)):
                for label, template in commands:
                    cache = work / f"cache-{repo.replace('/', '-')}-{how}-{label.split()[0]}"
                    out = str(work / "out")
                    args = [a.format(ref=proxy.ref(repo, tag), out=out) for a in template]
                    figures = []
                    for _phase in ("cold", "warm"):
                        proxy.reset()
                        started = time.perf_counter()
                        run(args, cache)
                        elapsed = time.perf_counter() - started
                        figures.append((proxy.requests(), proxy.sequential_round_trips(), elapsed))
                    what = (
                        "native index published" if repo == "rtt/published" else "nothing published"
                    )
                    rows.append(Row(label, what, how, figures[0], figures[1]))
        proxy.stop()
    finally:
        registry.stop()
    return rows


def main() -> None:
    rows = measure(Path(tempfile.mkdtemp(prefix="seekoci-rtt-")))
    print(HEADER)
    print("\n".join(row.markdown() for row in rows))


if __name__ == "__main__":
    main()
