"""``liftvid recode``: rewrite a store's features with another encoding, chunk by chunk.

Every complete video of the input store is read through :func:`liftvid.io.store.feature_reader`
(decoded to the backbone's C channels) one stored chunk of frames at a time, encoded as asked
(:class:`~liftvid.io.store.FeatureEncoding`: plain floats, int8, pca K) and written into a new
store, with the video's attributes, ``frame_index`` and ``timestamps``. Masks and tracks are not
copied: they were computed from the old features (rerun propagate/track on the new store).

Resumable like ``extract``: the output store's lock is held, videos complete (and intact) in it
are skipped, an incomplete one is redone, and a pca basis already fitted in it is reused.
"""

from __future__ import annotations

import os
import time
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..io import store as st
from .runs import NullProgress, RunProgress, RunStatus, RunSummary, VideoRun, disk_full_is_one_line, skip_if_complete

# what a recoded video's attributes drop from the input's (written again by the new store)
def _carried_info(root_in, vid: str) -> st.VideoInfo:
    """A source video's record as the recoded store takes it over: its status, error and chunk
    count are the new store's to write, and its relative source is recomputed for the new store."""
    return dataclasses.replace(st.read_video_info(root_in, vid), status=st.INCOMPLETE, error=None,
                               stored_chunks=None, source_relative=None)


@dataclass
class RecodeSummary(RunSummary):
    """Every video's :class:`~liftvid.pipelines.runs.VideoRun` of one :func:`recode_store` call."""

    source: str
    store: str
    encoding: st.FeatureEncoding
    results: list[VideoRun] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # videos not complete in the input: their status
    seconds: float = 0.0


def _same_store(a, b) -> bool:
    la, lb = st.local_path(a), st.local_path(b)
    if la is not None and lb is not None:
        return os.path.realpath(la) == os.path.realpath(lb)
    return str(a).rstrip("/") == str(b).rstrip("/")


def _fit_basis(root_in, videos: list[str], encoding: st.FeatureEncoding, fit_frames: int) -> tuple[np.ndarray, dict]:
    """The pca basis of the input's decoded features: ``fit_frames`` frames, an equal share evenly
    spaced through each of its first videos (sorted), read one stored chunk at a time."""
    first = videos[:st.PCA_FIT_VIDEOS]
    share = st.pca_share(len(first), fit_frames)
    moment, frames = None, 0
    for vid in first:
        reader = st.feature_reader(root_in[vid], f"{st.store_label(root_in)}: video {vid!r}", full=True)
        moment = moment or st.SecondMoment(reader.shape[-1])
        picked = st.pca_sample(reader.shape[0], share)
        step = reader.chunks[0]
        for chunk in np.unique(picked // step):
            block = reader[chunk * step:(chunk + 1) * step]
            moment.add(block[picked[picked // step == chunk] - chunk * step])
        frames += len(picked)
    if moment is None:
        raise st.EncodingError(f"{st.store_label(root_in)}: no complete video to fit the pca basis on")
    fit = {"frames": frames, "vectors": int(moment.vectors), "videos": first,
           "sample": f"{share} frames evenly spaced per video, first {st.PCA_FIT_VIDEOS} videos (sorted)",
           "second_moment": "uncentred X^T X, float64"}
    return moment.basis(int(encoding.components)), fit


def _recode_video(root_in, root_out, vid: str, config: dict, progress: RunProgress) -> VideoRun:
    t0 = time.perf_counter()
    if damage := st.check_video_intact(root_in, vid):  # a missing chunk would read as NaN
        raise st.DamagedChunkError(damage)
    group_in = root_in[vid]
    info = _carried_info(root_in, vid)
    reader = st.feature_reader(group_in, f"{st.store_label(root_in)}: video {vid!r}", full=True)
    T, h, w, c = reader.shape
    codes = group_in["features"]
    t_chunk = int(st.storage_shape(codes)[0])
    group = st.begin_video(root_out, vid, info, T, (h, w), c, np.asarray(group_in["frame_index"][:]),
                           np.asarray(group_in["timestamps"][:]), dtype=st.StoreConfig.from_attrs(config).feature_dtype,
                           t_chunk=t_chunk, shard=getattr(codes, "shards", None) is not None)
    progress.video_started(vid, T)
    writer = st.feature_writer(group)
    for a in range(0, T, t_chunk):
        b = min(T, a + t_chunk)
        writer[a:b] = reader[a:b]
        progress.frames_done(b - a)
    st.mark_complete(group)
    return VideoRun(vid, RunStatus.COMPLETE, T, time.perf_counter() - t0, source=str(info.source))


def recode_store(source: str | os.PathLike, store: str | os.PathLike, encoding: st.FeatureEncoding,
                 pca_fit_frames: int = st.PCA_FIT_FRAMES, progress: RunProgress | None = None,
                 overwrite: bool = False) -> RecodeSummary:
    """Rewrite the complete videos of the store ``source`` into ``store`` with ``encoding``.

    Args:
        source: a liftvid store (path or URL), read only.
        store: the new store (created, or resumed when it holds the same configuration and
            encoding); never ``source`` itself.
        encoding: the new encoding (:meth:`FeatureEncoding.from_options`); its ``dtype`` is taken
            from the source's ``feature_dtype``.
        pca_fit_frames: frames a new pca basis is fitted on (from the source's first videos).
        progress: :class:`~liftvid.pipelines.runs.RunProgress` events.
        overwrite: replace a ``store`` written with another configuration or encoding.

    Returns:
        :class:`RecodeSummary`. A video whose input is damaged, or whose encoded features leave
        the stored dtype's range, is recorded as failed in ``store`` and the others go on.

    Raises:
        StoreError: no store at ``source``; ``store`` is ``source``, is being written, or holds
            another configuration.
        EncodingError: the source is already int8 or pca (encoding it again compounds the error;
            recode from the float store), or K is more than the channels; before anything is written.
    """
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    if _same_store(source, store):
        raise st.StoreError(f"{store}: the output of recode must be a new store, not its input {source}")
    root_in = st.open_root(source)
    config_in = st.read_store_config(root_in)
    current = config_in.encoding
    dtype = config_in.feature_dtype
    encoding = st.FeatureEncoding(encoding.kind, dtype, encoding.components)
    if current.lossy and encoding.lossy:
        raise st.EncodingError(f"{source}: already {current.label()}; encoding lossy features again compounds "
                               f"the error: recode the float store instead (or recode this one with --plain)")
    channels = config_in.backbone.channels
    encoding.check_channels(int(channels) if channels else 0, str(source))
    if pca_fit_frames < 1:
        raise ValueError(f"--pca-fit-frames {pca_fit_frames}: must be at least 1")
    config = dataclasses.replace(config_in, liftvid_version=st.liftvid_version(), encoding=encoding,
                                 extra={**config_in.extra, "recoded_from": {"store": str(source),
                                                                           "encoding": current.to_attrs()}}).to_attrs()
    summary = RecodeSummary(str(source), str(store), encoding)
    videos = st.list_videos(root_in)
    summary.left_out = {vid: str(st.video_status(root_in, vid)) for vid in st.list_videos(root_in, status=None)
                        if vid not in videos}
    with st.StoreLock(store), disk_full_is_one_line(store):
        root_out = st.init_store(store, config, overwrite=overwrite)
        if encoding.kind == st.PCA and not st.has_pca_basis(root_out):
            st.write_pca_basis(root_out, *_fit_basis(root_in, videos, encoding, pca_fit_frames))
        summary.encoding = st.store_encoding(root_out)
        progress.start(len(videos))
        for vid in videos:
            result = skip_if_complete(root_out, vid)
            if result is None:
                try:
                    result = _recode_video(root_in, root_out, vid, config, progress)
                except (st.DamagedChunkError, st.EncodingRangeError) as exc:
                    info = _carried_info(root_in, vid)
                    st.mark_failed(root_out, vid, info, str(exc))
                    result = VideoRun(vid, RunStatus.FAILED, error=str(exc), source=str(info.source))
            summary.results.append(result)
            progress.video_finished(result)
    summary.seconds = time.perf_counter() - t0
    return summary
