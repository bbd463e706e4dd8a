"""The label-propagation kernel against a plain loop-based implementation of the same formula,
on oracle features, and the mask ↔ label conversions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liftvid.metrics import db_eval_iou
from liftvid.propagate import (iter_propagate, labels_to_masks, masks_to_labels, propagate_labels,
                               resize_nearest)


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


@pytest.mark.parametrize("tile,sims_bytes", [(1, None), (2, 1), (3, 1), (5, 1 << 12), (100, None)])
def test_tiles_and_sub_batches_do_not_change_the_result(monkeypatch, long_case, tile, sims_bytes):
    """Tiles of any side (1: one target cell each; 100: the whole grid) and sub-batches of any
    length (sims_bytes 1: the shortest, 4·n_last frames) give the loop reference's labels."""
    import liftvid.propagate as prop

    if sims_bytes is not None:
        monkeypatch.setattr(prop, "SIMS_BYTES", sims_bytes)
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

CELL = 4  # source pixels per feature cell


def oracle_video(n_frames=10, grid=24, shift=(0, 1), obj=((8, 16), (10, 18))):
    """A scene translating by ``shift`` cells per frame, seen through a grid×grid window.

    Each world cell has its own one-hot code; background cells also share one channel, so a
    background cell entering the view resembles background and nothing else. Returns features
    ``(T, g, g, C)``, the object's source-size masks ``(T, H, W)`` and frame 0's mask.
    """
    dy, dx = shift
    world_h = grid + abs(dy) * n_frames
    world_w = grid + abs(dx) * n_frames
    (y0, y1), (x0, x1) = obj
    is_obj = np.zeros((world_h, world_w), bool)
    is_obj[y0:y1, x0:x1] = True
    codes = np.eye(world_h * world_w + 1, dtype=np.float32)[:-1].reshape(world_h, world_w, -1)
    codes[~is_obj, -1] = 0.8
    feats, masks = [], []
    for t in range(n_frames):
        oy, ox = dy * t, dx * t  # the window moves, so the scene moves by -shift in the view
        feats.append(codes[oy:oy + grid, ox:ox + grid])
        cells = is_obj[oy:oy + grid, ox:ox + grid].astype(np.uint8)
        masks.append(np.kron(cells, np.ones((CELL, CELL), np.uint8)))
    return np.stack(feats), np.stack(masks)


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
    ids = labels_to_masks(soft, (6, 6), stride=4)
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
