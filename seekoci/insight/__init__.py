"""Image insight without pulling: where an image's bytes go, what changed between two
images, and what could be cut -- from the layers' tables of contents (the indexes) and, for
ELF debug sections, a few KB of section headers per binary.

>>> from seekoci import insight
>>> insight.du(img, "/usr", depth=2)                    # doctest: +SKIP
>>> insight.layer_usage(img)                            # doctest: +SKIP
>>> insight.diff(img_a, img_b)                          # doctest: +SKIP
>>> insight.bloat(img)                                  # doctest: +SKIP

See docs/insight.md.
"""

from __future__ import annotations

from .bloat import bloat
from .diff import diff
from .results import (
    CATEGORIES,
    Change,
    ChangeList,
    Finding,
    FindingList,
    LayerUsage,
    LayerUsageList,
    Usage,
    UsageList,
)
from .usage import du, layer_usage

__all__ = [
    "CATEGORIES",
    "Change",
    "ChangeList",
    "Finding",
    "FindingList",
    "LayerUsage",
    "LayerUsageList",
    "Usage",
    "UsageList",
    "bloat",
    "diff",
    "du",
    "layer_usage",
]
