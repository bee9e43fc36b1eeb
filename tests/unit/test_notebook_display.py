"""Jupyter display: FileInfo's HTML table and progress bars that choose tqdm's notebook
front end inside a kernel."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest
import tqdm.auto
import tqdm.std

import seekoci
from seekoci import progress
from seekoci._sample import make_sample_image
from seekoci.fileinfo import FileInfo
from seekoci.progress import ProgressBar


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_sample_image(str(tmp_path_factory.mktemp("sample") / "image"))


def test_fileinfo_html_is_a_table_of_what_stat_says(sample: str) -> None:
    img = seekoci.open_image(sample, cache_dir=False, platform="linux/amd64")
    info = img.stat("/etc/app/config.yaml")
    html = info._repr_html_()
    assert html.startswith("<table>") and html.endswith("</table>")
    assert "/etc/app/config.yaml" in html
    assert f"({info.size} bytes)" in html
    assert f"({info.mode:04o})" in html
    assert info.layer in html
    assert "UTC" in html


def test_fileinfo_html_escapes_names_and_shows_links() -> None:
    info = FileInfo(
        path="/a/<b>&c",
        type="symlink",
        size=0,
        mode=0o777,
        mtime=1e30,  # beyond time_t: shown as a number, not an error
        uid=0,
        gid=0,
        linkname="../<target>",
        xattrs={"user.x": b"1"},
        layer="sha256:" + "a" * 64,
    )
    html = info._repr_html_()
    assert "<b>" not in html and "&lt;b&gt;&amp;c" in html
    assert "../&lt;target&gt;" in html
    assert "lrwxrwxrwx" in html
    assert "user.x" in html
    assert "@10000000000" in html


def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make seekoci believe it runs in a Jupyter kernel (IPython's config says IPKernelApp)."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_no_kernel_no_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress.in_notebook()
    terminal_less = ProgressBar(io.StringIO())
    assert not terminal_less.enabled
    # IPython imported but no kernel (a terminal IPython, or none running)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress.in_notebook()
    assert progress.tqdm_class() is tqdm.std.tqdm


def test_in_a_kernel_bars_draw_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kernel(monkeypatch)
    assert progress.in_notebook()
    stream = io.StringIO()  # a kernel's stderr is no terminal
    bar = ProgressBar(stream)
    assert bar.enabled
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    bar("sha256:" + "b" * 64, 50, 100)
    bar("sha256:" + "b" * 64, 100, 100)
    bar.close()
    assert "indexing sha256:bbbb" in stream.getvalue()  # text bars when widgets are missing


def test_in_a_kernel_with_widgets_tqdm_auto_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kernel(monkeypatch)
    monkeypatch.setattr(progress, "_widgets_available", lambda: True)
    assert progress.tqdm_class() is tqdm.auto.tqdm
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    assert progress.tqdm_class() is tqdm.std.tqdm


def test_copy_progress_adapter_feeds_one_bar(sample: str, tmp_path: Path) -> None:
    from seekoci.extract import extract

    img = seekoci.open_image(sample, cache_dir=False, platform="linux/amd64")
    stream = io.StringIO()
    bar = ProgressBar(stream, force=True, desc="copying")
    extract(img, "/usr", str(tmp_path / "usr"), warn=print, progress=bar.for_copy("/usr"))
    bar.close()
    assert "copying /usr" in stream.getvalue()
