"""The liftvid Zarr v3 store: schema, creation, resume, provenance.

Layout (ARCHITECTURE.md tells who writes what)::

    out.zarr/                 attrs["liftvid"]: schema version, backbone, LiFT, preprocessing, dtype
      <video_id>/             attrs["liftvid"]: source, sizes, fps, sampling, status, error
        features    (T, h, w, C) float16   dims frame, y, x, channel; chunked along T
        frame_index (T,) int64             source frame numbers
        timestamps  (T,) float64           seconds

A video's ``status`` becomes ``"complete"`` only after all its arrays are written (the mark is the
last write), so a run killed at any moment leaves at worst an ``"incomplete"`` group, which the
next run deletes and redoes.

The store proves what it holds: every chunk of the core arrays ends in a CRC32C checksum (after
the compressor), so a damaged chunk fails to read, and the read error names the store, video and
array; features are filled with NaN, so a missing chunk cannot pass for data; the completion mark
records each array's stored-chunk count (``stored_chunks``) and a digest of its chunks' checksums
(``chunk_digest``), so that a chunk replaced after completion by another valid one (a writer that
lost its lease) is found. :func:`check_video_intact` compares the stored chunks with the full grid
and the record (one listing, and the last 4 bytes of each chunk); :func:`verify_video` also reads
every chunk (``liftvid verify``). A group whose ``zarr.json`` is damaged is left out of
listings, reported by :func:`damaged_groups`, and redone by ``extract``. Group names never take
Zarr's own (:func:`safe_group_name`).

This package is the one owner of what is on disk in a store; each module holds one record or one
concern, its writer beside its reader: ``config`` (the store's configuration), ``opening``,
``lock`` and ``lease`` (one writer at a time), ``records`` (a video's record and statuses),
``listing`` and ``naming`` (which groups hold which videos), ``layout`` (a video's arrays and its
completion mark), ``compression``, ``encoding`` and ``features`` (how features are stored and
read), ``durability``, ``integrity`` (chunk digests, damage, verify) and ``summary``
(``liftvid info`` / ``verify``). Import what you need from here: ``from liftvid.io import store as st``.
"""

from __future__ import annotations

from .errors import DamagedChunkError, StoreError
from .config import (ATTRS_KEY, KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION, BackboneRecord, Preprocessing, StoreConfig,
                     UpsamplerRecord, check_config, liftvid_version, make_config, read_config, read_store_config,
                     upsampler_name)
from .encoding import (ENCODINGS, ENCODING_ARRAYS, EncodingError, EncodingRangeError, FLOAT, FeatureEncoding,
                       INT8, INT8_FILL, INT8_STEPS, OFFSET_ARRAY, PCA, PCA_BASIS, PCA_FIT_FRAMES,
                       PCA_FIT_VIDEOS, SCALE_ARRAY, SecondMoment, dequantize_int8, pca_sample, pca_share,
                       quantize_int8)
from .compression import DEFAULT_COMPRESSOR, checksummed
from .opening import (consolidate, drop_consolidated, init_store, is_url, local_path, open_root, store_label,
                      zarr_target)
from .lock import StoreLock
from .records import (COMPLETE, CORE_ARRAYS, DAMAGED, FAILED, INCOMPLETE, Status, VideoInfo, geometry_from_record,
                      read_video_info, video_geometry, with_relative_source, write_video_info)
from .listing import damaged_groups, group_names, list_videos, video_damage, video_status
from .naming import SAFE_NAME_SUFFIX, resolve_video_id, safe_group_name, update_source
from .durability import check_writable, sync_group, sync_metadata
from .layout import FEATURE_DIMS, TARGET_CHUNK_BYTES, begin_video, frames_per_chunk, mark_complete, mark_failed
from .features import (FeatureReader, FeatureWriter, NamedReads, feature_reader, feature_writer,
                       has_pca_basis, read_pca_basis, store_encoding, write_pca_basis)
from .integrity import check_video_intact, chunk_digest, redo_command, storage_shape, verify_video
from .summary import (FLOAT16_BYTES, StoreSummary, VerifyReport, VideoDamage, VideoSummary, chunk_bytes,
                      stored_bytes, summarize_store, verify_store)
from .nodes import (node_complete, node_record, partial_name, remove_node, replace_node)
from .masks import MASK_DIMS, MASKS_ARRAY, MasksWriter, begin_masks
from .tracks import (LABELLED_DIMS, TRACKS_GROUP, begin_tracks, dataset_tracks, discard_tracks, mark_tracks_complete,
                     query_rows_per_chunk, read_tracks, tracks_node_name, tracks_size, write_tracks_part)
from .plain import PlainFeatures
from .lease import LeaseToken, witness_lease
