"""TAP-Vid metrics against values worked out by hand, and the pickle/CSV round trip."""

import csv
import pickle

import numpy as np
import pytest

from liftvid.ops.metrics import compute_tapvid_metrics, sample_tapvid_queries
from liftvid.pipelines.evaluate import evaluate_tapvid
from liftvid.io.tables import load_tapvid, read_tracks_csv, write_tapvid_queries

# Two tracks, four frames, in the 256×256 raster.
# track 0: queried at t=0, visible throughout at (10, 10); predicted (10.5, 10) visible, (13, 10)
#          occluded, (30, 10) visible → distances 0.5, 3, 20 at frames 1-3.
# track 1: queried at t=1, occluded at frames 0 and 2, at (50, 50); predicted visible everywhere,
#          (50, 50) at frame 2 (a false positive: truly occluded), (51, 51) at frame 3 (√2 away).
GT_OCC = np.array([[0, 0, 0, 0], [1, 0, 1, 0]], bool)
GT_XY = np.array([[[10, 10]] * 4, [[50, 50]] * 4], float)
PRED_OCC = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], bool)
PRED_XY = np.array([[[10, 10], [10.5, 10], [13, 10], [30, 10]],
                    [[0, 0], [50, 50], [50, 50], [51, 51]]], float)
QUERIES = np.array([[0, 10, 10], [1, 50, 50]], float)  # [t, y, x]


def test_first_mode_by_hand():
    m = compute_tapvid_metrics(QUERIES, GT_OCC, GT_XY, PRED_OCC, PRED_XY, "first")
    # evaluated: track 0 frames 1-3, track 1 frames 2-3 (after the query frame) → 5 points, 4 visible
    assert m["occlusion_accuracy"] == pytest.approx(3 / 5)  # wrong: t0f2 (said occluded), t1f2 (said visible)
    expected_within = {1: 1 / 4, 2: 2 / 4, 4: 3 / 4, 8: 3 / 4, 16: 3 / 4}
    # Jaccard = TP / (visible truth + FP); FP: t1f2 always, t0f3 always (20 px), t0f1 / t1f3 when beyond δ
    expected_jaccard = {1: 1 / 7, 2: 2 / 6, 4: 2 / 6, 8: 2 / 6, 16: 2 / 6}
    for d in (1, 2, 4, 8, 16):
        assert m[f"pts_within_{d}"] == pytest.approx(expected_within[d]), d
        assert m[f"jaccard_{d}"] == pytest.approx(expected_jaccard[d]), d
    assert m["average_pts_within_thresh"] == pytest.approx(3 / 5)
    assert m["average_jaccard"] == pytest.approx(31 / 105)


def test_strided_mode_by_hand():
    m = compute_tapvid_metrics(QUERIES, GT_OCC, GT_XY, PRED_OCC, PRED_XY, "strided")
    # now track 1's frame 0 counts too: truly occluded, predicted visible → wrong and a false positive
    assert m["occlusion_accuracy"] == pytest.approx(3 / 6)
    assert m["average_pts_within_thresh"] == pytest.approx(3 / 5)
    assert m["jaccard_1"] == pytest.approx(1 / 8)
    assert m["jaccard_4"] == pytest.approx(2 / 7)
    assert m["average_jaccard"] == pytest.approx(71 / 280)


def test_batched_and_perfect():
    m = compute_tapvid_metrics(np.stack([QUERIES] * 2), np.stack([GT_OCC] * 2), np.stack([GT_XY] * 2),
                               np.stack([GT_OCC] * 2), np.stack([GT_XY] * 2), "first")
    for key in ("occlusion_accuracy", "average_jaccard", "average_pts_within_thresh"):
        np.testing.assert_allclose(m[key], [1.0, 1.0])
    with pytest.raises(ValueError, match="query mode"):
        compute_tapvid_metrics(QUERIES, GT_OCC, GT_XY, PRED_OCC, PRED_XY, "last")


def test_query_sampling_follows_tapvid():
    occ = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 0, 0]], bool)
    tracks, t = sample_tapvid_queries(occ, "first")
    np.testing.assert_array_equal(tracks, [1, 2])  # track 0 is never visible: dropped
    np.testing.assert_array_equal(t, [1, 0])
    tracks, t = sample_tapvid_queries(occ, "strided", stride=5)
    np.testing.assert_array_equal(tracks, [2, 1, 2])  # frame 0: track 2; frame 5: tracks 1, 2
    np.testing.assert_array_equal(t, [0, 5, 5])


@pytest.fixture
def tapvid_pickle(tmp_path):
    """A TAP-Vid-style pickle: the hand-worked tracks plus a never-visible one, in a 32×64 video."""
    H, W = 32, 64
    occ = np.concatenate([np.ones((1, 4), bool), GT_OCC])
    pts = np.concatenate([np.full((1, 4, 2), 0.5), GT_XY / 256.0])
    data = {"clip": {"video": np.zeros((4, H, W, 3), np.uint8), "points": pts.astype(np.float32),
                     "occluded": occ}}
    path = tmp_path / "tapvid.pkl"
    path.write_bytes(pickle.dumps(data))
    return path, (H, W)


def write_tracks(path, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "query", "t", "x", "y", "visible", "score"])
        w.writerows(rows)
    return path


def test_evaluate_tapvid_end_to_end(tapvid_pickle, tmp_path):
    gt, (H, W) = tapvid_pickle
    counts = write_tapvid_queries(gt, tmp_path / "q.csv", "first", frames_dir=tmp_path / "frames")
    assert counts == {"clip": 2}
    rows = list(csv.DictReader((tmp_path / "q.csv").open()))
    assert [(r["video_id"], int(r["t"])) for r in rows] == [("clip", 0), ("clip", 1)]
    np.testing.assert_allclose([float(rows[1]["x"]), float(rows[1]["y"])], [50 * W / 256, 50 * H / 256])
    assert len(list((tmp_path / "frames" / "clip").glob("*.png"))) == 4
    # predictions in source pixels of the 32×64 frames
    scale = np.array([W / 256, H / 256])
    out = [("clip", q, t, *(PRED_XY[q, t] * scale), int(not PRED_OCC[q, t]), 0.9) for q in range(2) for t in range(4)]
    report = evaluate_tapvid(write_tracks(tmp_path / "t.csv", out), gt, "first")
    assert report.per_video["clip"]["average_jaccard"] == pytest.approx(31 / 105)
    assert report.mean["occlusion_accuracy"] == pytest.approx(3 / 5)
    assert not report.missing_videos and not report.notes


def test_missing_query_counts_as_lost(tapvid_pickle, tmp_path):
    gt, (H, W) = tapvid_pickle
    scale = np.array([W / 256, H / 256])
    only_track0 = [("clip", 0, t, *(GT_XY[0, t] * scale), 1, 1.0) for t in range(4)]
    report = evaluate_tapvid(write_tracks(tmp_path / "t.csv", only_track0), gt, "first")
    m = report.per_video["clip"]
    # track 0 perfect at frames 1-3; track 1 (frames 2-3) absent → occluded, never within
    assert m["occlusion_accuracy"] == pytest.approx(4 / 5)  # t1f2 truly occluded: right by default
    assert m["pts_within_16"] == pytest.approx(3 / 4)
    assert m["average_jaccard"] == pytest.approx(3 / 4)
    assert "1 of 2 queries missing" in report.notes[0]


def test_bad_tapvid_inputs(tapvid_pickle, tmp_path):
    gt, _ = tapvid_pickle
    short = write_tracks(tmp_path / "short.csv", [("clip", 0, t, 1, 1, 1, 1) for t in range(3)])
    with pytest.raises(ValueError, match="3 frames, the ground truth 4"):
        evaluate_tapvid(short, gt)
    beyond = write_tracks(tmp_path / "beyond.csv", [("clip", 5, t, 1, 1, 1, 1) for t in range(4)])
    with pytest.raises(ValueError, match="query 5.*has 2"):
        evaluate_tapvid(beyond, gt)
    other = write_tracks(tmp_path / "other.csv", [("zzz", 0, t, 1, 1, 1, 1) for t in range(4)])
    with pytest.raises(ValueError, match="no video in common"):
        evaluate_tapvid(other, gt)
    gaps = write_tracks(tmp_path / "gaps.csv", [("clip", 0, t, 1, 1, 1, 1) for t in (0, 1, 3)])
    with pytest.raises(ValueError, match="query 0 has 3 of 4 frames"):
        read_tracks_csv(gaps)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"clip": {"points": 1}}))
    with pytest.raises(ValueError, match="lacks 'video'"):
        load_tapvid(tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match="no such TAP-Vid pickle"):
        load_tapvid(tmp_path / "nope.pkl")
