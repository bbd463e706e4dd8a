"""Feature encodings (issue 12): int8 and pca stores, one reading path, ``liftvid recode``.

Each expectation is computed here from the raw arrays (zarr, NumPy), never by the code under test.
"""

import shutil
import sys

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

import liftvid
from liftvid.cli import app
from liftvid.io import store as st
from liftvid.io.masks import write_mask
from liftvid.ops.propagate import masks_to_labels, propagate_labels
from liftvid.ops.track import TrackOptions, track_points
from liftvid.pipelines.extract import ExtractOptions, extract_videos

from .conftest import TINY_VIT
from .helpers import refused

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "4", "--device", "cpu", "--resize", "square:96"]
OPTIONS = dict(backbone=TINY_VIT, weights="random", batch_size=4, device="cpu", resize="square:96")
K = 8
ALL_FRAMES = 1000  # a pca fit sample larger than the clips: every frame of both


@pytest.fixture(scope="module")
def stores(tmp_path_factory, video_dir, one_torch_thread):
    """The same clips extracted three ways: plain float16, --quantize int8, --pca K (fitted on every frame)."""
    d = tmp_path_factory.mktemp("enc")
    out = {}
    for name, extra in (("float", {}), ("int8", {"quantize": "int8"}),
                        ("pca", {"pca": K, "pca_fit_frames": ALL_FRAMES})):
        out[name] = d / f"{name}.zarr"
        summary = extract_videos([video_dir], out[name], ExtractOptions(**OPTIONS, **extra))
        assert not summary.failed
    return out


def _raw(path, video, name="features"):
    return np.asarray(zarr.open_group(str(path), mode="r")[video][name][...])


def test_int8_round_trip_within_its_bound(stores):
    x = _raw(stores["float"], "clip_a").astype(np.float64)
    codes = _raw(stores["int8"], "clip_a")
    assert codes.dtype == np.int8 and codes.shape == x.shape and codes.min() >= -127
    T, C = x.shape[0], x.shape[-1]
    scale, offset = _raw(stores["int8"], "clip_a", "features_scale"), _raw(stores["int8"], "clip_a", "features_offset")
    assert scale.shape == offset.shape == (T, C) and scale.dtype == np.float32
    # the bound, from the float features alone: half a step of 255 levels between min and max
    span = x.max(axis=(1, 2)) - x.min(axis=(1, 2))
    bound = span / 254 / 2 + 1e-6 * np.abs(x).max()
    decoded = np.asarray(st.feature_reader(zarr.open_group(str(stores["int8"]), mode="r")["clip_a"])[:])
    assert decoded.dtype == np.float32
    err = np.abs(decoded - x).max(axis=(1, 2))
    assert (err <= bound).all(), float((err / bound).max())
    # and the codes decode as documented: offset + code * scale
    np.testing.assert_allclose(decoded, offset[:, None, None] + codes * scale[:, None, None], rtol=0, atol=1e-6)
    config = zarr.open_group(str(stores["int8"]), mode="r").attrs["liftvid"]
    assert config["encoding"]["kind"] == "int8"
    assert liftvid.store.verify_store(str(stores["int8"])).damaged == {}


def test_pca_equals_an_independent_projection(stores):
    xs = [_raw(stores["float"], v).astype(np.float64) for v in ("clip_a", "clip_b")]
    C = xs[0].shape[-1]
    X = np.concatenate([x.reshape(-1, C) for x in xs])
    values, vectors = np.linalg.eigh(X.T @ X)
    V = vectors[:, np.argsort(values)[::-1][:K]]
    root = zarr.open_group(str(stores["pca"]), mode="r")
    basis = np.asarray(root["pca_basis"][...], dtype=np.float64)
    assert basis.shape == (C, K)
    signs = np.sign(np.sum(basis * V, axis=0))
    np.testing.assert_allclose(basis, V * signs, atol=1e-4)
    for v, x in zip(("clip_a", "clip_b"), xs):
        z = _raw(stores["pca"], v)
        assert z.dtype == np.float16 and z.shape == x.shape[:-1] + (K,)
        expected = x @ (V * signs)
        np.testing.assert_allclose(z, expected, atol=2e-3 * np.abs(expected).max())
    enc = root.attrs["liftvid"]["encoding"]
    assert enc["kind"] == "pca" and enc["components"] == K and enc["fit"]["vectors"] == len(X)
    assert liftvid.store.verify_store(str(stores["pca"])).damaged == {}


def _decoded_by_hand(path, video):
    """The C-channel features an encoded store stands for, from its raw arrays."""
    root = zarr.open_group(str(path), mode="r")
    if "features_scale" in root[video]:
        codes = _raw(path, video).astype(np.float32)
        return (_raw(path, video, "features_offset")[:, None, None]
                + codes * _raw(path, video, "features_scale")[:, None, None])
    return _raw(path, video).astype(np.float32) @ np.asarray(root["pca_basis"][...]).T


@pytest.mark.parametrize("kind", ["int8", "pca"])
def test_kernels_on_encoded_stores_equal_the_kernels_on_the_decoded_arrays(stores, kind):
    group = zarr.open_group(str(stores[kind]), mode="r")["clip_a"]
    reader = st.feature_reader(group, "test")
    decoded = _decoded_by_hand(stores[kind], "clip_a")
    T, h, w, _ = decoded.shape
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, : w // 2], mask[h // 2:, w // 2:] = 1, 2
    labels = masks_to_labels(mask, (h, w), 2)
    on_store = propagate_labels(reader, labels, radius=None, device="cpu")
    on_array = propagate_labels(torch.from_numpy(decoded), labels, radius=None, device="cpu")
    torch.testing.assert_close(on_store, on_array, atol=1e-4, rtol=1e-4)
    queries = np.array([[0, 1.0, 1.0], [2, 3.5, 2.0], [5, 4.0, 4.0]])
    options = TrackOptions(cycle_radius=100.0)
    a, b = track_points(reader, queries, options, "cpu"), track_points(decoded, queries, options, "cpu")
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-2)
    np.testing.assert_allclose(a.score, b.score, atol=1e-2)


def test_open_store_returns_decoded_floats(stores):
    ds = liftvid.open_store(stores["int8"])["clip_a"]
    assert ds.features.dtype == np.float32
    np.testing.assert_allclose(ds.features.isel(frame=3).values, _decoded_by_hand(stores["int8"], "clip_a")[3], atol=1e-6)
    assert "features_scale" not in ds and "features_offset" not in ds
    pca = liftvid.open_store(stores["pca"])
    assert pca["clip_b"].features.shape[-1] == K
    full = liftvid.open_store(stores["pca"], full_channels=True)["clip_b"].features
    np.testing.assert_allclose(full.isel(frame=slice(1, 4)).values,
                               _decoded_by_hand(stores["pca"], "clip_b")[1:4], atol=1e-5)


def test_append_with_another_encoding_is_refused_and_old_stores_read_as_plain(stores, video_dir, tmp_path):
    for extra in (["--quantize", "int8"], ["--pca", "4"]):
        line = refused(runner.invoke(app, ["extract", str(video_dir), str(stores["float"]), *BASE, *extra]))
        assert "another configuration" in line and "encoding" in line
    line = refused(runner.invoke(app, ["extract", str(video_dir), str(stores["pca"]), *BASE, "--pca", "4"]))
    assert "another configuration" in line
    # a store written before encodings existed: no "encoding" record, read as plain floats
    old = tmp_path / "old.zarr"
    shutil.copytree(stores["float"], old)
    root = zarr.open_group(str(old), mode="r+")
    config = dict(root.attrs["liftvid"])
    del config["encoding"]
    root.attrs["liftvid"] = config
    result = runner.invoke(app, ["extract", str(video_dir), str(old), *BASE])
    assert result.exit_code == 0 and "2 already complete" in result.output, result.output
    np.testing.assert_array_equal(liftvid.open_store(old)["clip_a"].features.values, _raw(stores["float"], "clip_a"))
    refused(runner.invoke(app, ["extract", str(video_dir), str(old), *BASE, "--quantize", "int8"]))


def test_bad_options_are_one_line_each(stores, video_dir, tmp_path):
    line = refused(runner.invoke(app, ["extract", str(video_dir), str(tmp_path / "k.zarr"), *BASE, "--pca", "1000"]))
    assert "--pca 1000" in line and "192 channels" in line
    assert not (tmp_path / "k.zarr").exists()  # refused before any work
    line = refused(runner.invoke(app, ["recode", str(stores["int8"]), str(tmp_path / "q.zarr"), "--quantize", "int8"]))
    assert "already int8" in line
    line = refused(runner.invoke(app, ["recode", str(stores["pca"]), str(tmp_path / "q.zarr"), "--quantize", "int8"]))
    assert "already pca" in line
    assert not (tmp_path / "q.zarr").exists()
    line = refused(runner.invoke(app, ["recode", str(stores["float"]), str(tmp_path / "q.zarr"), "--pca", "500"]))
    assert "192 channels" in line
    refused(runner.invoke(app, ["recode", str(stores["float"]), str(stores["float"]), "--quantize", "int8"]))
    refused(runner.invoke(app, ["extract", str(video_dir), str(tmp_path / "b.zarr"), *BASE, "--quantize", "int4"]))
    refused(runner.invoke(app, ["recode", str(stores["float"]), str(tmp_path / "q.zarr")]))


def test_recode_int8_then_propagate(stores, video_dir, tmp_path):
    out = tmp_path / "int8.zarr"
    result = runner.invoke(app, ["recode", str(stores["float"]), str(out), "--quantize", "int8"])
    assert result.exit_code == 0 and "2 recoded" in result.output, result.output
    for name in ("features", "features_scale", "features_offset", "frame_index", "timestamps"):
        np.testing.assert_array_equal(_raw(out, "clip_a", name), _raw(stores["int8"], "clip_a", name))
    assert zarr.open_group(str(out), mode="r").attrs["liftvid"]["recoded_from"]["store"] == str(stores["float"])
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 20:60] = 1
    write_mask(tmp_path / "clip_a.png", mask)
    result = runner.invoke(app, ["propagate", str(out), "--masks", str(tmp_path / "clip_a.png"), "--video", "clip_a",
                                 "--out", str(tmp_path / "results"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _raw(out, "clip_a", "masks").shape == (12, 64, 96)
    assert len(list((tmp_path / "results" / "clip_a").glob("*.png"))) == 12


def test_recode_resumes_an_interrupted_run(stores, tmp_path):
    out = tmp_path / "pca.zarr"
    args = ["recode", str(stores["float"]), str(out), "--pca", str(K), "--pca-fit-frames", str(ALL_FRAMES)]
    assert runner.invoke(app, args).exit_code == 0
    # the recoded basis equals the one extract fitted on the same frames (a sign-fixed eigh)
    np.testing.assert_allclose(np.asarray(zarr.open_group(str(out), mode="r")["pca_basis"][...]),
                               np.asarray(zarr.open_group(str(stores["pca"]), mode="r")["pca_basis"][...]), atol=1e-4)
    before = _raw(out, "clip_b")
    # what a killed run leaves: an incomplete group with a chunk never written
    root = zarr.open_group(str(out), mode="r+")
    info = dict(root["clip_b"].attrs["liftvid"])
    root["clip_b"].attrs["liftvid"] = {**info, "status": "incomplete"}
    shutil.rmtree(out / "clip_b" / "features" / "c")
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "1 recoded" in result.output and "1 already complete" in result.output, result.output
    np.testing.assert_array_equal(_raw(out, "clip_b"), before)
    assert liftvid.store.verify_store(str(out)).damaged == {}


def test_verify_names_a_missing_scale_chunk(stores, tmp_path):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(stores["int8"], broken)
    chunk = next((broken / "clip_a" / "features_scale" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    report = liftvid.store.verify_store(str(broken))
    assert list(report.damaged) == ["clip_a"]
    assert any("features_scale" in p for p in report.damaged["clip_a"].problems)


def test_info_shows_the_encoding_and_counts_its_bytes(stores):
    """`liftvid info` on an int8 store: the encoding by name, and bytes per frame that count the
    codes and the per-frame scale and offset (summed here from the files on disk)."""
    result = runner.invoke(app, ["info", str(stores["int8"])])
    assert result.exit_code == 0, result.output
    assert "features int8 (per frame and channel)" in " ".join(result.output.split())
    video = next(v for v in st.summarize_store(stores["int8"]).videos if v.video_id == "clip_a")
    folder = stores["int8"] / "clip_a"
    on_disk = sum(p.stat().st_size for name in ("features", "features_scale", "features_offset")
                  for p in (folder / name).rglob("*") if p.is_file() and p.name != "zarr.json")
    T, h, w, C = video.shape
    assert video.feature_bytes == on_disk and video.bytes_per_frame == pytest.approx(on_disk / T)
    assert video.float16_ratio == pytest.approx(T * h * w * C * 2 / on_disk)
    pca = runner.invoke(app, ["info", str(stores["pca"])])
    assert pca.exit_code == 0 and f"features pca {K} (float16)" in " ".join(pca.output.split()), pca.output
