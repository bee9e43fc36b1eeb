"""Progress reporting for index builds: a tqdm bar per layer, on a terminal only."""

from __future__ import annotations

from typing import Any, TextIO


class ProgressBar:
    """A ``progress(name, done, total)`` callable drawing one tqdm bar per layer on
    ``stream`` if it is a terminal, and nothing otherwise."""

    def __init__(self, stream: TextIO, *, force: bool = False, desc: str = "indexing") -> None:
        self._stream = stream
        self._bars: dict[str, Any] = {}
        self._enabled = force or stream.isatty()
        self._desc = desc

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(name)
        if bar is None:
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{self._desc} {name[:19]}",
                file=self._stream,
                leave=False,
            )
            self._bars[name] = bar
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
