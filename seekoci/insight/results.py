"""What the insight functions return: small dataclasses, in lists that render in Jupyter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CATEGORIES = (
    "hidden-by-upper-layers",
    "duplicate-files",
    "python-bytecode",
    "package-manager-caches",
    "debug-info",
    "static-libraries",
)


@dataclass(frozen=True)
class Usage:
    """Bytes of regular files under ``path`` in the merged view (hard links once) and how
    many regular files that is."""

    path: str
    size: int
    files: int


@dataclass(frozen=True)
class LayerUsage:
    """One layer against the layers below it."""

    digest: str
    size: int  # compressed, as in the manifest
    uncompressed_size: int  # of the tar stream
    files: int  # regular files the layer stores (whiteout markers not counted)
    added: int  # paths new to the image
    modified: int  # paths that replace something of a lower layer
    deleted: int  # lower paths whited out (one per whiteout; an opaque directory: its children)
    hidden_bytes: int  # regular-file bytes stored here that the merged image does not show
    created_by: str = ""  # the config history line of the layer ("" if none)


@dataclass(frozen=True)
class Change:
    """A path that differs between two images; ``size_a``/``size_b`` are None on the side
    where the path does not exist."""

    path: str
    kind: str  # "added", "removed" or "modified"
    size_a: int | None
    size_b: int | None


@dataclass(frozen=True)
class Finding:
    """What could be cut: ``bytes`` it costs, ``paths`` largest first."""

    category: str
    bytes: int
    paths: list[str] = field(default_factory=list)


def as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [asdict(item) for item in items]


class UsageList(list[Usage]):
    """``du``'s result: a list of :class:`Usage`, drawn as a table with bars and a treemap."""

    top: str = "/"

    def _repr_html_(self) -> str:
        from .render import usage_page

        return usage_page(self, top=self.top)


class LayerUsageList(list[LayerUsage]):
    """``layer_usage``'s result: a list of :class:`LayerUsage`, drawn as a table with bars."""

    def _repr_html_(self) -> str:
        from .render import layers_page

        return layers_page(self)


class ChangeList(list[Change]):
    def _repr_html_(self) -> str:
        from .render import changes_table

        return changes_table(self)


class FindingList(list[Finding]):
    def _repr_html_(self) -> str:
        from .render import findings_table

        return findings_table(self)
