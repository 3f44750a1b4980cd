#!/usr/bin/env bash
# One device call: scGen's levers screened on the card (bench.scgen_levers --jobs, one process per
# variant, seed and held-out cell type, sharing the GPU) while the gpu-marked tests run beside it
# (bench/gpu.sh with SKIP_BENCH=1: no timed benchmark shares the machine with the screen).
#
#   OUT=... bash bench/gpu_levers.sh [VARIANTS] [SEEDS]     on the GPU machine, .whl carried
#
# Environment: JOBS (processes at a time, default 12), DEADLINE (s the screen may take, default
# 380), TAG (the machine in the blocks' keys, default h100), SKIP_TESTS (1: the screen only);
# for a rehearsal on the CPU: GPU_SH_ARGS=--dry-run, EPOCHS_CAP (e.g. 1), DRY_PYTEST_K.
# Writes to $OUT: scgen_levers.json, screen.log, and gpu.sh's files (pytest.log, pytest.xml,
# install.log, env.txt, gpu_sh.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT}"
mkdir -p "$OUT"
VARIANTS="${1:-default,e300}"
SEEDS="${2:-0,1,2}"
PY="${PYTHON:-python3}"
SKIP_BENCH=1 PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-300}" OUT="$OUT" bash bench/gpu.sh ${GPU_SH_ARGS:-} >"$OUT/gpu_sh.log" 2>&1 &
GPU_SH=$!
# the screen needs gpu.sh's packages (/tmp/site): wait for its install step
for _ in $(seq 120); do grep -q "engine imports" "$OUT/install.log" 2>/dev/null && break; sleep 1; done
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export SCWB_BENCH_DATA="${SCWB_BENCH_DATA:-.whl/data}"
"$PY" -m bench.scgen_levers --sets hpoly_small --variants "$VARIANTS" --seeds "$SEEDS" \
  --jobs "${JOBS:-12}" --tag "${TAG:-h100}" --out "$OUT/scgen_levers.json" \
  --deadline "${DEADLINE:-380}" --epochs-cap "${EPOCHS_CAP:-0}" >"$OUT/screen.log" 2>&1
SCREEN_RC=$?
echo "screen exit $SCREEN_RC"; tail -5 "$OUT/screen.log"
wait $GPU_SH; GPU_RC=$?
echo "gpu.sh exit $GPU_RC"; tail -6 "$OUT/gpu_sh.log"
[ $SCREEN_RC = 0 ] && [ $GPU_RC = 0 ]
