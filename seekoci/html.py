"""HTML tables for Jupyter (``_repr_html_``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
