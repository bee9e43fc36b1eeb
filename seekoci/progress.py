"""Progress reporting for index builds and copies: a tqdm bar per layer (or per copy).

On a terminal the bars are drawn on ``stream``; elsewhere nothing, unless ``force`` (what
``Image.build_index(progress=True)`` asks for). In a Jupyter kernel the bars are tqdm's
notebook widgets, chosen by ``tqdm.auto`` -- when ipywidgets is installed; without it, text
bars on the kernel's stderr (tqdm.auto would say "IProgress not found" as a warning there,
on every bar).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO


def in_notebook() -> bool:
    """True inside a Jupyter (IPython) kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half torn down: not a notebook
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets_available() -> bool:
    try:
        import ipywidgets  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def tqdm_class(*, notebook: bool | None = None) -> Any:
    """The tqdm front end to draw with: ``tqdm.auto``'s choice where widgets can be drawn
    (a notebook with ipywidgets), else the text bar."""
    notebook = in_notebook() if notebook is None else notebook
    if notebook and _widgets_available():
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


class ProgressBar:
    """A ``progress(name, done, total)`` callable drawing one tqdm bar per name.

    Bars appear when ``stream`` is a terminal, in a Jupyter kernel, or with ``force``;
    otherwise calls cost nothing.
    """

    def __init__(
        self, stream: TextIO | None = None, *, force: bool = False, desc: str = "indexing"
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._bars: dict[str, Any] = {}
        self._notebook = in_notebook()
        self._enabled = force or self._notebook or _isatty(self._stream)
        self._desc = desc

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        bar = self._bars.get(name)
        if bar is None:
            bar = tqdm_class(notebook=self._notebook)(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{self._desc} {name[:19]}",
                file=self._stream,
                leave=self._notebook,  # a notebook keeps its finished bars; a terminal not
                **_unsized_terminal(self._stream),
            )
            self._bars[name] = bar
        if bar.total != total:  # a tree's total grows while its walk finds files
            bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def for_copy(self, name: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callable for one copy (``seekoci.extract.extract``)."""
        return lambda done, total: self(name, done, total)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _unsized_terminal(stream: TextIO) -> dict[str, int]:
    """The width and height to draw with on a terminal that reports none (a pseudo-terminal
    nobody sized says 0 x 0, and tqdm then draws nothing at all): its defaults' figures."""
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):  # not a terminal, or no descriptor
        return {}
    size = {}
    if columns <= 0:
        size["ncols"] = 80
    if lines <= 0:
        size["nrows"] = 20
    return size


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False
