"""Issue 20, section 7: what a newcomer tripped on, each with the behaviour that fixes it.

(`extract` into an existing folder that is not a store: tests/test_output_rule.py, last test.)
"""

import io
import pickle
import shlex
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import liftvid.io.store as st
from liftvid.cli import app, rate_text
from liftvid.io.masks import write_mask
from tests.conftest import TINY_VIT
from tests.helpers import make_oracle_store, oracle_video

runner = CliRunner()


@pytest.fixture
def two_videos(tmp_path):
    fa, ga = oracle_video(n_frames=5, grid=16, shift=(0, 1), obj=((5, 10), (5, 10)))
    fb, gb = oracle_video(n_frames=4, grid=16, shift=(1, 0), obj=((4, 9), (4, 9)))
    C = max(fa.shape[-1], fb.shape[-1])
    fa, fb = (np.pad(f, ((0, 0),) * 3 + ((0, C - f.shape[-1]),)) for f in (fa, fb))
    store = make_oracle_store(tmp_path / "s.zarr", {"a": {"features": fa, "source_size": ga.shape[1:]},
                                                    "b": {"features": fb, "source_size": gb.shape[1:]}})
    return store, ga


def test_the_printed_redo_line_runs_its_extract(video_dir, tmp_path):
    store = tmp_path / "s.zarr"
    args = ["extract", str(video_dir / "clip_b.mp4"), str(store), "--backbone", TINY_VIT, "--weights", "random",
            "--device", "cpu", "--resize", "square:32", "--max-frames", "2", "--batch-size", "2"]
    assert runner.invoke(app, args).exit_code == 0
    chunk = next(p for p in (store / "clip_b" / "features" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1
    redo = next(line for line in result.output.splitlines() if line.strip().startswith("redo:"))
    commands = redo.split("redo:", 1)[1].strip().split(" && ")
    assert len(commands) == 2 and commands[0].startswith("liftvid verify") and commands[1].startswith("liftvid extract")
    # the shell runs the second only when the first exits 0: run them the same way
    for command in commands:
        words = shlex.split(command)[1:]
        words += ["--device", "cpu"] if words[0] == "extract" else []
        result = runner.invoke(app, words)
        assert result.exit_code == 0, (command, result.output)
    assert "1 extracted" in result.output
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0


def test_propagate_without_video_does_the_videos_that_have_masks_and_lists_the_others(two_videos, tmp_path):
    store, ga = two_videos
    masks = tmp_path / "first"
    write_mask(masks / "a.png", ga[0])
    out = tmp_path / "res"
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(out),
                                 "--scheduler", "sync", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output.replace("0 failed", "")
    assert f"no mask in {masks} for 1 video of the store, not propagated: b" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    # no mask for any video: one line saying so
    empty = tmp_path / "none"
    write_mask(empty / "zzz.png", ga[0])
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(empty), "--out", str(out)])
    assert result.exit_code == 1 and "no mask for any of the 2 complete videos" in result.output


def test_propagate_overlay_without_the_source_still_writes_the_masks(two_videos, tmp_path):
    store, ga = two_videos  # its sources are /nowhere/<id>.mp4
    masks = tmp_path / "first"
    write_mask(masks / "a.png", ga[0])
    out = tmp_path / "res"
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(out), "--video", "a",
                                 "--overlay", "--scheduler", "sync", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "note: a: overlay skipped" in result.output and "/nowhere/a.mp4" in result.output
    assert "the masks are written" in result.output
    assert sorted(p.name for p in (out / "a").glob("*.png")) == [f"{t:05d}.png" for t in range(5)]
    assert not (out / "a.mp4").exists()
    assert st.open_root(store)["a"]["masks"].attrs["liftvid"]["status"] == "complete"


def test_eval_davis_on_strided_results_names_the_stride(tmp_path):
    davis, res = tmp_path / "DAVIS", tmp_path / "res"
    mask = np.pad(np.ones((4, 4), np.uint8), 2)
    for t in range(7):
        write_mask(davis / "Annotations" / "480p" / "seq" / f"{t:05d}.png", mask)
    for t in range(0, 7, 2):  # what propagate writes from a store extracted with --stride 2
        write_mask(res / "seq" / f"{t:05d}.png", mask)
    result = runner.invoke(app, ["eval", "davis", str(res), "--davis", str(davis)])
    assert result.exit_code == 1
    assert "results for one frame in 2 only" in result.output and "--stride 2" in result.output
    assert "00001.png" not in result.output  # not "missing file 00001.png"


def test_a_tapvid_pickle_as_the_readme_documents_it(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for words in ("**The TAP-Vid pickle**", "`points`: `(N, T, 2) float`", "`occluded`: `(N, T) bool`",
                  "list of `T` JPEG/PNG-encoded `bytes`"):
        assert words in readme
    # the list form (named 0, 1, …) with encoded frames, points normalised (x, y)
    H, W = 20, 40
    frames = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(buffer, format="PNG")
        frames.append(buffer.getvalue())
    points = np.array([[[0.25, 0.5], [0.5, 0.5], [0.75, 0.5]]], np.float32)  # one track, 3 frames
    occluded = np.array([[True, False, False]])
    gt = tmp_path / "gt.pkl"
    gt.write_bytes(pickle.dumps([{"video": frames, "points": points, "occluded": occluded}]))
    out = tmp_path / "q.csv"
    result = runner.invoke(app, ["eval", "tapvid-queries", str(gt), "--out", str(out), "--frames", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    # first visible frame is 1, at (0.5 W, 0.5 H) in pixels
    assert out.read_text().splitlines() == ["video_id,t,x,y", "0,1,20.0000,10.0000"]
    assert sorted(p.name for p in (tmp_path / "f" / "0").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]


def test_progress_rates_read_as_rates():
    assert rate_text(66.5, "video") == "66.5 videos/s"
    assert rate_text(0.25, "video") == "4.0 s/video"
    assert rate_text(1234.5, "frame") == "1,234.5 frames/s"
    assert rate_text(None, "frame") == "" and rate_text(0.0, "frame") == ""


def test_xarray_opens_a_video_without_a_warning_and_liftvid_reads_fresh_metadata(two_videos, tmp_path):
    xr = pytest.importorskip("xarray")
    store, ga = two_videos
    write_mask(tmp_path / "a.png", ga[0])
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(tmp_path / "a.png"), "--out",
                                 str(tmp_path / "res"), "--video", "a", "--scheduler", "sync", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xarray's "failed to open with consolidated metadata" included
        ds = xr.open_zarr(store, group="a")
    assert set(ds.data_vars) >= {"features", "masks"} and ds["masks"].dims == ("frame", "height", "width")
    # a writer takes the lock: the copy is dropped at once, so a run killed now leaves none out of date
    with st.StoreLock(store):
        assert "consolidated_metadata" not in (store / "zarr.json").read_text()
        root = st.open_root(store, mode="a")
        root["b"].create_array("extra", shape=(2,), dtype="uint8")
    assert "consolidated_metadata" in (store / "zarr.json").read_text()  # consolidated again on release
    # liftvid's readers read the nodes themselves, never the copy: a node added after it is seen
    st.consolidate(store)
    root = st.open_root(store, mode="a")
    root["b"].create_array("later", shape=(2,), dtype="uint8")
    assert "later" in st.open_root(store)["b"]
    import liftvid

    assert "later" in liftvid.open_store(store)["b"]
