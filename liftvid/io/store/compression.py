"""The bytes-to-bytes codecs of the store's arrays: compression and a CRC32C checksum per chunk."""

from __future__ import annotations

from typing import Any


# The default compressor ("auto"), chosen by workflows/bench_storage.py (issue 12): 64 frames of
# backpack + cat, dino_vits16 random weights + random LiFT at square:224 (28x28x384 float16, 602,112
# B/frame raw, chunks of 4 frames), 2 CPU cores loaded by other jobs (load 5 and 13 in two runs),
# best of 5 rounds, ratio to raw float16 and process CPU ms per frame to write / to read:
#   zstd level 0 (the old default)   1.108x   write 4.35 / 4.22   read 1.44 / 1.39
#   zstd levels 1, 3, 9              1.108x   (the level changes nothing: the mantissa bits are noise)
#   zstd level 1                     1.108x   write 4.10 / 3.41   read 1.24 / 1.34
#   blosc zstd-3 bitshuffle          1.143x   write 5.36 / 5.84   read 1.35 / 1.43
#   blosc zstd-5 bitshuffle          1.187x   write 8.78 / 8.95   read 1.25 / 1.31
#   blosc lz4-5 byte shuffle         1.010x   write 4.06 / 3.18   read 0.75 / 0.84
#   blosc lz4-9 bitshuffle           1.145x   write 3.79 / 3.46   read 0.98 / 0.95   <- the default
#   no compression (checksum only)   1.000x   write 3.07 / 2.69   read 0.50 / 0.54
# (without LiFT, 14x14x384 in chunks of 16: zstd-0 1.091x, lz4-9 bitshuffle 1.146x, write 1.02 vs
# 0.89 ms, read 0.39 vs 0.24 ms.) lz4-9 with bit shuffle is 3-5 % smaller than the old default, no
# dearer to write and a third cheaper to read. Bit shuffle groups the float16 sign and exponent
# bits, the only part that compresses (byte shuffle with lz4 finds nothing). zstd-5 bitshuffle is
# 4 % smaller again at 2.5x the write CPU, which a GPU extract (issue 14: 2,000 frames/s with the
# cores busy decoding) cannot spare; large savings come from int8/PCA, not from a lossless codec.
# typesize is left to the array (2 for float16, 8 for frame_index); existing stores keep reading
# (each array's zarr.json names its codecs). Random-weight features: trained ones may compress
# differently (rerun the benchmark with --store on a store of real features).
DEFAULT_COMPRESSOR = {"cname": "lz4", "clevel": 9, "shuffle": "bitshuffle"}


def checksummed(compressors: Any = "auto") -> tuple:
    """The bytes-to-bytes codecs of a feature array: ``compressors`` (``"auto"``: Blosc LZ4 with
    bit shuffle, :data:`DEFAULT_COMPRESSOR`) followed by a CRC32C checksum of every stored chunk,
    so that a damaged chunk fails to read instead of decoding to other numbers."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    if isinstance(compressors, str) and compressors == "auto":
        compressors = (BloscCodec(**DEFAULT_COMPRESSOR),)  # typesize: the array's item size
    elif compressors is None:
        compressors = ()
    elif not isinstance(compressors, (list, tuple)):
        compressors = (compressors,)
    return (*(c for c in compressors if not isinstance(c, Crc32cCodec)), Crc32cCodec())
