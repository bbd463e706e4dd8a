"""`track_store` and `liftvid track`: queries CSV → Dask jobs → tracks CSV, store group, overlay."""

import numpy as np
import pytest

from liftvid.io import store as st
from liftvid.ops.geometry import source_to_grid
from liftvid.ops.track import TrackOptions, track_points
from liftvid.io.tables import read_queries_csv
from liftvid.pipelines.track import track_store

from .helpers import GRID, SOURCE, make_oracle_store, oracle_features, read_rows, warp, write_queries

N_FRAMES = 6


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("trackstore")
    store = make_oracle_store(d / "s.zarr", {
        "a": {"features": oracle_features(N_FRAMES, channels=64, seed=0)},
        "b": {"features": oracle_features(N_FRAMES, channels=64, seed=5)[:, :, ::-1].copy()},
    })
    rng = np.random.default_rng(2)
    pts = rng.uniform([24, 20], [72, 44], (5, 2))
    rows = [("a", 0, *p) for p in pts] + [("b", 2, *p) for p in pts[:3]]
    return store, write_queries(d / "q.csv", rows), pts


def test_track_store_csv_group_and_accuracy(two_videos, tmp_path):
    store, queries, pts = two_videos
    out = tmp_path / "tracks.csv"
    summary = track_store(store, queries, out, scheduler="sync")
    assert summary.queries == {"a": 5, "b": 3} and not summary.refused and not summary.failed
    # the run contract: one complete result per video, with its stored frames and query points
    assert sorted((r.video_id, r.status, r.frames, r.queries) for r in summary.results) == [
        ("a", "complete", N_FRAMES, 5), ("b", "complete", N_FRAMES, 3)]
    assert summary.point_frames == (5 + 3) * N_FRAMES and summary.frames == 2 * N_FRAMES
    rows = read_rows(out)
    assert list(rows[0]) == ["video_id", "query", "t", "x", "y", "visible", "score"]
    assert len(rows) == (5 + 3) * N_FRAMES
    a = [r for r in rows if r["video_id"] == "a"]
    xy = np.array([[float(r["x"]), float(r["y"])] for r in a]).reshape(5, N_FRAMES, 2)
    true = np.stack([warp(pts, t) for t in range(N_FRAMES)], axis=1)
    assert np.abs(xy - true).max() < 0.5 * SOURCE[1] / GRID[1]  # source pixels: half a cell
    assert {r["visible"] for r in a} == {"1"}
    # the store's tracks group: same numbers, named dims that never reuse y/x
    root = st.open_root(store)
    g = root["a"]["tracks"]
    assert g.attrs["liftvid"]["status"] == "complete"
    assert tuple(g["positions"].metadata.dimension_names) == ("query", "frame", "xy")
    assert tuple(g["visible"].metadata.dimension_names) == ("query", "frame")
    np.testing.assert_allclose(g["positions"][...], xy, atol=1e-3)
    np.testing.assert_array_equal(g["query_index"][...], np.arange(5))
    np.testing.assert_allclose(g["queries"][:, 1:], pts)


def test_store_path_matches_the_kernel(two_videos, tmp_path):
    store, queries, pts = two_videos
    out = tmp_path / "t.csv"
    track_store(store, queries, out, scheduler="threads", workers=2, write_store=False,
                options=TrackOptions(frame_chunk=4))
    rows = [r for r in read_rows(out) if r["video_id"] == "b"]
    feats = st.open_root(store)["b"]["features"][...]
    q = np.column_stack([np.full(3, 2), source_to_grid(pts[:3], GRID, SOURCE)])
    tracks = track_points(feats, q, device="cpu")
    score = np.array([float(r["score"]) for r in rows]).reshape(3, N_FRAMES)
    np.testing.assert_allclose(score, tracks.score, atol=1e-4)


def test_chain_mode_through_the_store(two_videos, tmp_path):
    store, queries, pts = two_videos
    out = tmp_path / "chain.csv"
    summary = track_store(store, queries, out, chain=True, scheduler="sync", write_store=False)
    assert summary.queries == {"a": 5, "b": 3}
    a = [r for r in read_rows(out) if r["video_id"] == "a"]
    xy = np.array([[float(r["x"]), float(r["y"])] for r in a]).reshape(5, N_FRAMES, 2)
    true = np.stack([warp(pts, t) for t in range(N_FRAMES)], axis=1)
    assert np.abs(xy - true).max() < 2.0


@pytest.mark.slow
def test_every_scheduler_gives_the_sync_csv(two_videos, tmp_path):
    from distributed import LocalCluster

    store, queries, _ = two_videos
    opts = TrackOptions(frame_chunk=2)  # several blocks per video
    track_store(store, queries, tmp_path / "sync.csv", options=opts, scheduler="sync", write_store=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        track_store(store, queries, tmp_path / "dist.csv", options=opts, scheduler=cluster.scheduler_address,
                    write_store=False)
    assert (tmp_path / "sync.csv").read_text() == (tmp_path / "dist.csv").read_text()
    for scheduler in ("threads", "processes"):
        track_store(store, queries, tmp_path / f"{scheduler}.csv", options=opts, scheduler=scheduler, workers=2,
                    write_store=False)
        assert (tmp_path / "sync.csv").read_text() == (tmp_path / f"{scheduler}.csv").read_text(), scheduler


# ---- bad input ------------------------------------------------------------------------------------


def test_out_of_frame_and_beyond_last_frame_are_named_and_skipped(two_videos, tmp_path):
    store, _, _ = two_videos
    q = write_queries(tmp_path / "q.csv", [
        ("a", 0, 10, 10),  # fine
        ("a", 0, 97, 10),  # x beyond the 96-pixel width
        ("a", 0, 10, -1),  # y above the frame
        ("a", 6, 10, 10),  # the store has frames 0…5
        ("a", 1.5, 10, 10),  # not a frame index
        ("a", 5, 96, 64),  # the bottom-right corner is inside
    ])
    summary = track_store(store, q, tmp_path / "t.csv", scheduler="sync", write_store=False)
    assert summary.queries == {"a": 2}
    reasons = {s.query: str(s) for s in summary.refused}
    assert set(reasons) == {1, 2, 3, 4}
    assert "outside the 96×64 frame" in reasons[1] and "line 3" in reasons[1]
    assert "outside the 96×64 frame" in reasons[2]
    assert "outside the stored frames 0…5" in reasons[3]
    assert "not an integer" in reasons[4]
    queries_out = {r["query"] for r in read_rows(tmp_path / "t.csv")}
    assert queries_out == {"0", "5"}  # query numbers stay those of the input rows


def test_unknown_and_incomplete_videos_are_named(tmp_path):
    store = make_oracle_store(tmp_path / "s.zarr", {
        "a": {"features": oracle_features(3, channels=16)},
        "half": {"features": oracle_features(3, channels=16), "status": "incomplete"},
    })
    q = write_queries(tmp_path / "q.csv", [("a", 0, 10, 10), ("nope", 0, 10, 10), ("half", 0, 5, 5)])
    summary = track_store(store, q, tmp_path / "t.csv", scheduler="sync", write_store=False)
    assert summary.queries == {"a": 1}
    reasons = {s.video_id: s.reason for s in summary.refused}
    assert "unknown video id 'nope'" in reasons["nope"] and "a" in reasons["nope"]
    assert "incomplete" in reasons["half"]


def test_nan_and_garbage_numbers_are_skipped(two_videos, tmp_path):
    store, _, _ = two_videos
    q = tmp_path / "q.csv"
    q.write_text("video_id,t,x,y\na,0,nan,3\na,0,12,abc\na,0,,4\na,0,12,12\n")
    summary = track_store(store, q, tmp_path / "t.csv", scheduler="sync", write_store=False)
    assert summary.queries == {"a": 1}
    assert [s.query for s in summary.refused] == [0, 1, 2]
    assert all("NaN or non-numeric" in s.reason for s in summary.refused)


def test_empty_and_malformed_query_files(two_videos, tmp_path):
    store, _, _ = two_videos
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("video_id,t,x,y\n")
    (tmp_path / "cols.csv").write_text("video,t,x\nv,0,1\n")
    with pytest.raises(ValueError, match="empty queries file"):
        track_store(store, tmp_path / "empty.csv", tmp_path / "t.csv")
    with pytest.raises(ValueError, match="no queries"):
        track_store(store, tmp_path / "header.csv", tmp_path / "t.csv")
    with pytest.raises(ValueError, match="missing column.*video_id.*y"):
        read_queries_csv(tmp_path / "cols.csv")
    with pytest.raises(ValueError, match="no such queries file"):
        read_queries_csv(tmp_path / "missing.csv")
    only_bad = write_queries(tmp_path / "bad.csv", [("zzz", 0, 1, 1)])
    with pytest.raises(ValueError, match="none of 1 queries can be tracked.*unknown video id 'zzz'"):
        track_store(store, only_bad, tmp_path / "t.csv")
    with pytest.raises(ValueError, match="unknown scheduler"):
        track_store(store, only_bad, tmp_path / "t.csv", scheduler="gpu")
    assert not (tmp_path / "t.csv").exists()


def test_overlay_video(video_dir, tmp_path):
    import av

    store = make_oracle_store(tmp_path / "s.zarr", {
        "clip_a": {"features": oracle_features(12, channels=16), "source": video_dir / "clip_a.mp4"}})
    q = write_queries(tmp_path / "q.csv", [("clip_a", 0, 30, 30), ("clip_a", 3, 50, 20)])
    summary = track_store(store, q, tmp_path / "tracks.csv", scheduler="sync", overlay=True, write_store=False)
    assert summary.overlays == [tmp_path / "tracks_clip_a.mp4"] and not summary.failed
    with av.open(str(summary.overlays[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_track_and_eval(two_videos, tmp_path):
    import pickle

    from typer.testing import CliRunner

    from liftvid.cli import app

    store, queries, _ = two_videos
    runner = CliRunner()
    out = tmp_path / "t.csv"
    result = runner.invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(out),
                                 "--scheduler", "sync", "--no-write-store", "--min-similarity", "0.4"])
    assert result.exit_code == 0, result.output
    assert "8 queries in 2 videos" in result.output and "point-frames/s" in result.output
    assert len(read_rows(out)) == 8 * N_FRAMES
    # TAP-Vid evaluation of video "a" against ground truth made from the true warp
    pts = np.array([[float(r["x"]), float(r["y"])] for r in read_rows(queries) if r["video_id"] == "a"])
    truth = np.stack([warp(pts, t) for t in range(N_FRAMES)], axis=1) / np.array([SOURCE[1], SOURCE[0]])
    gt = tmp_path / "gt.pkl"
    gt.write_bytes(pickle.dumps({"a": {"video": np.zeros((N_FRAMES, *SOURCE, 3), np.uint8), "points": truth,
                                       "occluded": np.zeros(truth.shape[:2], bool)}}))
    result = runner.invoke(app, ["eval", "tapvid", str(out), "--gt", str(gt), "--store", str(store),
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "mean of 1" in result.output
    import json

    mean = json.loads((tmp_path / "m.json").read_text())["mean"]
    assert mean["occlusion_accuracy"] == 1.0 and mean["pts_within_4"] == 1.0  # < 2 px at 256×256
    result = runner.invoke(app, ["eval", "tapvid-queries", str(gt), "--out", str(tmp_path / "q2.csv")])
    assert result.exit_code == 0 and "5 queries in 1 video " in result.output


def test_cli_errors_are_one_line(two_videos, tmp_path):
    from typer.testing import CliRunner

    from liftvid.cli import app

    store, _, _ = two_videos
    (tmp_path / "empty.csv").write_text("video_id,t,x,y\n")
    runner = CliRunner()
    for args, message in (
        (["track", str(store), "--queries", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "o.csv")], "no queries"),
        (["track", str(tmp_path / "none.zarr"), "--queries", str(tmp_path / "empty.csv"), "--out", "o.csv"], "no liftvid store"),
        (["track", str(store), "--queries", str(tmp_path / "empty.csv"), "--out", "o.csv", "--scheduler", "x"], "unknown scheduler"),
        (["eval", "tapvid", str(tmp_path / "none.csv"), "--gt", str(tmp_path / "none.pkl")], "no such"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], result.output
