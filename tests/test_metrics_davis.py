"""DAVIS J&F against values worked out by hand on small masks (the DAVIS-2017 toolkit's
definitions), and the evaluation of a results folder against a DAVIS tree."""

import csv
import math

import numpy as np
import pytest

from liftvid.io.masks import write_mask
from liftvid.io.tables import write_davis_csv
from liftvid.ops.metrics import db_eval_boundary, db_eval_iou, db_statistics, dilate_disk, evaluate_sequence, seg2bmap
from liftvid.pipelines.evaluate import evaluate_davis


def block(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_j_is_iou_and_one_for_two_empty_masks():
    gt = block((4, 4), (0, 2), (0, 2))
    pred = block((4, 4), (0, 2), (1, 3))
    assert db_eval_iou(gt, pred) == pytest.approx(2 / 6)  # 2 shared pixels, 6 in the union
    assert db_eval_iou(gt, np.zeros_like(gt)) == 0.0
    assert db_eval_iou(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    np.testing.assert_allclose(db_eval_iou(np.stack([gt, gt]), np.stack([pred, gt])), [1 / 3, 1.0])


def test_boundary_map_is_the_toolkits_seg2bmap():
    # a 2×2 block at (1, 1): a pixel is boundary where it differs from its E, S or SE neighbour
    b = seg2bmap(block((6, 6), (1, 3), (1, 3)))
    expected = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)}
    assert set(zip(*np.nonzero(b))) == expected


def test_f_by_hand_on_a_shifted_block():
    # 6×6 image: tolerance ceil(0.008 · 8.49) = 1 pixel, a cross. The prediction is the block moved
    # two columns right; its boundary is the ring above moved two columns. Within one pixel of
    # the other ring: prediction (0,2) (0,3) (1,2) (2,2) (2,3) → precision 5/8; annotation
    # (0,1) (0,2) (1,2) (2,1) (2,2) → recall 5/8; F = 5/8.
    gt = block((6, 6), (1, 3), (1, 3))
    pred = block((6, 6), (1, 3), (3, 5))
    assert db_eval_boundary(gt, pred) == pytest.approx(5 / 8)
    # moved one column only: every boundary pixel is within one pixel of the other ring
    assert db_eval_boundary(gt, block((6, 6), (1, 3), (2, 4))) == pytest.approx(1.0)
    # nothing predicted: precision 1 by convention, recall 0 → F = 0; both empty: F = 1
    assert db_eval_boundary(gt, np.zeros_like(gt)) == 0.0
    assert db_eval_boundary(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # a tolerance of 2 pixels (bound_th ≥ 1 is in pixels) matches the two-column shift fully
    assert db_eval_boundary(gt, pred, bound_th=2) == pytest.approx(1.0)


def test_statistics_mean_recall_decay_by_hand():
    v = np.array([1.0, 0.8, 0.4, 0.2, 0.6, 0.0, 1.0, 0.3])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(4.3 / 8)
    assert recall == pytest.approx(4 / 8)  # 1, 0.8, 0.6, 1 are above 0.5
    # bins of the toolkit for 8 frames: [0:3], [2:5], [4:6], [5:8]; decay = first − last
    assert decay == pytest.approx(np.mean([1.0, 0.8, 0.4]) - np.mean([0.0, 1.0, 0.3]))


def test_evaluate_sequence_per_object():
    gt = np.zeros((2, 6, 6), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 4:6, 4:6] = 2
    pred = gt.copy()
    pred[1][pred[1] == 1] = 0
    pred[1, 1:3, 3:5] = 1  # frame 1: object 1 moved two columns
    scores = evaluate_sequence("s", gt, pred)
    assert [o.object_id for o in scores] == [1, 2]
    np.testing.assert_allclose(scores[0].j, [1.0, 0.0])
    np.testing.assert_allclose(scores[0].f, [1.0, 5 / 8])
    np.testing.assert_allclose(scores[1].j, [1.0, 1.0])


def test_evaluate_davis_folder_csv_and_missing_sequence(tmp_path):
    davis, results = tmp_path / "DAVIS", tmp_path / "res"
    gt = np.zeros((4, 6, 6), np.uint8)
    gt[:, 1:3, 1:3] = 1
    for seq in ("s1", "s2"):
        for t, m in enumerate(gt):
            write_mask(davis / "Annotations" / "480p" / seq / f"{t:05d}.png", m)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("s1\ns2\n")
    pred = gt.copy()
    pred[2] = block((6, 6), (1, 3), (3, 5))  # frame 2 wrong: J 0, F 5/8
    for t, m in enumerate(pred):
        write_mask(results / "s1" / f"{t:05d}.png", np.kron(m, np.ones((2, 2), np.uint8)))  # other size: resized
    report = evaluate_davis(results, davis)
    assert report.missing.keys() == {"s2"} and "s2" in report.missing["s2"]
    overall = report.overall()
    # frames 1 and 2 are scored (not the first, not the last)
    assert overall["J-Mean"] == pytest.approx(0.5) and overall["F-Mean"] == pytest.approx((1 + 5 / 8) / 2)
    assert overall["J&F-Mean"] == pytest.approx((0.5 + 13 / 16) / 2)
    g_path, s_path = write_davis_csv(report, tmp_path / "csv")
    rows = list(csv.DictReader(g_path.open()))
    assert float(rows[0]["J-Mean"]) == pytest.approx(0.5)
    assert [r["Sequence"] for r in csv.DictReader(s_path.open())] == ["s1_1"]


# ---- the tolerance disk at DAVIS's 480p sizes, against scipy ------------------------------------


def _skimage_disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk(radius): the pixels with dy² + dx² ≤ radius² (the toolkit's element)."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


@pytest.mark.parametrize("shape, radius", [((480, 854), 8), ((480, 910), 9)])
def test_dilate_disk_at_the_480p_radii_equals_scipy(shape, radius):
    """The toolkit's tolerance at 480p: ceil(0.008 · diagonal) = ceil(7.84) = 8 for 480×854 (most
    sequences), ceil(8.23) = 9 for 480×910. Boundary-like sparse masks, pixels near every edge."""
    from scipy.ndimage import binary_dilation

    assert math.ceil(0.008 * math.hypot(*shape)) == radius  # the radius db_eval_boundary uses here
    rng = np.random.default_rng(13)
    masks = rng.random((2, *shape)) < 0.002
    masks[0, 0, 0] = masks[0, -1, -1] = masks[1, 3, -2] = masks[1, -5, 1] = True  # corners: clipping
    masks[1, 200:203, 400:700] = True  # a thick segment
    ours = dilate_disk(masks, radius)
    expected = np.stack([binary_dilation(m, structure=_skimage_disk(radius), border_value=0) for m in masks])
    assert ours.dtype == bool and ours.shape == masks.shape
    np.testing.assert_array_equal(ours, expected)


def test_f_at_480p_uses_the_eight_pixel_disk():
    """A 480×854 block shifted by 8 columns is matched fully (every boundary pixel within the disk),
    by 9 columns not: the vertical edges (480 − 100 rows each side) then fall outside it."""
    gt = block((480, 854), (100, 300), (200, 500))
    assert db_eval_boundary(gt, block((480, 854), (100, 300), (208, 508))) == pytest.approx(1.0)
    assert db_eval_boundary(gt, block((480, 854), (100, 300), (209, 509))) < 0.99


# ---- void pixels (255) through evaluate_davis ---------------------------------------------------


def _indexed_png(path, ids: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    image.save(path)


def test_void_pixels_count_as_background_as_the_toolkit_reads_them(tmp_path):
    """DAVIS annotations mark uncertain pixels 255 (void). The 2017 toolkit's semi-supervised
    evaluation reads them as background (get_all_masks sets them to 0 and passes no void mask to
    J), so a prediction covering void is a false positive and void never makes an object."""
    davis, results = tmp_path / "DAVIS", tmp_path / "res"
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1  # 16 pixels of object 1
    gt[:, 0, :] = 255  # a void band along the top, in every frame, the first included
    gt[1, 6, 2:6] = 255  # and a void row under the object in the scored frame
    for t, m in enumerate(gt):
        _indexed_png(davis / "Annotations" / "480p" / "s" / f"{t:05d}.png", m)
    pred = np.zeros((3, 8, 8), np.uint8)
    pred[:, 2:7, 2:6] = 1  # the object and the void row below it: 20 pixels
    pred[1, 0, 0:4] = 1  # and 4 pixels of the top void band
    for t, m in enumerate(pred):
        write_mask(results / "s" / f"{t:05d}.png", m)
    report = evaluate_davis(results, davis, sequences=["s"])
    assert not report.missing
    assert [o.object_id for o in report.objects] == [1]  # void (255) is not an object id
    # frame 1 only (not the first, not the last): intersection 16, union 16 + 4 + 4 = 24
    np.testing.assert_allclose(report.objects[0].j, [16 / 24])
    assert report.overall()["J-Mean"] == pytest.approx(2 / 3)


def test_boundary_matches_on_the_cropped_dilation_equal_the_full_frame_dilation():
    from liftvid.ops.metrics import _matched

    rng = np.random.default_rng(0)
    for _ in range(5):
        q = np.zeros((2, 60, 90), bool)
        y, x = rng.integers(0, 55), rng.integers(0, 85)  # objects up to the border
        q[0, y:y + 5, x:x + 5] = True
        q[1] = rng.random((60, 90)) > 0.995
        p = rng.random((2, 60, 90)) > 0.7
        np.testing.assert_array_equal(_matched(p, q, 8), (p & dilate_disk(q, 8)).sum(axis=(1, 2)))
