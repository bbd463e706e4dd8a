"""The commands that turn a store's features into results: propagate (masks) and track (points)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .options import Device, ExtractedStoreArg, TaskScheduler, Workers, megabytes
from .render import (COMPLETE, FAILED, SKIPPED, VideoProgress, console, esc, fail, frames_per_second, note, plural,
                     reports_errors, status_text)

_NAMES_SHOWN = 8  # videos named in a note before "…"
_SKIPS_SHOWN = 20  # skipped query rows printed before "… and N more"


@reports_errors
def propagate(
    store: ExtractedStoreArg,
    masks: Annotated[Path, typer.Option(help="First-frame masks: a DAVIS Annotations/480p tree (or the DAVIS root), a folder of <video_id>.png, or one file for one video.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Results folder: <out>/<video_id>/<frame>.png, DAVIS palette.", show_default=False)],
    video: Annotated[Optional[list[str]], typer.Option(help="Only this video (repeatable). Default: every complete video.")] = None,
    start_frame: Annotated[int, typer.Option(help="Source frame number of the annotated frame (from 0, as DAVIS's 00042.png is frame 42 and as track's t counts; with extract --stride, a stored one); propagates from it to the end.", min=0)] = 0,
    n_last: Annotated[int, typer.Option(help="Previous frames in the context, besides the annotated frame.", min=0)] = 7,
    topk: Annotated[int, typer.Option(help="Sources kept per target cell.", min=1)] = 5,
    radius: Annotated[int, typer.Option(help="Neighbourhood half-size in cells (square), counted as --radius-unit says; 0 = unrestricted.", min=0)] = 12,
    radius_unit: Annotated[str, typer.Option(help="What --radius counts: 'stored' cells of the grid in the store, whatever made it (the DINO and LiFT protocols' rule, exact on their grids; on a denser LiFT x2 or UPLiFT grid the same 12 cells cover a smaller area, at the same cost per cell), or 'backbone' cells (the same image area on any grid: radius x cells per patch stored cells, at that factor squared the cost).")] = "stored",
    affinity_mb: Annotated[Optional[int], typer.Option("--affinity-mb", help="Memory bound of one block of similarities (target cells x their window x context frames); dense grids are cut into smaller blocks to fit; the masks do not depend on it (default 64 on a CPU, 256 on a GPU).", min=1)] = None,
    temperature: Annotated[float, typer.Option(help="Affinity temperature: exp(cos / T).", min=1e-6)] = 0.1,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <out>/<video_id>.mp4 with the masks drawn on the frames.")] = False,
    store_masks: Annotated[bool, typer.Option("--store-masks/--no-store-masks", help="Also write each video's masks array into the store.")] = True,
    scheduler: TaskScheduler = "threads",
    workers: Workers = None,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace <out>/<video_id>/ folders and overlays that liftvid did not write (by default only its own earlier results are replaced; inputs never are).")] = False,
) -> None:
    """Propagate first-frame object masks through each video by feature affinity; DAVIS PNGs out.

    The DINO/LiFT DAVIS protocol, one Dask task per video, on the grid the store holds (backbone,
    LiFT or a denser UPLiFT grid). Soft labels are upsampled by ceil(min(patch, 2 x stride)): the
    patch size on the protocols' grids, twice the model input on denser ones.
    """
    from ..pipelines.propagate import PropagateOptions, propagate_store

    if not masks.exists():
        fail(f"{masks}: no such mask file or folder")
    try:
        options = PropagateOptions(n_last=n_last, topk=topk, radius=radius, temperature=temperature,
                                   start_frame=start_frame, overlay=overlay, write_store=store_masks, device=device,
                                   overwrite=overwrite, radius_unit=radius_unit, affinity_bytes=megabytes(affinity_mb))
    except ValueError as exc:  # the options' one check is the unit's value; the user typed the option
        fail(f"--radius-unit: {exc}")
    with VideoProgress(console(stderr=True), transient=True, failures=False) as progress:  # the table lists them
        summary = propagate_store(store, masks, out, options, videos=video, scheduler=scheduler,
                                  workers=workers, progress=progress)
    _show_propagation(console(), summary, out, masks)
    if summary.failed:
        raise typer.Exit(1)


def _show_propagation(con, summary, out: Path, masks: Path) -> None:
    """propagate's table of videos, its notes and its last line."""
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("video", "frames", "objects", "seconds", "status"):
        table.add_column(col, justify="right" if col in ("frames", "objects", "seconds") else "left")
    for r in summary.results:
        ok = r.status == COMPLETE
        table.add_row(escape(r.video_id), str(r.frames) if ok else "-", str(r.objects) if ok else "-",
                      f"{r.seconds:.2f}" if ok else "-",
                      status_text(COMPLETE) if ok else f"{status_text(FAILED)}: {escape(str(r.error))}")
    con.print(table)
    for r in summary.results:
        if r.detail:
            note(con, f"{r.video_id}: {r.detail}")
    done = len(summary.results) - len(summary.failed)
    rate = frames_per_second(summary.frames, summary.seconds)
    con.print(f"{esc(out)}: {plural(done, 'video')}, {plural(summary.frames, 'frame')} in {summary.seconds:.1f} s ({rate:,.1f} frames/s); "
              f"{len(summary.failed)} failed")
    if summary.unmatched_masks:
        note(con, f"masks for {plural(len(summary.unmatched_masks), 'video')} not in the store: "
                  f"{_some_names(summary.unmatched_masks)}")
    if summary.without_masks:
        note(con, f"no mask in {masks} for {plural(len(summary.without_masks), 'video')} of the store, not propagated: "
                  f"{_some_names(summary.without_masks)}")


def _some_names(names: list[str]) -> str:
    """The first few names, then "…"."""
    return ", ".join(names[:_NAMES_SHOWN]) + (" …" if len(names) > _NAMES_SHOWN else "")


@reports_errors
def track(
    store: ExtractedStoreArg,
    queries: Annotated[Path, typer.Option(help="CSV video_id,t,x,y: x, y in source-frame pixels (0 = top/left edge), t = source frame number (from 0, as propagate --start-frame; with extract --stride, a stored one).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output CSV video_id,query,t,x,y,visible,score (source pixels; one row per stored frame, t its source frame number).", show_default=False)],
    scheduler: TaskScheduler = "threads",
    workers: Workers = None,
    chain: Annotated[bool, typer.Option("--chain", help="Update each template from its confident recent matches (frames in order).")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <out>_<video>.mp4: the source frames with track trails.")] = False,
    device: Device = "auto",
    min_similarity: Annotated[Optional[float], typer.Option(help="Cosine similarity a visible match needs (default 0.5).")] = None,
    cycle_radius: Annotated[Optional[float], typer.Option(help="Cells a match may land from the query when matched back (default 2).")] = None,
    frame_chunk: Annotated[Optional[int], typer.Option(help="Frames per chunk (default: from the memory budget).", min=1)] = None,
    memory_mb: Annotated[Optional[int], typer.Option("--memory-mb", help="Memory budget of the tracking, shared by the tasks running at once; queries and frames are cut into pieces that fit it (default 512).", min=1)] = None,
    write_store: Annotated[bool, typer.Option("--write-store/--no-write-store", help="Also write <video>/tracks into the store.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an --out CSV or overlay that liftvid did not write (by default only its own earlier output is replaced; inputs never are).")] = False,
) -> None:
    """Follow query points through each video by dense feature matching, as Dask jobs."""
    from ..ops.track import TrackOptions
    from ..pipelines.track import track_store

    given = {"min_similarity": min_similarity, "cycle_radius": cycle_radius, "frame_chunk": frame_chunk,
             "max_chunk_bytes": megabytes(memory_mb)}
    options = TrackOptions(chain=chain, **{k: v for k, v in given.items() if v is not None})
    summary = track_store(store, queries, out, options=options, scheduler=scheduler, workers=workers,
                          overlay=overlay, device=None if device == "auto" else device, write_store=write_store,
                          overwrite=overwrite)
    _show_tracking(console(stderr=True, unbroken=True), summary, queries, out)
    if summary.failed:
        raise typer.Exit(1)


def _show_tracking(err, summary, queries: Path, out: Path) -> None:
    """track's lines: the query rows it skipped, what it tracked at what rate, overlays, failures."""
    for refused in summary.refused[:_SKIPS_SHOWN]:
        err.print(f"{status_text(SKIPPED)} {escape(str(queries))}: {escape(str(refused))}")
    if len(summary.refused) > _SKIPS_SHOWN:
        err.print(f"{status_text(SKIPPED)} … and {len(summary.refused) - _SKIPS_SHOWN} more")
    rate = frames_per_second(summary.point_frames, summary.seconds)
    err.print(f"{escape(str(out))}: {plural(sum(summary.queries.values()), 'query', 'queries')} in "
              f"{plural(len(summary.queries), 'video')}, "
              f"{summary.point_frames:,} point-frames in {summary.seconds:.1f} s ({rate:,.0f} point-frames/s); "
              f"{len(summary.refused)} skipped")
    for path in summary.overlays:
        err.print(f"overlay {esc(path)}")
    for result in summary.failed:
        err.print(f"{status_text(FAILED)} {escape(result.video_id)}: {escape(str(result.error))}")
