"""HTML for the insight results: tables with bars and a treemap as inline SVG (no
JavaScript), for Jupyter's ``_repr_html_`` and ``seekoci du --html``."""

from __future__ import annotations

import html
from collections.abc import Sequence

from ..html import human_size
from .results import Change, Finding, LayerUsage, Usage

_STYLE = (
    "<style>.seekoci-insight{font-family:sans-serif;font-size:13px}"
    ".seekoci-insight table{border-collapse:collapse}"
    ".seekoci-insight td,.seekoci-insight th{padding:2px 8px;text-align:left}"
    ".seekoci-insight td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".seekoci-insight td{white-space:nowrap}"
    ".seekoci-insight .bar{background:#4c78a8;height:10px}"
    ".seekoci-insight .hid{background:#e45756;height:10px}</style>"
)
_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#eeca3b", "#72b7b2", "#ff9da6", "#9d755d")
_TREEMAP_BOXES = 40


def _e(text: object) -> str:
    return html.escape(str(text))


def _bar(fraction: float, css: str = "bar") -> str:
    width = max(0.0, min(1.0, fraction)) * 200
    return f'<div class="{css}" style="width:{width:.1f}px"></div>'


def _worst(row: list[float], short: float) -> float:
    """The worst aspect ratio of a row of areas laid along a side of length ``short``."""
    s = sum(row)
    if min(row) <= 0 or short <= 0:
        return float("inf")
    return max(max(row) * short * short / (s * s), s * s / (short * short * min(row)))


def squarify(
    sizes: Sequence[float], x: float, y: float, w: float, h: float
) -> list[tuple[float, float, float, float]]:
    """Rectangles of areas proportional to ``sizes`` (sorted largest first) filling the box,
    as close to squares as the squarified treemap rule gets them (Bruls et al.)."""
    total = sum(sizes)
    if total <= 0 or w <= 0 or h <= 0:
        return [(x, y, 0.0, 0.0) for _ in sizes]
    scale = w * h / total
    areas = [s * scale for s in sizes]
    out: list[tuple[float, float, float, float]] = []
    i = 0
    while i < len(areas):
        short = min(w, h)
        row = [areas[i]]
        j = i + 1

        while (
            j < len(areas)
            and areas[j] > 0
            and _worst([*row, areas[j]], short) <= _worst(row, short)
        ):
            row.append(areas[j])
            j += 1
        s = sum(row)
        # the last row takes exactly what is left of the box: computed from the areas, the
        # rounding of every row before it would carry it past the edge (sizes 134585355,
        # 1, 1 in 640 x 360: 9.5e-6 beyond)
        last = j >= len(areas)
        if w >= h:  # a column on the left
            cw = w if last else (s / h if h else 0)
            cy = y
            for a in row:
                rh = a / cw if cw else 0
                out.append((x, cy, cw, rh))
                cy += rh
            x, w = x + cw, w - cw
        else:  # a row on top
            rh = h if last else (s / w if w else 0)
            cx = x
            for a in row:
                rw = a / rh if rh else 0
                out.append((cx, y, rw, rh))
                cx += rw
            y, h = y + rh, h - rh
        i = j
    return out


def treemap(rows: Sequence[Usage], top: str, width: int = 640, height: int = 360) -> str:
    """The largest directories one level below ``top``, each split into its own largest
    subdirectories when ``rows`` holds them, as an SVG."""
    level = top.rstrip("/").count("/") + 1 if top != "/" else 1

    def depth(path: str) -> int:
        return path.count("/") if path != "/" else 0

    children = sorted(
        (u for u in rows if depth(u.path) == level and u.size > 0), key=lambda u: -u.size
    )[:_TREEMAP_BOXES]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{_e(top)}</title>'
        f'<rect width="{width}" height="{height}" fill="#f4f4f4"/>'
    ]
    rects = squarify([u.size for u in children], 0, 0, width, height)
    for k, (u, (x, y, w, h)) in enumerate(zip(children, rects, strict=True)):
        color = _COLORS[k % len(_COLORS)]
        parts.append(
            f"<g><title>{_e(u.path)}: {_e(human_size(u.size))}, {u.files} files</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}" '
            'stroke="#fff" stroke-width="2"/>'
        )
        prefix = u.path.rstrip("/") + "/"
        inner = sorted(
            (v for v in rows if v.path.startswith(prefix) and depth(v.path) == level + 1),
            key=lambda v: -v.size,
        )[:_TREEMAP_BOXES]
        inner = [v for v in inner if v.size > 0]
        if inner and w > 30 and h > 30:
            rest = u.size - sum(v.size for v in inner)
            sub = squarify([v.size for v in inner] + [max(rest, 0)], x + 3, y + 16, w - 6, h - 19)
            for v, (sx, sy, sw, sh) in zip(inner, sub, strict=False):
                parts.append(
                    f'<rect x="{sx:.1f}" y="{sy:.1f}" width="{sw:.1f}" height="{sh:.1f}" '
                    f'fill="#ffffff" fill-opacity="0.25" stroke="#fff" stroke-width="1">'
                    f"<title>{_e(v.path)}: {_e(human_size(v.size))}</title></rect>"
                )
                if sw > 50 and sh > 26:
                    label = f"{v.path.rsplit('/', 1)[-1]} {human_size(v.size)}"
                    parts.append(
                        f'<text x="{sx + 4:.1f}" y="{sy + 13:.1f}" font-size="10" fill="#fff" '
                        f'font-family="sans-serif">{_e(label[: max(3, int(sw / 6))])}</text>'
                    )
        if w > 40 and h > 14:
            name = u.path.rsplit("/", 1)[-1] or u.path
            label = f"{name} {human_size(u.size)}"
            parts.append(
                f'<text x="{x + 4:.1f}" y="{y + 12:.1f}" font-size="11" fill="#fff" '
                f'font-family="sans-serif">{_e(label[: max(3, int(w / 6.5))])}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def usage_table(rows: Sequence[Usage]) -> str:
    biggest = max((u.size for u in rows), default=0) or 1
    body = "".join(
        f"<tr><td>{_e(u.path)}</td><td class='n'>{_e(human_size(u.size))}</td>"
        f"<td class='n'>{u.files}</td><td>{_bar(u.size / biggest)}</td></tr>"
        for u in sorted(rows, key=lambda u: (-u.size, u.path))
    )
    return (
        "<table><thead><tr><th>path</th><th>size</th><th>files</th><th></th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def usage_page(rows: Sequence[Usage], *, top: str = "/", title: str | None = None) -> str:
    heading = f"<h3>{_e(title)}</h3>" if title else ""
    return (
        f'<div class="seekoci-insight">{_STYLE}{heading}'
        f"{treemap(rows, top)}{usage_table(rows)}</div>"
    )


def layers_page(rows: Sequence[LayerUsage]) -> str:
    biggest = max((r.uncompressed_size for r in rows), default=0) or 1
    body = []
    for i, r in enumerate(rows):
        body.append(
            f"<tr><td class='n'>{i}</td><td title='{_e(r.digest)}'>{_e(r.digest[:19])}</td>"
            f"<td class='n'>{_e(human_size(r.size))}</td>"
            f"<td class='n'>{_e(human_size(r.uncompressed_size))}</td>"
            f"<td>{_bar(r.uncompressed_size / biggest)}"
            f"{_bar(r.hidden_bytes / biggest, 'hid') if r.hidden_bytes else ''}</td>"
            f"<td class='n'>{r.files}</td><td class='n'>{r.added}</td>"
            f"<td class='n'>{r.modified}</td><td class='n'>{r.deleted}</td>"
            f"<td class='n'>{_e(human_size(r.hidden_bytes))}</td>"
            f"<td><code>{_e(r.created_by[:120])}</code></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "#",
            "layer",
            "compressed",
            "uncompressed",
            "",
            "files",
            "added",
            "modified",
            "deleted",
            "hidden",
            "created by",
        )
    )
    return (
        f'<div class="seekoci-insight">{_STYLE}<table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def changes_table(rows: Sequence[Change]) -> str:
    body = "".join(
        f"<tr><td>{_e(c.kind)}</td><td>{_e(c.path)}</td>"
        f"<td class='n'>{_e('' if c.size_a is None else human_size(c.size_a))}</td>"
        f"<td class='n'>{_e('' if c.size_b is None else human_size(c.size_b))}</td></tr>"
        for c in rows
    )
    return (
        f'<div class="seekoci-insight">{_STYLE}<table><thead><tr><th>change</th><th>path</th>'
        f"<th>size a</th><th>size b</th></tr></thead><tbody>{body}</tbody></table></div>"
    )


def findings_table(rows: Sequence[Finding]) -> str:
    biggest = max((f.bytes for f in rows), default=0) or 1
    body = "".join(
        f"<tr><td>{_e(f.category)}</td><td class='n'>{_e(human_size(f.bytes))}</td>"
        f"<td>{_bar(f.bytes / biggest, 'hid')}</td>"
        f"<td>{_e(', '.join(f.paths[:5]))}{' …' if len(f.paths) > 5 else ''}</td></tr>"
        for f in rows
    )
    return (
        f'<div class="seekoci-insight">{_STYLE}<table><thead><tr><th>category</th>'
        f"<th>bytes</th><th></th><th>largest paths</th></tr></thead><tbody>{body}</tbody>"
        "</table></div>"
    )


def page(body: str, title: str) -> str:
    """A whole HTML document around one of the fragments above."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title></head>"
        f"<body>{body}</body></html>\n"
    )
