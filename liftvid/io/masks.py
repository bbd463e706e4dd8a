"""Object masks on disk: DAVIS indexed-palette PNGs, binary and soft masks, layouts.

A mask in liftvid is an ``(H, W) uint8`` array of object ids, 0 = background. Reading accepts:

- indexed-palette PNGs (DAVIS): pixel values are object ids; 255 is DAVIS's *void* label and
  reads as background, as in the DAVIS-2017 toolkit;
- 16/32-bit integer PNGs: values are object ids (at most 255 objects);
- binary or soft masks (greyscale, RGB without palette colours, 1-bit, float): one object where the
  value is ≥ 128 (≥ 0.5 for floats in [0, 1]). A greyscale image whose maximum is below 128 holds
  small integers, so its values are read as object ids;
- RGB images drawn in the DAVIS palette colours: each colour's palette index is its id.

Layouts of first-frame masks: a DAVIS ``Annotations/480p`` tree (``<seq>/00000.png``; the DAVIS root
itself also works), a folder of ``<video_id>.png``, or one file for one video.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..ops.propagate import resize_nearest
from ..errors import LiftvidError

MAX_OBJECTS = 255  # uint8 ids and the 256-entry palette
VOID_LABEL = 255  # DAVIS: "void" pixels in indexed annotations, read as background
THRESHOLD = 128  # binary/soft masks: object where value ≥ THRESHOLD (of 255)
BINARY_WHITE = (2**16 - 1, 2**31 - 1, 2**32 - 1)  # white of 16/32-bit images: 0/white is a binary mask
DAVIS_SUBDIR = Path("Annotations") / "480p"

log = logging.getLogger(__name__)


class MaskError(LiftvidError, ValueError):
    """A mask that cannot be used: missing, unreadable, empty or with too many objects."""


def davis_palette() -> np.ndarray:
    """The DAVIS (PASCAL VOC) palette, ``(256, 3) uint8``: id i → colour; 1 = (128, 0, 0)…

    Bit j of the id's three interleaved bit planes becomes bit 7-j of red, green and blue.
    """
    ids = np.arange(256)
    cmap = np.zeros((256, 3), np.int64)
    for j in range(8):
        for ch in range(3):
            cmap[:, ch] |= ((ids >> (3 * j + ch)) & 1) << (7 - j)
    return cmap.astype(np.uint8)


DAVIS_PALETTE = davis_palette()


def _from_palette_colours(rgb: np.ndarray) -> np.ndarray | None:
    """Ids of an RGB image drawn in DAVIS palette colours, or None when it is not."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette_code = (DAVIS_PALETTE[:, 0].astype(np.int64) << 16) | (DAVIS_PALETTE[:, 1].astype(np.int64) << 8) | DAVIS_PALETTE[:, 2]
    colours = np.unique(code)
    if not np.isin(colours, palette_code).all() or np.isin(colours, [0, 0xFFFFFF]).all():
        return None  # other colours, or just black and white: a binary mask
    lookup = {int(c): i for i, c in enumerate(palette_code)}
    out = np.zeros(code.shape, np.uint8)
    for c in colours:
        out[code == c] = lookup[int(c)]
    out[out == VOID_LABEL] = 0
    return out


def _threshold(grey: np.ndarray) -> np.ndarray:
    return (grey >= THRESHOLD).astype(np.uint8)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as object ids.

    Args:
        path: a PNG (or any image PIL reads); see the module docstring for the accepted kinds.
        size: ``(H, W)`` to resize to (nearest neighbour), e.g. the video's frame size.

    Returns:
        ``(H, W) uint8`` object ids, 0 = background.

    Raises:
        MaskError: missing or unreadable file, or ids above 255.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: mask file not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            data = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskError(f"{path}: not a readable image ({exc})") from None
    if mode == "P":
        ids = data.astype(np.uint8).copy()
        ids[ids == VOID_LABEL] = 0
    elif mode.startswith("I"):
        ids = data.astype(np.int64)
        values = np.unique(ids)
        if len(values) == 2 and values[0] == 0 and values[1] in BINARY_WHITE:
            ids = (ids > 0).astype(np.int64)  # a binary 16/32-bit mask (0 and white): one object
        if ids.min() < 0 or ids.max() > MAX_OBJECTS:
            raise MaskError(f"{path}: object ids range {ids.min()}…{ids.max()}, but masks hold at most "
                            f"{MAX_OBJECTS} objects (uint8 ids and the DAVIS palette); split the objects "
                            "over several videos or merge some")
        ids = ids.astype(np.uint8)
    elif mode == "1":
        ids = data.astype(np.uint8)
    elif mode == "F":
        grey = data.astype(np.float64)
        ids = (grey >= (0.5 if grey.max() <= 1.0 else THRESHOLD)).astype(np.uint8)
    elif mode in ("L", "LA", "La"):
        grey = data if data.ndim == 2 else data[..., 0]
        # a soft mask reaches 128 somewhere; a greyscale image of small integers is an id map
        ids = _threshold(grey) if grey.max() >= THRESHOLD else grey.astype(np.uint8)
    else:
        rgb = np.asarray(Image.fromarray(data).convert("RGB")) if mode not in ("RGB",) else data
        ids = _from_palette_colours(rgb)
        if ids is None:
            grey = np.asarray(Image.fromarray(rgb).convert("L"))
            ids = _threshold(grey)
    if size is not None and ids.shape != tuple(size):
        (h, w), (H, W) = ids.shape, size
        if abs(h * W - w * H) > 0.01 * h * W:  # another aspect ratio: the mask is stretched
            log.warning("%s: mask is %d×%d, the video %d×%d (another aspect ratio); stretched to it (nearest)",
                        path, h, w, H, W)
        ids = resize_nearest(ids, tuple(size))
    return np.ascontiguousarray(ids)


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write ``(H, W) uint8`` object ids as a DAVIS-palette indexed PNG."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"masks to write must be (H, W) uint8 object ids, got {mask.shape} {mask.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask)  # "L"; the palette makes it "P"
    image.putpalette(DAVIS_PALETTE.ravel().tolist())
    image.save(path, format="PNG")
    return path


def frame_name(frame_number: int) -> str:
    """DAVIS file name of a frame: ``00012.png``."""
    return f"{int(frame_number):05d}.png"


def _annotation_root(source: Path) -> Path:
    """A DAVIS root (with ``Annotations/480p``) stands for its annotation tree."""
    return source / DAVIS_SUBDIR if (source / DAVIS_SUBDIR).is_dir() else source


def find_mask(source: str | Path, video_id: str, frame_number: int = 0, n_videos: int = 1) -> Path:
    """The mask file for frame ``frame_number`` of ``video_id`` in ``source``.

    Args:
        source: a DAVIS annotation tree (``<seq>/00000.png``), a folder of ``<video_id>.png``,
            or one file (used for the video whose id is its stem, or for the only video).
        frame_number: source frame number of the annotated frame (DAVIS tree only; the other
            layouts hold the mask of whichever frame propagation starts from).
        n_videos: videos being processed (one file serves any id when there is one video).

    Raises:
        MaskError: no mask for this video, naming where it was looked for.
    """
    from .paths import component_problem

    if unsafe := component_problem(video_id):  # a mask is looked for at <source>/<video_id>/
        raise MaskError(f"{source}: no mask for video {video_id!r}: it cannot name a file or folder ({unsafe})")
    source = Path(source)
    if source.is_file():
        if source.stem == video_id or n_videos == 1:
            return source
        raise MaskError(f"{video_id}: no mask ({source} is the mask of video {source.stem!r})")
    if not source.is_dir():
        raise MaskError(f"{source}: no such mask file or folder")
    root = _annotation_root(source)
    folder = root / video_id
    # an empty <seq>/ folder does not hide <seq>.png
    if folder.is_dir() and (any(folder.glob("*.png")) or not (root / f"{video_id}.png").is_file()):
        path = folder / frame_name(frame_number)
        if path.is_file():
            return path
        raise MaskError(f"{video_id}: no mask {path} for frame {frame_number}")
    path = root / f"{video_id}.png"
    if path.is_file():
        return path
    raise MaskError(f"{video_id}: no mask in {root} (expected {root / video_id / frame_name(frame_number)} "
                    f"or {path})")


def mask_ids(source: str | Path) -> list[str]:
    """Video ids that ``source`` holds masks for (folder names and PNG stems; a file's stem)."""
    source = Path(source)
    if source.is_file():
        return [source.stem]
    if not source.is_dir():
        return []
    root = _annotation_root(source)
    ids = {p.name for p in root.iterdir() if p.is_dir()}
    ids |= {p.stem for p in root.glob("*.png")}
    return sorted(ids)
