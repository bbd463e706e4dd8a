#!/usr/bin/env bash
# Packs the Python packages the GPU machine's image lacks, installed for its Python 3.12 on x86-64,
# into ./.whl/site.tar.xz, which workflows/device_check.sh unpacks there onto PYTHONPATH.
#
#   bash workflows/device_site.sh            # here, once (downloads ~70 MB, xz takes minutes)
#
# Why packed: the decord2 (27 MB) and PyAV (35 MB) wheels with the rest come to 64 MiB, the most one
# device run carries together with the checkout; xz packs the installed files to about 50 MiB.
# Pillow 12.3.0 travels too: the exact resize ops are checked against Pillow's classic BICUBIC,
# which Pillow 13 changes for some shapes, whatever Pillow the image holds.
# Keep .whl/ out of git (it is in .gitignore) and name it in the run's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any)
pkgs=(decord2==3.4.0 av "zarr>=3.1,<4" numcodecs donfig google-crc32c "dask>=2025.1" "distributed>=2025.1"
      partd locket tblib zict tornado msgspec pillow==12.3.0)
target=(--only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}")
# downloaded first, then installed from those files alone, so the versions are the newest wheels
# (an install by name for another Python picked older ones here: numcodecs 0.16.6 at 36 MB unpacked)
"$python" -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" "${pkgs[@]}"
"$python" -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
mkdir -p "$dest"
tar -C "$work/site" -cf - . | xz -T0 -6 >"$dest/site.tar.xz.partial"
mv "$dest/site.tar.xz.partial" "$dest/site.tar.xz"
ls -l "$dest/site.tar.xz"
