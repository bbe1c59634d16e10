#!/usr/bin/env bash
# The GPU measurements of issue 20 in one bounded command, run from the repository root on a lent
# H100/H200 machine:
#
#   bash benchmarks/gpu_session.sh                          # on the GPU machine: about 9 minutes at most
#   bash benchmarks/gpu_session.sh --fetch-wheels [core|full]   # first, here: the packages it lacks
#   PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --dry-run   # the same steps, tiny, on a CPU
#   GPU_STAGES=gpu bash benchmarks/gpu_session.sh            # some stages only (gpu, training, overlap)
#   GPU_BATCHES=8,32 GPU_FRAMES=100 GPU_VARIANTS=eager,graph GPU_CASE_S=3 ...   # a shorter gpu.py sweep
#
# Stages, each under `timeout`, inside GPU_SESSION_S seconds (540 by default) all together:
#   1. the machine: nvidia-smi, CPU cores, memory, python, torch and its CUDA (always);
#   2. gpu: benchmarks/gpu.py: `paper` px/s and MFU in bf16 over batch sizes x frame counts x
#      {eager, graph, compile, cudagraphs}, SDPA backends probed, the global-layer projection (~5.5 min);
#   3. overlap: benchmarks/overlap.py with the node's cores loading (the encoder's share of the
#      wall), if its packages import and enough time is left;
#   4. training: benchmarks/training_throughput.py: `paper` training steps at batch 2, 4, 8, 64 frames.
# Everything printed goes to $OUT/session.log when $OUT is set (a folder collected after the run),
# else to build/gpu-session/; gpu.py's rows go to gpu.json beside it, rewritten after every case.
#
# The GPU machine has python3 with torch (CUDA), numpy, xarray, pandas and safetensors, no network
# and not the geo packages aef_pipeline imports. `--fetch-wheels` downloads those, at the versions
# of the local environment, for CPython 3.12 into build/gpu-wheels (ignored by git); copied to the
# GPU machine with the working tree, this script installs every wheel under that folder into
# /tmp/aef-site there (a folder installed by an earlier call on the same machine is not redone):
#   core (~12 MB, in first/): odc-geo, affine, cachetools, pyproj, shapely: enough for stage 2;
#   full (~93 MB): + dask, distributed, zarr, pystac, odc-stac, rustac (first/, 57 MB) and
#      rasterio (second/, 36 MB): stages 3 and 4 too.
# Where at most 64 MiB can be copied to the GPU machine at once, copy first/ with a call that runs
# `GPU_STAGES=gpu`, then second/ with `GPU_STAGES=training,overlap` on the same (still running)
# machine.
set -uo pipefail

PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-build/gpu-wheels}"
TOTAL_S="${GPU_SESSION_S:-540}"
STAGES=",${GPU_STAGES:-gpu,training,overlap},"
for stage in ${STAGES//,/ }; do # a misspelt stage would otherwise run nothing, on scarce GPU time
  case "$stage" in
    gpu | training | overlap) ;;
    *) echo "GPU_STAGES: unknown stage '$stage' (known: gpu, training, overlap)" >&2; exit 2 ;;
  esac
done
CORE_WHEELS="odc-geo affine cachetools pyproj shapely"
SECOND_WHEELS="rasterio" # 36 MB alone: a second copy where one copy holds 64 MiB
FULL_WHEELS="$CORE_WHEELS rustac dask distributed donfig google-crc32c importlib_metadata lazy-importer locket
  numcodecs odc-loader odc-stac pystac pystac-client pystac-core pystac-ext-classification
  pystac-ext-datacube pystac-ext-eo pystac-ext-file pystac-ext-grid pystac-ext-item-assets
  pystac-ext-label pystac-ext-mgrs pystac-ext-mlm pystac-ext-pointcloud pystac-ext-projection
  pystac-ext-raster pystac-ext-render pystac-ext-sar pystac-ext-sat pystac-ext-scientific
  pystac-ext-storage pystac-ext-table pystac-ext-timestamps pystac-ext-version pystac-ext-view
  pystac-ext-xarray-assets rioxarray tblib tornado zarr zict"

fetch_wheels() {
  # Pinned to what the local environment runs (and CI tests), built for the GPU machine's Python.
  local tier="${1:-full}" names pins
  case "$tier" in
    core) names="$CORE_WHEELS" ;;
    full) names="$FULL_WHEELS" ;;
    *) echo "--fetch-wheels takes core or full, not '$tier'" >&2; return 2 ;;
  esac
  # shellcheck disable=SC2086  # one argument per name
  pins=$(pins $names) || return 2
  mkdir -p "$WHEELS/first"
  download "$WHEELS/first" $pins || return 1
  if [[ "$tier" == full ]]; then
    pins=$(pins $SECOND_WHEELS) || return 2
    mkdir -p "$WHEELS/second"
    download "$WHEELS/second" $pins || return 1
  fi
  for dir in "$WHEELS"/*/; do echo "$(ls "$dir"*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"; done
  echo "copy them to the GPU machine's checkout with the working tree, then run: bash benchmarks/gpu_session.sh"
}

pins() {
  "$PY" -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "$@" || {
    echo "could not read the local versions of: $* (run with PYTHON=.venv/bin/python)" >&2
    return 2
  }
}

download() {
  local dir="$1"
  shift
  # shellcheck disable=SC2068  # one argument per pin
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" $@
}

left() { echo $((TOTAL_S - SECONDS)); }

# stage NAME CAP_S COMMAND...: runs COMMAND under min(CAP_S, what is left - 5 s); skipped under 30 s.
stage() {
  local name="$1" cap="$2" rc
  shift 2
  ((cap > $(left) - 5)) && cap=$(($(left) - 5))
  if ((cap < 30)); then
    echo "== $name: skipped, $(left) s left of $TOTAL_S"
    return 0
  fi
  echo "== $name (at $SECONDS s, at most $cap s): $*"
  timeout --signal=INT --kill-after=15 "$cap" "$@"
  rc=$?
  ((rc == 124 || rc == 130 || rc == 137)) && echo "== $name: stopped at its $cap s cap (rows so far are kept)"
  ((rc != 0)) && echo "== $name: exit status $rc"
  return 0
}

importable() { "$PY" -c "import $1" >/dev/null 2>&1; }

machine() {
  echo "== machine ($(date -u +%Y-%m-%dT%H:%M:%SZ)): $(nproc) CPU cores, $(free -g 2>/dev/null | awk '/Mem:/ {print $2}') GiB memory"
  if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
      --format=csv
    timeout 20 nvidia-smi | head -20
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF'
import sys
print(f"python {sys.version.split()[0]} at {sys.executable}")
try:
    import torch
except ImportError as error:
    print(f"torch: not importable ({error})")
else:
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "none"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: {name}")
EOF
}

install_wheels() {
  # Into folders of our own, ahead of the machine's packages only for what we bring: each folder
  # of wheels into its own target (pip --target replaces a target's bin/ whole), and one that an
  # earlier call installed on this machine is not redone (the split copy of --fetch-wheels full).
  local dir target
  for dir in "$WHEELS" "$WHEELS"/*/; do
    dir="${dir%/}"
    ls "$dir"/*.whl >/dev/null 2>&1 || continue
    target="/tmp/aef-site/$(basename "$dir")"
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" PATH="$target/bin:$PATH"
    if [[ -e "$target/.installed" ]]; then
      echo "== wheels of $dir: installed by an earlier call in $target"
      continue
    fi
    echo "== installing $(ls "$dir"/*.whl | wc -l) carried wheels of $dir into $target"
    if timeout 150 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$target" "$dir"/*.whl; then
      touch "$target/.installed"
    else
      echo "== wheel install of $dir failed: the stages that need them will say so"
    fi
  done
}

wanted() { [[ "$STAGES" == *",$1,"* ]]; }

main() {
  local dry="$1" logdir="$2" device spec
  export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "== bash benchmarks/gpu_session.sh $dry (GPU_SESSION_S=$TOTAL_S, GPU_STAGES=${STAGES:1:-1}), log in $logdir"
  machine
  [[ "$dry" == --dry-run ]] || install_wheels
  device=cuda spec=paper
  if [[ "$dry" == --dry-run ]]; then
    device=cpu spec=tiny
    echo "== dry run: $spec on the CPU, tiny sizes"
  elif ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "== FAILED: $PY has no torch that sees a CUDA GPU: nothing to measure (--dry-run checks on a CPU)"
    return 2
  fi
  if ! importable "aef_pipeline.encode"; then
    "$PY" -c "import aef_pipeline.encode" 2>&1 | tail -1
    echo "== FAILED: aef_pipeline does not import; bring $WHEELS along (bash benchmarks/gpu_session.sh --fetch-wheels)"
    return 2
  fi
  wanted gpu && gpu_stage "$device" "$spec" "$logdir"
  wanted overlap && overlap_stage "$device" "$spec"
  wanted training && training_stage "$device" "$spec"
  echo "== done in $SECONDS s; files in $logdir"
}

gpu_stage() {
  local device="$1" spec="$2" logdir="$3" budget
  budget=$(($(left) - 60)) # the overrun of the last case
  wanted training && budget=$((budget - 130)) # kept for training (~110 s)
  wanted overlap && budget=$((budget - 240))  # and the overlap figure
  ((budget > 330)) && budget=330
  if [[ "$device" == cpu ]]; then
    stage "gpu.py" 300 "$PY" -m benchmarks.gpu --spec "$spec" --device cpu --batch-sizes 2,4 --frames 4,8 \
      --variants eager --seconds-per-case 1 --budget-s 90 --json "$logdir/gpu.json"
  else
    stage "gpu.py" $((budget + 60)) "$PY" -m benchmarks.gpu --spec "$spec" --device cuda \
      --batch-sizes "${GPU_BATCHES:-4,8,16,32}" --frames "${GPU_FRAMES:-100,40,16}" \
      --variants "${GPU_VARIANTS:-eager,graph,compile,cudagraphs}" --seconds-per-case "${GPU_CASE_S:-6}" \
      --budget-s "$budget" --json "$logdir/gpu.json"
  fi
}

training_stage() {
  local device="$1" spec="$2"
  if ! importable "benchmarks.training_throughput"; then
    echo "== training throughput: skipped, it does not import (bring the full wheels):"
    "$PY" -c "import benchmarks.training_throughput" 2>&1 | tail -1
  elif [[ "$device" == cpu ]]; then
    stage "training throughput" 200 "$PY" -m benchmarks.training_throughput --spec "$spec" --device cpu \
      --batch-sizes 2 --frames 8 --steps 1
  else
    stage "training throughput" 110 "$PY" -m benchmarks.training_throughput --spec "$spec" --device cuda \
      --batch-sizes 2,4,8 --frames 64 --steps 5
  fi
}

overlap_stage() {
  local device="$1" spec="$2"
  if ! importable "benchmarks.overlap" || ! "$PY" -c 'import pathlib, shutil, sys
sys.exit(0 if (pathlib.Path(sys.executable).parent / "rustac").exists() or shutil.which("rustac") else 1)'; then
    echo "== overlap: skipped, benchmarks.overlap or the rustac command is missing (33 MB more wheels)"
  elif [[ "$device" == cpu ]]; then
    echo "== overlap: skipped in a dry run (minutes on a CPU)"
  elif (($(left) < 150)); then
    echo "== overlap: skipped, $(left) s left: the test bed renders, then 4 runs of 4 tasks"
  else
    # The test bed renders on all the node's cores first (benchmarks/data.py caches it).
    stage "overlap: test bed" 90 "$PY" -c "from benchmarks.data import bench_catalog
catalog, built = bench_catalog(processes=$(nproc)); print(len(catalog.items), 'products', 'built' if built else 'cached')"
    stage "overlap" 300 "$PY" -m benchmarks.overlap --device cuda --spec "$spec" --read-threads 8
  fi
}

case "${1:-}" in
  --fetch-wheels) fetch_wheels "${2:-full}" ;;
  --dry-run | "")
    logdir="${OUT:-build/gpu-session}"
    mkdir -p "$logdir"
    main "${1:-}" "$logdir" 2>&1 | tee -a "$logdir/session.log"
    ;;
  *) echo "usage: bash benchmarks/gpu_session.sh [--dry-run | --fetch-wheels [core|full]]" >&2; exit 2 ;;
esac
