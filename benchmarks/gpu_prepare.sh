#!/usr/bin/env bash
# Before a GPU session, on this (networked) machine: what the GPU machine cannot fetch.
#   .whl/       wheels for its Python 3.12 of the packages its image lacks (hydra-core,
#               omegaconf, antlr4 runtime, kornia, kornia_rs, faiss-cpu), at the versions of
#               .venv here
#   .gpu/data/  CIFAR-10's packed source and prepare.py (../shared does not travel)
# Both are ignored by git; the device tool carries them (`carry: [".whl", ".gpu"]`).
#   benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl .gpu/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" "kornia==$(version kornia)" \
    "kornia_rs==$(version kornia_rs)" "faiss-cpu==$(version faiss-cpu)"
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
cp ../shared/data/prepare.py .gpu/data/
cp -r ../shared/data/cifar10 .gpu/data/
du -sh .whl .gpu
