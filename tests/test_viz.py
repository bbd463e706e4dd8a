"""viz: PCA colours, similarity maps, overlays, writers and the `liftvid viz` commands."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import liftvid
from liftvid import viz
from liftvid.cli import app
from liftvid.io.masks import davis_palette
from liftvid.pipelines import render
from liftvid.pipelines.extract import ExtractOptions, build_extractor, extract_videos

from .conftest import TINY_VIT

runner = CliRunner()


@pytest.fixture(scope="module")
def store_path(video_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("viz") / "out.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="short:32")
    extractor = build_extractor(options, torch.device("cpu"))[0]
    extract_videos([video_dir], path, options, extractor=extractor)
    return path


@pytest.fixture(scope="module")
def ds(store_path):
    return liftvid.open_store(store_path)["clip_a"]  # 12 frames, 64×96 source, 2×3 grid


def test_pca_frames_have_the_count_and_size_asked_for(ds):
    out = viz.pca_frames(ds.features, [0, 5, 11], size=(64, 96))
    assert out.shape == (3, 64, 96, 3) and out.dtype == np.uint8
    assert viz.pca_frames(ds.features).shape == (12, 2, 3, 3)  # default: all frames, grid size
    assert viz.pca_frames(ds.features, slice(2, 8), size=(10, 20)).shape == (6, 10, 20, 3)


def _numpy_pca(x: np.ndarray, k: int = 3):
    """An independent PCA by SVD (float64): mean, the top-k right singular vectors with the
    documented sign rule (each component's largest-magnitude loading positive), and the standard
    deviations along them (n − 1 normalisation)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    comps = vt[:k].copy()
    for row in comps:
        row *= np.sign(row[np.abs(row).argmax()])
    return mean, comps, s[:k] / np.sqrt(len(flat) - 1)


def test_pca_colours_against_an_independent_pca(ds):
    """Every frame's colours from the video's PCA computed here: score / (2 · PCA_SIGMAS · std)
    + 1/2, clipped to [0, 1], as red, green, blue; and the source-size image is each grid cell
    repeated over its pixels (nearest)."""
    x = ds.features.values.astype(np.float32)  # (12, 2, 3, 192)
    mean, comps, std = _numpy_pca(x)
    scores = (x.astype(np.float64) - mean) @ comps.T / (2 * viz.PCA_SIGMAS * std) + 0.5
    expected = np.clip(scores, 0, 1) * 255
    ours = viz.pca_frames(ds.features)
    assert ours.shape == (12, 2, 3, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(np.float64) - expected).max() <= 0.51  # rounding, float32 vs float64
    assert len(np.unique(ours.reshape(-1, 3), axis=0)) > 4  # not a flat colour
    big = viz.pca_frames(ds.features, [7, 2], size=(64, 96))
    np.testing.assert_array_equal(big, ours[[7, 2]].repeat(32, axis=1).repeat(32, axis=2))
    # NumPy input: the same colours
    np.testing.assert_array_equal(viz.pca_frames(x), ours)


def test_fit_pca_matches_numpy_and_fixes_signs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 4, 8)) * np.arange(8, 0, -1)  # variance falls with the channel
    mean, comps, std = _numpy_pca(x)
    fit = viz.fit_pca(x)
    np.testing.assert_allclose(fit.mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.components, comps, atol=1e-5)  # signs included
    np.testing.assert_allclose(fit.std, std, rtol=1e-4)
    # -x has the same axes; the sign rule then gives the very same components
    np.testing.assert_allclose(viz.fit_pca(-x).components, comps, atol=1e-5)


def test_similarity_peaks_at_the_query(ds):
    H, W = ds.attrs["source_size"]
    x, y = float(ds.x[1]), float(ds.y[0])  # the centre of cell (0, 1)
    query = viz.query_feature(ds, x, y, 4)
    np.testing.assert_allclose(query, ds.features.isel(frame=4, y=0, x=1).values.astype(np.float32), rtol=1e-3)
    sim = viz.cosine_map(ds.features.isel(frame=4), query)
    assert sim.shape == (2, 3) and np.unravel_index(sim.argmax(), sim.shape) == (0, 1)
    assert sim.max() == pytest.approx(1.0, abs=1e-3)
    frames = list(render.render_similarity(ds, x, y, 4, [3, 4]))
    assert len(frames) == 2 and frames[0].shape == (H, W, 3)
    with pytest.raises(ValueError, match="outside the 96×64"):
        viz.query_feature(ds, 100, 10, 0)
    with pytest.raises(ValueError, match="frame 12 is outside"):
        viz.query_feature(ds, 10, 10, 12)


def test_overlays():
    frame = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    mask[12:18, 20:28] = 2
    out = viz.mask_overlay(frame, mask, outline=False)
    assert (out[0, 0] == 100).all()  # background untouched
    assert out[7, 7, 0] > out[7, 7, 1] and out[15, 24, 1] > out[15, 24, 0]  # DAVIS: 1 red, 2 green
    np.testing.assert_array_equal(davis_palette()[:3], [[0, 0, 0], [128, 0, 0], [0, 128, 0]])
    assert viz.mask_overlay(frame, mask[::2, ::2]).shape == frame.shape  # resized (nearest)
    positions = np.array([[[5, 5], [10, 8], [15, 10]]], np.float32)
    tracked = viz.track_overlay(frame, positions, np.ones((1, 3), bool), 2)
    assert tracked.shape == frame.shape and (tracked != frame).any()
    ramp = viz.turbo(np.array([0.0, 0.15, 0.5, 0.95]))
    assert ramp.shape == (4, 3) and ramp[0].max() < 80  # dark, then blue, green, red
    assert ramp[1].argmax() == 2 and ramp[2].argmax() == 1 and ramp[3].argmax() == 0


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".png"])
def test_writers(tmp_path, suffix):
    frames = [np.full((16, 24, 3), v, np.uint8) for v in (0, 120, 250)]
    path = viz.write_frames(tmp_path / f"out{suffix}", frames, fps=10)
    if suffix == ".mp4":
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == 3 and decoded[0].shape == (16, 24, 3)
    elif suffix == ".gif":
        with Image.open(path) as image:
            assert image.n_frames == 3 and image.size == (24, 16)
    else:
        with Image.open(path) as image:  # several frames: a contact sheet of 2×2
            assert image.size == (2 * 24 + 4, 2 * 16 + 4)
    with pytest.raises(ValueError, match="unknown output type"):
        viz.write_frames(tmp_path / "out.txt", frames)


def test_parse_frames():
    np.testing.assert_array_equal(viz.parse_frames(None, 5), np.arange(5))
    np.testing.assert_array_equal(viz.parse_frames("1:4", 5), [1, 2, 3])
    np.testing.assert_array_equal(viz.parse_frames("::2", 5), [0, 2, 4])
    np.testing.assert_array_equal(viz.parse_frames("4,0", 5), [4, 0])
    for bad in ("7", "x", "3:1"):
        with pytest.raises(ValueError, match="--frames"):
            viz.parse_frames(bad, 5)


def test_parse_frames_counts_source_frame_numbers_on_a_strided_store():
    """--frames names source frames (as track's t and propagate --start-frame): with --stride 2
    the stored frames are 0, 2, …, 8 and frame 4 is stored position 2."""
    index = np.arange(0, 10, 2)
    np.testing.assert_array_equal(viz.parse_frames("4", index), [2])
    np.testing.assert_array_equal(viz.parse_frames("8,0", index), [4, 0])
    np.testing.assert_array_equal(viz.parse_frames("2:7", index), [1, 2, 3])  # frames 2, 4, 6
    np.testing.assert_array_equal(viz.parse_frames("::4", index), [0, 2, 4])  # frames 0, 4, 8
    np.testing.assert_array_equal(viz.parse_frames(None, index), np.arange(5))
    with pytest.raises(ValueError, match=r"frame 5 is not a stored frame.*nearest: 4 or 6"):
        viz.parse_frames("5", index)
    with pytest.raises(ValueError, match="outside the stored frames 0…8 every 2"):
        viz.parse_frames("10", index)
    with pytest.raises(ValueError, match="selects no stored frame"):
        viz.parse_frames("1:2", index)


def test_source_frames_in_any_order(ds):
    frames = render.source_frames(ds, [5, 1])
    forward = render.source_frames(ds, [1, 5])
    assert frames.shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(frames[::-1], forward)


def test_cli_pca_writes_the_file(store_path, tmp_path):
    out = tmp_path / "pca.mp4"
    result = runner.invoke(app, ["viz", "pca", str(store_path), "--video", "clip_b", "--out", str(out), "--with-source"])
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9 and decoded[0].shape == (80, 64 * 2 + 4, 3)  # source | PCA
    png = tmp_path / "one.png"
    result = runner.invoke(app, ["viz", "pca", str(store_path), "--video", "clip_a", "--out", str(png), "--frames", "3"])
    assert result.exit_code == 0, result.output
    assert Image.open(png).size == (96, 64)


def test_cli_similarity_writes_the_file(store_path, tmp_path):
    out = tmp_path / "sim.gif"
    result = runner.invoke(app, ["viz", "similarity", str(store_path), "--video", "clip_a", "--point", "40,30,2",
                                 "--out", str(out), "--frames", "0:4"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).n_frames == 4


@pytest.mark.parametrize("args, message", [
    (["pca", "{store}", "--video", "nope"], "video 'nope' is not in"),
    (["pca", "{missing}", "--video", "clip_a"], "no liftvid store here"),
    (["pca", "{store}", "--video", "clip_a", "--frames", "40"], "frame 40 is outside"),
    (["similarity", "{store}", "--video", "clip_a", "--point", "1,2"], "expected X,Y,T"),
    (["similarity", "{store}", "--video", "clip_a", "--point", "500,2,0"], "outside the 96×64"),
    (["masks", "{store}", "--video", "clip_a"], "no masks in the store"),
    (["tracks", "{store}", "--video", "clip_a"], "no tracks in the store"),
])
def test_cli_bad_inputs_are_one_line(store_path, tmp_path, args, message):
    out = tmp_path / "x.mp4"
    args = [a.format(store=store_path, missing=tmp_path / "missing.zarr") for a in args]
    result = runner.invoke(app, ["viz", *args, "--out", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_cli_masks_and_tracks_draw_what_the_store_holds(video_dir, tmp_path):
    import zarr

    path = tmp_path / "s.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="square:32")
    extract_videos([video_dir / "clip_b.mp4"], path, options)
    group = zarr.open_group(str(path), mode="r+")["clip_b"]  # as propagate and track write them
    masks = group.create_array("masks", shape=(9, 80, 64), dtype="uint8", dimension_names=("frame", "height", "width"))
    masks[:, 10:30, 10:30] = 1
    tracks = group.create_group("tracks", attributes={"liftvid": {"status": "complete"}})
    tracks.create_array("positions", shape=(1, 9, 2), dtype="float32", dimension_names=("query", "frame", "xy"))[:] = 40
    tracks.create_array("visible", shape=(1, 9), dtype="bool", dimension_names=("query", "frame"))[:] = True
    for command in ("masks", "tracks"):
        out = tmp_path / f"{command}.png"
        result = runner.invoke(app, ["viz", command, str(path), "--video", "clip_b", "--out", str(out), "--frames", "2"])
        assert result.exit_code == 0, result.output
        image = np.asarray(Image.open(out))
        assert image.shape == (80, 64, 3)
        if command == "masks":
            assert image[20, 20, 0] > image[20, 20, 1]  # object 1: DAVIS red
        else:
            assert (image[40, 40] != image[75, 5]).any()


def test_cli_to_a_read_only_folder_is_one_line_and_leaves_nothing(store_path, tmp_path):
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode: make the target an existing folder instead
            target = folder / "pca.png"
            target.mkdir()
            expected = "pca.png: is a folder"  # refused before any work (io.outputs.claim_output)
        else:
            target = folder / "pca.png"
            expected = "cannot write pca.png"
        result = runner.invoke(app, ["viz", "pca", str(store_path), "--video", "clip_a", "--out", str(target),
                                     "--frames", "1"])
        assert result.exit_code == 1 and expected in result.output
        assert "Traceback" not in result.output
        assert sorted(p.name for p in folder.iterdir()) in ([], ["pca.png"])
    finally:
        os.chmod(folder, 0o755)


def test_cli_frames_and_point_are_source_frame_numbers(video_dir, tmp_path):
    """On a store extracted with --stride 2, `--frames 4` draws stored position 2 (source frame 4),
    and `--point X,Y,5` names a frame that is not stored, in one line."""
    path = tmp_path / "strided.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", batch_size=4, resize="short:32", stride=2)
    extract_videos([video_dir / "clip_a.mp4"], path, options)
    ds = liftvid.open_store(path)["clip_a"]
    np.testing.assert_array_equal(ds["frame_index"].values, np.arange(0, 12, 2))
    png = tmp_path / "four.png"
    result = runner.invoke(app, ["viz", "pca", str(path), "--video", "clip_a", "--out", str(png), "--frames", "4"])
    assert result.exit_code == 0, result.output
    expected = next(iter(render.render_pca(ds, [2])))  # position 2 holds source frame 4
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), expected)
    result = runner.invoke(app, ["viz", "similarity", str(path), "--video", "clip_a", "--point", "40,30,5",
                                 "--out", str(tmp_path / "s.png"), "--frames", "4"])
    assert result.exit_code == 1 and "frame 5 is not a stored frame" in result.output and "nearest: 4 or 6" in result.output
    result = runner.invoke(app, ["viz", "similarity", str(path), "--video", "clip_a", "--point", "40,30,4",
                                 "--out", str(tmp_path / "s.png"), "--frames", "4"])
    assert result.exit_code == 0, result.output
