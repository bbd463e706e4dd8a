"""The CUDA path against the CPU path (issue 14). Skipped without CUDA; `pytest -m cuda` runs them
on the device machine (workflows/device_check.sh)."""

from __future__ import annotations

import dataclasses
import errno
import os

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from liftvid.io import store as st
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.extract import ExtractOptions, extract_videos

from .conftest import TINY_VIT, random_lift_checkpoint

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

runner = CliRunner()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_clips")
    write_video(d / "a.mp4", synthetic_frames(20, 64, 96, seed=1), fps=24)
    write_video(d / "b.mp4", synthetic_frames(13, 80, 64, seed=2), fps=24)
    return d


@pytest.fixture(scope="module")
def lift_ckpt(tmp_path_factory):
    return str(random_lift_checkpoint(tmp_path_factory.mktemp("lift") / "lift.pt"))


def _options(lift_ckpt, **kw) -> ExtractOptions:
    return ExtractOptions(backbone=TINY_VIT, weights="random", lift=lift_ckpt, resize="square:64",
                          batch_size=8, feature_dtype="float32", **kw)


def _features(store) -> dict[str, np.ndarray]:
    root = st.open_root(store)
    return {vid: root[vid]["features"][:].astype(np.float32) for vid in st.list_videos(root)}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = torch.from_numpy(a).reshape(-1, a.shape[-1]).double()
    b = torch.from_numpy(b).reshape(-1, b.shape[-1]).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory, clips, lift_ckpt):
    store = tmp_path_factory.mktemp("cpu") / "cpu.zarr"
    summary = extract_videos([clips], store, _options(lift_ckpt, device="cpu", precision="fp32"))
    assert [r.status for r in summary.results] == ["complete", "complete"]
    return store


def test_fp32_on_cuda_equals_cpu(tmp_path, clips, lift_ckpt, cpu_store, monkeypatch):
    # TF32 off for this comparison only: the other tests run with PyTorch's defaults, as users do
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    store = tmp_path / "cuda.zarr"
    extract_videos([clips], store, _options(lift_ckpt, device="cuda", precision="fp32"))
    cpu, gpu = _features(cpu_store), _features(store)
    assert cpu.keys() == gpu.keys() == {"a", "b"}
    for vid in cpu:
        np.testing.assert_allclose(gpu[vid], cpu[vid], atol=1e-4, rtol=1e-4)


def test_bf16_on_cuda_is_within_cosine_099_of_cpu_fp32(tmp_path, clips, lift_ckpt, cpu_store):
    store = tmp_path / "bf16.zarr"
    extract_videos([clips], store, _options(lift_ckpt, device="cuda", precision="bf16"))
    cpu, gpu = _features(cpu_store), _features(store)
    for vid in cpu:
        assert _min_cosine(gpu[vid], cpu[vid]) >= 0.99, vid


def test_auto_on_cuda_is_fp32_not_bf16(tmp_path, clips, lift_ckpt, cpu_store):
    stores = {p: tmp_path / f"{p}.zarr" for p in ("auto", "fp32", "bf16")}
    for precision, store in stores.items():
        extract_videos([clips / "a.mp4"], store, _options(lift_ckpt, device="cuda", precision=precision))
    auto, fp32, bf16 = (_features(stores[p])["a"] for p in ("auto", "fp32", "bf16"))
    # the same kernels at the same settings (to float32 rounding: cuDNN may pick an algorithm that
    # sums in another order from one run to the next)
    np.testing.assert_allclose(auto, fp32, rtol=1e-5, atol=1e-5)
    cpu = _features(cpu_store)["a"]
    # with PyTorch's default TF32 settings (TF32 convolutions, fp32 matmuls) fp32 stays closer to
    # the CPU's fp32 than bf16 (every matmul rounded to 8 bits) does
    assert np.abs(auto - cpu).max() * 2 < np.abs(bf16 - cpu).max()


def test_compile_on_cuda_equals_eager(tmp_path, clips, lift_ckpt):
    eager, compiled = tmp_path / "eager.zarr", tmp_path / "compiled.zarr"
    extract_videos([clips / "a.mp4"], eager, _options(lift_ckpt, device="cuda", precision="fp32"))
    extract_videos([clips / "a.mp4"], compiled, _options(lift_ckpt, device="cuda", precision="fp32", compile=True))
    a, b = _features(eager)["a"], _features(compiled)["a"]
    # inductor fuses differently from eager: equal to float32 rounding, not bitwise
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.timeout(120)
def test_failing_writer_on_the_pinned_path_fails_fast(tmp_path, clips, monkeypatch):
    real_setitem = zarr.Array.__setitem__

    def setitem(self, key, value):
        if self.basename == "features":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    store = tmp_path / "full.zarr"
    result = runner.invoke(app, ["extract", str(clips), str(store), "--backbone", TINY_VIT, "--weights", "random",
                                 "--resize", "square:64", "--batch-size", "1", "--device", "cuda"])
    assert result.exit_code == 1
    assert f"error: {store}: disk full" in result.output, result.output
    st.StoreLock(store).acquire().release()


def test_propagate_on_cuda_equals_cpu():
    from liftvid.ops.propagate import propagate_labels

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 14, 14, 32, generator=g)
    labels = torch.zeros(3, 14, 14)
    labels[0, :7], labels[1, 7:, :7], labels[2, 7:, 7:] = 1, 1, 1
    cpu = propagate_labels(feats, labels, device="cpu")
    gpu = propagate_labels(feats, labels, device="cuda").cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    assert torch.equal(gpu.argmax(1), cpu.argmax(1))


def test_track_on_cuda_equals_cpu():
    from liftvid.ops.track import TrackOptions, track_points

    g = torch.Generator().manual_seed(0)
    base = torch.randn(14, 14, 32, generator=g)
    # a translating pattern so matches are unambiguous
    feats = torch.stack([torch.roll(base, shifts=(t // 3, t // 4), dims=(0, 1)) for t in range(10)])
    queries = np.array([[0, x, y] for x in (3.0, 6.0, 9.0) for y in (2.0, 7.0, 11.0)], dtype=np.float32)
    for options in (TrackOptions(), dataclasses.replace(TrackOptions(), chain=True)):
        cpu = track_points(feats, queries, options, device="cpu")
        gpu = track_points(feats, queries, options, device="cuda")
        np.testing.assert_allclose(np.asarray(gpu.positions), np.asarray(cpu.positions), atol=1e-3)
        np.testing.assert_array_equal(np.asarray(gpu.visible), np.asarray(cpu.visible))
        np.testing.assert_allclose(np.asarray(gpu.score), np.asarray(cpu.score), atol=1e-4)
