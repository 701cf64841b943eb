#!/usr/bin/env bash
# The CUDA checks in one run, for a machine with an NVIDIA GPU and a CUDA torch:
# the tests that have CUDA variants, then the integration, tracking and neural benchmarks
# on the GPU (ours only: Open3D's pipelines are CPU-only here). Each step has its own time
# limit, so one slow step cannot take the others' time.
#
#   NEURAL_MAPPING_DATA=../shared/data bench/gpu_suite.sh OUT_DIR [FRAMES] [NEURAL_FRAMES]
#
# OUT_DIR gets the JSON and the log of every step. FRAMES (default 300) caps the 7-Scenes
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
log() { echo "=== $* ($(date +%T))"; }
step() {  # step SECONDS NAME CMD...
  local limit=$1 name=$2; shift 2
  log "$name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
  echo "--- $name exit ${PIPESTATUS[0]}"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null

step 150 tests_cuda "$PY" -m pytest -q -p no:cacheprovider -k cuda \
  test/test_meshing.py test/test_mesh_cache.py test/test_neural.py
step 90 integration "$PY" bench/bench_integration.py --device "$DEVICE" --no-open3d --no-mesh \
  --frames "$FRAMES" --voxel-sizes 0.01 0.02 0.05 --out "$OUT/integration_$DEVICE.json"
for v in 0.01 0.02; do
  step 100 "tracking_$v" "$PY" bench/bench_tracking.py --device "$DEVICE" --no-open3d --sequences 7scenes \
    --frames "$FRAMES" --voxel "$v" --out "$OUT/tracking_${DEVICE}_$v.json"
done
step 240 neural "$PY" bench/bench_neural.py --device "$DEVICE" --sequences 7scenes --frames "$NEURAL_FRAMES" \
  --modes neural,imap,tsdf --pose-sources external,track --out "$OUT/neural_$DEVICE.json"
log done
