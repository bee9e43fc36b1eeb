"""fsspec over an image in the real test registry: URLs, pandas, pyarrow, glob, ranges."""

from __future__ import annotations

import io
import pickle

import fsspec
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from imagebuilder import dir, file, image, layer, random_bytes, symlink, whiteout

import seekoci
from seekoci.fs import SeekociFileSystem, split_url

pytestmark = pytest.mark.integration

REPO = "fsspec/data"
CSV = b"city,population\nLyon,522000\nNantes,320000\nLille,236000\n"
BIG = random_bytes("fsspec-big", 3 << 20)


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=100)
    return out.getvalue()


TABLE = pa.table({"id": list(range(1000)), "name": [f"row-{i}" for i in range(1000)]})
PARQUET = _parquet(TABLE)
PART2 = _parquet(pa.table({"id": [1000, 1001], "name": ["x", "y"]}))


def _hdf5() -> bytes:
    out = io.BytesIO()
    with h5py.File(out, "w") as h5:
        h5.create_dataset(
            "grid/temperature", data=np.arange(200_000, dtype="<f8").reshape(400, 500)
        )
        h5["grid"].attrs["units"] = "K"
    return out.getvalue()


HDF5 = _hdf5()


@pytest.fixture(scope="module")
def data_image(registry) -> str:
    base = layer(
        dir("srv"),
        file("srv/data/cities.csv", CSV),
        file("srv/data/old.csv", b"a,b\n1,2\n"),
        file("srv/table/part-0.parquet", PARQUET),
        file("srv/table/part-1.parquet", PART2),
        file("srv/blob.bin", BIG),
        file("srv/grid.h5", HDF5),
        symlink("srv/latest.csv", "data/cities.csv"),
        symlink("srv/here", "."),
        symlink("srv/dangling", "nowhere"),
    )
    upper = layer(whiteout("srv/data/old.csv"), file("srv/data/extra.csv", b"x\n1\n"))
    registry.push(REPO, "v1", image(base, upper))
    return registry.ref(REPO, "v1")


def test_urls_split_at_the_first_double_slash() -> None:
    assert split_url("seekoci://ghcr.io/org/app:1.0//etc/os-release") == (
        "ghcr.io/org/app:1.0",
        "/etc/os-release",
    )
    digest = "sha256:" + "ab" * 32
    assert split_url(f"seekoci://127.0.0.1:5000/ml/dl@{digest}//models/m/config.json") == (
        f"127.0.0.1:5000/ml/dl@{digest}",
        "/models/m/config.json",
    )
    assert split_url("seekoci://reg/app//a//b/") == ("reg/app", "/a/b")
    assert split_url("seekoci://reg/app") == ("reg/app", "/")
    assert split_url("seekoci:///etc/x") == ("", "/etc/x")
    assert split_url("/etc/x") == ("", "/etc/x")
    url = "seekoci://reg/app:1//etc/x"
    assert SeekociFileSystem._strip_protocol(url) == "/etc/x"
    assert SeekociFileSystem._get_kwargs_from_urls(url) == {"ref": "reg/app:1"}


def test_fsspec_open_a_url(data_image: str) -> None:
    url = f"seekoci://{data_image}//srv/data/cities.csv"
    with fsspec.open(url, "rb") as f:
        assert f.read() == CSV
        # seekoci's own file object, not fsspec's buffered file with a block cache
        assert type(f).__module__ == "seekoci.fileobj"
    with fsspec.open(f"seekoci://{data_image}//srv/latest.csv", "rt") as t:
        assert t.read() == CSV.decode()


def test_open_files_and_glob(data_image: str) -> None:
    files = fsspec.open_files(f"seekoci://{data_image}//srv/data/*.csv", "rb")
    assert [f.path for f in files] == ["/srv/data/cities.csv", "/srv/data/extra.csv"]
    contents = []
    for of in files:
        with of as f:
            contents.append(f.read())
    assert contents == [CSV, b"x\n1\n"]
    assert files[0].full_name == f"seekoci://{data_image}//srv/data/cities.csv"
    fs = files[0].fs
    assert fs.glob("/srv/**/*.parquet") == [
        "/srv/table/part-0.parquet",
        "/srv/table/part-1.parquet",
    ]
    assert fs.glob("/srv/data/old.*") == []  # whited out in the upper layer


def test_pandas_reads_csv_and_parquet_straight_from_the_image(data_image: str) -> None:
    frame = pd.read_csv(f"seekoci://{data_image}//srv/data/cities.csv")
    assert list(frame["city"]) == ["Lyon", "Nantes", "Lille"]
    assert int(frame["population"].sum()) == 522000 + 320000 + 236000
    table = pd.read_parquet(f"seekoci://{data_image}//srv/table/part-0.parquet")
    assert table["id"].tolist() == list(range(1000))


def test_pyarrow_parquet_and_datasets(data_image: str) -> None:
    fs = fsspec.filesystem("seekoci", ref=data_image)
    assert pq.read_table("/srv/table/part-0.parquet", filesystem=fs).equals(TABLE)
    dataset = ds.dataset("/srv/table", format="parquet", filesystem=fs)
    assert dataset.count_rows() == 1002
    assert sorted(dataset.to_table(columns=["id"])["id"].to_pylist())[-2:] == [1000, 1001]


def test_info_ls_find_walk(data_image: str) -> None:
    fs = fsspec.filesystem("seekoci", ref=data_image)
    info = fs.info("/srv/data/cities.csv")
    assert info["type"] == "file" and info["size"] == len(CSV) and not info["islink"]
    assert info["mode"] == 0o100644 and info["mtime"] == 1_700_000_000
    link = fs.info("/srv/latest.csv")
    assert link["type"] == "file" and link["islink"] and link["destination"] == "data/cities.csv"
    assert link["size"] == len(CSV)
    assert fs.info("/srv/dangling")["type"] == "link"
    assert fs.info("/srv")["type"] == "directory"
    assert fs.modified("/srv/latest.csv").timestamp() == 1_700_000_000
    assert fs.isfile("/srv/latest.csv") and fs.isdir("/srv/here") and not fs.isdir("/nope")
    assert fs.size("/srv/blob.bin") == len(BIG) and fs.head("/srv/blob.bin", 5) == BIG[:5]
    assert fs.tail("/srv/blob.bin", 5) == BIG[-5:]
    assert pickle.loads(pickle.dumps(fs)).cat_file("/srv/data/cities.csv") == CSV
    assert fs.ls("/srv/data", detail=False) == ["/srv/data/cities.csv", "/srv/data/extra.csv"]
    assert [e["name"] for e in fs.ls("/srv/table")] == [
        "/srv/table/part-0.parquet",
        "/srv/table/part-1.parquet",
    ]
    found = fs.find("/srv", detail=True)
    assert found["/srv/blob.bin"]["size"] == len(BIG)
    assert "/srv/here" not in found and "/srv/data" not in found  # files only
    with_dirs = fs.find("/srv", withdirs=True)
    assert "/srv/here" in with_dirs and "/srv/data" in with_dirs
    # a symlink to a directory is listed, never descended (here -> . would loop)
    assert not any(name.startswith("/srv/here/") for name in with_dirs)
    assert fs.find("/srv/data/cities.csv") == ["/srv/data/cities.csv"]
    walked = list(fs.walk("/srv"))
    assert walked[0] == (
        "/srv",
        ["data", "here", "table"],
        ["blob.bin", "dangling", "grid.h5", "latest.csv"],
    )
    assert [w[0] for w in fs.walk("/srv", maxdepth=1)] == ["/srv"]
    assert fs.exists("/srv/data/cities.csv") and not fs.exists("/srv/data/old.csv")
    with pytest.raises(FileNotFoundError):
        fs.info("/srv/missing")


def test_cat_file_and_cat_ranges(data_image: str) -> None:
    fs = fsspec.filesystem("seekoci", ref=data_image)
    assert fs.cat_file("/srv/blob.bin", start=1000, end=2000) == BIG[1000:2000]
    assert fs.cat_file("/srv/blob.bin", start=-10) == BIG[-10:]
    assert fs.cat_file("/srv/blob.bin", start=len(BIG) + 5) == b""
    got = fs.cat_ranges(
        ["/srv/blob.bin", "/srv/data/cities.csv", "/srv/blob.bin", "/srv/missing"],
        [0, 5, 2 << 20, 0],
        [10, 9, (2 << 20) + 7, 1],
    )
    assert got[:3] == [BIG[:10], CSV[5:9], BIG[2 << 20 : (2 << 20) + 7]]
    assert isinstance(got[3], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(["/srv/missing"], [0], [1], on_error="raise")


def test_one_filesystem_per_reference(data_image: str, registry) -> None:
    other = registry.ref("fsspec/other", "v1")
    registry.push("fsspec/other", "v1", image(layer(file("srv/data/cities.csv", b"other\n"))))
    a = fsspec.filesystem("seekoci", ref=data_image)
    b = fsspec.filesystem("seekoci", ref=other)
    assert a is fsspec.filesystem("seekoci", ref=data_image)  # fsspec's instance cache
    assert a.cat_file("/srv/data/cities.csv") == CSV
    assert b.cat_file("/srv/data/cities.csv") == b"other\n"
    assert fsspec.open(f"seekoci://{other}//srv/data/cities.csv").open().read() == b"other\n"


def test_read_only_and_wrapping_an_open_image(data_image: str) -> None:
    img = seekoci.open_image(data_image)
    fs = SeekociFileSystem(image=img, skip_instance_cache=True)
    assert fs.image is img and fs.cat_file("/srv/data/extra.csv") == b"x\n1\n"
    with pytest.raises(NotImplementedError):
        fs.open("/srv/x", "wb")
    with pytest.raises(ValueError, match="ref="):
        SeekociFileSystem(skip_instance_cache=True)


def test_h5py_reads_a_dataset_through_the_file_object(data_image: str) -> None:
    fs = fsspec.filesystem("seekoci", ref=data_image)
    with fs.open("/srv/grid.h5", "rb") as f, h5py.File(f, "r") as h5:
        assert h5["grid"].attrs["units"] == "K"
        temperature = h5["grid/temperature"]
        assert temperature.shape == (400, 500)
        assert temperature[123, 456] == 123 * 500 + 456
        assert float(temperature[-1].sum()) == float(np.arange(199_500, 200_000).sum())
