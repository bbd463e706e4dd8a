"""Propagate, track, viz and open_store on stores whose grid is denser than LiFT ×1 (LiFT ×2+,
UPLiFT): everything follows the stored grid and the recorded model input, and propagation's
similarity blocks stay within their memory budget with the same result."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import liftvid
from liftvid.io import store as st
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.io.masks import write_mask
from liftvid.ops.geometry import mask_upsampling_factor, radius_in_stored_cells
from liftvid.ops.metrics import db_eval_iou
from liftvid.ops.propagate import affinity_block_bytes, labels_to_masks, masks_to_labels, propagate_labels
from liftvid.pipelines.propagate import PropagateOptions, propagate_store

INPUT = (224, 224)
PATCH = 14  # DINOv2-S/14: a 16×16 backbone grid at 224 px; UPLiFT ×2 makes it 64×64


def dense_store(path, videos, patch=PATCH, input_size=INPUT, fps=12.0):
    """A store written through the store's writer: id → (features (T, h, w, C), source (H, W),
    source file or None). The grid is whatever the features are; the record says the model input."""
    C = next(iter(videos.values()))[0].shape[-1]
    h = next(iter(videos.values()))[0].shape[1]
    config = st.make_config({"name": "dense", "timm_name": "dense", "weights": "none", "weights_sha256": None,
                             "layer": 0, "facet": "token", "patch_size": patch, "channels": C}, None,
                            "square:224", [0.5] * 3, [0.5] * 3, feature_stride=input_size[0] / h)
    root = st.init_store(path, config)
    for vid, (feats, size, source) in videos.items():
        T, h, w, _ = feats.shape
        info = {"source": str(source or f"/nowhere/{vid}.mp4"), "source_kind": "file", "source_size": list(size),
                "frame_size": list(input_size), "grid_size": [h, w], "fps": fps, "source_frames": T,
                "sampling": {"stride": 1, "max_frames": None}}
        group = st.begin_video(root, vid, info, T, (h, w), C, np.arange(T), np.arange(T) / fps)
        group["features"][...] = feats.astype(np.float16)
        st.mark_complete(group)
    return path


def moving_scene(T, grid, shift, C=32, seed=0, obj=None):
    """A random feature field (one unit vector per world cell) seen through a grid × grid window
    that moves by ``shift`` cells per frame, and the object's cells ``(T, grid, grid)``."""
    dy, dx = shift
    rng = np.random.default_rng(seed)
    world = rng.standard_normal((grid + abs(dy) * T, grid + abs(dx) * T, C)).astype(np.float32)
    world /= np.linalg.norm(world, axis=-1, keepdims=True)
    is_obj = np.zeros(world.shape[:2], bool)
    (y0, y1), (x0, x1) = obj or ((grid // 4, grid // 2), (grid // 4, grid // 2))
    is_obj[y0:y1, x0:x1] = True
    feats = np.stack([world[dy * t:dy * t + grid, dx * t:dx * t + grid] for t in range(T)])
    cells = np.stack([is_obj[dy * t:dy * t + grid, dx * t:dx * t + grid] for t in range(T)])
    return feats, cells


def to_source(cells, size):
    """Cell masks ``(T, h, w)`` at the source size, each pixel the cell under it (PIL nearest)."""
    H, W = size
    return np.stack([np.asarray(Image.fromarray(c.astype(np.uint8)).resize((W, H), Image.NEAREST)) for c in cells])


# ---------------------------------------------------------------- geometry rules


@pytest.mark.parametrize("patch,grid", [(16, 14), (16, 28), (16, 56), (16, 112), (14, 16), (14, 32), (14, 64),
                                        (14, 128), (14, 224)])
def test_mask_upsampling_is_the_patch_on_the_protocols_grids_and_twice_the_input_on_denser_ones(patch, grid):
    stride = 224 / grid
    factor = mask_upsampling_factor(patch, stride)
    assert isinstance(factor, int)
    if stride >= patch / 2:  # the backbone's grid (DINO) and a LiFT ×1 grid: the official scale_factor
        assert factor == patch
    else:  # the smallest integer factor reaching twice the input, as LiFT's map
        assert grid * factor >= 2 * 224 > grid * (factor - 1)


def test_radius_counts_stored_cells_or_backbone_cells():
    assert radius_in_stored_cells(12, "stored", 4.0) == 12  # the protocols' rule on any grid
    assert radius_in_stored_cells(12, "backbone", 4.0) == 48  # 12 patches of a 4× denser grid
    assert radius_in_stored_cells(12, "backbone", 2.0) == 24
    assert radius_in_stored_cells(0, "backbone", 4.0) == 0 and radius_in_stored_cells(None, "stored", 4.0) is None
    with pytest.raises(ValueError, match="radius unit"):
        radius_in_stored_cells(12, "pixels", 4.0)


# ---------------------------------------------------------------- open_store coordinates


def test_open_store_coordinates_follow_a_dense_grid(tmp_path):
    feats = np.random.default_rng(1).standard_normal((2, 64, 64, 8)).astype(np.float32)
    path = dense_store(tmp_path / "s.zarr", {"v": (feats, (480, 854), None)})
    ds = liftvid.open_store(path)["v"]
    assert ds.features.shape == (2, 64, 64, 8)
    # a 64×64 grid over the 224×224 input: cells of 3.5 input px; the input is the whole frame
    np.testing.assert_allclose(ds["y_input"].values, 1.75 + 3.5 * np.arange(64))
    np.testing.assert_allclose(ds["x_input"].values, 1.75 + 3.5 * np.arange(64))
    np.testing.assert_allclose(ds["y"].values, (1.75 + 3.5 * np.arange(64)) * 480 / 224)
    np.testing.assert_allclose(ds["x"].values, (1.75 + 3.5 * np.arange(64)) * 854 / 224)
    geometry = st.video_geometry(st.open_root(path), "v")
    assert geometry.grid_size == (64, 64) and geometry.input_size == INPUT and geometry.density == 4
    assert geometry.mask_upsampling() == 7  # 64 × 7 = 448 = twice the input


# ---------------------------------------------------------------- propagation


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_propagation_equals_unblocked_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 12, 12, 6, generator=g, dtype=dtype)
    labels = F.one_hot(torch.randint(0, 3, (12, 12), generator=g), 3).permute(2, 0, 1).to(dtype)
    size = feats.element_size()
    for radius in (3, None):
        whole = propagate_labels(feats, labels, n_last=3, topk=5, radius=radius, tile=12, affinity_bytes=1 << 40)
        for budget in (affinity_block_bytes(1, 1, (12, 12), radius, 3, size),  # single-cell blocks, one frame
                       affinity_block_bytes(3, 2, (12, 12), radius, 3, size)):  # 3×3-cell blocks of two frames
            blocked = propagate_labels(feats, labels, n_last=3, topk=5, radius=radius, tile=12, affinity_bytes=budget)
            assert torch.equal(whole, blocked), (radius, budget)


def _largest_allocation(run) -> int:
    """The largest block of memory one torch op allocated while ``run()`` ran (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return max(e.cpu_memory_usage for e in prof.events())


def test_propagation_memory_stays_within_the_affinity_budget():
    T, h, w, C, n_last, chunk = 3, 10, 10, 8, 3, 2
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(T, h, w, C, generator=g)
    labels = F.one_hot(torch.randint(0, 2, (h, w), generator=g), 2).permute(2, 0, 1).float()
    budget = 24 << 10

    def run(affinity_bytes):
        return lambda: propagate_labels(feats, labels, n_last=n_last, topk=5, radius=None, tile=16,
                                        chunk_frames=chunk, affinity_bytes=affinity_bytes)

    # besides the similarity blocks, a chunk holds its features: the previous and the chunk's frames
    features_bytes = (n_last + chunk) * h * w * C * 4
    bound = max(budget, features_bytes)
    assert _largest_allocation(run(budget)) <= bound
    assert _largest_allocation(run(1 << 40)) > 8 * bound  # unbounded, the same run holds far more


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory):
    """A 64×64 grid (UPLiFT ×2 at 224 px, patch 14) of a scene moving 1 cell right per frame, for a
    120×180 source; its first mask as a PNG."""
    d = tmp_path_factory.mktemp("dense")
    feats, cells = moving_scene(3, 64, (0, 1), C=16, seed=2)
    size = (120, 180)
    store = dense_store(d / "s.zarr", {"v": (feats, size, None)})
    gt = to_source(cells, size)
    write_mask(d / "v.png", gt[0])
    return {"store": store, "mask": d / "v.png", "gt": gt, "feats": feats, "size": size}


def test_propagate_on_a_dense_store_writes_source_size_masks_upsampled_by_the_dense_rule(scene_store, tmp_path):
    out = tmp_path / "res"
    summary = propagate_store(scene_store["store"], scene_store["mask"], out, PropagateOptions(device="cpu"),
                              scheduler="sync")
    assert not summary.failed
    gt, (H, W) = scene_store["gt"], scene_store["size"]
    pngs = sorted((out / "v").glob("*.png"))
    assert len(pngs) == len(gt)
    pred = np.stack([np.asarray(Image.open(p)) for p in pngs])
    assert pred.shape == (len(gt), H, W)
    assert db_eval_iou(gt[1:] == 1, pred[1:] == 1).min() > 0.9
    masks = st.open_root(scene_store["store"])["v"]["masks"]
    protocol = masks.attrs["liftvid"]["protocol"]
    factor = math.ceil(2 * INPUT[0] / 64)  # twice the 224 px input: 7, not the patch size 14
    assert protocol["upsampling_factor"] == factor and protocol["radius_stored_cells"] == 12
    first = masks_to_labels(gt[0], (64, 64), 1)
    soft = propagate_labels(torch.from_numpy(scene_store["feats"].astype(np.float16).astype(np.float32)), first,
                            tile=16)  # tiles change speed only
    np.testing.assert_array_equal(masks[1:], labels_to_masks(soft, (H, W), factor)[1:])


def test_backbone_radius_unit_covers_the_same_image_area_on_a_dense_grid(tmp_path):
    # 6 stored cells a frame on a 4× dense grid: 1.5 patches. A radius of 2 stored cells loses the
    # object; 2 backbone cells (8 stored cells) keep it.
    feats, cells = moving_scene(4, 32, (0, 6), C=24, seed=3, obj=((8, 16), (20, 28)))
    size = (64, 64)
    store = dense_store(tmp_path / "s.zarr", {"v": (feats, size, None)}, input_size=(112, 112))
    gt = to_source(cells, size)
    write_mask(tmp_path / "v.png", gt[0])
    iou = {}
    for unit in ("stored", "backbone"):
        propagate_store(store, tmp_path / "v.png", tmp_path / unit, PropagateOptions(radius=2, radius_unit=unit,
                                                                                   device="cpu"), scheduler="sync")
        pred = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / unit / "v").glob("*.png"))])
        iou[unit] = db_eval_iou(gt[1:] == 1, pred[1:] == 1).min()
    assert iou["backbone"] > 0.75 and iou["stored"] < 0.25, iou  # (boundary cells: 2 px each)


# ---------------------------------------------------------------- tracking and viz


def test_similarity_peak_lands_at_the_query_within_a_dense_cell(tmp_path):
    feats = np.random.default_rng(4).standard_normal((2, 64, 64, 64)).astype(np.float32)
    size = (150, 200)
    ds = liftvid.open_store(dense_store(tmp_path / "s.zarr", {"v": (feats, size, None)}))["v"]
    cell_h, cell_w = size[0] / 64, size[1] / 64
    for x, y in [(3.0, 2.0), (101.3, 77.7), (199.0, 149.0), (55.5, 140.2)]:
        sim = liftvid.viz.cosine_map(ds.features.isel(frame=1), liftvid.viz.query_feature(ds, x, y, 1))
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        # the peak cell holds the query: its centre is within half a (dense) cell of the point
        assert abs((i + 0.5) * cell_h - y) <= cell_h / 2 + 1e-9 and abs((j + 0.5) * cell_w - x) <= cell_w / 2 + 1e-9


def test_track_on_a_dense_store_follows_the_motion_in_source_pixels(tmp_path):
    T, grid, shift = 5, 64, (1, 2)  # the window moves 1 cell down, 2 right: the scene moves up-left
    feats, _ = moving_scene(T, grid, shift, C=32, seed=5)
    size = (96, 128)  # 1.5 × 2 source px per cell
    store = dense_store(tmp_path / "s.zarr", {"v": (feats, size, None)})
    cell_h, cell_w = size[0] / grid, size[1] / grid
    cells = [(30, 30), (40, 50), (20, 45)]  # (row, column) at frame 0, away from the borders
    queries = tmp_path / "q.csv"
    queries.write_text("video_id,t,x,y\n" + "".join(f"v,0,{(c + 0.5) * cell_w},{(r + 0.5) * cell_h}\n"
                                                    for r, c in cells))
    summary = liftvid.track_store(store, queries, tmp_path / "tracks.csv", scheduler="sync", device="cpu")
    assert not summary.failed and not summary.refused
    ds = liftvid.open_store(store)["v"]
    positions = ds["tracks_positions"].values  # (N, T, 2) source px
    assert positions.shape == (3, T, 2) and ds["tracks_visible"].values.all()
    for n, (r, c) in enumerate(cells):
        t = np.arange(T)
        expected = np.column_stack([(c - shift[1] * t + 0.5) * cell_w, (r - shift[0] * t + 0.5) * cell_h])
        np.testing.assert_allclose(positions[n], expected, atol=0.05 * cell_w)


def test_viz_renders_a_dense_store_at_the_source_size(tmp_path):
    from liftvid.pipelines.render import render_masks, render_pca, render_similarity, render_tracks

    T, size = 3, (48, 64)
    video = tmp_path / "clip.mp4"
    write_video(video, synthetic_frames(T, *size, seed=7), fps=12)
    feats, cells = moving_scene(T, 56, (0, 1), C=16, seed=6)  # a LiFT ×2 grid at 224 px, patch 16
    store = dense_store(tmp_path / "s.zarr", {"clip": (feats, size, video)}, patch=16)
    write_mask(tmp_path / "clip.png", to_source(cells, size)[0])
    propagate_store(store, tmp_path / "clip.png", tmp_path / "res", PropagateOptions(device="cpu"), scheduler="sync")
    (tmp_path / "q.csv").write_text("video_id,t,x,y\nclip,0,20.5,30.2\n")
    liftvid.track_store(store, tmp_path / "q.csv", tmp_path / "t.csv", scheduler="sync", device="cpu")
    ds = liftvid.open_store(store)["clip"]
    for frames in (list(render_pca(ds)), list(render_pca(ds, with_source=True)),
                   list(render_similarity(ds, 20.5, 30.2, 0)), list(render_similarity(ds, 20.5, 30.2, 0, on_source=False)),
                   list(render_masks(ds)), list(render_tracks(ds))):
        assert len(frames) == T
        assert frames[0].dtype == np.uint8 and frames[0].shape[0] == size[0]
        assert frames[0].shape[1] == size[1] or frames[0].shape[1] > 2 * size[1]  # beside the source: wider


def test_track_memory_plan_counts_the_dense_grid_cells(tmp_path):
    from liftvid.ops.track import TrackOptions, plan_blocks

    budget = 8 << 20
    options = TrackOptions(max_chunk_bytes=budget)
    for grid in (16, 64, 112):  # the backbone's grid, UPLiFT ×2, LiFT ×3 at 224 px
        plan = plan_blocks(np.arange(2000) % 50, 50, (grid, grid), 384, options)
        # a block's similarity rows alone (queries × frames × cells, float32) fit the budget
        assert plan.queries_per_block * plan.frames_per_chunk * grid * grid * 4 <= budget, grid
    # and a dense store tracked within a tight budget gives the same tracks as within a loose one
    feats, _ = moving_scene(6, 32, (1, 1), C=16, seed=8)  # 4 cells a patch: 32×32 at 112 px, patch 14
    store = dense_store(tmp_path / "s.zarr", {"v": (feats, (64, 64), None)}, input_size=(112, 112))
    rng = np.random.default_rng(9)
    (tmp_path / "q.csv").write_text("video_id,t,x,y\n" + "".join(
        f"v,{t},{x:.3f},{y:.3f}\n" for t, x, y in zip(rng.integers(0, 6, 20), rng.uniform(0, 64, 20), rng.uniform(0, 64, 20))))
    out = {}
    for name, mb in (("tight", 1 << 20), ("loose", 512 << 20)):
        liftvid.track_store(store, tmp_path / "q.csv", tmp_path / f"{name}.csv", TrackOptions(max_chunk_bytes=mb),
                            scheduler="sync", device="cpu", write_store=False)
        out[name] = (tmp_path / f"{name}.csv").read_text()
    assert out["tight"] == out["loose"]
