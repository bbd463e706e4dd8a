"""``liftvid viz``: pictures of a store's features, masks and tracks (.mp4, .gif or .png)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .options import VIZ_KIND, StoreArg, VizFps, VizFrames, VizOut, VizOverwrite, VizVideo, claim, query_point
from .render import console, fail, reports_errors


def _viz_inputs(store: str, video: str) -> dict:
    """The store and the video's source: a picture may not be written over either."""
    from ..io import store as st

    inputs = {"store": st.local_path(store)}
    try:
        info = st.read_video_info(st.open_root(store), video)
        inputs[f"source of video {video}"] = info.source
        inputs[f"source of video {video} (found)"] = str(info.video_source(video, store).path)
    except Exception:  # a missing store or video is reported by the command itself, with its own line
        pass
    return inputs


def _viz_write(store: str, video: str, out: Path, frames: Optional[str], fps: Optional[float], make,
               overwrite: bool = False) -> None:
    """Open the video, pick the frames, render and write; a bad input is one error line (the
    command's :func:`~liftvid.cli.render.reports_errors`), a write that fails names the file."""
    from .. import viz
    from ..pipelines import render
    from ..pipelines.analysis import open_store

    try:
        viz.check_output(out)
        claim(out, VIZ_KIND, _viz_inputs(store, video), overwrite)
        ds = open_store(store)[video]
        picked = viz.parse_frames(frames, ds["frame_index"].values)
        path = viz.write_frames(out, make(ds, picked), fps or render.video_fps(ds), kind=VIZ_KIND)
    except OSError as exc:  # a read-only folder, a full disk: nothing half-written is left
        fail(f"{exc.filename or out}: cannot write {out.name} ({exc.strerror or exc})")
    console(stderr=True).print(f"{escape(str(path))}: {len(picked)} frames of {escape(video)}")


@reports_errors
def viz_pca(store: StoreArg, video: VizVideo, out: VizOut, frames: VizFrames = None, fps: VizFps = None,
            with_source: Annotated[bool, typer.Option("--with-source", help="Put the source frame beside each PCA frame.")] = False,
            overwrite: VizOverwrite = False) -> None:
    """Colour features by their first three principal components, at the source size.

    The components are fitted over the whole video, so a colour means the same feature in every frame.

    Example: liftvid viz pca out.zarr --video bear --out pca.mp4
    """
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, lambda ds, picked: render.render_pca(ds, picked, with_source), overwrite)


@reports_errors
def viz_similarity(store: StoreArg, video: VizVideo, out: VizOut,
                   point: Annotated[str, typer.Option(help="Query point X,Y,T: source pixels (0,0 = top-left corner) in source frame number T (a stored frame).", show_default=False)],
                   frames: VizFrames = None, fps: VizFps = None,
                   on_source: Annotated[bool, typer.Option("--on-source/--no-source", help="Draw the heat-map over the source frames, or alone.")] = True,
                   overwrite: VizOverwrite = False) -> None:
    """Heat-map of the cosine similarity of every cell to the feature at one point.

    Example: liftvid viz similarity out.zarr --video bear --point 320,200,0 --out sim.mp4
    """
    from ..pipelines import render

    x, y, t = query_point(point)

    def make(ds, picked):
        position = render.position_of_frame(ds, t, f"--point {point!r}: frame {t}")
        return render.render_similarity(ds, x, y, position, picked, on_source)

    _viz_write(store, video, out, frames, fps, make, overwrite)


@reports_errors
def viz_masks(store: StoreArg, video: VizVideo, out: VizOut, frames: VizFrames = None, fps: VizFps = None,
              overwrite: VizOverwrite = False) -> None:
    """Overlay the masks `liftvid propagate` stored for the video on its source frames (DAVIS colours)."""
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, render.render_masks, overwrite)


@reports_errors
def viz_tracks(store: StoreArg, video: VizVideo, out: VizOut, frames: VizFrames = None, fps: VizFps = None,
               trail: Annotated[int, typer.Option(help="Frames of trail behind each point.", min=0)] = 12,
               overwrite: VizOverwrite = False) -> None:
    """Draw the tracks `liftvid track` stored for the video, with trails, on its source frames."""
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, lambda ds, picked: render.render_tracks(ds, picked, trail), overwrite)
