"""One meaning for a frame number (issue 13): `track`'s `t` and `propagate --start-frame` both count
source frames from 0 (as DAVIS names `00042.png` frame 42), also when `extract --stride` stores only
some frames. Checked against the store's `frame_index` read with zarr, not through liftvid."""

import csv
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io.tables import read_tracks_csv, stored_position

from .conftest import TINY_VIT, synthetic_frames, write_video

H, W = 64, 96
N_SOURCE = 12
STRIDE = 2
START = 4  # a stored frame: source frames 0, 2, 4, …
CELL = 16  # square:64 → a 4×4 grid; a cell is 16×24 source pixels
QUERY_XY = (1.5 * W / 4, 1.5 * H / 4)  # the centre of cell (1, 1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    write_video(d / "clip.mp4", synthetic_frames(N_SOURCE, H, W, seed=3), fps=24)
    store = d / "s.zarr"
    result = runner.invoke(app, ["extract", str(d / "clip.mp4"), str(store), "--backbone", TINY_VIT,
                                 "--weights", "random", "--device", "cpu", "--resize", "square:64",
                                 "--batch-size", "2", "--stride", str(STRIDE)])
    assert result.exit_code == 0, result.output
    frame_index = zarr.open_group(str(store), mode="r")["clip"]["frame_index"][:]
    np.testing.assert_array_equal(frame_index, np.arange(0, N_SOURCE, STRIDE))  # what --stride 2 stores
    # a DAVIS tree whose annotation names the source frame: Annotations/480p/clip/00004.png
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 24:72] = 255
    ann = d / "DAVIS" / "Annotations" / "480p" / "clip"
    ann.mkdir(parents=True)
    Image.fromarray(mask).save(ann / f"{START:05d}.png")
    return {"dir": d, "store": store, "frame_index": frame_index, "mask": mask > 127, "davis": d / "DAVIS"}


def _queries(path: Path, t: int) -> Path:
    path.write_text(f"video_id,t,x,y\nclip,{t},{QUERY_XY[0]},{QUERY_XY[1]}\n")
    return path


def test_start_frame_and_t_name_the_same_source_frame(strided, tmp_path):
    store, frame_index = strided["store"], strided["frame_index"]
    position = int(np.flatnonzero(frame_index == START)[0])  # 2: the third stored frame

    # propagate from source frame 4: the annotated frame is written as given under its source number
    out = tmp_path / "results"
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(strided["davis"]), "--out", str(out),
                                 "--start-frame", str(START), "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "clip").glob("*.png"))
    assert names == [f"{n:05d}.png" for n in frame_index if n >= START]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "clip" / f"{START:05d}.png")) > 0, strided["mask"])
    masks = zarr.open_group(str(store), mode="r")["clip"]["masks"][:]
    np.testing.assert_array_equal(masks[position] > 0, strided["mask"])  # the same stored frame
    assert not masks[:position].any()

    # a track query at t=4: its template comes from that same stored frame, where it matches itself
    tracks = tmp_path / "tracks.csv"
    result = runner.invoke(app, ["track", str(store), "--queries", str(_queries(tmp_path / "q.csv", START)),
                                 "--out", str(tracks), "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    with tracks.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["t"]) for r in rows] == frame_index.tolist()  # t in the output: source numbers too
    scores = np.array([float(r["score"]) for r in rows])
    assert int(rows[int(np.argmax(scores))]["t"]) == START and scores.max() > 0.999
    best = rows[position]
    assert abs(float(best["x"]) - QUERY_XY[0]) < 1 and abs(float(best["y"]) - QUERY_XY[1]) < 1
    group = zarr.open_group(str(store), mode="r")["clip"]["tracks"]
    assert group["queries"][0, 0] == START
    # read back (eval tapvid's reader): the strided source numbers, each row at its stored frame
    pred = read_tracks_csv(tracks)["clip"]
    np.testing.assert_array_equal(pred.frames, frame_index)
    np.testing.assert_allclose(pred.positions[0, :, 0], [float(r["x"]) for r in rows])


def test_a_frame_that_was_not_stored_is_refused_by_both_naming_the_nearest(strided, tmp_path):
    store = strided["store"]
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(strided["davis"]), "--out",
                                 str(tmp_path / "r"), "--start-frame", "5", "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 1
    assert "start frame 5 is not a stored frame" in result.output and "nearest: 4 or 6" in result.output
    result = runner.invoke(app, ["track", str(store), "--queries", str(_queries(tmp_path / "q.csv", 5)),
                                 "--out", str(tmp_path / "t.csv"), "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 1
    assert "frame t=5 is not a stored frame" in result.output and "nearest: 4 or 6" in result.output
    # beyond the last stored frame (10): the range is named
    result = runner.invoke(app, ["track", str(store), "--queries", str(_queries(tmp_path / "q.csv", 11)),
                                 "--out", str(tmp_path / "t.csv"), "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 1 and "outside the stored frames 0…10 every 2 (6 frames)" in result.output


@pytest.mark.parametrize("frame", [0, 3, 4, 10, 11, 22, 23, -1, 2.5])
def test_stored_position_against_a_search(frame):
    frame_index = np.arange(0, 23, 2)  # 0 … 22
    matches = [i for i, n in enumerate(frame_index.tolist()) if n == frame]
    if matches:
        assert stored_position(frame_index, frame, "f") == matches[0]
    else:
        with pytest.raises(ValueError, match=r"^f is"):
            stored_position(frame_index, frame, "f")
