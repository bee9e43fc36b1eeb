"""What the benchmark session measured, and the markdown page made from it.

Each benchmark appends its rounds to a :class:`Measurement` (seconds, bytes and requests of
every round, plus any extra per-round figures); :meth:`Report.render` turns them into the
tables of ``docs/performance.md``: raw medians, then the targets as ratios against the
baseline. Nothing here is timed or asserted: targets are reported, never enforced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

from layergen import GeneratedLayer

MIB = 1 << 20


@dataclasses.dataclass
class Measurement:
    label: str
    seconds: list[float] = dataclasses.field(default_factory=list)
    bytes: list[int] = dataclasses.field(default_factory=list)
    requests: list[int] = dataclasses.field(default_factory=list)
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    note: str = ""

    def add(
        self, seconds: float, nbytes: int | None = None, requests: int | None = None, **extra: float
    ) -> None:
        self.seconds.append(seconds)
        if nbytes is not None:
            self.bytes.append(nbytes)
        if requests is not None:
            self.requests.append(requests)
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(value)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_bytes(self) -> float | None:
        return statistics.median(self.bytes) if self.bytes else None

    @property
    def median_requests(self) -> float | None:
        return statistics.median(self.requests) if self.requests else None

    def median(self, key: str) -> float:
        return statistics.median(self.extra[key])


NOTES = """\
Notes:

- Bytes and requests count layer blob traffic only: the baseline's one blob `GET`, and
  seekoci's `img.layers[i].source` counters. Manifest and config requests (a few KB) come on
  top of both; the cold read's "all HTTP" line above counts everything, through a proxy.
- *cold*: a new `python` process with the index already in the cache directory (built by
  `python -m seekoci index` in another process) and no span cached. The time runs from before
  `import seekoci` to the bytes in hand; the subprocess wall time (interpreter start
  included) is in the notes.
- *warm*: the same process and `Image` again: the same file (its decoded span is in memory),
  then other small files in spans not fetched before (one range request each).
- *index build*: `Layer.index()` over the registry blob with `cache_dir=False` (one streaming
  `GET`, inflate, tar parsing, sha256), against decompressing the same blob from a local
  file. Peak RSS is the VmHWM of a fresh process doing only that (interpreter and imports
  included); `ru_maxrss` would not do: Linux carries the parent's RSS across `execve`.
- Other processes may share the machine (see the load average): treat the figures as
  indicative, the ratios more than the absolute times.
"""

PUBLISHED_NOTES = """\
Notes:

- The image is copied (its layer blob mounted, not uploaded again) to two more repositories
  of the same registry: one gets a native index and a SOCI index (readers take the native
  one), the other a SOCI index only. The native index is published from the cache directory
  the `python -m seekoci index` above filled; SOCI's default 4 MiB spans.
- *empty cache*: a new `python` process, an empty cache directory every round, straight to
  the registry (as the baseline's stream). One more read, untimed, goes through a counting
  proxy in front of the registry, and every timed round must fetch the layer bytes it
  fetched. Bytes are response bodies of the index blob (native: range reads of its header
  and directory, entry pages, a span page and a record; SOCI: the whole zTOC) plus the
  layer blob (chunks of a span, or whole spans); requests are those blob requests. Discovery
  (referrers, artifact manifests), the image manifest and config are in the notes, and every
  request of the counted round is listed in the table above.
- Time against the *local cache* is the cold read above: a fresh process with the index
  already in the cache directory, no span cached.
"""

#: Every measurement a complete run makes, in table order.
KEYS = (
    "baseline",
    "cold",
    "warm_same",
    "warm_other",
    "index_build",
    "gzip_dc",
    "pigz_dc",
    "index_rss",
    "first_touch",
    "first_touch_baseline",
)
#: The reads through indexes published in the registry (their own section).
PUBLISHED_KEYS = ("native_cold", "soci_cold")


def _run_text(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    if done.returncode != 0:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except (OSError, ValueError):
        pass
    return "?"


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n < 10 * 1024:
        return f"{n:,.0f} B"
    return f"{n:,.0f} B ({_mib(n)})"


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def _fraction(x: float) -> str:
    """A share as a percentage and as 1/N: ``0.052% (1/1,923)``."""
    return f"{x:.3%} (1/{1 / x:,.0f})" if x > 0 else "0"


def _target(name: str, text: str, goal: str, met: bool) -> str:
    return f"| {name} | {text} | {goal} | {'yes' if met else 'NO'} |"


TARGET_HEAD = ["| target | measured | goal | met |", "|---|---:|---:|---|"]


class Report:
    def __init__(self, repo_root: Path, size_mb: int) -> None:
        self.repo_root = repo_root
        self.size_mb = size_mb
        self.started = dt.datetime.now(dt.timezone.utc)
        self.load_start = os.getloadavg()
        self.measurements: dict[str, Measurement] = {}
        self.layer: GeneratedLayer | None = None
        self.facts: dict[str, str] = {}  # label -> value, shown in the layer table
        #: label -> value, shown in the published-indexes section
        self.published_facts: dict[str, str] = {}
        #: bytes of the published indexes and of the layer blob: native, native_metadata,
        #: ztoc, layer
        self.index_sizes: dict[str, int] = {}

    def measurement(self, key: str, label: str, note: str = "") -> Measurement:
        m = self.measurements.setdefault(key, Measurement(label))
        m.note = note or m.note
        return m

    @property
    def complete(self) -> bool:
        return all(
            self.measurements.get(k) and self.measurements[k].seconds
            for k in (*KEYS, *PUBLISHED_KEYS)
        )

    # ------------------------------------------------------------------------- rendering

    def _machine(self) -> list[str]:
        load_end = os.getloadavg()
        commit = _run_text(["git", "-C", str(self.repo_root), "rev-parse", "--short", "HEAD"])
        dirty = _run_text(["git", "-C", str(self.repo_root), "status", "--porcelain", "seekoci"])
        if commit != "?" and dirty not in ("", "?"):
            commit += " + uncommitted changes in seekoci/"
        import seekoci

        return [
            f"- Date: {self.started:%Y-%m-%d %H:%M} UTC",
            f"- Machine: {platform.platform()}; {os.cpu_count()} CPUs (os.cpu_count()), "
            f"{_cpu_model()}; {_mem_total()} RAM",
            f"- Load average (1 min) at start / end: {self.load_start[0]:.2f} / {load_end[0]:.2f}",
            f"- Python {platform.python_version()} ({sys.executable}); seekoci "
            f"{seekoci.__version__} at commit {commit}; zlib {zlib.ZLIB_RUNTIME_VERSION}",
            f"- Tools: {_run_text(['gzip', '--version'])}; {_run_text(['pigz', '--version'])}; "
            f"{_run_text(['tar', '--version'])}; "
            f"docker-registry at {shutil.which('docker-registry') or '?'}",
        ]

    def _layer_rows(self) -> list[str]:
        layer = self.layer
        if layer is None:
            return ["(no layer was generated)"]
        libs = ", ".join(f"{f.size / MIB:.1f}" for f in layer.libraries)
        rows = [
            "| | |",
            "|---|---|",
            f"| size setting | SEEKOCI_BENCH_SIZE_MB={self.size_mb} |",
            f"| uncompressed tar | {_bytes(layer.tar_size)} |",
            f"| gzip blob (`gzip -6 -n`) | {_bytes(layer.size)}, "
            f"{layer.size / layer.tar_size:.2f} of the tar |",
            f"| layer digest | `{layer.digest}` |",
            f"| entries | {layer.files:,} files and {layer.directories:,} directories |",
            f"| Python-like text files | {len(layer.text_files):,} files, "
            f"{_mib(layer.text_bytes)} |",
            f"| shared-library-like binaries | {len(layer.libraries)} files of {libs} MiB |",
            f"| weights (`{layer.weights.path}`) | {_mib(layer.weights.size)} of float16 |",
        ]
        rows += [f"| {k} | {v} |" for k, v in self.facts.items()]
        return rows

    def _measurement_rows(self, keys: tuple[str, ...]) -> list[str]:
        rows = [
            "| measurement | median time | rounds | bytes transferred (median) "
            "| requests (median) | notes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        known = (*KEYS, *PUBLISHED_KEYS)
        if keys == KEYS:  # anything else measured goes in the main table
            keys = (*KEYS, *(k for k in self.measurements if k not in known))
        for key in keys:
            m = self.measurements.get(key)
            if m is None or not m.seconds:
                rows.append(f"| {key} | not measured | | | | |")
                continue
            reqs = "-" if m.median_requests is None else f"{m.median_requests:g}"
            notes = [m.note] if m.note else []
            for extra in m.extra:
                value = m.median(extra)
                if extra.endswith("_s"):
                    notes.append(f"{extra[:-2].replace('_', ' ')}: {_seconds(value)}")
                elif extra.endswith("_mib"):
                    notes.append(f"{extra[:-4].replace('_', ' ')}: {value:.0f} MiB")
                elif extra.endswith("_b"):
                    notes.append(f"{extra[:-2].replace('_', ' ')}: {_bytes(value)}")
                else:
                    notes.append(f"{extra.replace('_', ' ')}: {value:g}")
            rows.append(
                f"| {m.label} | {_seconds(m.median_s)} | {len(m.seconds)} "
                f"| {_bytes(m.median_bytes)} | {reqs} | {'; '.join(notes)} |"
            )
        return rows

    def _target_rows(self) -> list[str]:
        ms = self.measurements
        rows = ["| target | measured | goal | met |", "|---|---:|---:|---|"]

        def add(name: str, value: float | None, text: str, goal: str, met: bool) -> None:
            rows.append(
                f"| {name} | {text if value is not None else 'n/a'} | {goal} | "
                f"{'yes' if met else 'NO'} |"
            )

        base = ms.get("baseline")
        for key, what in (
            ("cold", "cold (fresh process, index cached)"),
            ("warm_same", "warm, same file again"),
            ("warm_other", "warm, another file"),
        ):
            m = ms.get(key)
            if base is None or m is None or not base.seconds or not m.seconds:
                continue
            speed = base.median_s / m.median_s
            add(f"{what}: speed-up over the baseline", speed, _ratio(speed), ">= 30x", speed >= 30)
            if key == "cold" and "wall_s" in m.extra:
                wall = base.median_s / m.median("wall_s")
                add(
                    f"{what}, whole subprocess wall time incl. interpreter start",
                    wall,
                    _ratio(wall),
                    "(info)",
                    True,
                )
            mb, bb = m.median_bytes, base.median_bytes
            if mb is not None and bb is not None:
                if mb == 0:
                    add(
                        f"{what}: fewer bytes than the baseline",
                        0.0,
                        "no bytes at all",
                        ">= 100x",
                        True,
                    )
                else:
                    fewer = bb / mb
                    add(
                        f"{what}: fewer bytes than the baseline",
                        fewer,
                        _ratio(fewer),
                        ">= 100x",
                        fewer >= 100,
                    )
        build = ms.get("index_build")
        for key, tool in (("gzip_dc", "gzip -dc"), ("pigz_dc", "pigz -dc")):
            ref = ms.get(key)
            if build is None or ref is None or not build.seconds or not ref.seconds:
                continue
            ratio = build.median_s / ref.median_s
            limit = 0.5 if key == "gzip_dc" else 1.0  # issue 7's targets
            add(
                f"index build time / `{tool}` time",
                ratio,
                f"{ratio:.2f}",
                f"<= {limit}",
                ratio <= limit,
            )
        touch, touch_base = ms.get("first_touch"), ms.get("first_touch_baseline")
        if touch is not None and touch_base is not None and touch.seconds and touch_base.seconds:
            ratio = touch.median_s / touch_base.median_s
            add(
                "first touch, lower layer, nothing indexed: time / streaming that layer",
                ratio,
                f"{ratio:.2f}",
                "<= 0.5",
                ratio <= 0.5,
            )
        rss = ms.get("index_rss")
        if rss is not None and "peak_rss_mib" in rss.extra:
            peak = rss.median("peak_rss_mib")
            add(
                "index build peak RSS (whole process)",
                peak,
                f"{peak:.0f} MiB",
                "< 256 MiB",
                peak < 256,
            )
        return rows

    def _published_target_rows(self) -> list[str]:
        ms, sizes = self.measurements, self.index_sizes
        rows = list(TARGET_HEAD)
        base, local = ms.get("baseline"), ms.get("cold")
        layer_size = self.layer.size if self.layer is not None else sizes.get("layer")
        for key, what in (("native_cold", "native index"), ("soci_cold", "SOCI index only")):
            m = ms.get(key)
            if m is None or not m.seconds:
                continue
            name = f"empty cache, {what}"
            if m.median_bytes is not None and layer_size:
                share = m.median_bytes / layer_size
                goal, met = ("< 1/1000", share < 1e-3) if key == "native_cold" else ("(info)", True)
                rows.append(
                    _target(f"{name}: blob bytes read / layer blob", _fraction(share), goal, met)
                )
            if base is not None and base.seconds:
                speed = base.median_s / m.median_s
                rows.append(
                    _target(f"{name}: speed-up over the baseline", _ratio(speed), "(info)", True)
                )
                if "wall_s" in m.extra:
                    wall = base.median_s / m.median("wall_s")
                    rows.append(
                        _target(
                            f"{name}: speed-up, whole subprocess wall time incl. interpreter start",
                            _ratio(wall),
                            "(info)",
                            True,
                        )
                    )
            if local is not None and local.seconds:
                slower = m.median_s / local.median_s
                rows.append(
                    _target(
                        f"{name}: time / fresh process with the index in the local cache",
                        f"{slower:.2f}",
                        "(info)",
                        True,
                    )
                )
                if m.median_bytes is not None and local.median_bytes:
                    more = m.median_bytes / local.median_bytes
                    rows.append(
                        _target(
                            f"{name}: blob bytes / fresh process with the index in the local cache",
                            f"{more:.2f}",
                            "(info)",
                            True,
                        )
                    )
        if layer_size and "native" in sizes and "ztoc" in sizes:
            native, meta, ztoc = sizes["native"], sizes.get("native_metadata"), sizes["ztoc"]
            rows.append(
                _target(
                    "native index blob / layer blob", f"{native / layer_size:.2%}", "(info)", True
                )
            )
            if meta is not None:
                rows.append(
                    _target(
                        "native index header + directory (read up front) / layer blob",
                        f"{meta / layer_size:.4%}",
                        "(info)",
                        True,
                    )
                )
            rows.append(
                _target(
                    "SOCI zTOC (4 MiB spans) / layer blob",
                    f"{ztoc / layer_size:.2%}",
                    "(info)",
                    True,
                )
            )
            ratio = native / ztoc
            rows.append(
                _target(
                    "native index blob / SOCI zTOC (well under SOCI's)",
                    f"{ratio:.2f}",
                    "<= 0.5",
                    ratio <= 0.5,
                )
            )
            native_read = ms.get("native_cold")
            if native_read is not None and "index_b" in native_read.extra:
                fetched = native_read.median("index_b") / ztoc
                rows.append(
                    _target(
                        "native index bytes one empty-cache read fetches / SOCI zTOC (fetched "
                        "whole)",
                        f"{fetched:.3f}",
                        "(info)",
                        True,
                    )
                )
        return rows

    def _published(self) -> list[str]:
        facts = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.published_facts.items())]
        return [
            "## Published indexes",
            "",
            "The same image with its index published next to it in the registry",
            "([docs/publishing.md](publishing.md)), read by a fresh process whose cache",
            "directory is empty: what a reader on another machine pays the first time.",
            "",
            *self._published_target_rows(),
            "",
            *self._measurement_rows(PUBLISHED_KEYS),
            "",
            *facts,
            "",
            *PUBLISHED_NOTES.splitlines(),
        ]

    def render(self) -> str:
        lines = [
            "# Performance",
            "",
            "<!-- Written by the benchmark run (benchmarks/, `nox -s bench`); do not edit by hand:",
            "     rerun the benchmarks to update it. -->",
            "",
            "Reading one small file out of a large gzip layer in a registry, seekoci against what",
            "users do today (stream the whole layer blob into `tar -xzO`), and the cost of the",
            "one-off index build against plain decompression. Everything runs on one machine",
            "against a local `docker-registry` over loopback, so the network is as fast as it",
            "gets: on a real registry the baseline pays for every byte of the layer, seekoci for",
            "about one span. How to rerun: see [benchmarks/README.md](../benchmarks/README.md).",
            "",
            "## Machine",
            "",
            *self._machine(),
            "",
            "## Layer",
            "",
            *self._layer_rows(),
            "",
            "## Targets",
            "",
            *self._target_rows(),
            "",
            "## Measurements",
            "",
            *self._measurement_rows(KEYS),
            "",
            *NOTES.splitlines(),
            "",
            *self._published(),
        ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Write the report; sections written by hand after :data:`HAND_WRITTEN` in the
        existing file (design notes, comparisons run outside the harness) are kept."""
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = ""
        try:
            old = path.read_text()
        except OSError:
            old = ""
        if HAND_WRITTEN in old:
            kept = "\n" + old[old.index(HAND_WRITTEN) :]
        path.write_text(self.render() + kept)


#: Everything after this line of docs/performance.md is written by hand and kept by reruns.
HAND_WRITTEN = "<!-- Written by hand below this line: kept when the benchmarks rewrite it. -->"


__all__ = ["KEYS", "PUBLISHED_KEYS", "Measurement", "Report"]
