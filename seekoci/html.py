"""HTML tables for Jupyter (``_repr_html_``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fileinfo import FileInfo
    from .layer import Layer


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def layers_table(layers: Sequence[Layer], *, title: str | None = None) -> str:
    """One row per layer; the uncompressed size only where an index is already at hand."""
    rows = []
    for layer in layers:
        status = layer.index_status
        usize = layer.uncompressed_size if status in ("cached", "built", "direct") else None
        cells = [
            layer.digest or layer.name,
            layer.media_type,
            human_size(layer.size),
            human_size(usize),
            layer.format,
            status,
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("digest", "media type", "compressed", "uncompressed", "format", "index")
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def fileinfo_table(info: FileInfo) -> str:
    """One path's metadata as a two-column table (what ``stat`` says, readable)."""
    import stat
    import time

    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.mtime))
    except (OverflowError, ValueError, OSError):  # past what the platform's time_t holds
        when = f"@{info.mtime:.0f}"
    owner = f"{info.uid}:{info.gid}"
    if info.uname or info.gname:
        owner += f" ({info.uname or info.uid}:{info.gname or info.gid})"
    rows: list[tuple[str, str]] = [
        ("path", info.path),
        ("type", info.type),
        ("size", f"{human_size(info.size)} ({info.size} bytes)"),
        ("mode", f"{stat.filemode(info.st_mode)} ({info.mode:04o})"),
        ("mtime", when),
        ("owner", owner),
    ]
    if info.linkname:
        rows.append(("linkname", info.linkname))
    if info.type in ("char", "block"):
        rows.append(("device", f"{info.devmajor},{info.devminor}"))
    if info.xattrs:
        rows.append(("xattrs", ", ".join(sorted(info.xattrs))))
    rows.append(("layer", info.layer))
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><tbody>{body}</tbody></table>"
