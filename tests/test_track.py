"""The tracking kernel on oracle features: accuracy, chunking, visibility, chain mode, bad queries."""

import numpy as np
import pytest
import torch

from liftvid.ops.geometry import cell_centres, grid_to_source, source_to_grid
from liftvid.ops.track import TrackOptions, check_queries, sample_bilinear, track_points

from .helpers import GRID, SOURCE, oracle_features, warp

@pytest.fixture(scope="module")
def oracle():
    rng = np.random.default_rng(1)
    points = rng.uniform([20, 16], [76, 48], (24, 2))  # source pixels in frame 0, well inside
    return oracle_features(8), points


def errors_in_cells(tracks, points: np.ndarray, n_frames: int) -> np.ndarray:
    cell_px = SOURCE[1] / GRID[1]
    pred = grid_to_source(tracks.positions, GRID, SOURCE)
    true = np.stack([warp(points, t) for t in range(n_frames)], axis=1)
    return np.linalg.norm(pred - true, axis=-1) / cell_px


def queries_at_frame0(points: np.ndarray) -> np.ndarray:
    return np.column_stack([np.zeros(len(points)), source_to_grid(points, GRID, SOURCE)])


def test_oracle_affine_warp_sub_cell(oracle):
    feats, points = oracle
    tracks = track_points(torch.from_numpy(feats), queries_at_frame0(points), device="cpu")
    assert tracks.positions.shape == (24, 8, 2) and tracks.positions.dtype == np.float32
    assert tracks.visible.shape == tracks.score.shape == (24, 8)
    assert tracks.visible.dtype == bool and tracks.score.dtype == np.float32
    err = errors_in_cells(tracks, points, 8)
    assert err.max() < 0.5, err.max()
    assert err[:, 1:].mean() < 0.15
    assert tracks.visible.all()
    # the argmax alone is not enough: refinement is what brings every error under half a cell
    coarse = track_points(torch.from_numpy(feats), queries_at_frame0(points), TrackOptions(refine_radius=0),
                          device="cpu")
    assert errors_in_cells(coarse, points, 8)[:, 1:].mean() > 2 * err[:, 1:].mean()


def test_queries_in_later_frames_track_backwards(oracle):
    feats, points = oracle
    t_query = np.array([3, 7, 5] * 8)
    start = np.stack([warp(p[None], t)[0] for p, t in zip(points, t_query)])
    queries = np.column_stack([t_query, source_to_grid(start, GRID, SOURCE)])
    tracks = track_points(feats, queries, device="cpu")  # numpy input works too
    err = errors_in_cells(tracks, points, 8)
    assert err.max() < 0.5
    # in its own frame a query is exactly where it was asked
    own = tracks.positions[np.arange(24), t_query]
    np.testing.assert_allclose(own, queries[:, 1:], atol=1e-5)


def test_frame_chunks_do_not_change_results(oracle):
    feats, points = oracle
    q = queries_at_frame0(points)
    whole = track_points(feats, q, TrackOptions(frame_chunk=8), device="cpu")
    small = track_points(feats, q, TrackOptions(frame_chunk=3), device="cpu")
    np.testing.assert_allclose(small.positions, whole.positions, atol=1e-5)
    np.testing.assert_allclose(small.score, whole.score, atol=1e-6)
    np.testing.assert_array_equal(small.visible, whole.visible)


def test_chain_mode_tracks_the_warp(oracle):
    feats, points = oracle
    t_query = np.array([0, 4] * 12)
    start = np.stack([warp(p[None], t)[0] for p, t in zip(points, t_query)])
    queries = np.column_stack([t_query, source_to_grid(start, GRID, SOURCE)])
    tracks = track_points(feats, queries, TrackOptions(chain=True, frame_chunk=3), device="cpu")
    err = errors_in_cells(tracks, points, 8)
    assert err.max() < 0.5
    assert tracks.visible.all()


def test_vanished_content_is_not_visible(oracle):
    feats, points = oracle
    feats = feats.copy()
    feats[5] = np.random.default_rng(7).normal(size=feats[5].shape)  # frame 5: unrelated content
    tracks = track_points(feats, queries_at_frame0(points), device="cpu")
    assert not tracks.visible[:, 5].any()
    assert tracks.score[:, 5].max() < TrackOptions().min_similarity
    assert tracks.visible[:, 4].all() and tracks.visible[:, 6].all()


def test_cycle_check_rejects_a_match_that_points_back_elsewhere():
    rng = np.random.default_rng(3)
    c, h, w = 256, 6, 6
    f0 = rng.normal(size=(h, w, c))
    f1 = rng.normal(size=(h, w, c))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    a, b = unit(f0[1, 1]), unit(f0[4, 4])
    f1[2, 3] = 0.6 * a + 0.8 * b  # similar enough to the query (0.6) but closer still to another cell
    feats = np.stack([f0, f1]).astype(np.float32)
    query = np.array([[0, 1.0, 1.0]])  # t, x, y: cell (1, 1)
    tracks = track_points(feats, query, device="cpu")
    np.testing.assert_allclose(tracks.positions[0, 1], [3, 2], atol=0.1)  # x=3, y=2
    assert tracks.score[0, 1] > TrackOptions().min_similarity
    assert not tracks.visible[0, 1]  # matched back it lands at (4, 4), far from (1, 1)
    loose = track_points(feats, query, TrackOptions(cycle_radius=10), device="cpu")
    assert loose.visible[0, 1]


def test_sample_bilinear_is_exact_at_centres_and_linear_between():
    grid = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    xy = torch.tensor([[0.0, 0.0], [2.0, 1.0], [0.5, 0.0], [1.0, 0.25], [-0.5, 1.5]])
    out = sample_bilinear(grid, xy)
    np.testing.assert_allclose(out[0], grid[0, 0])
    np.testing.assert_allclose(out[1], grid[1, 2])
    np.testing.assert_allclose(out[2], (grid[0, 0] + grid[0, 1]) / 2)
    np.testing.assert_allclose(out[3], 0.75 * grid[0, 1] + 0.25 * grid[1, 1])
    np.testing.assert_allclose(out[4], grid[1, 0])  # beyond the border: clamped to the last centre


def test_grid_pixel_mapping_round_trips():
    rng = np.random.default_rng(0)
    for grid, source in (((16, 24), (64, 96)), ((28, 28), (480, 854)), ((7, 5), (33, 21))):
        xy = rng.uniform(-0.5, np.array(grid[::-1]) - 0.5, (50, 2))
        np.testing.assert_allclose(source_to_grid(grid_to_source(xy, grid, source), grid, source), xy, atol=1e-9)
        px = rng.uniform(0, np.array(source[::-1]), (50, 2))
        np.testing.assert_allclose(grid_to_source(source_to_grid(px, grid, source), grid, source), px, atol=1e-9)
        # cell centres are the integer grid coordinates; the frame edges are half a cell beyond
        ys, xs = cell_centres(grid, source)
        centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        g = source_to_grid(centres, grid, source)
        np.testing.assert_allclose(g, np.round(g), atol=1e-9)
        np.testing.assert_allclose(source_to_grid([[0, 0], source[::-1]], grid, source),
                                   [[-0.5, -0.5], [grid[1] - 0.5, grid[0] - 0.5]])


@pytest.mark.parametrize("query, message", [
    ([0, float("nan"), 1], "NaN"),
    ([8, 1, 1], "frame outside"),
    ([-1, 1, 1], "frame outside"),
    ([1.5, 1, 1], "non-integer"),
    ([0, 24.0, 1], "outside the 24×16 grid"),
    ([0, 1, -0.6], "outside the 24×16 grid"),
])
def test_bad_queries_are_named(query, message):
    with pytest.raises(ValueError, match=message) as info:
        check_queries(np.array([[0, 1, 1], query]), 8, GRID)
    assert "query 1" in str(info.value)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        check_queries(np.zeros((3, 2)), 8, GRID)
    with pytest.raises(ValueError, match=r"\(T, h, w, C\)"):
        track_points(np.zeros((8, 16, 24)), np.zeros((1, 3)), device="cpu")
    with pytest.raises(ValueError, match="refine_temperature"):
        TrackOptions(refine_temperature=0)


def test_nan_features_match_nothing(oracle):
    feats, points = oracle
    feats = feats.copy()
    feats[3] = np.nan  # a corrupt frame
    feats[5, 4:8, 4:8] = np.inf
    tracks = track_points(feats, queries_at_frame0(points), device="cpu")
    assert np.isfinite(tracks.positions).all() and np.isfinite(tracks.score).all()
    assert not tracks.visible[:, 3].any() and (tracks.score[:, 3] == 0).all()
    keep = [t for t in range(8) if t not in (3, 5)]  # frame 5's zeroed cells may hold a true match
    assert errors_in_cells(tracks, points, 8)[:, keep].max() < 0.5


def test_zarr_features_read_chunk_by_chunk_give_the_same_tracks(oracle, tmp_path):
    import zarr

    feats, points = oracle
    arr = zarr.create_array(tmp_path / "f.zarr", shape=feats.shape, chunks=(3, *feats.shape[1:]), dtype="float16")
    arr[...] = feats
    t_query = np.array([0, 2, 3, 7] * 6)
    start = np.stack([warp(p[None], t)[0] for p, t in zip(points, t_query)])
    queries = np.column_stack([t_query, source_to_grid(start, GRID, SOURCE)])
    a = track_points(arr, queries, TrackOptions(frame_chunk=4), device="cpu")
    b = track_points(feats, queries, TrackOptions(frame_chunk=4), device="cpu")
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.visible, b.visible)
