#!/usr/bin/env bash
# The whole GPU check in one run: install what the GPU machine lacks from wheels carried in .whl/,
# run the gpu-marked tests on the card, then the benchmarks (bench/gpu_bench.py), and write one
# results JSON (+ logs) under $OUT (bench/results/gpu/ when OUT is unset).
#
#   bench/gpu.sh              on the GPU machine (run from the repository root, .whl carried)
#   bench/gpu.sh --dry-run    the same flow on the CPU at tiny sizes (writes to
#                             bench/results/gpu/dry-run/ when OUT is unset)
#   bench/gpu.sh [--dry-run] -- ARGS   extra arguments for bench.gpu_bench (sizes, parts, ...)
#
# Environment: PYTHON (default python3), OUT, SKIP_TESTS (1: benchmarks only), SKIP_BENCH (1: tests
# only, no CPU reference either: the card is shared with other work), PYTEST_TIMEOUT (s, default 240),
# BENCH_TIMEOUT (s, default 330), CPU_REF_WAIT (s the benchmarks wait for scGen's CPU reference
# after the tests, default 45), SCGEN_DATA (log-normalised .h5ad for the scGen part).
# Files written (at most 8, as the device tool brings back): gpu.json (all results, the pytest
# summary included), pytest.xml, pytest.log, bench.log, install.log, env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

if [ "$DRY" = 1 ]; then RES="${OUT:-bench/results/gpu/dry-run}"; else RES="${OUT:-bench/results/gpu}"; fi
mkdir -p "$RES"
RES="$(cd "$RES" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
say() { echo "[gpu.sh $(( $(date +%s) - T0 ))s] $*"; }

# ---------------------------------------------------------------- 1. packages from .whl/
# .whl/*.whl: what the engine needs beyond the image (anndata, scanpy, ...) -> /tmp/site
# .whl/scvi/*.whl: scvi-tools and its extras -> /tmp/site-scvi, seen only by the scvi-tools peer
SITE=/tmp/site
SCVI_SITE=/tmp/site-scvi
SCVI_ARGS=()
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
{
  shopt -s nullglob
  engine_whl=(.whl/*.whl)
  scvi_whl=(.whl/scvi/*.whl)
  echo "wheels: ${#engine_whl[@]} engine, ${#scvi_whl[@]} scvi-tools ($(du -sh .whl 2>/dev/null | cut -f1))"
  dupes=$(for w in "${engine_whl[@]}" "${scvi_whl[@]}"; do basename "$w" | cut -d- -f1 | tr 'A-Z_.' 'a-z--'; done | sort | uniq -d)
  [ -n "$dupes" ] && echo "ERROR: two versions of: $dupes"
  if [ "$DRY" = 1 ]; then
    # here the interpreter is not the GPU machine's: check that pip would install every wheel
    # there (Python 3.12, manylinux x86_64), without installing anything
    for set in engine scvi; do
      if [ $set = engine ]; then files=("${engine_whl[@]}"); else files=("${scvi_whl[@]}"); fi
      [ ${#files[@]} = 0 ] && { echo "$set: no wheels (run bench/gpu_wheels.sh)"; continue; }
      "$PY" -m pip install --dry-run --no-index --no-deps --target /tmp/scwb-gpu-dry "${PLATFORM[@]}" \
        "${files[@]}" 2>&1 | grep -v "is ignored" | tail -2 && echo "$set wheels: installable on cp312 manylinux (pip --dry-run)"
    done
  else
    if [ ${#engine_whl[@]} -gt 0 ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${engine_whl[@]}" \
        && echo "installed ${#engine_whl[@]} wheels into $SITE"
    fi
    if [ ${#scvi_whl[@]} -gt 0 ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCVI_SITE" "${scvi_whl[@]}" \
        && echo "installed ${#scvi_whl[@]} wheels into $SCVI_SITE"
    fi
  fi
} >"$RES/install.log" 2>&1
if [ "$DRY" != 1 ] && [ -d "$SITE" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
if [ "$DRY" != 1 ] && [ -d "$SCVI_SITE" ]; then SCVI_ARGS=(--scvi-path "$SCVI_SITE"); fi
if [ "$DRY" = 1 ] && [ -n "${SCVI_PATH:-}" ]; then SCVI_ARGS=(--scvi-path "$SCVI_PATH"); fi
"$PY" -c "import anndata, scanpy, engine.train; from importlib.metadata import version as v; print('engine imports: ok (anndata', v('anndata'), 'scanpy', v('scanpy') + ')')" >>"$RES/install.log" 2>&1
say "$(tail -1 "$RES/install.log")"

# ---------------------------------------------------------------- 2. the machine
{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("card", p.name, round(p.total_memory / 2**30, 1), "GiB,", p.multi_processor_count, "SMs")
EOF
  "$PY" -m pip list 2>/dev/null | grep -iE "^(torch|pytorch-lightning|lightning|numpy|scipy|pandas|anndata|scanpy|scikit-learn|h5py|zarr|pytest) "
} >"$RES/env.txt" 2>&1

# ---------------------------------------------------------------- 3. scGen's CPU reference
# scGen's R^2 on the CPU for the same spec and data, trained on half the machine's cores while
# the tests run (they are not timed); the benchmarks start after it, so it never shares the
# machine with a timed measurement.
SCGEN=()
for f in "${SCGEN_DATA:-}" .whl/data/hpoly_small.h5ad shared/data/hpoly_small.h5ad ../shared/data/hpoly_small.h5ad; do
  if [ -n "$f" ] && [ -f "$f" ]; then SCGEN=(--scgen-data "$f"); break; fi
done
CPU_REF_DIR=/tmp/scwb-scgen-cpu
rm -rf "$CPU_REF_DIR"; mkdir -p "$CPU_REF_DIR"
THREADS=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
if [ "$DRY" = 1 ]; then
  REF_ARGS=(--scgen-epochs 2 --scgen-synthetic 300,500)  # the plumbing only
else
  REF_ARGS=("${SCGEN[@]}")
fi
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  CPU_REF_PID=0
else
  say "scGen CPU reference in the background ($THREADS threads)"
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$THREADS "$PY" -m bench.gpu_bench --device cpu --parts scgen \
    --out "$CPU_REF_DIR" "${REF_ARGS[@]}" >"$CPU_REF_DIR/log" 2>&1 &
  CPU_REF_PID=$!
fi

# ---------------------------------------------------------------- 4. gpu tests
if [ "$DRY" = 1 ]; then
  export SCWB_TEST_DEVICE=cpu
  KEEP=(-k "${DRY_PYTEST_K:-not bf16}")  # bf16 autocast on a shared CPU takes minutes
else
  KEEP=()
fi
if [ "${SKIP_TESTS:-0}" = 1 ]; then  # a second call that only measures (docs/GPU.md, Time box)
  say "pytest -m gpu: skipped (SKIP_TESTS=1)"
  PYTEST_RC=0
  rm -f "$RES/pytest.xml"
else
  say "pytest -m gpu (device ${SCWB_TEST_DEVICE:-cuda})"
  timeout "${PYTEST_TIMEOUT:-240}" "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider \
    "${KEEP[@]}" --junitxml="$RES/pytest.xml" >"$RES/pytest.log" 2>&1
  PYTEST_RC=$?
  say "pytest exit $PYTEST_RC: $(grep -E "passed|failed|error" "$RES/pytest.log" | tail -1)"
fi
unset SCWB_TEST_DEVICE

# ---------------------------------------------------------------- 5. benchmarks
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  say "benchmarks: skipped (SKIP_BENCH=1)"
  ls -la "$RES"
  exit $PYTEST_RC
fi
REF=()
for _ in $(seq "${CPU_REF_WAIT:-45}"); do kill -0 "$CPU_REF_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$CPU_REF_PID" 2>/dev/null; then
  kill "$CPU_REF_PID"; wait "$CPU_REF_PID" 2>/dev/null
  say "scGen CPU reference not done in time: stopped (the R^2 is compared with no CPU figure)"
  REF=(--scgen-cpu no)
elif wait "$CPU_REF_PID" && [ -f "$CPU_REF_DIR/scgen_cpu.json" ]; then
  say "scGen CPU reference: done"
  REF=(--scgen-cpu-json "$CPU_REF_DIR/scgen_cpu.json")
else
  say "scGen CPU reference failed: $(tail -1 "$CPU_REF_DIR/log")"
  REF=(--scgen-cpu no)
fi
if [ "$DRY" = 1 ]; then
  SIZES=(--device cpu --dry-run --sizes 2000,6000 --batch-sizes 128,512 --scvi-batch-sizes 128
    --seconds 1 --warmup 3 --scgen-epochs 2 --scgen-synthetic 300,500 --submit-sizes 1000,3000
    --budget-gb 1)
  SCGEN=()  # the tiny synthetic set: the dry run checks the flow, not scGen's accuracy
else
  SIZES=(--device cuda)
fi
SCGEN+=("${REF[@]}")
say "bench.gpu_bench ${SIZES[*]} ${SCGEN[*]} ${EXTRA[*]}"
timeout "${BENCH_TIMEOUT:-330}" "$PY" -m bench.gpu_bench --out "$RES" --pytest-junit "$RES/pytest.xml" \
  "${SIZES[@]}" "${SCVI_ARGS[@]}" "${SCGEN[@]}" "${EXTRA[@]}" >"$RES/bench.log" 2>&1
BENCH_RC=$?
[ $BENCH_RC = 124 ] && echo "bench.gpu_bench: stopped at BENCH_TIMEOUT; gpu.json holds the parts done" >>"$RES/bench.log"
say "bench exit $BENCH_RC; results in $RES/gpu.json"
grep -E '^\{' "$RES/bench.log" | tail -40
ls -la "$RES"
[ $PYTEST_RC = 0 ] && [ $BENCH_RC = 0 ]
