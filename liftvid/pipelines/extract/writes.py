"""Writing one video's features: each batch checked finite and written whole chunks at a time on
writer threads, a bounded number in flight, and the video marked complete once all have landed."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import torch

from ...errors import LiftvidError
from ...io import store as st
from ...models.extractor import FeatureExtractor
from ..runs import VideoRun

MAX_PENDING_WRITES = 4  # batches of one video in flight to the writer threads: bounds host memory
FLOAT16_MAX = 65504.0


class FeatureRangeError(LiftvidError, ValueError):
    """A batch of features that is not finite once cast to the stored dtype (float16 saturates at
    ±65504): the video fails with this message, the run goes on."""


def all_finite(feats: torch.Tensor) -> torch.Tensor:
    """Whether every value of ``feats`` (float16/bfloat16/float32, any shape) is finite, as a 0-d
    bool tensor on its device.

    The sum in a wider float is finite exactly when every term is: a NaN or an infinity makes it
    non-finite, and finite terms cannot overflow it (at most 2**31 float16 values below 65504
    summed in float32; float32 and bfloat16 ones, up to 3.4e38, in float64). One reduction, about
    7x less CPU than ``isfinite().all()`` on float16 (0.15 vs 1.0 ms per 28x28x384 frame)."""
    if feats.dtype not in (torch.float16, torch.bfloat16, torch.float32) or feats.numel() >= 2 ** 31:
        return torch.isfinite(feats).all()
    return torch.isfinite(feats.sum(dtype=torch.float32 if feats.dtype == torch.float16 else torch.float64))


def stages_on_host(extractor: FeatureExtractor) -> bool:
    """Whether features are staged through page-locked host buffers (a CUDA extractor).

    The runs call it through this module, so a test can run the staged path on the CPU."""
    return extractor.mean.device.type == "cuda"


def range_error(source, start: int, n: int, dtype: str) -> FeatureRangeError:
    """The error of ``n`` frames from ``start`` of ``source`` whose features are not finite in the
    stored ``dtype``, with the fix where there is one."""
    if dtype == "float16":
        return FeatureRangeError(f"{source}: features of frames {start}–{start + n - 1} exceed float16's range "
                                 f"(±{FLOAT16_MAX:g}); rerun with --feature-dtype float32")
    return FeatureRangeError(f"{source}: the model gave non-finite features for frames {start}–{start + n - 1}")


@dataclass
class VideoInFlight:
    """A video whose features are computed and being written; marked complete when all land."""

    group: object
    result: VideoRun
    futures: list[Future]

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def finish(self) -> VideoRun:
        for f in self.futures:
            f.result()  # re-raises a failed write (a full disk, a lost object store)
        st.mark_complete(self.group)
        return self.result


def write_batch(array, start: int, feats, event=None, finite=None, source: str = "") -> None:
    """Write one batch at ``start``; on the CUDA path wait for its copy (``event``) and check the
    copied ``finite`` flag first. The page-locked buffer goes back to torch's caching host allocator
    when the last reference drops, whether the write succeeds or fails.

    The compute loop submits it through this module (``writes.write_batch``), looked up at each
    batch: the seam tests use to fail, slow or hold a write (also in CLI child processes and on
    Dask workers)."""
    if event is not None:
        event.synchronize()  # the non-blocking device→host copy has landed
    if finite is not None and not bool(finite):
        raise range_error(source, start, len(feats), str(array.dtype))
    array[start:start + len(feats)] = feats.numpy() if isinstance(feats, torch.Tensor) else feats


def wait_for_writes(futures: list[Future], limit: int) -> None:
    """Block until at most ``limit`` of ``futures`` are unfinished; re-raise the first failed one at
    once (a full disk stops the video after its first failed write, not after the queue drains)."""
    while True:
        for f in futures:
            if f.done() and f.exception() is not None:
                raise f.exception()
        pending = [f for f in futures if not f.done()]
        if len(pending) <= limit:
            return
        wait(pending, return_when=FIRST_COMPLETED)
