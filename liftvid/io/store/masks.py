"""A video's propagated masks in the store: ``<video>/masks (T, H, W) uint8``, object ids at the
source size, with the propagation's record and its own completion mark."""

from __future__ import annotations

import numpy as np

from .durability import check_writable
from .nodes import begin_node_record, partial_name, swap_in_complete
from .records import INCOMPLETE

MASKS_ARRAY = "masks"
MASK_DIMS = ("frame", "height", "width")
MASK_CHUNK_BYTES = 4 << 20  # a few MB of masks per chunk, along T


class MasksWriter:
    """Writes one video's masks beside its previous ones (``masks.partial``); :meth:`mark_complete`
    swaps them in and writes the completion mark. Made by :func:`begin_masks`."""

    def __init__(self, group, array, record: dict):
        self.group, self.array, self.record = group, array, dict(record)

    def write(self, first: int, masks: np.ndarray) -> None:
        """Store ``masks (n, H, W) uint8`` (object ids) as frames ``first … first + n - 1`` (positions
        into the stored frames).

        Raises:
            StoreError: this writer lost the (object) store's lease: nothing more is written.
        """
        check_writable(self.group)
        self.array[first:first + len(masks)] = masks

    def mark_complete(self) -> None:
        """Swap the written masks in as ``<video>/masks`` (the previous ones go only now) and mark
        them complete, last.

        Raises:
            StoreError: the lease was lost; OSError: the swap failed (the previous masks stay).
        """
        swap_in_complete(self.group, MASKS_ARRAY, self.record)


def begin_masks(root, video_id: str, n_frames: int, size: tuple[int, int], record: dict) -> MasksWriter:
    """Create ``<video_id>/masks.partial (n_frames, H, W) uint8`` (fill 0: background), chunked along T,
    with ``record`` (the propagation's inputs and protocol) and status ``incomplete``.

    Args:
        size: ``(H, W)`` of the source frames.
        record: JSON-serialisable; written as the array's ``attrs["liftvid"]`` with its status.
    """
    group = root[video_id]
    record = {"status": INCOMPLETE, **record}  # the status first, where propagate has always written it
    H, W = size
    t_chunk = max(1, min(n_frames, MASK_CHUNK_BYTES // max(1, H * W)))
    array = group.create_array(partial_name(MASKS_ARRAY), shape=(n_frames, H, W), chunks=(t_chunk, H, W),
                               dtype="uint8", dimension_names=MASK_DIMS, fill_value=0, overwrite=True)
    begin_node_record(array, record)
    return MasksWriter(group, array, record)
