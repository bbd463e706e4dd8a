"""Extraction's host work on the CPU: decoding and writing take turns with the model by default (issue 23),
features are checked finite in one reduction, and every written chunk is stored."""

import threading
import time

import numpy as np
import pytest
import torch
import zarr

from liftvid.io import store as st
from liftvid.io.frame_size import Resize
from liftvid.io.sources import find_sources
from liftvid.io.video import open_video, sample_indices
from liftvid.pipelines.extract import ExtractOptions, all_finite, extract_videos

from .conftest import TINY_VIT


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_all_finite_finds_every_nan_and_infinity(dtype):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 5, 6, 7)).astype(np.float32)).to(dtype)
    assert bool(all_finite(x))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in ((0, 0, 0, 0), (2, 4, 5, 6), (1, 2, 3, 4)):
            y = x.clone()
            y[where] = bad
            assert not bool(all_finite(y)), (bad, where)
    # the largest finite values of the dtype, many of them, both signs: no overflow of the sum
    big = torch.full((64, 28, 28, 384), torch.finfo(dtype).max, dtype=dtype)
    assert bool(all_finite(big))
    big[::2] = -torch.finfo(dtype).max
    assert bool(all_finite(big))
    assert bool(all_finite(torch.empty((0, 4), dtype=dtype)))


def test_batches_with_turns_decode_one_batch_per_turn(video_dir):
    """With ``turns``, the reader decodes the first batch and then one more per released permit:
    nothing decodes while the consumer computes (checked through the decoder's own reads)."""
    source = find_sources([video_dir / "clip_a.mp4"])[0]
    reads: list[int] = []
    with open_video(source, Resize.parse("native"), 16) as reader:
        decoder = reader.decoder
        original = decoder.read

        def counting_read(*args, **kwargs):
            reads.append(1)
            return original(*args, **kwargs)

        decoder.read = counting_read
        turns = threading.Semaphore(1)
        batches = reader.batches(sample_indices(reader.n_frames), 4, turns=turns)
        seen = [next(batches)[0]]
        time.sleep(0.3)  # a free-running decoder would have read the next batches by now
        assert len(reads) == 1
        for _ in range(2):
            turns.release()
            seen.append(next(batches)[0])
            time.sleep(0.1)
            assert len(reads) == len(seen)
        turns.release()
        seen += [b[0] for b in batches]  # the last batch; the end needs no turn
        batches.close()
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(12))


def test_taking_turns_and_overlapping_store_the_same(tmp_path, video_dir):
    """The two schedules differ in timing only: the stores hold the same features."""
    stores = {}
    for overlap in (False, True):
        options = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", batch_size=3,
                                 device="cpu", overlap_host_work=overlap)
        stores[overlap] = tmp_path / f"overlap-{overlap}.zarr"
        summary = extract_videos([video_dir], stores[overlap], options)
        assert [r.status for r in summary.results] == ["complete", "complete"]
    a, b = (zarr.open_group(str(stores[k]), mode="r") for k in (False, True))
    for video in ("clip_a", "clip_b"):
        np.testing.assert_array_equal(a[video]["features"][:], b[video]["features"][:])
        assert a[video]["features"].shape[0] == {"clip_a": 12, "clip_b": 9}[video]


def test_host_work_takes_turns_on_the_cpu_and_overlaps_on_accelerators(tmp_path, video_dir, monkeypatch):
    """By default the schedule follows the model's device: turns on the CPU (whose cores the model
    uses), overlapping on an accelerator; an explicit choice wins on either. A default CPU run
    builds its feeds to take turns."""
    from liftvid.pipelines import extract as ex

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    default = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu")
    assert ex.host_work_overlaps(default, cpu) is False
    assert ex.host_work_overlaps(default, cuda) is True
    for chosen in (True, False):
        options = ExtractOptions(backbone=TINY_VIT, weights="random", overlap_host_work=chosen)
        assert ex.host_work_overlaps(options, cpu) is chosen
        assert ex.host_work_overlaps(options, cuda) is chosen

    made = []
    real_init = ex.VideoFeed.__init__

    def init(self, *args, turns=False, **kwargs):
        made.append(turns)
        real_init(self, *args, turns=turns, **kwargs)

    monkeypatch.setattr(ex.VideoFeed, "__init__", init)
    options = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", batch_size=3, device="cpu")
    summary = extract_videos([video_dir], tmp_path / "out.zarr", options)
    assert [r.status for r in summary.results] == ["complete", "complete"]
    assert made == [True, True]


def test_feature_writer_stores_a_chunk_equal_to_the_fill_value(tmp_path):
    """A written chunk is stored even when its values equal the fill (NaN): a missing chunk would
    read the same but fail the store's integrity check, and zarr's test for it costs a full pass."""
    root = st.init_store(str(tmp_path / "s.zarr"), {"schema_version": st.SCHEMA_VERSION, "test": True})
    group = st.begin_video(root, "v", {"source": "v.mp4"}, 4, (2, 2), 3, np.arange(4), np.arange(4) / 4.0,
                           t_chunk=2)
    writer = st.feature_writer(group)
    writer[0:2] = np.full((2, 2, 2, 3), np.nan, dtype=np.float16)
    writer[2:4] = np.ones((2, 2, 2, 3), dtype=np.float16)
    stored = sorted(p.name for p in (tmp_path / "s.zarr" / "v" / "features" / "c").iterdir())
    assert stored == ["0", "1"]
    assert np.isnan(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["v"]["features"][0:2]).all()


def test_the_default_batch_is_the_devices_and_a_given_one_wins():
    """Without --batch-size a CPU run takes batches of 8 (measured: see DEFAULT_BATCH_SIZE) and an
    accelerator 32; a batch the user gives is kept, still bounded by the frames' bytes."""
    from liftvid.pipelines.extract import ExtractOptions, build_extractor
    from liftvid.pipelines.extract.options import NATIVE_BATCH_BYTES, default_batch_size, frames_per_batch

    assert default_batch_size(torch.device("cpu")) == 8
    assert default_batch_size(torch.device("cuda", 0)) == 32
    options = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", device="cpu")
    extractor, _ = build_extractor(options, torch.device("cpu"))
    assert options.batch_size is None
    assert frames_per_batch(options, extractor, (32, 32), (48, 64)) == 8
    given = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", device="cpu", batch_size=20)
    assert frames_per_batch(given, extractor, (32, 32), (48, 64)) == 20
    huge = (4000, 6000)  # 72 MB a frame: the byte bound wins over the batch
    assert frames_per_batch(given, extractor, (32, 32), huge) == NATIVE_BATCH_BYTES // (4000 * 6000 * 3)


@pytest.mark.timeout(60)
def test_a_failed_write_while_taking_turns_stops_the_run_without_hanging(tmp_path, video_dir, monkeypatch):
    """A decoder waiting for its next turn is let go when the video stops (here: the disk is full
    at the first write), so the run ends with its one line instead of waiting forever."""
    import errno

    from liftvid.pipelines.extract import writes

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writes, "write_batch", full_disk)
    options = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", batch_size=2,
                             device="cpu", overlap_host_work=False)
    store = tmp_path / "s.zarr"
    with pytest.raises(st.StoreError, match="disk full"):
        extract_videos([video_dir], store, options)
    assert st.list_videos(st.open_root(store)) == []
