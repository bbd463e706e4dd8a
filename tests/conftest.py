import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")

from liftvid.io.encode import synthetic_frames, write_video  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# A child that a test stops with SIGINT, as Ctrl-C in a terminal, must start with Python's own
# handler: a process started with SIGINT ignored (the suite run as a background job of a script, or
# under nohup) passes that on to its children, and Python then never raises KeyboardInterrupt.
CTRL_C_AS_IN_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def cli_as_in_a_terminal(*args: str) -> list[str]:
    """The command line of ``python -m liftvid.cli *args`` whose Ctrl-C (SIGINT) acts as in a
    terminal, however the test run itself was started."""
    return [sys.executable, "-c", CTRL_C_AS_IN_A_TERMINAL
            + "import runpy; runpy.run_module('liftvid.cli', run_name='__main__', alter_sys=True)", *args]


# a small timm ViT that builds and runs in milliseconds on a CPU
TINY_VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Two short synthetic mp4 clips of different sizes and lengths."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "clip_a.mp4", synthetic_frames(12, 64, 96, seed=1), fps=24)
    write_video(d / "clip_b.mp4", synthetic_frames(9, 80, 64, seed=2), fps=12)
    return d


@pytest.fixture(scope="session")
def frame_folder(tmp_path_factory) -> Path:
    """A DAVIS-style folder of JPEG frames."""
    from PIL import Image

    d = tmp_path_factory.mktemp("JPEGImages") / "seq1"
    d.mkdir()
    for i, frame in enumerate(synthetic_frames(6, 48, 64, seed=3)):
        Image.fromarray(frame).save(d / f"{i:05d}.jpg", quality=95)
    return d


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module, restored afterwards. CPU float sums depend on
    the thread count (worker processes run OMP_NUM_THREADS=1, so bit-for-bit comparisons need the
    same here), and on a busy 2-core machine two spinning OpenMP threads make tiny models ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


# `liftvid <args>` in a child process that stops, at a point fixed by its progress, until it is
# killed: at its n-th feature-batch write (``write``) or its n-th "complete" status (``complete``,
# before the status is written). It touches ``marker`` when it gets there. Tests that need a run
# caught mid-way wait for the marker instead of polling the store and hoping to be scheduled in
# time on a loaded machine.
_HELD_RUN = r"""
import pathlib, sys, time
import liftvid.cli, liftvid.pipelines.extract.writes as writes, liftvid.io.store as st
marker, kind, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = [0]

def hold(real):
    def held(*args, **kwargs):
        seen[0] += 1
        if seen[0] == n:
            marker.write_text("held")
            time.sleep(600)  # until the test kills this run
        return real(*args, **kwargs)
    return held

if kind == "write":
    writes.write_batch = hold(writes.write_batch)
else:
    st.mark_complete = hold(st.mark_complete)
liftvid.cli.app(sys.argv[4:], prog_name="liftvid")
"""


def start_held_run(args: list[str], marker: Path, kind: str, n: int, **popen):
    """Start ``liftvid <args>`` held at its ``n``-th ``kind`` (``write`` or ``complete``); returns
    the Popen. Wait for it with :func:`wait_until_held`, then kill it."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", _HELD_RUN, str(marker), kind, str(n), *args], **popen)


def wait_until_held(proc, marker: Path, timeout: float = 300) -> None:
    """Block until the held run has reached its point (a generous timeout: the machine may be loaded)."""
    import time

    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before reaching its hold point"
        assert time.monotonic() < deadline, "the run did not reach its hold point"
        time.sleep(0.05)


def random_lift_checkpoint(path: Path) -> Path:
    """A seeded random LiFT for the tiny ViT, with non-trivial BN statistics, saved as liftvid writes it."""
    import torch

    from liftvid.models.backbone import Backbone
    from liftvid.models.lift import LiFT, save_lift_checkpoint

    torch.manual_seed(0)
    bb = Backbone(TINY_VIT, weights="random")
    lift = LiFT(bb.channels, bb.patch_size)
    for module in lift.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return save_lift_checkpoint(path, lift, bb)


def random_state(model, seed: int = 0, scale: float = 0.3) -> dict:
    """Seeded random weights for ``model``'s state dict, with BatchNorm statistics far from identity
    (running variances in [0.5, 1.5)), so checks and round trips see them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            state[k] = v
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * scale
    return state
