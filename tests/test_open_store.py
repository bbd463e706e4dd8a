"""open_store: lazy xarray Datasets with source-pixel coordinates, for every resize mode."""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import liftvid
from liftvid.io import store as st
from liftvid.pipelines.extract import ExtractOptions, build_extractor, extract_videos
from liftvid.ops.geometry import source_to_grid

from .conftest import TINY_VIT

RESIZES = ("square:64", "short:32", "native")


@pytest.fixture(scope="module")
def extractor():
    return build_extractor(ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu"),
                           torch.device("cpu"))[0]


@pytest.fixture(scope="module")
def stores(video_dir, extractor, tmp_path_factory) -> dict[str, Path]:
    """One store per resize mode, both clips in each (batch 4: chunks of 4 frames)."""
    out = {}
    for resize in RESIZES:
        path = tmp_path_factory.mktemp("stores") / f"{resize.replace(':', '_')}.zarr"
        options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize=resize)
        extract_videos([video_dir], path, options, extractor=extractor)
        out[resize] = path
    return out


def test_store_object_lists_videos_and_config(stores):
    store = liftvid.open_store(stores["square:64"])
    assert store.videos == ["clip_a", "clip_b"] and list(store) == store.videos and len(store) == 2
    assert "clip_a" in store and "nope" not in store
    assert store.config["backbone"]["timm_name"] == TINY_VIT
    text = repr(store)
    assert "clip_a: 12 frames" in text and "vit_tiny" in text and "2 videos" in text
    assert [vid for vid, _ in store.items()] == store.videos


def test_dataset_dims_coords_dtypes(stores):
    ds = liftvid.open_store(stores["square:64"])["clip_a"]
    assert ds.features.dims == ("frame", "y", "x", "channel")
    assert ds.features.dtype == np.float16 and ds.sizes == {"frame": 12, "y": 4, "x": 4, "channel": 192}
    assert ds.frame_index.dtype == np.int64 and ds.time.dtype == np.float64
    np.testing.assert_array_equal(ds.frame_index.values, np.arange(12))
    np.testing.assert_allclose(ds.time.values, np.arange(12) / 24, atol=1e-3)  # clip_a is 24 fps
    assert ds.attrs["video_id"] == "clip_a" and ds.attrs["source_size"] == [64, 96]
    assert ds.attrs["store_config"]["feature_stride"] == 16
    assert ds.features.data.chunks[0] == (4, 4, 4)  # the store's chunks: one frame reads one chunk


def test_values_equal_the_stored_array(stores):
    path = stores["short:32"]
    ds = liftvid.open_store(path)["clip_b"]
    stored = zarr.open_group(str(path), mode="r")["clip_b"]["features"]
    np.testing.assert_array_equal(ds.features.isel(frame=3).values, stored[3])
    np.testing.assert_array_equal(ds.features.values, stored[:])


@pytest.mark.parametrize("resize", RESIZES)
def test_coordinates_are_source_pixel_centres(stores, resize):
    """Cell (i, j) of a grid (h, w) over a source (H, W) is centred at ((i+½)H/h, (j+½)W/w) for
    every resize mode (each maps the whole frame onto the whole model input)."""
    store = liftvid.open_store(stores[resize])
    for vid in store:
        ds = store[vid]
        H, W = ds.attrs["source_size"]
        h, w = ds.sizes["y"], ds.sizes["x"]
        assert [h, w] == ds.attrs["grid_size"]
        assert (h * 16, w * 16) == tuple(ds.attrs["frame_size"])  # no LiFT: one cell per patch
        np.testing.assert_allclose(ds.y.values, (np.arange(h) + 0.5) * H / h)
        np.testing.assert_allclose(ds.x.values, (np.arange(w) + 0.5) * W / w)
        # the coordinates are exactly the cell centres geometry maps back to integer grid positions
        xy = np.stack(np.meshgrid(ds.x.values, ds.y.values), axis=-1)
        np.testing.assert_allclose(source_to_grid(xy, (h, w), (H, W)),
                                   np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1), atol=1e-9)
        assert ds.y.values[0] > 0 and ds.y.values[-1] < H and ds.x.values[-1] < W


def test_nothing_is_read_until_computed(stores, monkeypatch):
    reads = []
    original = zarr.Array.__getitem__

    def counting(self, selection):
        if self.path.endswith("features"):
            reads.append(selection)
        return original(self, selection)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    ds = liftvid.open_store(stores["square:64"])["clip_a"]
    frame = ds.features.isel(frame=5)
    mean = ds.features.mean(dim=("y", "x"))
    assert reads == []
    frame.values
    assert len(reads) == 1  # one chunk (frames 4–7) for one frame
    mean.compute()
    assert len(reads) == 1 + 3


def test_plain_xarray_reads_a_video_without_liftvid(stores):
    ds = xr.open_zarr(str(stores["square:64"]), group="clip_a", consolidated=False)
    assert ds.features.dims == ("frame", "y", "x", "channel")


def test_masks_and_tracks_join_the_dataset(video_dir, extractor, tmp_path):
    path = tmp_path / "s.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="square:64")
    extract_videos([video_dir / "clip_b.mp4"], path, options, extractor=extractor)
    group = zarr.open_group(str(path), mode="r+")["clip_b"]
    masks = group.create_array("masks", shape=(9, 80, 64), dtype="uint8", dimension_names=("frame", "height", "width"))
    masks[:] = 1
    masks.attrs["liftvid"] = {"status": "complete", "objects": 1}
    tracks = group.create_group("tracks", attributes={"liftvid": {"status": "complete"}})
    pos = tracks.create_array("positions", shape=(2, 9, 2), dtype="float32", dimension_names=("query", "frame", "xy"))
    pos[:] = 5.0
    half = group.create_array("half", shape=(9,), dtype="uint8", dimension_names=("frame",))
    half.attrs["liftvid"] = {"status": "incomplete"}  # a writer killed midway: left out
    ds = liftvid.open_store(path)["clip_b"]
    assert ds.masks.dims == ("frame", "height", "width") and int(ds.masks.isel(frame=0).max()) == 1
    assert ds.masks.attrs["objects"] == 1
    assert ds.tracks_positions.dims == ("query", "frame", "xy") and list(ds.xy.values) == ["x", "y"]
    assert "half" not in ds


def test_unknown_video_and_missing_store(stores, tmp_path):
    store = liftvid.open_store(stores["square:64"])
    with pytest.raises(KeyError) as info:
        store["no_such_clip"]
    message = str(info.value)
    assert "'no_such_clip'" in message and "clip_a" in message and "\n" not in message
    with pytest.raises(st.StoreError, match="no liftvid store"):
        liftvid.open_store(tmp_path / "missing.zarr")


def test_failed_video_is_listed_apart(video_dir, extractor, tmp_path):
    path = tmp_path / "s.zarr"
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video")
    (bad / "clip_a.mp4").symlink_to(video_dir / "clip_a.mp4")
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="square:32")
    extract_videos([bad], path, options, extractor=extractor)
    store = liftvid.open_store(path)
    assert store.videos == ["clip_a"] and "broken" in store.failed
    with pytest.raises(st.StoreError, match="broken.*failed"):
        store["broken"]


def test_url_store(video_dir, extractor):
    url = "memory://liftvid-open-store-test"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="square:32")
    extract_videos([video_dir / "clip_b.mp4"], url, options, extractor=extractor)
    ds = liftvid.open_store(url)["clip_b"]
    assert ds.sizes["frame"] == 9 and ds.features.isel(frame=8).values.shape == (2, 2, 192)
