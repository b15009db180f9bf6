#!/usr/bin/env bash
# Before a GPU session, on this (networked) machine: what the GPU machine cannot fetch.
#   .whl/       wheels for its Python 3.12 of the packages its image lacks (hydra-core,
#               omegaconf, antlr4 runtime, kornia, kornia_rs, faiss-cpu), at the versions of
#               .venv here
#   .gpu/data/  CIFAR-10's packed source and prepare.py (../shared does not travel)
#   .gpu/commit the commit the session runs (the GPU machine gets no .git), "+" when the
#               working tree differs from it
# Both are ignored by git; the device tool carries them (`carry: [".whl", ".gpu"]`). Then the
# GPU queue's command entries whose code changed since they were measured go back to pending
# (benchmarks/gpu_queue.py stale): commit that with the rest.
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
echo "$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo +)" > .gpu/commit
"$PY" benchmarks/gpu_queue.py stale
du -sh .whl .gpu
