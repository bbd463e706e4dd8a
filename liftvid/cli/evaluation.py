"""``liftvid eval``: DAVIS J&F for masks, TAP-Vid metrics for tracks, and TAP-Vid's queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .options import OVERWRITE_HELP, TAPVID_JSON_KIND, OverwriteJson, claim
from .render import console, esc, fail, note, plural, reports_errors


@reports_errors
def eval_davis(
    results: Annotated[Path, typer.Argument(help="Results folder: <seq>/<frame>.png (e.g. the --out of `liftvid propagate`).", show_default=False)],
    davis: Annotated[Path, typer.Option(help="DAVIS root (holds Annotations/480p and ImageSets/2017).", show_default=False)],
    subset: Annotated[str, typer.Option("--set", help="ImageSets/2017 subset listing the sequences.")] = "val",
    sequence: Annotated[Optional[list[str]], typer.Option(help="Only this sequence (repeatable).")] = None,
    resolution: Annotated[str, typer.Option(help="Annotation resolution folder.")] = "480p",
    csv_dir: Annotated[Optional[Path], typer.Option(help="Where to write the toolkit's two CSVs (default: the results folder).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP.format(what="the two CSVs"))] = False,
) -> None:
    """DAVIS-2017 semi-supervised J&F (the official toolkit's definitions): per sequence and overall."""
    from ..io.tables import DAVIS_CSV_KIND, davis_csv_paths, write_davis_csv
    from ..pipelines.evaluate import davis_sequences, evaluate_davis

    con = console()  # lines are not wrapped when not a terminal
    if not results.is_dir():
        fail(f"{results}: results folder not found")
    if not davis.is_dir():
        fail(f"{davis}: DAVIS folder not found")
    # the CSVs go beside the sequences' results, never into them or into DAVIS
    inputs = {"DAVIS folder": davis, **{f"results of {seq}": results / seq
                                        for seq in sequence or davis_sequences(davis, subset, resolution)}}
    for path in davis_csv_paths(csv_dir or results, subset):
        claim(path, DAVIS_CSV_KIND, inputs, overwrite, option="--csv-dir")
    with con.status("evaluating …"):
        report = evaluate_davis(results, davis, subset=subset, sequences=sequence, resolution=resolution)
    _show_davis(con, report, subset, resolution)
    if report.objects:
        g_path, s_path = write_davis_csv(report, csv_dir or results)
        con.print(f"wrote {esc(g_path)} and {esc(s_path)}")
    for line in report.notes:
        note(con, line)
    for seq, why in report.missing.items():
        con.print(f"[red]not evaluated[/] {escape(seq)}: {escape(why)}")
    if report.missing or not report.objects:
        raise typer.Exit(1)


def _show_davis(con, report, subset: str, resolution: str) -> None:
    """eval davis's table: J&F, J and F per sequence and over all objects, then recall and decay."""
    from rich.table import Table

    table = Table(title=f"DAVIS-2017 {esc(subset)} ({esc(resolution)})", show_edge=False)
    for col in ("sequence", "objects", "J&F", "J-Mean", "F-Mean"):
        table.add_column(col, justify="left" if col == "sequence" else "right")
    for seq, row in report.sequences().items():
        table.add_row(escape(seq), str(row["objects"]), f"{row['J&F-Mean']:.3f}", f"{row['J-Mean']:.3f}", f"{row['F-Mean']:.3f}")
    overall = report.overall()
    table.add_section()
    table.add_row("[bold]all objects[/]", str(len(report.objects)), f"[bold]{overall['J&F-Mean']:.3f}[/]",
                  f"{overall['J-Mean']:.3f}", f"{overall['F-Mean']:.3f}")
    con.print(table)
    con.print("  ".join(f"{m} {overall[m]:.3f}" for m in ("J-Recall", "J-Decay", "F-Recall", "F-Decay")))


# TAP-Vid's three numbers: the column and the report's key
_TAPVID_COLUMNS = (("AJ", "average_jaccard"), ("<δx avg", "average_pts_within_thresh"), ("OA", "occlusion_accuracy"))


@reports_errors
def eval_tapvid(
    tracks: Annotated[Path, typer.Argument(help="Tracks CSV from `liftvid track` (queries from `liftvid eval tapvid-queries`).", show_default=False)],
    gt: Annotated[Path, typer.Option(help="TAP-Vid pickle (e.g. tapvid_davis.pkl).", show_default=False)],
    query_mode: Annotated[str, typer.Option(help="first or strided: how the queries were sampled.")] = "first",
    store: Annotated[Optional[str], typer.Option(help="Store the tracks came from: its source sizes scale the pixels (default: the pickle's frame size).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write per-video and mean metrics as JSON.")] = None,
    overwrite: OverwriteJson = False,
) -> None:
    """TAP-Vid metrics: average Jaccard, <δ^x_avg (1-16 px at 256×256) and occlusion accuracy."""
    from ..io.outputs import write_json_whole
    from ..pipelines.evaluate import evaluate_tapvid, store_source_sizes

    con = console(unbroken=True)
    claim(json_out, TAPVID_JSON_KIND, {"tracks CSV": tracks, "TAP-Vid pickle": gt, "store": store}, overwrite,
          option="--json")
    sizes = store_source_sizes(store) if store is not None else None
    report = evaluate_tapvid(tracks, gt, query_mode=query_mode, source_sizes=sizes)
    _show_tapvid(con, report, query_mode)
    for line in report.notes:
        note(con, line)
    if report.missing_videos:
        note(con, f"{plural(len(report.missing_videos), 'ground-truth video')} not in {tracks}, "
                  f"not evaluated: {', '.join(report.missing_videos[:8])}")
    if json_out:
        write_json_whole(json_out, {"query_mode": query_mode, "mean": report.mean, "per_video": report.per_video,
                                    "missing_videos": report.missing_videos}, TAPVID_JSON_KIND)


def _show_tapvid(con, report, query_mode: str) -> None:
    """eval tapvid's table: the three numbers ×100 per video and their mean."""
    from rich.table import Table

    table = Table(title=f"TAP-Vid ({query_mode}), ×100", show_edge=False)
    table.add_column("video")
    for label, _ in _TAPVID_COLUMNS:
        table.add_column(label, justify="right")
    for name, m in report.per_video.items():
        table.add_row(escape(name), *(f"{100 * m[key]:.1f}" for _, key in _TAPVID_COLUMNS))
    table.add_row(f"[bold]mean of {len(report.per_video)}[/]",
                  *(f"[bold]{100 * report.mean[key]:.1f}[/]" for _, key in _TAPVID_COLUMNS))
    con.print(table)


@reports_errors
def eval_tapvid_queries(
    gt: Annotated[Path, typer.Argument(help="TAP-Vid pickle.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Queries CSV to write (video_id,t,x,y) for `liftvid track`.", show_default=False)],
    query_mode: Annotated[str, typer.Option(help="first or strided (TAP-Vid's sampling).")] = "first",
    frames: Annotated[Optional[Path], typer.Option(help="Also write each video's frames as PNGs into FRAMES/<video>/ for `liftvid extract`.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP.format(what="the --out CSV or a FRAMES/<video>/ folder"))] = False,
) -> None:
    """Write TAP-Vid's queries, in its order, as a queries CSV (and optionally its frames)."""
    from ..io.tables import write_tapvid_queries

    counts = write_tapvid_queries(gt, out, query_mode=query_mode, frames_dir=frames, overwrite=overwrite)
    typer.echo(f"{out}: {plural(sum(counts.values()), 'query', 'queries')} in {plural(len(counts), 'video')} ({query_mode})"
               + (f"; frames in {frames}/<video>/" if frames else ""))
