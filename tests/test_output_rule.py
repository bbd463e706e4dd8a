"""Issue 20, section 1: a command writes only to new paths, to what it can prove liftvid wrote (of
the same kind), or to what the user named with --overwrite; never onto one of its inputs, compared
after resolving symlinks and relative paths. One test (at least) per command that writes."""

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import liftvid.io.store as st
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.io.masks import write_mask
from liftvid.io.outputs import COMPLETE_MARKER, OutputError, claim_output, record_path
from tests.conftest import TINY_VIT
from tests.helpers import make_oracle_store, oracle_features, one_oracle_video_store, refused, write_queries

runner = CliRunner()


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes: to show it survived byte for byte."""
    path = Path(path)
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def with_source(store: Path, vid: str, source: Path) -> None:
    """Point a video's recorded source at ``source`` (a synthetic stand-in for the real one)."""
    root = st.open_root(store, mode="a")
    info = st.read_video_info(root, vid)
    st.write_video_info(root[vid], dataclasses.replace(info, source=str(source)))


def recorded_video(store: Path, folder: Path) -> Path:
    """A 6-frame 64×64 ``folder/a.mp4``, recorded as the source of the store's video ``a``."""
    source = folder / "a.mp4"
    write_video(source, synthetic_frames(6, 64, 64, seed=2))
    with_source(store, "a", source)
    return source


@pytest.fixture
def prop(tmp_path):
    store, masks = tmp_path / "s.zarr", tmp_path / "first"
    gt = one_oracle_video_store(store, 5, masks)
    source = tmp_path / "videos" / "a.mp4"
    write_video(source, synthetic_frames(5, *gt.shape[1:], seed=1), fps=12)
    with_source(store, "a", source)
    return store, masks, source


def run_propagate(store, masks, out, *extra):
    return runner.invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(out),
                               "--scheduler", "sync", "--device", "cpu", *extra])


# ---- the helper ---------------------------------------------------------------------------------


def test_claim_output_is_the_one_rule(tmp_path):
    user = tmp_path / "notes.csv"
    user.write_text("mine\n")
    with pytest.raises(OutputError, match="liftvid did not write it.*--overwrite"):
        claim_output(user, "tracks csv")
    assert claim_output(user, "tracks csv", overwrite=True) == user
    # a file liftvid recorded, unchanged: replaceable; of another kind or edited since: not
    from liftvid.io.outputs import write_text_whole

    own = write_text_whole(tmp_path / "own.csv", "a,b\n", kind="tracks csv")
    assert claim_output(own, "tracks csv") == own
    with pytest.raises(OutputError, match="as tracks csv, not viz picture"):
        claim_output(own, "viz picture")
    own.write_text("a,b\nedited by hand\n")
    with pytest.raises(OutputError, match="changed since liftvid wrote it"):
        claim_output(own, "tracks csv")
    # never an input, even with --overwrite; through a symlink or a relative path alike
    link = tmp_path / "link.csv"
    link.symlink_to(user)
    for out in (user, link, Path(os.path.relpath(user))):
        with pytest.raises(OutputError, match="the queries file"):
            claim_output(out, "tracks csv", {"queries file": user}, overwrite=True)
    assert user.read_text() == "mine\n"


# ---- propagate ----------------------------------------------------------------------------------


def test_propagate_keeps_a_users_folder_named_like_a_video_and_overwrite_replaces_it(prop, tmp_path):
    store, masks, _ = prop
    out = tmp_path / "home"
    (out / "a").mkdir(parents=True)
    (out / "a" / "notes.txt").write_text("my notes\n")
    before = snapshot(out)
    result = run_propagate(store, masks, out)
    refused(result, out / "a", "liftvid did not write it", "--overwrite")
    assert snapshot(out) == before
    result = run_propagate(store, masks, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "a").iterdir()) == [COMPLETE_MARKER, *(f"{t:05d}.png" for t in range(5))]


def test_propagate_replaces_its_own_results_on_a_rerun_but_not_a_forged_record(prop, tmp_path):
    store, masks, _ = prop
    out = tmp_path / "res"
    assert run_propagate(store, masks, out).exit_code == 0
    first = snapshot(out / "a")
    assert run_propagate(store, masks, out).exit_code == 0  # its own folder: replaced, no --overwrite
    assert snapshot(out / "a").keys() == first.keys()
    # results of an earlier liftvid, whose record did not yet name its maker and kind, are its own too
    (out / "a" / COMPLETE_MARKER).write_text('{"video_id": "a", "store": "s", "mask": "m", "start_frame": 0, '
                                             '"frames": 5}')
    assert run_propagate(store, masks, out).exit_code == 0
    # a record of another kind (say, frames written by eval tapvid-queries) is no proof
    (out / "a" / COMPLETE_MARKER).write_text('{"made_by": "liftvid", "kind": "tapvid frames"}')
    kept = snapshot(out / "a")
    refused(run_propagate(store, masks, out), out / "a", "tapvid frames")
    assert snapshot(out / "a") == kept


def test_propagate_never_writes_over_the_store_or_the_source_frames(prop, tmp_path):
    store, masks, _ = prop
    # a store named like a video, beside --out: --out holds the store
    named = tmp_path / "beside" / "a"
    one_oracle_video_store(named, 5)
    before = snapshot(named)
    for extra in ((), ("--overwrite",)):
        refused(run_propagate(named, masks, tmp_path / "beside", *extra), "holds the store", "choose another --out")
    assert snapshot(named) == before
    # DAVIS: --out the parent of the source frame folders (JPEGImages/480p)
    frames = tmp_path / "DAVIS" / "JPEGImages" / "480p"
    (frames / "a").mkdir(parents=True)
    for i in range(5):
        (frames / "a" / f"{i:05d}.jpg").write_bytes(b"jpeg %d" % i)
    with_source(store, "a", frames / "a")
    before = snapshot(frames)
    for extra in ((), ("--overwrite",)):
        refused(run_propagate(store, masks, frames, *extra), frames, "holds the source of video a")
    assert snapshot(frames) == before


def test_propagate_overlay_into_the_folder_of_the_source_videos_is_refused(prop, tmp_path):
    store, masks, source = prop
    before = snapshot(source.parent)
    refused(run_propagate(store, masks, source.parent, "--overlay", "--overwrite"), "holds the source of video a")
    assert snapshot(source.parent) == before
    # the overlay itself onto a user's file of that name
    out = tmp_path / "res"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"my own movie")
    refused(run_propagate(store, masks, out, "--overlay"), out / "a.mp4", "--overwrite")
    assert (out / "a.mp4").read_bytes() == b"my own movie" and not (out / "a").exists()
    result = run_propagate(store, masks, out, "--overlay", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "a.mp4").read_bytes()[4:8] == b"ftyp" and record_path(out / "a.mp4").is_file()


def test_propagate_out_through_a_symlink_or_a_relative_path(prop, tmp_path, monkeypatch):
    store, masks, _ = prop
    before = snapshot(masks)
    link = tmp_path / "link"
    link.symlink_to(masks)
    refused(run_propagate(store, masks, link), "is the masks", "resolved")
    monkeypatch.chdir(masks)
    refused(run_propagate(store, masks, Path("..") / "first"), "is the masks")
    refused(run_propagate(store, masks, Path("..")), "holds the masks")
    assert snapshot(masks) == before


# ---- track --------------------------------------------------------------------------------------


@pytest.fixture
def trk(tmp_path):
    store = make_oracle_store(tmp_path / "t.zarr", {"a": {"features": oracle_features(6, channels=32, seed=0)}})
    queries = write_queries(tmp_path / "q.csv", [("a", 0, 30.0, 25.0)])
    return store, queries


def run_track(store, queries, out, *extra):
    return runner.invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(out),
                               "--scheduler", "sync", *extra])


def test_track_out_onto_a_source_video_is_refused_even_with_overwrite(trk, tmp_path):
    store, queries = trk
    source = recorded_video(store, tmp_path)
    before = source.read_bytes()
    refused(run_track(store, queries, source, "--overwrite"), source, "is the source of video a")
    assert source.read_bytes() == before


def test_track_keeps_a_users_csv_replaces_its_own_and_overwrite_replaces_any(trk, tmp_path, monkeypatch):
    store, queries = trk
    out = tmp_path / "tracks.csv"
    out.write_text("my,own,table\n")
    refused(run_track(store, queries, out), out, "liftvid did not write it", "--overwrite")
    assert out.read_text() == "my,own,table\n"
    assert run_track(store, queries, out, "--overwrite").exit_code == 0
    assert out.read_text().startswith("video_id,query,t,")
    assert run_track(store, queries, out).exit_code == 0  # its own CSV, unchanged since: replaced
    # the queries through a symlink or a relative path are still the queries
    link = tmp_path / "tracks_link.csv"
    link.symlink_to(queries)
    monkeypatch.chdir(tmp_path)
    for target in (link, Path("q.csv"), Path("sub") / ".." / "q.csv"):
        refused(run_track(store, queries, target, "--overwrite"), "is the queries file")
    assert queries.read_text().startswith("video_id,t,x,y")


def test_track_overlay_onto_a_users_file_is_refused_before_any_work(trk, tmp_path):
    store, queries = trk
    recorded_video(store, tmp_path)
    (tmp_path / "tr_a.mp4").write_bytes(b"mine")
    refused(run_track(store, queries, tmp_path / "tr.csv", "--overlay"), tmp_path / "tr_a.mp4", "--overwrite")
    assert (tmp_path / "tr_a.mp4").read_bytes() == b"mine" and not (tmp_path / "tr.csv").exists()


# ---- eval ---------------------------------------------------------------------------------------


def tapvid_pickle(path: Path) -> Path:
    occ = np.zeros((2, 4), bool)
    pts = np.full((2, 4, 2), 0.5, np.float32)
    path.write_bytes(pickle.dumps({"clip": {"video": np.zeros((4, 16, 16, 3), np.uint8), "points": pts,
                                            "occluded": occ}}))
    return path


def test_eval_tapvid_queries_never_overwrites_the_pickle_nor_a_users_frames(tmp_path):
    gt = tapvid_pickle(tmp_path / "gt.pkl")
    before = gt.read_bytes()
    refused(runner.invoke(app, ["eval", "tapvid-queries", str(gt), "--out", str(gt), "--overwrite"]),
            "is the TAP-Vid pickle")
    assert gt.read_bytes() == before
    frames = tmp_path / "frames"
    (frames / "clip").mkdir(parents=True)
    (frames / "clip" / "mine.png").write_bytes(b"not liftvid's")
    args = ["eval", "tapvid-queries", str(gt), "--out", str(tmp_path / "q.csv"), "--frames", str(frames)]
    refused(runner.invoke(app, args), frames / "clip", "--overwrite")
    assert snapshot(frames) == {"clip/mine.png": b"not liftvid's"} and not (tmp_path / "q.csv").exists()
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert sorted(p.name for p in (frames / "clip").glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    result = runner.invoke(app, args)  # a rerun replaces what it wrote
    assert result.exit_code == 0, result.output


def test_eval_tapvid_json_onto_its_tracks_is_refused(tmp_path):
    gt = tapvid_pickle(tmp_path / "gt.pkl")
    tracks = tmp_path / "tracks.csv"
    tracks.write_text("video_id,query,t,x,y,visible,score\n")
    refused(runner.invoke(app, ["eval", "tapvid", str(tracks), "--gt", str(gt), "--json", str(tracks),
                                "--overwrite"]), "is the tracks CSV")
    assert tracks.read_text() == "video_id,query,t,x,y,visible,score\n"


def test_eval_davis_keeps_a_users_csv_and_never_writes_into_davis(tmp_path):
    davis = tmp_path / "DAVIS"
    for t in range(3):
        write_mask(davis / "Annotations" / "480p" / "seq" / f"{t:05d}.png", np.pad(np.ones((4, 4), np.uint8), 2))
        write_mask(tmp_path / "res" / "seq" / f"{t:05d}.png", np.pad(np.ones((4, 4), np.uint8), 2))
    user_csv = tmp_path / "res" / "global_results-val.csv"
    user_csv.write_text("the official toolkit's numbers\n")
    args = ["eval", "davis", str(tmp_path / "res"), "--davis", str(davis), "--set", "val"]
    refused(runner.invoke(app, args), user_csv, "--overwrite")
    assert user_csv.read_text() == "the official toolkit's numbers\n"
    before = snapshot(davis)
    refused(runner.invoke(app, args + ["--csv-dir", str(davis / "Annotations"), "--overwrite"]), "the DAVIS folder")
    assert snapshot(davis) == before
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # its own CSVs now
    assert user_csv.read_text().startswith("J&F-Mean")


# ---- viz, sample, bench, train, extract, recode -------------------------------------------------


def test_viz_never_writes_over_the_video_and_keeps_a_users_picture(trk, tmp_path):
    store, _ = trk
    source = recorded_video(store, tmp_path)
    before = source.read_bytes()
    viz = ["viz", "pca", str(store), "--video", "a", "--out"]
    refused(runner.invoke(app, viz + [str(source), "--overwrite"]), "is the source of video a")
    assert source.read_bytes() == before
    picture = tmp_path / "pca.png"
    picture.write_bytes(b"my picture")
    refused(runner.invoke(app, viz + [str(picture)]), picture, "--overwrite")
    assert picture.read_bytes() == b"my picture"
    assert runner.invoke(app, viz + [str(picture), "--overwrite"]).exit_code == 0
    assert runner.invoke(app, viz + [str(picture)]).exit_code == 0  # its own now
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_sample_keeps_a_users_file(tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"holiday video")
    args = ["sample", str(out), "--frames", "2", "--height", "16", "--width", "16"]
    refused(runner.invoke(app, args), out, "--overwrite")
    assert out.read_bytes() == b"holiday video"
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # its own sample
    assert out.read_bytes()[4:8] == b"ftyp"


def test_bench_json_onto_an_input_is_refused(tmp_path):
    video = tmp_path / "v.mp4"
    write_video(video, synthetic_frames(2, 16, 16, seed=0))
    before = video.read_bytes()
    refused(runner.invoke(app, ["bench", str(video), "--json", str(video), "--overwrite"]), "is the input 0")
    assert video.read_bytes() == before


def test_train_out_onto_an_input_is_refused_even_with_overwrite(tmp_path):
    video = tmp_path / "v.mp4"
    write_video(video, synthetic_frames(2, 16, 16, seed=0))
    init = tmp_path / "init.pt"
    init.write_bytes(b"a checkpoint")
    before = video.read_bytes()
    for out, label in ((video, "is the input"), (init, "is the --init checkpoint")):
        refused(runner.invoke(app, ["train", str(video), str(out), "--init", str(init), "--overwrite",
                                    "--backbone", TINY_VIT, "--weights", "random"]), label)
    assert video.read_bytes() == before and init.read_bytes() == b"a checkpoint"


def test_extract_and_recode_refuse_an_existing_folder_that_is_not_a_store(video_dir, tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("chapter 1\n")
    args = ["extract", str(video_dir / "clip_a.mp4"), str(folder), "--backbone", TINY_VIT, "--weights", "random",
            "--device", "cpu", "--resize", "short:32", "--max-frames", "2"]
    for extra in ((), ("--overwrite",)):
        refused(runner.invoke(app, args + list(extra)), folder, "not a Zarr store", "thesis.tex")
    assert snapshot(folder) == {"thesis.tex": b"chapter 1\n"}
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine: the store's own creation (extract's) accepts it
    make_oracle_store(empty, {"a": {"features": oracle_features(2, channels=8, seed=0)}})
    refused(runner.invoke(app, ["recode", str(empty), str(folder), "--quantize", "int8"]), folder, "not a Zarr store")
    assert snapshot(folder) == {"thesis.tex": b"chapter 1\n"}
