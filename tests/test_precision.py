"""Precision, honestly (issue 23): fp32 by default on every device, bf16 only when asked, with a
warning where the CPU has no native bf16, and `liftvid bench` timing bf16 beside fp32."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

import liftvid.models.extractor as extractor_module
from liftvid.cli import app
from liftvid.models.backbone import Backbone
from liftvid.models.extractor import FeatureExtractor, precision_warning, resolve_precision
from liftvid.ops import device as device_module
from liftvid.ops.device import CpuBf16Support, cpu_bf16_support

from .conftest import TINY_VIT

runner = CliRunner()
NO_BF16 = CpuBf16Support(native=False, capability="AVX2", flags=(), source="/proc/cpuinfo")
HAS_BF16 = CpuBf16Support(native=True, capability="AVX512", flags=("avx512_bf16", "amx_bf16"),
                          source="/proc/cpuinfo")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_auto_resolves_to_fp32_on_every_device(device):
    # torch.device("cuda") needs no GPU: the rule is decided before anything runs there
    assert resolve_precision("auto", torch.device(device)) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, torch.device(device)) == explicit
    with pytest.raises(ValueError, match="--precision fp8: use one of auto, bf16, fp16, fp32"):
        resolve_precision("fp8", torch.device(device))


def test_default_extractor_computes_in_plain_fp32_on_cpu(one_torch_thread):
    backbone = Backbone(TINY_VIT, weights="random", seed=0)
    extractor = FeatureExtractor(backbone, feature_dtype="float32").eval()
    assert extractor.precision == "auto"
    frames = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # independently: ToTensor + Normalize by hand, the backbone outside any autocast
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = backbone((frames.permute(0, 3, 1, 2).float() / 255 - mean) / std).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(extractor(frames).numpy(), expected.numpy())
    extractor.precision = "bf16"  # the explicit option really changes the arithmetic
    assert not torch.equal(extractor(frames), expected)


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpuinfo_flags_are_read_for_x86_and_arm(tmp_path):
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    assert {"avx2", "avx512f"} <= device_module.proc_cpuinfo_flags(_cpuinfo(tmp_path, x86))
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    assert "bf16" in device_module.proc_cpuinfo_flags(_cpuinfo(tmp_path, arm))
    assert device_module.proc_cpuinfo_flags(tmp_path / "absent") is None


def test_cpu_bf16_support_falls_back_to_proc_cpuinfo():
    text = {"no": "flags\t\t: fpu avx2 avx512f\n", "yes": "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"}

    def sources(cpuinfo):  # an older torch (no capabilities), then /proc/cpuinfo saying ``cpuinfo``
        flags = None if cpuinfo is None else frozenset(text[cpuinfo].split(":")[1].split())
        return (("torch.cpu.get_capabilities", lambda: None), ("/proc/cpuinfo", lambda: flags))

    support = cpu_bf16_support(sources("no"))
    assert (support.native, support.flags, support.source) == (False, (), "/proc/cpuinfo")
    assert "no avx512_bf16/amx_bf16" in support.describe()
    support = cpu_bf16_support(sources("yes"))
    assert support.flags == ("avx512_bf16", "amx_bf16") and support.native
    assert cpu_bf16_support(sources(None)).native is None  # nothing readable: unknown, no guess


def test_cpu_bf16_support_agrees_with_this_machines_proc_cpuinfo():
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(re.findall(r"^(?:flags|Features)\s*:(.*)$", path.read_text(), re.M)[0].split())
    assert cpu_bf16_support().native == bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"})
    assert cpu_bf16_support().capability == torch.backends.cpu.get_cpu_capability()


def test_warning_only_for_bf16_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(extractor_module, "cpu_bf16_support", lambda: NO_BF16)
    warning = precision_warning("bf16", torch.device("cpu"))
    assert "AVX2" in warning and "avx512_bf16" in warning and "slower than fp32" in warning
    assert "--precision fp32" in warning  # the fix
    assert precision_warning("auto", torch.device("cpu")) is None
    assert precision_warning("fp32", torch.device("cpu")) is None
    assert precision_warning("bf16", torch.device("cuda")) is None  # GPUs compute bf16 natively
    monkeypatch.setattr(extractor_module, "cpu_bf16_support", lambda: HAS_BF16)
    assert precision_warning("bf16", torch.device("cpu")) is None


@pytest.mark.parametrize("support, warned", [(NO_BF16, True), (HAS_BF16, False)])
def test_extract_cli_warns_about_bf16_where_the_cpu_lacks_it(tmp_path, video_dir, monkeypatch, support, warned):
    monkeypatch.setattr(extractor_module, "cpu_bf16_support", lambda: support)
    result = runner.invoke(app, ["extract", str(video_dir / "clip_b.mp4"), str(tmp_path / "s.zarr"),
                                 "--backbone", TINY_VIT, "--weights", "random", "--resize", "square:32",
                                 "--device", "cpu", "--precision", "bf16", "--max-frames", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "--precision bf16" in line]
    if warned:
        assert len(lines) == 1 and lines[0].startswith("warning:") and "AVX2" in lines[0], result.output
    else:
        assert lines == [], result.output
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["clip_b"]["features"].shape[0] == 2


def test_bench_prints_bf16_model_speed_beside_fp32(tmp_path, video_dir):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(video_dir / "clip_b.mp4"), "--backbone", TINY_VIT, "--resize", "square:32",
                                 "--batch-size", "3", "--device", "cpu", "--min-frames", "9", "--naive-frames", "2",
                                 "--model-batches", "1", "--no-lift", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["details"]["precision"] == "fp32"  # the default, auto, ran in fp32
    rates = record["model_fps_by_precision"]
    assert set(rates) == {"fp32", "bf16"} and rates["fp32"] == record["model_fps"]
    assert all(rate > 0 for rate in rates.values())
    rows = {label: line for line in result.output.splitlines() for label in ("model only, fp32", "model only, bf16")
            if label in line}
    assert "(b)" in rows["model only, fp32"] and f"{rates['fp32']:,.1f}" in rows["model only, fp32"]
    assert f"{rates['bf16']:,.1f}" in rows["model only, bf16"]
    assert f"model only bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}×" in result.output
