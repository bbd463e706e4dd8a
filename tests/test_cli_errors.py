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
