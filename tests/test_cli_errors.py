"""One style for every error line (issue 13): click's own usage errors print as liftvid's do,
``error: <message>`` on stderr (then the usage), not Typer's boxed ``Error``; exit 2 for usage."""

import os
import subprocess
import sys

import pytest


def _liftvid(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "liftvid.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["extract"], "error: missing argument 'inputs'"),
    (["info", "--bogus", "x"], "error: no such option: --bogus"),
    (["track", "s.zarr", "--queries", "q.csv", "--out", "t.csv", "--frame-chunk", "0"],
     "error: invalid value for '--frame-chunk'"),
])
def test_usage_errors_print_one_error_line_on_stderr_and_exit_2(args, message):
    result = _liftvid(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line for line in lines if "rror" in line] == [lines[0]]  # one error line, first, no "Error" box
    assert lines[0].startswith(message), result.stderr
    assert "╭" not in result.stderr
    assert lines[1].startswith("  usage: ") and f"{args[0]} [OPTIONS]" in lines[1] and f"{args[0]} --help" in lines[1]


def test_liftvid_errors_have_the_same_style(tmp_path):
    missing = tmp_path / "no[bold]store"  # brackets reach the terminal as typed
    result = _liftvid("info", str(missing))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {missing}: no liftvid store here (run `liftvid extract … {missing}` first)"]


def test_bare_command_prints_its_help_and_no_error():
    result = _liftvid()
    assert result.returncode == 2 and "Usage" in result.stdout and "extract" in result.stdout
    assert "error" not in result.stderr.lower()


def test_names_with_brackets_and_counts_of_one_print_as_they_are(tmp_path):
    """Rich markup is not applied to names (a video ``cat[bold]``, a folder ``out[bold]``), and a count
    of one is singular ("1 video of … is not in …", not "1 video(s) … are")."""
    import pickle

    import numpy as np
    from typer.testing import CliRunner

    from liftvid.cli import app

    gt = tmp_path / "tapvid.pkl"
    gt.write_bytes(pickle.dumps({"cat[bold]": {"video": np.zeros((4, 32, 64, 3), np.uint8),
                                            "points": np.full((1, 4, 2), 0.5, np.float32),
                                            "occluded": np.zeros((1, 4), bool)}}))
    folder = tmp_path / "out[bold]"
    folder.mkdir()
    tracks = folder / "tracks.csv"
    rows = [f"{vid},0,{t},32,16,1,1" for vid in ('"cat[bold]"', "zzz") for t in range(4)]
    tracks.write_text("video_id,query,t,x,y,visible,score\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["eval", "tapvid", str(tracks), "--gt", str(gt)])
    assert result.exit_code == 0, result.output
    table_rows = [line.replace("│", " ").split() for line in result.output.splitlines()]
    assert ["cat[bold]", "100.0", "100.0", "100.0"] in table_rows  # the point sits on the truth: AJ 100
    assert f"note: 1 video of {tracks} is not in {gt}: zzz" in result.output
