"""What consolidating a store's metadata costs, at many videos (issue 20, section 7).

    python workflows/bench_consolidate.py                 # 1,000 tiny synthetic videos in a temporary folder
    python workflows/bench_consolidate.py --videos 3000 --keep /tmp/c.zarr

Every writing command ends by copying each node's ``zarr.json`` into the root's (Zarr's
consolidated metadata, :func:`liftvid.io.store.consolidate`, run when the store's lock is released)
so that ``xarray.open_zarr(store, group=video)`` opens without its "failed to open with consolidated
metadata" warning, and drops that copy when it takes the lock (:func:`liftvid.io.store.drop_consolidated`)
so that a killed run leaves none that is out of date. The store is built with the store's own
writer (:func:`liftvid.io.store.begin_video`, ``mark_complete``: tiny 4-frame 2×2×8 float16 videos,
so the time is metadata, not chunks). It prints, best of ``--repeat`` rounds: the seconds to
consolidate and to drop the copy, the root ``zarr.json`` size, liftvid's ``open_root`` +
``list_videos`` and xarray's ``open_zarr(group=…)`` with and without the copy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from liftvid import store as st


def build(path: Path, n_videos: int) -> None:
    bb = {"name": "bench", "timm_name": "random", "weights": "random", "weights_sha256": None, "layer": -1,
          "facet": "key", "patch_size": 16, "channels": 8}
    root = st.init_store(path, st.make_config(bb, None, "square:32", [0.5] * 3, [0.5] * 3, feature_stride=16),
                         overwrite=True)
    info = {"source": "synthetic", "source_kind": "file", "source_size": [32, 32], "frame_size": [32, 32],
            "grid_size": [2, 2], "fps": 25.0, "source_frames": 4, "sampling": {"stride": 1, "max_frames": None}}
    for i in range(n_videos):
        group = st.begin_video(root, f"v{i:05d}", info, 4, (2, 2), 8, np.arange(4), np.arange(4) / 25.0)
        group["features"][:] = np.ones((4, 2, 2, 8), np.float16)
        st.mark_complete(group)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = parser.parse_args()
    import xarray

    folder = None if args.keep else Path(tempfile.mkdtemp(prefix="liftvid-consolidate-"))
    path = args.keep or folder / "s.zarr"
    try:
        t0 = time.perf_counter()
        build(path, args.videos)
        print(f"built {args.videos} videos in {time.perf_counter() - t0:.1f} s")
        liftvid_read = lambda: st.list_videos(st.open_root(path))  # noqa: E731
        def xarray_read():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xarray.open_zarr(path, group="v00000").close()

        plain = (best(liftvid_read, args.repeat), best(xarray_read, args.repeat), (path / "zarr.json").stat().st_size)
        consolidate_s = best(lambda: st.consolidate(path), args.repeat)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xarray.open_zarr(path, group="v00000").close()
        merged = (best(liftvid_read, args.repeat), best(xarray_read, args.repeat), (path / "zarr.json").stat().st_size)
        drops = []
        for _ in range(args.repeat):
            st.consolidate(path)
            t0 = time.perf_counter()
            st.drop_consolidated(path)
            drops.append(time.perf_counter() - t0)
        st.consolidate(path)
        print(f"consolidate: {consolidate_s:.2f} s; drop the copy: {min(drops):.3f} s")
        for label, (read_s, xr_s, size) in (("without the copy", plain), ("consolidated", merged)):
            print(f"{label:>17}: root zarr.json {size / 1e6:.2f} MB; open_root+list_videos {read_s:.2f} s; "
                  f"xarray.open_zarr(group=) {xr_s:.3f} s")
        print(f"xarray warnings once consolidated: {len(caught)} {[str(w.message)[:80] for w in caught]}")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
