"""Features saved the way the official LiFT/DINO scripts do (float32 frames in a bare Zarr group,
no liftvid record, no checksums): the baseline ``liftvid bench`` times liftvid's writer against."""

from __future__ import annotations

import numpy as np


class PlainFeatures:
    """``writer[i] = features (h, w, C)``: frame ``i`` of ``n_frames`` into the array ``features``
    of a new group at ``path`` (replacing what is there), one frame per chunk, float32; the array is
    made on the first write, when the frames' shape is known."""

    def __init__(self, path: str, n_frames: int):
        import zarr

        self.root = zarr.open_group(path, mode="w")
        self.n_frames = int(n_frames)
        self.array = None

    def __setitem__(self, i: int, frame: np.ndarray) -> None:
        if self.array is None:
            shape = tuple(frame.shape)
            self.array = self.root.create_array("features", shape=(self.n_frames, *shape), chunks=(1, *shape),
                                                dtype="float32")
        self.array[i] = frame
