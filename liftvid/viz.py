"""Pictures of features: PCA colouring, similarity heat-maps, mask and track overlays, image writers.

Pure functions on arrays. Feature inputs may be NumPy, Dask or xarray (``(T, h, w, C)``, or
``(h, w, C)`` for one frame); the PCA is fitted over a whole video in one streaming pass, so the colours
of every frame come from one basis and a feature means the same colour throughout the video.
Frames are ``(H, W, 3) uint8`` RGB. Point coordinates are continuous source pixels ``(x, y)``
(0 = the frame's top/left edge), the convention of :mod:`liftvid.ops.geometry`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io.masks import DAVIS_PALETTE
from .io.outputs import written_whole

PCA_SIGMAS = 2.5  # a component's ±2.5 standard deviations span its colour channel's 0…255
MASK_ALPHA = 0.55  # weight of an object's colour over the frame
HEAT_ALPHA = 0.6  # weight of the heat-map over the frame
TRAIL_FRAMES = 12  # track overlays: how many past frames a trail shows
GIF_MAX_COLOURS = 256
PCA_BLOCK_BYTES = 64 << 20  # float64 feature bytes summed at once by fit_pca
GIF_PALETTE_FRAMES = 16  # frames sampled to choose a GIF's palette
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov")


def _data(features: Any):
    """The NumPy or Dask array under an xarray object, or the array itself (NumPy's own ``.data``
    is a buffer, so only xarray objects are unwrapped)."""
    import xarray as xr

    return features.data if isinstance(features, (xr.DataArray, xr.Variable)) else features


def _as_video(features: Any):
    data = _data(features)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"features must be (T, h, w, C) or (h, w, C), got shape {tuple(data.shape)}")
    return data


# ---------------------------------------------------------------- PCA


@dataclass(frozen=True)
class PCAFit:
    """A PCA basis of feature vectors and the scale that maps it to colours.

    ``mean (C,)``, ``components (k, C)`` (unit rows, largest variance first), ``std (k,)`` the
    standard deviation of the features along each component.
    """

    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray

    def transform(self, features: Any) -> np.ndarray:
        """``(…, C)`` features → ``(…, k)`` float32 component scores (computes a Dask input)."""
        x = np.asarray(_data(features), dtype=np.float32)
        return (x - self.mean) @ self.components.T

    def to_rgb(self, features: Any, sigmas: float = PCA_SIGMAS) -> np.ndarray:
        """``(…, C)`` features → ``(…, 3) uint8``: the first three components as red, green, blue."""
        if self.components.shape[0] < 3:
            raise ValueError(f"to_rgb needs 3 components, the fit has {self.components.shape[0]}")
        scores = self.transform(features)[..., :3] / (2 * sigmas * self.std[:3]) + 0.5
        return (np.clip(scores, 0, 1) * 255 + 0.5).astype(np.uint8)


def fit_pca(features: Any, n_components: int = 3, frame_step: int = 1) -> PCAFit:
    """Fit a PCA to every feature vector of a video, in one streaming Dask pass.

    The mean and the ``C × C`` scatter matrix are summed block by block of frames (float64), so
    memory does not grow with the video's length. Written by hand rather than with a PCA library:
    those hold all vectors in memory (scikit-learn) or need them in one array, and the basis must be
    fitted over the whole video in one streaming pass. Signs are fixed (each component's largest-magnitude loading is
    positive), so the same features always give the same colours.

    Args:
        features: ``(T, h, w, C)`` or ``(h, w, C)``; NumPy, Dask or xarray.
        n_components: components kept (3 for RGB).
        frame_step: fit on every n-th frame only (long videos).

    Returns:
        :class:`PCAFit`.
    """
    data = _as_video(features)[::frame_step]
    T, C = data.shape[0], data.shape[-1]
    if not 1 <= n_components <= C:
        raise ValueError(f"n_components {n_components}: must be between 1 and the {C} channels")
    n = T * int(np.prod(data.shape[1:-1]))
    if n < 2:
        raise ValueError("fit_pca needs at least two feature vectors")
    # sums over blocks of frames: a Dask, xarray or Zarr input is read one block at a time
    per_frame = max(1, n // max(T, 1)) * C * 8
    step = max(1, PCA_BLOCK_BYTES // per_frame)
    total, scatter = np.zeros(C), np.zeros((C, C))
    for a in range(0, T, step):
        x = np.asarray(data[a:a + step], dtype=np.float64).reshape(-1, C)
        total += x.sum(axis=0)
        scatter += x.T @ x
    mean = total / n
    cov = (scatter - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:n_components]
    comps = vectors[:, order].T
    rows = np.arange(len(comps))
    comps *= np.sign(comps[rows, np.abs(comps).argmax(axis=1)])[:, None]
    std = np.sqrt(np.maximum(values[order], 0)) + 1e-12
    return PCAFit(mean.astype(np.float32), comps.astype(np.float32), std.astype(np.float32))


def resize_image(image: np.ndarray, size: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """``(h, w, 3)`` or ``(h, w)`` uint8 → ``size (H, W)``; nearest by default, so grid cells stay sharp."""
    from PIL import Image

    H, W = size
    if image.shape[:2] == (H, W):
        return image
    resample = Image.BILINEAR if smooth else Image.NEAREST
    return np.asarray(Image.fromarray(image).resize((W, H), resample))


def frame_positions(n: int, frames: Sequence[int] | slice | None) -> np.ndarray:
    """The stored positions ``(k,) int64`` of ``n`` frames that ``frames`` picks: all (None), a
    slice, or positions."""
    if frames is None:
        return np.arange(n)
    if isinstance(frames, slice):
        return np.arange(n)[frames]
    out = np.asarray(frames, dtype=np.int64).reshape(-1)
    bad = out[(out < -n) | (out >= n)]
    if len(bad):
        raise ValueError(f"frame {int(bad[0])} is outside the video's {n} frames")
    return out % n if n else out


def iter_pca_frames(features: Any, frames: Sequence[int] | slice | None = None,
                    size: tuple[int, int] | None = None, fit: PCAFit | None = None,
                    smooth: bool = False) -> Iterator[np.ndarray]:
    """PCA colour images of a video's frames, one at a time (for writing long videos).

    Args:
        features: ``(T, h, w, C)``; NumPy, Dask or xarray.
        frames: which frames (default all).
        size: output ``(H, W)`` (e.g. the source size); default the grid size.
        fit: a basis from :func:`fit_pca`; default fitted over the whole video here.

    Yields:
        ``(H, W, 3) uint8`` per frame.
    """
    data = _as_video(features)
    fit = fit or fit_pca(data)
    for t in frame_positions(data.shape[0], frames):
        image = fit.to_rgb(data[int(t)])
        yield image if size is None else resize_image(image, size, smooth)


def pca_frames(features: Any, frames: Sequence[int] | slice | None = None,
               size: tuple[int, int] | None = None, fit: PCAFit | None = None,
               smooth: bool = False) -> np.ndarray:
    """:func:`iter_pca_frames` stacked: ``(N, H, W, 3) uint8``."""
    out = list(iter_pca_frames(features, frames, size, fit, smooth))
    if not out:
        h, w = size or _as_video(features).shape[1:3]
        return np.empty((0, h, w, 3), np.uint8)
    return np.stack(out)


# ---------------------------------------------------------------- similarity


def grid_geometry(ds: Any):
    """The :class:`~liftvid.ops.geometry.GridGeometry` of an :func:`~liftvid.open_store` Dataset:
    its stored grid (``y``, ``x`` sizes) on its model input and source frames, as recorded
    (:func:`liftvid.io.store.geometry_from_record`), whatever made the grid."""
    from .io.store import geometry_from_record

    return geometry_from_record(ds.attrs.get("store_config") or {}, ds.attrs, (ds.sizes["y"], ds.sizes["x"]))


def query_feature(ds: Any, x: float, y: float, t: int) -> np.ndarray:
    """The feature at source pixel ``(x, y)`` of frame ``t`` of an :func:`~liftvid.open_store`
    Dataset, bilinear between cell centres: ``(C,) float32``.

    Raises:
        ValueError: the point or the frame lies outside the video.
    """
    import torch

    from .ops.track import sample_bilinear

    geometry = grid_geometry(ds)
    H, W = geometry.source_size
    T = ds.sizes["frame"]
    if not 0 <= t < T:
        raise ValueError(f"query frame {t} is outside the video's {T} frames (0…{T - 1})")
    if not (0 <= x <= W and 0 <= y <= H):
        raise ValueError(f"query point x={x:g}, y={y:g} is outside the {W}×{H} (W×H) source frame")
    # the tracker's sampler: the same bilinear rule between cell centres, clamped at the border
    xy = torch.from_numpy(geometry.source_to_grid(np.array([[x, y]])))
    frame = torch.from_numpy(np.asarray(_data(ds["features"])[int(t)], dtype=np.float32))
    return sample_bilinear(frame, xy)[0].numpy()


def cosine_map(features: Any, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of every cell to ``query (C,)``: ``(…, h, w)`` float32 in [-1, 1]."""
    x = np.asarray(_data(features), dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    q = q / (np.linalg.norm(q) + 1e-8)
    return (x @ q) / (np.linalg.norm(x, axis=-1) + 1e-8)


def turbo(values: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (its published polynomial fit): ``values`` in [0, 1] → ``(…, 3) uint8``."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)[..., None]
    coeffs = np.array([
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ])
    powers = v ** np.arange(6)
    rgb = np.einsum("...k,ck->...c", powers, coeffs)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def heatmap(similarity: np.ndarray, size: tuple[int, int] | None = None, low: float | None = None,
            high: float | None = None, smooth: bool = True) -> np.ndarray:
    """A similarity map ``(h, w)`` as a Turbo-coloured image ``(H, W, 3) uint8``.

    ``low…high`` spans the colour map; default the map's own minimum and maximum. Pass the same
    bounds for every frame of a video (e.g. :func:`similarity_range`) so their colours compare.
    """
    sim = np.asarray(similarity, dtype=np.float32)
    low = float(sim.min()) if low is None else low
    high = float(sim.max()) if high is None else high
    image = turbo((sim - low) / max(high - low, 1e-8))
    return image if size is None else resize_image(image, size, smooth)


def similarity_range(maps: Any, percentiles: tuple[float, float] = (1.0, 99.9)) -> tuple[float, float]:
    """Colour bounds shared by several similarity maps: robust low/high percentiles of all values."""
    low, high = np.percentile(np.asarray(maps, dtype=np.float32), percentiles)
    return float(low), float(max(high, low + 1e-6))


def blend(frame: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha)·frame + alpha·overlay``, both ``(H, W, 3) uint8``."""
    if frame.shape != overlay.shape:
        raise ValueError(f"cannot blend a {overlay.shape} overlay onto a {frame.shape} frame")
    return ((1 - alpha) * frame.astype(np.float32) + alpha * overlay.astype(np.float32) + 0.5).astype(np.uint8)


def draw_point(frame: np.ndarray, x: float, y: float, colour=(255, 255, 255), radius: int | None = None) -> np.ndarray:
    """A ringed dot at source pixel ``(x, y)`` (visible on any background)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    r = radius or max(3, min(frame.shape[:2]) // 60)
    draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), fill=(0, 0, 0))
    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(colour))
    return np.asarray(image)


def similarity_overlay(frame: np.ndarray, similarity: np.ndarray, alpha: float = HEAT_ALPHA,
                       point: tuple[float, float] | None = None, low: float | None = None,
                       high: float | None = None) -> np.ndarray:
    """The heat-map of ``similarity (h, w)`` over ``frame (H, W, 3)``, with the query ``point`` (x, y) marked."""
    out = blend(frame, heatmap(similarity, frame.shape[:2], low, high), alpha)
    return out if point is None else draw_point(out, *point)


# ---------------------------------------------------------------- masks and tracks




def mask_overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = MASK_ALPHA, outline: bool = True) -> np.ndarray:
    """Each object of ``mask (H, W)`` (ids, 0 = background) tinted in its DAVIS colour over
    ``frame (H, W, 3) uint8``, with a white outline; a mask of another size is resized (nearest)."""
    mask = np.asarray(mask)
    if mask.shape != frame.shape[:2]:
        mask = resize_image(mask.astype(np.uint8), frame.shape[:2])
    mask = mask.astype(np.uint8)
    out = np.where((mask > 0)[..., None], blend(frame, DAVIS_PALETTE[mask], alpha), frame)
    if outline:
        edge = np.zeros(mask.shape, bool)
        edge[1:] |= mask[1:] != mask[:-1]
        edge[:-1] |= mask[1:] != mask[:-1]
        edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
        out[edge] = 255
    return out.astype(np.uint8)


def track_overlay(frame: np.ndarray, positions: np.ndarray, visible: np.ndarray, t: int,
                  trail: int = TRAIL_FRAMES) -> np.ndarray:
    """Each query's trail over frames ``t - trail … t`` and its current position on ``frame``
    (``liftvid track``'s own drawing: an occluded point is an open circle).

    Args:
        frame: ``(H, W, 3) uint8``.
        positions: ``(N, T, 2)`` source pixels ``(x, y)``; ``visible``: ``(N, T)`` bool.
        t: the frame drawn.
    """
    import colorsys

    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    radius = max(2, min(frame.shape[:2]) // 120)
    n = positions.shape[0]
    for q in range(n):
        colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(q / max(n, 1), 0.9, 1.0))
        lo = max(0, t - trail)
        pts = [tuple(map(float, positions[q, s])) for s in range(lo, t + 1) if visible[q, s]]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=max(1, radius // 2))
        x, y = map(float, positions[q, t])
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=colour if visible[q, t] else None, outline=colour)
    return np.asarray(image)


# ---------------------------------------------------------------- layout and writers


def side_by_side(images: Sequence[np.ndarray], gap: int = 4, background: int = 255) -> np.ndarray:
    """Images in a row, each scaled (bilinear) to the first one's height, ``gap`` pixels apart."""
    H = images[0].shape[0]
    scaled = [im if im.shape[0] == H else resize_image(im, (H, max(1, round(im.shape[1] * H / im.shape[0]))), True)
              for im in images]
    parts = []
    for i, im in enumerate(scaled):
        if i and gap:
            parts.append(np.full((H, gap, 3), background, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def montage(frames: Sequence[np.ndarray], columns: int | None = None, gap: int = 4, background: int = 255) -> np.ndarray:
    """Frames of one size on a grid (``columns`` per row; default about square)."""
    n = len(frames)
    if not n:
        raise ValueError("montage of no frames")
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    H, W = frames[0].shape[:2]
    out = np.full((rows * H + (rows - 1) * gap, columns * W + (columns - 1) * gap, 3), background, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        out[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = f
    return out


def write_png(path: str | Path, image: np.ndarray, colours: int | None = None, kind: str | None = None) -> Path:
    """One ``(H, W, 3) uint8`` image to a PNG (or JPEG by suffix); parent folders are created.

    ``colours`` (≤ 256) stores a palette PNG of that many colours: several times smaller, for
    pictures committed to a repository. ``kind``: record the file as liftvid's output of that kind
    (:func:`liftvid.io.outputs.written_whole`).
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if colours:
        image = image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with written_whole(path, kind) as tmp:
        image.save(tmp, optimize=path.suffix.lower() == ".png")
    return path


def write_gif(path: str | Path, frames: Iterable[np.ndarray], fps: float = 12.0, kind: str | None = None) -> Path:
    """An animated GIF (looping) of ``(H, W, 3) uint8`` frames, one shared palette for stable colours."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)) for f in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one palette for all frames, from a sample of them, so a colour stays put from frame to frame
    step = max(1, len(images) // GIF_PALETTE_FRAMES)
    sample = np.concatenate([np.asarray(im) for im in images[::step]], axis=0)
    palette = Image.fromarray(sample).quantize(GIF_MAX_COLOURS, method=Image.Quantize.MEDIANCUT)
    converted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    with written_whole(path, kind) as tmp:
        converted[0].save(tmp, save_all=True, append_images=converted[1:], duration=max(20, round(1000 / fps)),
                          loop=0, optimize=False)
    return path


def write_frames(path: str | Path, frames: Iterable[np.ndarray], fps: float = 12.0, kind: str | None = None) -> Path:
    """Write frames by the suffix of ``path``: ``.mp4``/``.mkv``/``.avi``/``.mov`` (PyAV), ``.gif``,
    or ``.png``/``.jpg`` (one frame as is, several as a :func:`montage`).

    The first frame is made before the file is opened, so an error in making it (a missing source,
    say) leaves no broken file behind. ``kind``: record the file as liftvid's output of that kind
    (:func:`liftvid.io.outputs.written_whole`), so that a rerun may replace it.
    """
    check_output(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    frames = itertools.chain([first], frames)
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        from .io.encode import write_video

        with written_whole(path, kind) as tmp:
            write_video(tmp, frames, fps=fps)
        return Path(path)
    if suffix == ".gif":
        return write_gif(path, frames, fps, kind=kind)
    frames = list(frames)
    return write_png(path, frames[0] if len(frames) == 1 else montage(frames), kind=kind)


def check_output(path: str | Path) -> Path:
    """``path`` if :func:`write_frames` can write it (checked before any work), else ValueError."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES + (".gif",):
        raise ValueError(f"{path}: unknown output type {suffix or '(none)'}; use .mp4, .gif or .png")
    return Path(path)


def parse_frames(text: str | None, frame_index: np.ndarray | int) -> np.ndarray:
    """Stored positions ``(N,) int64`` of the frames ``text`` names by their source frame number
    (the one rule of :func:`liftvid.io.tables.stored_position`: from 0, as DAVIS's ``00042.png``):
    ``"3"``, ``"0,5,9"``, or a Python slice of source numbers ``"10:20"``, ``"::2"`` (None = all).

    ``frame_index``: ``(T,) int`` the stored frames' source numbers (an int ``T`` means 0 … T-1).
    A slice picks the stored frames whose numbers it covers; a listed number must be stored.
    Negative numbers count back from the last stored frame's number + 1, as Python does.

    Raises:
        ValueError: not of those forms, a listed frame that is not stored, or no frame selected.
    """
    from .io.tables import describe_frames, stored_position

    frame_index = np.arange(frame_index) if np.isscalar(frame_index) else np.asarray(frame_index, np.int64)
    n_frames = len(frame_index)
    if text is None or not str(text).strip():
        return np.arange(n_frames)
    spec = str(text).strip()
    end = int(frame_index[-1]) + 1 if n_frames else 0
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError
            numbers = np.arange(end)[slice(*parts)]
            position = {int(f): i for i, f in enumerate(frame_index)}
            picked = np.asarray([position[int(f)] for f in numbers if int(f) in position], dtype=np.int64)
        else:
            numbers = [int(p) for p in spec.split(",")]
    except ValueError:
        raise ValueError(f"--frames {spec!r}: expected N, N,M,… or START:STOP[:STEP] of source frame "
                         f"numbers (the store holds {describe_frames(frame_index)})") from None
    if ":" not in spec:
        picked = np.asarray([stored_position(frame_index, f + end if f < 0 else f, f"--frames {spec!r}: frame {f}")
                             for f in numbers], dtype=np.int64)
    if not len(picked):
        raise ValueError(f"--frames {spec!r} selects no stored frame (the store holds {describe_frames(frame_index)})")
    return picked
