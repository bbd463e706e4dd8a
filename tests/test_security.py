"""Issue 15 (security) and issue 13 (checkpoint error lines): hostile pickles and checkpoints are
refused with one line naming the file, and the code inside them never runs."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io.tables import load_tapvid
from liftvid.io.tables import safe_load_pickle

from .conftest import TINY_VIT
from .helpers import RunsCode, one_error_line

runner = CliRunner()


class _WritesFile:
    """Unpickling this calls builtins.open (a second way in than os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- TAP-Vid pickles ---------------------------------------------------------------------------


def _tapvid_entry(n=3, t=4, h=8, w=10, jpeg=False):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8)
    if jpeg:
        frames = []
        for frame in video:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG")
            frames.append(buf.getvalue())
        video = frames
    return {"video": video, "points": rng.random((n, t, 2)).astype(np.float32),
            "occluded": rng.random((n, t)) > 0.7}


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_genuine_tapvid_pickles_load_with_every_protocol(tmp_path, protocol):
    entry = _tapvid_entry()
    path = tmp_path / "davis.pkl"
    path.write_bytes(pickle.dumps({"bear": entry, "np_scalar": {"x": np.float32(1.5), "i": np.int64(3),
                                                                 "dt": np.dtype(">i4"), "t": (1, None, True)}},
                                  protocol=protocol))
    data = safe_load_pickle(path)
    np.testing.assert_array_equal(data["bear"]["video"], entry["video"])
    np.testing.assert_array_equal(data["bear"]["points"], entry["points"])
    assert data["np_scalar"]["x"] == np.float32(1.5) and data["np_scalar"]["dt"] == np.dtype(">i4")
    assert data["np_scalar"]["t"] == (1, None, True)


def test_tapvid_dict_and_list_of_jpeg_dicts_still_load(tmp_path):
    davis = tmp_path / "davis.pkl"
    davis.write_bytes(pickle.dumps({"bear": _tapvid_entry(h=8, w=10)}))
    videos = load_tapvid(davis)
    assert list(videos) == ["bear"] and videos["bear"].frame_size == (8, 10) and videos["bear"].n_frames == 4
    kinetics = tmp_path / "kinetics.pkl"
    kinetics.write_bytes(pickle.dumps([_tapvid_entry(h=16, w=24, jpeg=True), _tapvid_entry(jpeg=True)]))
    videos = load_tapvid(kinetics, keep_video=True)
    assert list(videos) == ["0", "1"] and videos["0"].frame_size == (16, 24)
    assert next(videos["0"].frames()).shape == (16, 24, 3)


@pytest.mark.parametrize("payload", [RunsCode, _WritesFile])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"bear": {"video": payload(marker), "points": [], "occluded": []}}))
    with pytest.raises(ValueError, match="refuses to load") as info:
        load_tapvid(evil)
    assert str(evil) in str(info.value) and "only arrays, lists, dicts" in str(info.value)
    assert not marker.exists()


def test_hostile_pickle_through_both_eval_commands(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(RunsCode(marker)))
    tracks = tmp_path / "tracks.csv"
    tracks.write_text("video_id,query,t,x,y,visible\nbear,0,0,1.0,1.0,1\n")
    result = runner.invoke(app, ["eval", "tapvid", str(tracks), "--gt", str(evil)])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert str(evil) in line and "refuses to load" in line and "system" in line
    result = runner.invoke(app, ["eval", "tapvid-queries", str(evil), "--out", str(tmp_path / "q.csv")])
    assert result.exit_code == 1
    assert str(evil) in one_error_line(result.output)
    assert not marker.exists() and not (tmp_path / "q.csv").exists()


def test_tapvid_video_with_no_frames_is_one_line(tmp_path):
    path = tmp_path / "empty_video.pkl"
    entry = _tapvid_entry()
    entry["video"] = []
    path.write_bytes(pickle.dumps({"bear": entry}))
    result = runner.invoke(app, ["eval", "tapvid-queries", str(path), "--out", str(tmp_path / "q.csv")])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert str(path) in line and "'bear'" in line and "no frames" in line


def test_random_bytes_are_not_a_pickle(tmp_path):
    path = tmp_path / "noise.pkl"
    path.write_bytes(np.random.default_rng(1).bytes(256))
    with pytest.raises(ValueError, match="not a readable pickle") as info:
        load_tapvid(path)
    assert str(path) in str(info.value)


# ---- checkpoints -------------------------------------------------------------------------------

EXTRACT = ["--backbone", TINY_VIT, "--device", "cpu", "--batch-size", "4"]
TRAIN = ["--backbone", TINY_VIT, "--weights", "random", "--size", "64", "--batch-size", "4",
         "--frames-per-video", "4", "--held-out", "2", "--epochs", "1", "--device", "cpu", "--workers", "1"]


def _checkpoint_paths(tmp_path, video_dir, ckpt):
    """Each path a checkpoint enters by: (name, CLI args)."""
    store, out = str(tmp_path / "s.zarr"), str(tmp_path / "out.pt")
    video = str(video_dir / "clip_b.mp4")
    return {
        "--lift": ["extract", video, store, *EXTRACT, "--weights", "random", "--lift", str(ckpt)],
        "--weights": ["extract", video, store, *EXTRACT, "--weights", str(ckpt)],
        "--uplift": ["extract", video, store, *EXTRACT, "--weights", "random", "--uplift", str(ckpt)],
        "--init": ["train", video, out, *TRAIN, "--init", str(ckpt)],
        "--resume": ["train", video, str(ckpt), *TRAIN, "--resume"],
    }


def _malicious(tmp_path, marker):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"outc.weight": torch.zeros(1)}, "liftvid": RunsCode(marker)}, path)
    return path


@pytest.mark.parametrize("option", ["--lift", "--weights", "--uplift", "--init", "--resume"])
def test_malicious_checkpoint_is_refused_on_every_path(tmp_path, video_dir, option):
    marker = tmp_path / "MARKER"
    ckpt = _malicious(tmp_path, marker)
    result = runner.invoke(app, _checkpoint_paths(tmp_path, video_dir, ckpt)[option])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert str(ckpt) in line and "refused" in line and "system" in line
    assert "weights_only" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("kind", ["empty", "random"])
@pytest.mark.parametrize("option", ["--lift", "--weights", "--uplift", "--init", "--resume"])
def test_empty_or_random_checkpoint_is_not_a_checkpoint(tmp_path, video_dir, option, kind):
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(b"" if kind == "empty" else np.random.default_rng(2).bytes(1000))
    result = runner.invoke(app, _checkpoint_paths(tmp_path, video_dir, ckpt)[option])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith(f"error: {ckpt}: not a ")
    assert ("empty" in line[len(str(ckpt)):]) == (kind == "empty")
    assert "weights_only" not in result.output and "Traceback" not in result.output
