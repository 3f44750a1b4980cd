#!/usr/bin/env bash
# Download (here, where pip reaches a registry) the wheels the GPU machine lacks into .whl/, for
# its Python 3.12 on manylinux x86_64, and report their size. bench/gpu.sh installs them there.
#
#   bench/gpu_wheels.sh          engine wheels in .whl/, scvi-tools' in .whl/scvi/, and a copy
#                                of ../shared/data/hpoly_small.h5ad in .whl/data/ (scGen part)
#   bench/gpu_wheels.sh --clean  remove .whl/
#
# The GPU image (docs: /work/.library/device/KINDS.md) already holds torch, pytorch-lightning,
# lightning, torchmetrics, numpy, scipy, pandas, scikit-learn, h5py, numba, llvmlite, matplotlib,
# seaborn, statsmodels, networkx, patsy, joblib, tqdm, rich, xarray, tensorboard, pyyaml,
# absl-py, opt-einsum, six, typing-extensions, packaging, pytest. What it lacks, found by reading
# each wheel's Requires-Dist (`unzip -p W '*/METADATA' | grep ^Requires-Dist`), is pinned below
# at the versions of requirements.txt / the project venv.
# Left out on purpose: streamlit, plotly, kaleido (the app, not the engine); jax (scvi-tools'
# optional backend, and the image has it anyway); mudata >= 0.4 (it needs scverse-misc >= 0.1
# with pydantic-settings; 0.3.2 is enough for scvi-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "${1:-}" = "--clean" ]; then rm -rf .whl; echo "removed .whl/"; exit 0; fi

ENGINE=(
  anndata==0.12.19 scanpy==1.11.5
  array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0 scverse-misc==0.0.3
  session-info2==0.4.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  pynndescent==0.7.0 umap-learn==0.5.12
)
SCVI=(
  scvi-tools==1.4.2 ml-collections==1.1.0 mudata==0.3.2 pyro-ppl==1.9.2 pyro-api==0.1.2
  sparse==0.19.3 scikit-misc==0.5.3
)
SDIST_ONLY=(docrep==0.3.2)  # published as a source archive only: built here (pure Python)

PLATFORM=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl/scvi .whl/data
grep -qxF '/.whl/' .gitignore 2>/dev/null || echo "warning: add /.whl/ to .gitignore" >&2

quiet() { grep -v "is ignored: it is neither" || true; }
"$PY" -m pip download -q "${PLATFORM[@]}" -d .whl "${ENGINE[@]}" 2>&1 | quiet
"$PY" -m pip download -q "${PLATFORM[@]}" -d .whl/scvi "${SCVI[@]}" 2>&1 | quiet
"$PY" -m pip wheel -q --no-deps -w .whl/scvi "${SDIST_ONLY[@]}" 2>&1 | quiet
rm -f .whl/scvi/*.tar.gz

for f in "${SCGEN_DATA:-}" ../shared/data/hpoly_small.h5ad ../../shared/data/hpoly_small.h5ad shared/data/hpoly_small.h5ad; do
  if [ -n "$f" ] && [ -f "$f" ]; then cp "$f" .whl/data/; break; fi
done

echo "engine wheels:     $(ls .whl/*.whl | wc -l) files, $(du -ch .whl/*.whl | tail -1 | cut -f1)"
echo "scvi-tools wheels: $(ls .whl/scvi/*.whl | wc -l) files, $(du -ch .whl/scvi/*.whl | tail -1 | cut -f1)"
echo "data:              $(du -sh .whl/data | cut -f1) ($(ls .whl/data))"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb .whl | cut -f1)
echo "total .whl: $(( carried / 1024 / 1024 )) MiB; with the tracked tree ($(( tracked / 1024 / 1024 )) MiB):" \
  "$(( (carried + tracked) / 1024 / 1024 )) MiB of the device tool's 64 MiB"
