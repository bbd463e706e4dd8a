"""Fitting a pca store's basis on the first videos' features, before any video is written."""

from __future__ import annotations

import torch

from ...io import store as st
from ...io.decoders import VideoDecodeError
from ...io.frame_size import Resize
from ...io.sources import VideoSource
from ...io.video import open_model_video, sample_indices
from ...models.extractor import FeatureExtractor
from .options import ExtractOptions, frames_per_batch
from .writes import FeatureRangeError


def ensure_pca_basis(extractor: FeatureExtractor, root, sources: list[VideoSource], options: ExtractOptions) -> None:
    """A pca store's basis, fitted before any video is written when the store has none yet.

    The sample: ``options.pca_fit_frames`` frames in all, an equal share evenly spaced through
    each of the first :data:`~liftvid.io.store.PCA_FIT_VIDEOS` videos in input order (their
    features are computed for the fit, then again when the videos are extracted). The basis and
    its fit record are written to the store, so a rerun (a resume, an append) reuses it and
    never refits; a run killed during the fit has written no video and fits again. A video that
    cannot be decoded gives nothing to the sample (it fails later, in the run).

    Raises:
        EncodingError: no frame of any of those videos could be computed.
    """
    encoding = st.store_encoding(root)
    if encoding.kind != st.PCA or st.has_pca_basis(root):
        return
    resize = Resize.parse(options.resize)
    patch = extractor.backbone.patch_size
    first = sources[:st.PCA_FIT_VIDEOS]
    share = st.pca_share(len(first), options.pca_fit_frames)
    moment = st.SecondMoment(extractor.backbone.channels)
    used, frames = [], 0
    for source in first:
        try:
            reader = open_model_video(source, resize, patch, fps=options.fps, num_threads=options.decode_threads)
        except VideoDecodeError:
            continue
        try:
            indices = sample_indices(reader.n_frames, options.stride, options.max_frames)
            picked = indices[st.pca_sample(len(indices), share)]
            per_batch = frames_per_batch(options, extractor, reader.frame_size, reader.source_size)
            batches = reader.batches(picked, per_batch, resized=False)
            try:
                for _, batch in batches:
                    moment.add(extractor(torch.from_numpy(batch), reader.pending_resize).float().cpu().numpy())
                    frames += len(batch)
            finally:
                batches.close()
            used.append(source.video_id)
        except (VideoDecodeError, FeatureRangeError):
            continue
        finally:
            reader.close()
    if not frames:
        raise st.EncodingError(f"{st.store_label(root)}: no frame of the first {len(first)} videos could be "
                               "computed to fit the pca basis")
    st.write_pca_basis(root, moment.basis(int(encoding.components)),
                       {"frames": frames, "vectors": int(moment.vectors), "videos": used,
                        "sample": f"{share} frames evenly spaced per video, first {st.PCA_FIT_VIDEOS} videos",
                        "second_moment": "uncentred X^T X, float64"})
