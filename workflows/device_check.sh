#!/usr/bin/env bash
# One device check in one call of at most 5 minutes on a bare GPU machine (Python + torch only):
# installs liftvid's other dependencies from wheels carried in the working tree, then runs
# workflows/device_check.py: `pytest -m cuda`, `liftvid bench` (square:224 batch 256, short:448,
# --compile off and on), bench_propagate (28², 56²), bench_track (3,136 queries × 1,000 frames) and
# peak RSS / GPU memory of a 10,000-frame video, into ONE JSON: $OUT/device_check.json.
#
#   bash workflows/device_check.sh                       # on the GPU machine (run tool; carry .whl)
#   bash workflows/device_check.sh --device cpu --quick  # the same steps, tiny, on a CPU (CI)
#
# Packages: workflows/device_site.sh packs them, unpacked, into ./.whl/site.tar.xz (decord2 and PyAV
# wheels alone come to 64 MiB, all one run carries; packed they fit); ../shared/tools/device-wheels.sh
# downloads plain wheels into ./.whl instead. Keep .whl out of git and name it in the run's carry;
# WHEELS=dir overrides. When every dependency already imports (a dev venv, CI) the install step is
# skipped. Other options are passed to device_check.py (--budget, --only, --clip: a real clip, e.g.
# copied into ./.devdata, ignored by git and named in the carry).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/device_check_out}
wheels=${WHEELS:-$root/.whl}
python=${PYTHON:-}
if [[ -z $python ]]; then
  if command -v python3 >/dev/null; then python=python3; else python=python; fi
fi
args=()
device=cuda
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
mkdir -p "$out"

deps_import() {
  "$python" - <<'PY' 2>/dev/null
import importlib
for name in ("torch", "timm", "decord", "zarr", "numcodecs", "dask", "distributed", "xarray", "typer",
             "rich", "numpy", "PIL", "av", "safetensors", "fsspec", "pytest"):
    importlib.import_module(name)
PY
}

if deps_import; then
  echo "device_check: dependencies import; no install"
else
  site=${SITE:-/tmp/liftvid-site}
  if [[ -f $wheels/site.tar.xz ]]; then
    mkdir -p "$site"
    tar -xJf "$wheels/site.tar.xz" -C "$site"
  elif compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl
  else
    echo "device_check: dependencies missing and neither $wheels/site.tar.xz nor wheels in $wheels" \
         "(run workflows/device_site.sh)" >&2
    exit 2
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # the project itself: an editable install when pip can build offline, else the checkout on the path
  "$python" -m pip install -q --no-index --no-deps --no-build-isolation --find-links "$wheels" -e . \
    >/dev/null 2>&1 || echo "device_check: editable install unavailable offline; using the checkout on PYTHONPATH"
  deps_import || { echo "device_check: dependencies still missing after the wheel install" >&2; exit 2; }
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TIMM_OFFLINE=1
exec "$python" workflows/device_check.py --out "$out" --device "$device" ${args[@]+"${args[@]}"}
