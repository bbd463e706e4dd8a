"""Issue 15, bounded memory: `track` streams its results per query block × frame chunk into the
store and the CSV, so its memory does not grow with N × T, and the results do not depend on the
blocking."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from liftvid.io import store as st
from liftvid.ops.geometry import grid_to_source, source_to_grid
from liftvid.ops.track import MIN_QUERY_BLOCK, TrackOptions, plan_blocks, track_points
from liftvid.io.store import TRACKS_GROUP
from liftvid.pipelines.track import track_store

from .helpers import make_oracle_store, read_rows, write_queries

T_FRAMES, GRID, CHANNELS = 10, (6, 8), 16
SOURCE = (64, 96)  # make_store's default source size (H, W)
N_QUERIES = 300


def _random_store(path: Path, n_frames: int = T_FRAMES, grid=GRID, channels: int = CHANNELS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # smooth-ish random features: neighbouring frames alike, so some matches pass the cycle check
    base = rng.standard_normal((1, *grid, channels))
    feats = base + 0.3 * rng.standard_normal((n_frames, *grid, channels))
    return make_oracle_store(path, {"v": {"features": feats.astype(np.float16)}})


def _random_queries(path: Path, n: int, n_frames: int = T_FRAMES, seed: int = 1, frames=None) -> Path:
    rng = np.random.default_rng(seed)
    H, W = SOURCE
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)
    rows = [("v", int(rng.choice(frames)), float(x), float(y))
            for x, y in rng.uniform([0.5, 0.5], [W - 0.5, H - 0.5], (n, 2))]
    return write_queries(path, rows)


def _tracks_arrays(store: Path) -> dict[str, np.ndarray]:
    g = st.open_root(store)["v"][TRACKS_GROUP]
    return {name: g[name][...] for name in ("positions", "visible", "score", "queries", "query_index")}


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("trackmem")
    return _random_store(d / "s.zarr"), _random_queries(d / "q.csv", N_QUERIES)


def _small_budget(chain: bool = False) -> TrackOptions:
    """A budget that cuts the 300 queries × 10 frames into several blocks and frame chunks (as
    track_store plans them: 2 workers, chunks of 8 frames)."""
    options = TrackOptions(chain=chain, max_chunk_bytes=256 << 10)
    plan = plan_blocks(np.zeros(N_QUERIES), T_FRAMES, GRID, CHANNELS, options, "cpu", 2, 8)
    assert len(plan.blocks) > 1 and (chain or len(plan.spans) > 1), plan
    return options


@pytest.mark.parametrize("chain", [False, True], ids=["independent", "chain"])
def test_blocked_results_equal_unblocked(random_store, tmp_path, chain):
    store, queries = random_store
    one = TrackOptions(chain=chain)  # 512 MB: one block, one chunk
    plan = plan_blocks(np.zeros(N_QUERIES), T_FRAMES, GRID, CHANNELS, one, "cpu", 1)
    assert plan.blocks == [(0, N_QUERIES)] and plan.spans == [(0, T_FRAMES)]
    track_store(store, queries, tmp_path / "one.csv", options=one, scheduler="sync")
    whole = _tracks_arrays(store)
    track_store(store, queries, tmp_path / "blocks.csv", options=_small_budget(chain), scheduler="threads",
                workers=2)
    blocked = _tracks_arrays(store)
    for name in whole:  # bit for bit
        np.testing.assert_array_equal(blocked[name], whole[name], err_msg=name)
    assert (tmp_path / "blocks.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    # and both are the in-memory kernel's results over all the queries at once, in source pixels
    feats = st.open_root(store)["v"]["features"][...]
    grid_q = np.column_stack([whole["queries"][:, 0], source_to_grid(whole["queries"][:, 1:], GRID, SOURCE)])
    grid_q[:, 1:] = np.clip(grid_q[:, 1:], -0.5, np.array([GRID[1], GRID[0]]) - 0.5)
    ref = track_points(feats, grid_q, one, "cpu")
    np.testing.assert_array_equal(whole["positions"], grid_to_source(ref.positions, GRID, SOURCE).astype(np.float32))
    np.testing.assert_array_equal(whole["visible"], ref.visible)
    np.testing.assert_array_equal(whole["score"], ref.score)
    assert 0 < whole["visible"].mean() < 1  # a test of something: some matches pass, some fail
    rows = read_rows(tmp_path / "one.csv")
    assert len(rows) == N_QUERIES * T_FRAMES
    assert [(int(r["query"]), int(r["t"])) for r in rows[:T_FRAMES + 1]] == [(0, t) for t in range(T_FRAMES)] + [(1, 0)]


def test_many_local_workers_run_fewer_tasks_rather_than_tiny_blocks():
    """28×28×384 features, 13,700 queries spread over 73 frames, the 512 MB budget: shared by 8
    workers, blocks would fall to the minimum (every block re-reads the video); the pipeline runs
    fewer tasks at once so that a block keeps GOOD_QUERY_BLOCK queries, and leaves 2 workers alone."""
    from types import SimpleNamespace

    from liftvid.pipelines import track as tr

    T, n = 73, 13_700
    frames = np.arange(n) % T
    job = tr._VideoJob("v", [None] * n, np.column_stack([frames, np.zeros(n), np.zeros(n)]).astype(np.float64),
                       T, (28, 28), (448, 448), np.arange(T))
    root = {"v": {"features": SimpleNamespace(shape=(T, 28, 28, 384), chunks=(4, 28, 28, 384))}}
    options = TrackOptions()
    assert tr._plan_video(job, root["v"]["features"], options, "cpu", 8).queries_per_block < tr.GOOD_QUERY_BLOCK
    fitted = tr._fit_concurrency(root, [job], options, "cpu", 8)
    assert 1 <= fitted < 8
    assert tr._plan_video(job, root["v"]["features"], options, "cpu", fitted).queries_per_block >= tr.GOOD_QUERY_BLOCK
    assert tr._plan_video(job, root["v"]["features"], options, "cpu", fitted).estimate_bytes * fitted <= options.max_chunk_bytes
    small = replace(job, rows=[None] * 100, grid_queries=job.grid_queries[:100])
    assert tr._fit_concurrency(root, [small], options, "cpu", 2) == 2


def test_plan_blocks_fits_the_budget_whatever_n_and_t():
    rng = np.random.default_rng(0)
    options = TrackOptions(max_chunk_bytes=64 << 20)
    sizes = set()
    for n, T in ((10, 5), (10_000, 50), (1_000_000, 50), (20_000, 5_000)):
        plan = plan_blocks(rng.integers(0, T, n), T, (28, 28), 384, options, "cpu", concurrency=2)
        assert plan.estimate_bytes <= (64 << 20) // 2, (n, T, plan)
        sizes.add(plan.queries_per_block * plan.frames_per_chunk)
        assert [b - a for a, b in plan.blocks][:-1] == [plan.queries_per_block] * (len(plan.blocks) - 1)
    assert plan_blocks(np.zeros(5), 3, (28, 28), 384, replace(options, max_chunk_bytes=1), "cpu").queries_per_block == 5
    assert plan_blocks(np.zeros(500), 3, (28, 28), 384, replace(options, max_chunk_bytes=1), "cpu"
                       ).queries_per_block == MIN_QUERY_BLOCK  # a budget below one piece is exceeded, not refused


_RSS_RUN = r"""
import resource, sys
import liftvid.cli  # the imports, torch's and zarr's included, are the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    liftvid.cli.app(sys.argv[1:], prog_name="liftvid")
except SystemExit as exc:
    assert not exc.code, exc.code
print("RSS", base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _rss_growth_kb(args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _RSS_RUN, *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    line = [s for s in res.stdout.splitlines() if s.startswith("RSS ")][-1]
    base, peak = map(int, line.split()[1:])
    return peak - base


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_queries_times_frames(tmp_path):
    """6,000 queries × 250 frames: held whole, the results alone are 20 MB (13 bytes a point-frame;
    the old path held several copies). Streamed with a 4 MB budget, the run's peak grows by much
    less than that over a run of 100 queries (what is left grows with N, the queries themselves,
    not with N × T). Queries on 3 frames: a faster test, the same memory."""
    T = 250
    store = _random_store(tmp_path / "s.zarr", n_frames=T, grid=(4, 4), channels=8)
    growth = {}
    for n in (100, 6_000):
        queries = _random_queries(tmp_path / f"q{n}.csv", n, n_frames=T, frames=[0, T // 2, T - 1])
        growth[n] = _rss_growth_kb(["track", str(store), "--queries", str(queries), "--out", str(tmp_path / "t.csv"),
                                    "--device", "cpu", "--scheduler", "sync", "--memory-mb", "4"]) * 1024
    held = 6_000 * T * (2 * 4 + 1 + 4)
    extra = growth[6_000] - growth[100]
    assert extra < held / 2, f"grew {extra / 2**20:.1f} MB more for {held / 2**20:.1f} MB of results"
    assert sum(1 for _ in (tmp_path / "t.csv").open()) == 6_000 * T + 1


_HELD_TRACK = r"""
import pathlib, sys, time
import liftvid.cli, liftvid.pipelines.track as tr
marker, where, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = [0]

def hold(real):
    def held(*args, **kwargs):
        seen[0] += 1
        if seen[0] == n:
            marker.write_text("held")
            time.sleep(600)  # until the test kills this run
        return real(*args, **kwargs)
    return held

if where == "blocks":
    tr._write_part = hold(tr._write_part)
else:  # the CSV: after some of its rows are written
    real_stream = tr._stream_csv_results
    def stream(*args, **kwargs):
        for i, item in enumerate(real_stream(*args, **kwargs)):
            if i == n:
                marker.write_text("held")
                time.sleep(600)
            yield item
    tr._stream_csv_results = stream
liftvid.cli.app(sys.argv[4:], prog_name="liftvid")
"""


@pytest.mark.parametrize("where", ["blocks", "csv"])
def test_kill_midway_keeps_previous_tracks_and_csv(tmp_path, where):
    store = _random_store(tmp_path / "s.zarr")
    first = _random_queries(tmp_path / "q1.csv", 100, seed=3)
    second = _random_queries(tmp_path / "q2.csv", 400, seed=4)
    out = tmp_path / "t.csv"
    track_store(store, first, out, scheduler="sync")
    before_csv, before = out.read_bytes(), _tracks_arrays(store)
    marker = tmp_path / "held"
    args = ["track", str(store), "--queries", str(second), "--out", str(out), "--device", "cpu",
            "--scheduler", "sync", "--memory-mb", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    hold_at = {"blocks": "3", "csv": "0"}[where]  # the 3rd block written; the CSV's header written
    proc = subprocess.Popen([sys.executable, "-c", _HELD_TRACK, str(marker), where, hold_at, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if where == "csv":  # killed while writing the new CSV, beside the old one
        assert (tmp_path / ".t.partial.csv").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert out.read_bytes() == before_csv  # the previous CSV, whole
    after = _tracks_arrays(store)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert st.open_root(store)["v"][TRACKS_GROUP].attrs[st.ATTRS_KEY]["status"] == st.COMPLETE
    # a rerun replaces both (and clears what the killed run left)
    summary = track_store(store, second, out, options=TrackOptions(max_chunk_bytes=1 << 20), scheduler="sync")
    assert summary.queries == {"v": 400}
    assert len(read_rows(out)) == 400 * T_FRAMES and _tracks_arrays(store)["visible"].shape == (400, T_FRAMES)
    assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]


def test_no_write_store_streams_through_a_scratch_folder(random_store, tmp_path):
    store, queries = random_store
    out = tmp_path / "t.csv"
    track_store(store, queries, tmp_path / "ref.csv", scheduler="sync")
    track_store(store, queries, out, options=_small_budget(), scheduler="sync", write_store=False)
    assert out.read_bytes() == (tmp_path / "ref.csv").read_bytes()
    # the scratch folder is gone (the .<name>.liftvid records say liftvid wrote the CSVs)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".liftvid")) == ["ref.csv", "t.csv"]
