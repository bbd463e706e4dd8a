import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")

from liftvid.io.encode import synthetic_frames, write_video  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
