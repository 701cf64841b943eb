#!/usr/bin/env bash
# The CUDA checks in one run, for a machine with an NVIDIA GPU and a CUDA torch:
# the tests that have CUDA variants, then the integration, tracking and neural benchmarks
# on the GPU (ours only: Open3D's pipelines are CPU-only here). Each step has its own time
# limit, so one slow step cannot take the others' time.
#
#   NEURAL_MAPPING_DATA=../shared/data bench/gpu_suite.sh OUT_DIR [FRAMES] [NEURAL_FRAMES]
#
# OUT_DIR gets the JSON of every benchmark and log.txt (all output; stdout shows each step's end). FRAMES (default 300) caps the 7-Scenes
# frames read, NEURAL_FRAMES (default 200) those of the neural benchmark. DEVICE=cpu makes
# the same run on the CPU (a dry run of this script). Needs python3 with torch (CUDA), numpy, scipy, PyYAML, Pillow, tqdm,
# pytest; evo for the ATE (pure Python); open3d is not needed.
set -u
OUT=${1:?usage: bench/gpu_suite.sh OUT_DIR [FRAMES]}
FRAMES=${2:-300}
NEURAL_FRAMES=${3:-200}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
LOG="$OUT/log.txt"
log() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
step() {  # step SECONDS NAME CMD...: full output to log.txt, its end to stdout
  local limit=$1 name=$2; shift 2
  log "$name"
  local from; from=$(wc -l < "$LOG")
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  tail -n +"$((from + 1))" "$LOG" | grep -v "^\s*$" | tail -n 14
  echo "--- $name exit $rc" | tee -a "$LOG"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null

step 100 tests_cuda "$PY" -m pytest -q -p no:cacheprovider -k cuda test/test_meshing.py test/test_mesh_cache.py
NEURAL_MAPPING_TEST_DEVICE=$DEVICE step 90 tests_neural "$PY" -m pytest -q -p no:cacheprovider test/test_neural.py
step 90 integration "$PY" bench/bench_integration.py --device "$DEVICE" --no-open3d --no-mesh \
  --frames "$FRAMES" --voxel-sizes 0.01 0.02 0.05 --out "$OUT/integration_$DEVICE.json"
step 200 neural "$PY" bench/bench_neural.py --device "$DEVICE" --sequences 7scenes --frames "$NEURAL_FRAMES" \
  --modes neural,imap,tsdf --pose-sources external,track --out "$OUT/neural_$DEVICE.json"
for v in 0.01 0.02; do
  step 80 "tracking_$v" "$PY" bench/bench_tracking.py --device "$DEVICE" --no-open3d --sequences 7scenes \
    --frames "$FRAMES" --voxel "$v" --out "$OUT/tracking_${DEVICE}_$v.json"
done
log done
