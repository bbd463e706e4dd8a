"""The label-propagation kernel against a plain loop-based implementation of the same formula,
on oracle features, and the mask ↔ label conversions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liftvid.ops.metrics import db_eval_iou
from liftvid.ops.propagate import iter_propagate, labels_to_masks, masks_to_labels, propagate_labels, resize_nearest

from .helpers import CELL, RunRecorder, make_oracle_store, oracle_video


def reference_propagation(features, first_labels, n_last=7, topk=5, radius=12, temperature=0.1):
    """DINO's eval_video_segmentation.py, written out: a queue of the n_last previous predictions,
    exp(cos / τ) times a square neighbourhood mask, top-k per target cell over all context,
    normalised weights, weighted sum of the context labels. Loops over frames and cells."""
    T, h, w, C = features.shape
    N = h * w
    f = F.normalize(torch.as_tensor(features, dtype=torch.float64).reshape(T, N, C), dim=-1)
    near = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            dy, dx = abs(i // w - j // w), abs(i % w - j % w)
            near[i, j] = 1.0 if not radius or (dy <= radius and dx <= radius) else 0.0
    first = torch.as_tensor(first_labels, dtype=torch.float64).reshape(-1, N)
    out, queue = [first], []
    for t in range(1, T):
        context_feats = [f[0]] + [q[0] for q in queue]
        context_labels = torch.cat([first] + [q[1] for q in queue], dim=1)  # K, M*N
        seg = torch.zeros_like(first)
        for i in range(N):
            aff = torch.cat([torch.exp(f[t, i] @ cf.T / temperature) * near[i] for cf in context_feats])
            best = sorted(range(aff.numel()), key=lambda n: -float(aff[n]))[:topk]
            total = sum(float(aff[n]) for n in best)
            for n in best:
                seg[:, i] += float(aff[n]) / total * context_labels[:, n]
        out.append(seg)
        queue.append((f[t], seg))
        if len(queue) > n_last:
            queue.pop(0)
    return torch.stack(out).reshape(T, -1, h, w)


def random_case(T, h, w, C, K, seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(T, h, w, C, generator=g, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, K, (h, w), generator=g), K).permute(2, 0, 1).double()
    return feats, labels


@pytest.mark.parametrize("T,h,w,C,K,n_last,topk,radius,chunk", [
    (9, 5, 6, 8, 3, 3, 4, 2, None),   # several row bands, neighbourhood clipped at the borders
    (12, 6, 7, 5, 4, 7, 5, 1, 3),     # default context, chunks smaller than the context
    (6, 4, 4, 6, 2, 2, 3, 0, 2),      # radius 0: unrestricted, as DINO's flag
    (10, 7, 5, 4, 3, 7, 5, 12, 4),    # radius larger than the grid
    (5, 6, 6, 4, 3, 0, 2, 2, None),   # no previous frames: frame 0 only
    (4, 3, 3, 4, 2, 2, 20, 1, None),  # k above the sources of a corner cell: every source kept
])
def test_kernel_equals_loop_reference(T, h, w, C, K, n_last, topk, radius, chunk):
    feats, labels = random_case(T, h, w, C, K, seed=T * 100 + h)
    expected = reference_propagation(feats, labels, n_last, topk, radius)
    got = propagate_labels(feats, labels, n_last, topk, radius, chunk_frames=chunk)
    assert got.dtype == torch.float64 and got.shape == (T, K, h, w)
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)


@pytest.fixture(scope="module")
def long_case():
    feats, labels = random_case(40, 7, 6, 5, 3, seed=7)
    return feats, labels, reference_propagation(feats, labels, n_last=3, topk=4, radius=2)


@pytest.mark.parametrize("tile,sims_bytes,batched", [(2, None, False), (3, 1, False), (5, 1 << 12, False),
                                                    (100, None, False), (3, None, True), (4, 1 << 12, True)])
def test_tiles_and_sub_batches_do_not_change_the_result(monkeypatch, long_case, tile, sims_bytes, batched):
    """Tiles of any side (100: the whole grid), sub-batches of any length (sims_bytes 1: one
    frame) and the GPU's one-bmm path (run here on the CPU) give the loop reference's labels."""
    import liftvid.ops.propagate as prop

    if sims_bytes is not None:
        monkeypatch.setattr(prop, "SIMS_BYTES", sims_bytes)
    monkeypatch.setattr(prop, "BATCHED_SOURCES", batched)
    feats, labels, expected = long_case
    got = propagate_labels(feats, labels, n_last=3, topk=4, radius=2, tile=tile, chunk_frames=17)
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)


def test_frame0_is_first_labels_and_soft_labels_sum_to_one():
    feats, labels = random_case(6, 5, 5, 8, 3, seed=1)
    soft = labels * 0.5 + 0.1
    out = propagate_labels(feats.float(), soft)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], soft.float())
    onehot_out = propagate_labels(feats.float(), labels)
    torch.testing.assert_close(onehot_out.sum(1), torch.ones(6, 5, 5))


def test_float16_store_features_match_float64_within_float32_precision():
    feats, labels = random_case(8, 6, 6, 16, 3, seed=2)
    half = feats.half()
    got = propagate_labels(half.numpy(), labels.float())  # a NumPy float16 array, like a store's
    expected = propagate_labels(half.double(), labels)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_chunking_and_streaming_agree():
    feats, labels = random_case(11, 4, 5, 6, 3, seed=3)
    whole = propagate_labels(feats, labels, chunk_frames=100)
    starts, parts = zip(*iter_propagate(feats, labels, chunk_frames=2))
    assert list(starts) == [0, 1, 3, 5, 7, 9]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-12, rtol=0)


def test_zarr_array_is_read_in_chunks(tmp_path):
    zarr = pytest.importorskip("zarr")
    feats, labels = random_case(7, 4, 4, 6, 2, seed=4)
    z = zarr.create_array(tmp_path / "f.zarr", shape=feats.shape, chunks=(2, 4, 4, 6), dtype="float64")
    z[...] = feats.numpy()
    torch.testing.assert_close(propagate_labels(z, labels, chunk_frames=3), propagate_labels(feats, labels))


def test_kernel_rejects_labels_of_another_grid():
    feats, labels = random_case(3, 4, 5, 6, 2, seed=5)
    with pytest.raises(ValueError, match=r"first_labels must be \(K, 4, 5\)"):
        propagate_labels(feats, labels[:, :, :4])
    with pytest.raises(ValueError, match="topk"):
        propagate_labels(feats, labels, topk=0)


# ---- oracle features --------------------------------------------------------------------------

def test_oracle_features_carry_the_mask():
    feats, gt = oracle_video()
    labels = masks_to_labels(gt[0], feats.shape[1:3])
    soft = propagate_labels(feats, labels)  # default protocol
    pred = labels_to_masks(soft, gt.shape[1:], CELL)
    j = db_eval_iou(gt[1:] == 1, pred[1:] == 1)
    assert j.min() > 0.95, j


def test_oracle_two_objects_moving_diagonally():
    feats, gt = oracle_video(n_frames=8, grid=20, shift=(1, 1), obj=((6, 12), (6, 14)))
    first = gt[0].copy()
    first[first == 1] = 1
    first[:, :32][first[:, :32] == 1] = 2  # left part of the object is object 2
    labels = masks_to_labels(first, feats.shape[1:3])
    pred = labels_to_masks(propagate_labels(feats, labels), gt.shape[1:], CELL)
    assert set(np.unique(pred)) == {0, 1, 2}
    j = db_eval_iou(gt[1:] == 1, pred[1:] > 0)
    assert j.min() > 0.95, j


# ---- conversions ----------------------------------------------------------------------------


@pytest.mark.parametrize("src,dst", [((480, 854), (28, 28)), ((37, 50), (80, 101)), ((64, 96), (64, 96))])
def test_nearest_resize_matches_pil(src, dst):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, src, dtype=np.uint8)
    expected = np.asarray(Image.fromarray(img).resize((dst[1], dst[0]), Image.NEAREST))
    np.testing.assert_array_equal(resize_nearest(img, dst), expected)


def test_masks_to_labels_samples_cell_centres():
    mask = np.zeros((8, 12), np.uint8)
    mask[0:4, 6:12] = 2  # top-right quadrant → cells (0, 1) of a 2×2 grid
    mask[5, 1] = 1  # a pixel off every cell centre: lost at the grid
    labels = masks_to_labels(mask, (2, 2))
    assert labels.shape == (3, 2, 2) and labels.dtype == torch.float32
    np.testing.assert_array_equal(labels.argmax(0).numpy(), [[0, 2], [0, 0]])
    assert labels[1].sum() == 0
    with pytest.raises(ValueError, match="object id 2"):
        masks_to_labels(mask, (2, 2), n_objects=1)


def test_labels_to_masks_upsamples_normalises_and_resizes():
    soft = torch.zeros(1, 3, 2, 2)
    soft[0, 0] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    soft[0, 1] = torch.tensor([[0.0, 0.3], [0.0, 0.0]])  # weak everywhere: min–max makes it win its cell
    soft[0, 2, 1, 1] = 0.0  # all-zero object: never wins
    ids = labels_to_masks(soft, (6, 6), scale=4)
    assert ids.shape == (1, 6, 6) and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids[0, :2, 4:], 1)
    assert ids[0, 5, 0] == 0 and not (ids == 2).any()
    # DINO's norm_mask, written out with loops, then argmax and PIL's nearest resize
    from PIL import Image

    rng = np.random.default_rng(1)
    soft = torch.from_numpy(rng.random((2, 4, 5, 7)).astype(np.float32))
    up = F.interpolate(soft, scale_factor=4, mode="bilinear", align_corners=False)
    for t in range(2):
        for k in range(4):
            ch = up[t, k]
            if ch.max() > 0:
                ch = ch - ch.min()
                up[t, k] = ch / ch.max()
    expected = [np.asarray(Image.fromarray(a.numpy().astype(np.uint8)).resize((33, 21), Image.NEAREST))
                for a in up.argmax(1)]
    np.testing.assert_array_equal(labels_to_masks(soft, (21, 33), 4), np.stack(expected))


# ---- store-level propagation: masks in, DAVIS PNGs + store array out, as Dask jobs ---------------

from PIL import Image  # noqa: E402

from liftvid.io import store as st  # noqa: E402
from liftvid.io.masks import DAVIS_PALETTE, MaskError, read_mask, write_mask  # noqa: E402
from liftvid.pipelines.propagate import PropagateOptions, propagate_store  # noqa: E402


@pytest.fixture(scope="module")
def oracle_store(tmp_path_factory):
    """Two oracle videos (moving right; moving down-right) with their first masks as <id>.png."""
    d = tmp_path_factory.mktemp("propstore")
    fa, ga = oracle_video(n_frames=8, grid=20, shift=(0, 1), obj=((6, 12), (6, 12)))
    fb, gb = oracle_video(n_frames=6, grid=20, shift=(1, 1), obj=((5, 11), (4, 12)))
    C = max(fa.shape[-1], fb.shape[-1])
    fa = np.pad(fa, ((0, 0),) * 3 + ((0, C - fa.shape[-1]),))
    fb = np.pad(fb, ((0, 0),) * 3 + ((0, C - fb.shape[-1]),))
    store = make_oracle_store(d / "s.zarr", {"a": {"features": fa, "source_size": ga.shape[1:]},
                                             "b": {"features": fb, "source_size": gb.shape[1:]}})
    masks = d / "first"
    write_mask(masks / "a.png", ga[0])
    write_mask(masks / "b.png", gb[0] * 2)  # object id 2
    return {"store": store, "masks": masks, "gt": {"a": ga, "b": gb * 2}, "dir": d}


def read_pngs(folder, vid):
    files = sorted((folder / vid).glob("*.png"))
    return [f.name for f in files], np.stack([np.asarray(Image.open(f)) for f in files])


def test_store_propagation_writes_davis_pngs_and_the_store_array(oracle_store, tmp_path):
    out = tmp_path / "res"
    summary = propagate_store(oracle_store["store"], oracle_store["masks"], out, scheduler="sync")
    assert [r.status for r in summary.results] == ["complete", "complete"] and not summary.failed
    root = st.open_root(oracle_store["store"])
    for vid, gt in oracle_store["gt"].items():
        names, pred = read_pngs(out, vid)
        assert names == [f"{i:05d}.png" for i in range(len(gt))]
        img = Image.open(out / vid / "00001.png")
        assert img.mode == "P" and img.getpalette()[:9] == DAVIS_PALETTE[:3].ravel().tolist()
        obj = int(gt.max())
        assert db_eval_iou(gt[1:] == obj, pred[1:] == obj).min() > 0.95
        np.testing.assert_array_equal(pred[0], gt[0])
        arr = root[vid]["masks"]
        np.testing.assert_array_equal(arr[:], pred)
        assert arr.attrs["liftvid"]["status"] == "complete" and arr.metadata.dimension_names == ("frame", "height", "width")


def test_local_cluster_of_two_processes_gives_the_same_pngs_as_sync(oracle_store, tmp_path):
    from distributed import LocalCluster

    propagate_store(oracle_store["store"], oracle_store["masks"], tmp_path / "sync", scheduler="sync")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = propagate_store(oracle_store["store"], oracle_store["masks"], tmp_path / "dist",
                                  scheduler=cluster.scheduler_address)
    assert not summary.failed
    for vid in ("a", "b"):
        names_s, sync = read_pngs(tmp_path / "sync", vid)
        names_d, dist = read_pngs(tmp_path / "dist", vid)
        assert names_s == names_d
        np.testing.assert_array_equal(sync, dist)


def test_bad_inputs_fail_their_video_only_with_a_named_reason(oracle_store, tmp_path):
    store, gt = oracle_store["store"], oracle_store["gt"]
    # masks missing for a video named with --video: that video fails, named; the other is done
    # (without --video, a video with no mask is left alone and listed: test_newcomer_fixes.py)
    only_a = tmp_path / "only_a"
    write_mask(only_a / "a.png", gt["a"][0])
    s = propagate_store(store, only_a, tmp_path / "o1", videos=["a", "b"], scheduler="sync")
    by = {r.video_id: r for r in s.results}
    assert by["a"].status == "complete" and by["b"].status == "failed"
    assert "b: no mask" in by["b"].error
    # an empty mask
    empty = tmp_path / "empty"
    write_mask(empty / "a.png", np.zeros_like(gt["a"][0]))
    write_mask(empty / "b.png", gt["b"][0])
    progress = RunRecorder()
    s = propagate_store(store, empty, tmp_path / "o2", scheduler="threads", progress=progress)
    by = {r.video_id: r for r in s.results}
    assert by["a"].status == "failed" and "empty mask" in by["a"].error and "a.png" in by["a"].error
    assert by["b"].status == "complete"
    # the run contract: the number of videos first, then each video once as it finishes, failures
    # included, with its frames
    assert progress.started == [2]
    assert sorted((r.video_id, r.status) for r in progress.finished) == [("a", "failed"), ("b", "complete")]
    assert progress.frames == by["b"].frames > 0
    # more objects than the palette holds: a 16-bit id map with id 300
    many = tmp_path / "many"
    many.mkdir()
    ids = gt["a"][0].astype(np.uint16) * 300
    Image.fromarray(ids).save(many / "a.png")
    write_mask(many / "b.png", gt["b"][0])
    by = {r.video_id: r for r in propagate_store(store, many, tmp_path / "o3", scheduler="sync").results}
    assert by["a"].status == "failed" and "at most 255 objects" in by["a"].error
    assert by["b"].status == "complete"
    # a video the store does not hold
    s = propagate_store(store, oracle_store["masks"], tmp_path / "o4", videos=["a", "nope"], scheduler="sync")
    by = {r.video_id: r for r in s.results}
    assert by["nope"].status == "failed" and "nope: not in the store" in by["nope"].error
    assert by["a"].status == "complete"
    # a start frame that is not stored
    s = propagate_store(store, oracle_store["masks"], tmp_path / "o5", PropagateOptions(start_frame=50),
                        scheduler="sync")
    assert all(r.status == "failed" and "start frame 50" in r.error for r in s.results)


def test_features_of_another_length_than_the_frames_are_refused(tmp_path):
    feats, gt = oracle_video(n_frames=5, grid=12, shift=(0, 1), obj=((3, 8), (3, 8)))
    store = make_oracle_store(tmp_path / "s.zarr", {"v": {"features": feats, "source_size": gt.shape[1:]},
                                                    "w": {"features": feats, "source_size": gt.shape[1:]}})
    root = st.open_root(store, mode="r+")
    del root["v"]["frame_index"]  # a group whose frame index is shorter than its features
    root["v"].create_array("frame_index", shape=(3,), dtype="int64", fill_value=0)[:] = np.arange(3)
    info = dict(root["w"].attrs["liftvid"])
    root["w"].attrs["liftvid"] = {**info, "source_frames": 3}  # the source has fewer frames than stored
    write_mask(tmp_path / "m" / "v.png", gt[0])
    write_mask(tmp_path / "m" / "w.png", gt[0])
    by = {r.video_id: r for r in propagate_store(store, tmp_path / "m", tmp_path / "o", scheduler="sync").results}
    # each named by the file (issue 20: a damaged node fails its video alone, named)
    assert f"{store}/v/frame_index/zarr.json: 3 frames, the features 5" in by["v"].error
    assert "w/frame_index: refers to frame 4, the source has 3 frames" in by["w"].error


def test_start_frame_propagates_from_the_annotated_frame_of_a_davis_tree(oracle_store, tmp_path):
    gt = oracle_store["gt"]["a"]
    tree = tmp_path / "DAVIS" / "Annotations" / "480p"
    write_mask(tree / "a" / "00003.png", gt[3])
    out = tmp_path / "res"
    s = propagate_store(oracle_store["store"], tmp_path / "DAVIS", out, PropagateOptions(start_frame=3),
                        videos=["a"], scheduler="sync")
    assert s.results[0].status == "complete" and s.results[0].frames == len(gt) - 3
    names, pred = read_pngs(out, "a")
    assert names == [f"{i:05d}.png" for i in range(3, len(gt))]
    assert db_eval_iou(gt[4:] == 1, pred[1:] == 1).min() > 0.95
    stored = st.open_root(oracle_store["store"])["a"]["masks"][:]
    assert not stored[:3].any() and np.array_equal(stored[3:], pred)


def test_davis_palette_png_round_trip_and_mask_kinds(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (13, 17), dtype=np.uint8)
    path = write_mask(tmp_path / "m.png", ids)
    img = Image.open(path)
    assert img.mode == "P" and np.array_equal(np.asarray(img), ids)
    assert np.array_equal(read_mask(path), ids)
    assert np.array_equal(read_mask(path, size=(26, 34)), np.kron(ids, np.ones((2, 2), np.uint8)))
    assert tuple(DAVIS_PALETTE[1]) == (128, 0, 0) and tuple(DAVIS_PALETTE[2]) == (0, 128, 0)
    soft = (ids > 3).astype(np.uint8) * 200 + 20  # a soft greyscale mask: thresholded at 128
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert np.array_equal(read_mask(tmp_path / "soft.png"), (ids > 3).astype(np.uint8))
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")  # drawn in palette colours
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), ids)
    void = ids.copy()
    void[0, 0] = 255
    assert read_mask(write_mask(tmp_path / "void.png", void))[0, 0] == 0  # DAVIS void reads as background
    with pytest.raises(MaskError, match="mask file not found"):
        read_mask(tmp_path / "none.png")


# ---- the DAVIS workflow and the CLI on a tiny DAVIS-layout tree ----------------------------------


@pytest.fixture(scope="module")
def davis_run(tmp_path_factory):
    """A tiny DAVIS tree (2 sequences of JPEG frames, annotations of every frame, ImageSets) run
    through workflows/davis.py with a random tiny ViT: extract → propagate → evaluate."""
    import importlib.util
    from pathlib import Path

    from liftvid.io.encode import synthetic_frames

    from .conftest import TINY_VIT

    root = tmp_path_factory.mktemp("davis_wf")
    davis = root / "DAVIS"
    for s, seq in enumerate(("bear", "car")):
        frames = synthetic_frames(5, 48, 64, seed=10 + s)
        (davis / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(davis / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", quality=95)
            mask = np.zeros((48, 64), np.uint8)
            mask[10 + t:30 + t, 8 + 2 * t:30 + 2 * t] = 1
            mask[32:44, 40:60] = 2 if s else 0
            write_mask(davis / "Annotations" / "480p" / seq / f"{t:05d}.png", mask)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("bear\ncar\n")
    path = Path(__file__).resolve().parents[1] / "workflows" / "davis.py"
    spec = importlib.util.spec_from_file_location("davis_workflow", path)
    workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workflow)
    out = root / "run"
    argv = [str(davis), "--out", str(out), "--backbone", TINY_VIT, "--weights", "random", "--resize", "square:64",
            "--batch-size", "4", "--device", "cpu", "--scheduler", "sync"]
    summary = workflow.run(workflow.parse_args(argv))
    return {"davis": davis, "out": out, "summary": summary, "code": workflow.main}


def test_davis_workflow_runs_every_stage_on_a_tiny_tree(davis_run):
    summary, out = davis_run["summary"], davis_run["out"]
    assert summary["sequences"] == ["bear", "car"] and not summary["failed"] and not summary["not_evaluated"]
    assert set(summary["seconds"]) == {"extract", "propagate", "evaluate"}
    assert set(summary["per_sequence"]) == {"bear", "car"} and summary["per_sequence"]["car"]["objects"] == 2
    # J-Mean recomputed here from the written PNGs and the annotations: IoU per object over the
    # frames DAVIS scores (all but the first and the last), averaged per object, then over objects
    davis = davis_run["davis"]
    per_object = []
    for seq, n_objects in (("bear", 1), ("car", 2)):
        gt = [np.array(Image.open(davis / "Annotations" / "480p" / seq / f"{t:05d}.png")) for t in range(1, 4)]
        res = [np.array(Image.open(out / "results" / seq / f"{t:05d}.png")) for t in range(1, 4)]
        for obj in range(1, n_objects + 1):
            inter = [((g == obj) & (r == obj)).sum() for g, r in zip(gt, res)]
            union = [((g == obj) | (r == obj)).sum() for g, r in zip(gt, res)]
            per_object.append(np.mean([i / u if u else 1.0 for i, u in zip(inter, union)]))
    assert summary["scores"]["J-Mean"] == pytest.approx(np.mean(per_object), abs=1e-6)
    for seq in ("bear", "car"):
        assert sorted(p.name for p in (out / "results" / seq).glob("*.png")) == [f"{t:05d}.png" for t in range(5)]
    assert (out / "results" / "global_results-val.csv").is_file() and (out / "summary.json").is_file()
    assert st.list_videos(st.open_root(out / "features.zarr")) == ["bear", "car"]


def test_cli_propagate_with_overlay_and_eval_davis(davis_run, tmp_path):
    from typer.testing import CliRunner

    from liftvid.cli import app

    store, davis = davis_run["out"] / "features.zarr", davis_run["davis"]
    runner = CliRunner()
    res = runner.invoke(app, ["propagate", str(store), "--masks", str(davis / "Annotations" / "480p"),
                              "--out", str(tmp_path / "res"), "--overlay", "--scheduler", "sync", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "2 videos, 10 frames" in res.output
    assert (tmp_path / "res" / "bear.mp4").stat().st_size > 0
    res = runner.invoke(app, ["eval", "davis", str(tmp_path / "res"), "--davis", str(davis)])
    assert res.exit_code == 0, res.output
    assert "all objects" in res.output and (tmp_path / "res" / "per-sequence_results-val.csv").is_file()
    # a video without masks, named with --video: named, the other goes on, exit 1
    one = tmp_path / "one"
    write_mask(one / "bear.png", read_mask(davis / "Annotations" / "480p" / "bear" / "00000.png"))
    res = runner.invoke(app, ["propagate", str(store), "--masks", str(one), "--out", str(tmp_path / "r2"),
                              "--video", "bear", "--video", "car", "--scheduler", "sync"])
    assert res.exit_code == 1 and "car: no mask" in res.output and (tmp_path / "r2" / "bear" / "00004.png").is_file()
    assert res.output.count("car: no mask") == 1 and "None" not in res.output  # in the table, once
    res = runner.invoke(app, ["propagate", str(store), "--masks", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "no such mask file or folder" in res.output
