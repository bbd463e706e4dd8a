"""Issue 15, "Object stores, for real": liftvid against an S3 server (moto, on the loopback) through s3fs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io import store as st
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import TINY_VIT
from .s3_server import s3_bucket, s3_server  # noqa: F401  (fixtures)
from .test_extract import _assert_stores_equal, _read_store

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "2", "--device", "cpu",
        "--resize", "square:32"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("s3clips")
    for i, (n, h, w) in enumerate([(4, 32, 48), (3, 40, 32)]):
        write_video(d / f"v{i}.mp4", synthetic_frames(n, h, w, seed=70 + i), fps=24)
    return d


def _extract(inputs, store, *extra):
    return runner.invoke(app, ["extract", *map(str, inputs), str(store), *BASE, *extra])


def _masks(folder: Path) -> Path:
    """First-frame masks of both clips: one object each (a box), at the source size."""
    from PIL import Image

    folder.mkdir()
    for vid, (h, w) in (("v0", (32, 48)), ("v1", (40, 32))):
        m = np.zeros((h, w), np.uint8)
        m[6:20, 8:26] = 1
        Image.fromarray(m).save(folder / f"{vid}.png")
    return folder


def _queries(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "t", "x", "y"])
        w.writerows([("v0", 0, 12.0, 10.0), ("v0", 1, 30.5, 20.0), ("v1", 0, 16.0, 16.0)])
    return path


def _propagate_and_track(store, masks: Path, queries: Path, out: Path) -> None:
    for _ in range(2):  # twice: the second run replaces the store's masks and tracks (replace_node)
        r = runner.invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(out / "pred"),
                                "--device", "cpu", "--scheduler", "sync"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(out / "t.csv"),
                                "--device", "cpu", "--scheduler", "sync"])
        assert r.exit_code == 0, r.output


def test_extract_propagate_track_open_store_round_trip(tmp_path, clips, s3_bucket):
    """Every command on s3:// gives what it gives on a local store written from the same inputs."""
    import s3fs

    from liftvid.pipelines.analysis import open_store

    url, local = f"{s3_bucket}/out.zarr", tmp_path / "local.zarr"
    masks, queries = _masks(tmp_path / "masks"), _queries(tmp_path / "q.csv")
    for store in (url, local):
        r = _extract([clips], store)
        assert r.exit_code == 0, r.output
        assert "2 extracted" in r.output
        _propagate_and_track(store, masks, queries, tmp_path / ("s3" if store == url else "local"))
    _assert_stores_equal(url, local)  # features, masks, tracks: every array and attribute
    stored = _read_store(url)
    assert stored["v0"]["masks"].shape == (4, 32, 48) and stored["v0"]["masks"].any()
    assert (tmp_path / "s3" / "t.csv").read_text() == (tmp_path / "local" / "t.csv").read_text()
    for vid in ("v0", "v1"):
        pngs = sorted(p.name for p in (tmp_path / "s3" / "pred" / vid).glob("*.png"))
        assert pngs and pngs == sorted(p.name for p in (tmp_path / "local" / "pred" / vid).glob("*.png"))
    # nothing left beside the store: no partial node, no lease
    fs = s3fs.S3FileSystem()
    keys = fs.find(url.removeprefix("s3://"))
    assert not [k for k in keys if ".partial" in k or k.endswith(".old")], keys
    assert not fs.exists(url.removeprefix("s3://") + ".lock")
    # the library: open_store reads the same numbers
    remote, here = open_store(url), open_store(local)
    assert list(remote) == list(here) == ["v0", "v1"]
    for vid in remote:
        a, b = remote[vid], here[vid]
        assert sorted(a.data_vars) == sorted(b.data_vars)
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{vid}/{name}")
        np.testing.assert_array_equal(a["frame_index"].values, b["frame_index"].values)
    info = runner.invoke(app, ["info", url])
    assert info.exit_code == 0 and "2 videos, 2 complete" in info.output, info.output
    verify = runner.invoke(app, ["verify", url])
    assert verify.exit_code == 0, verify.output
