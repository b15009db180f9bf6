#!/usr/bin/env bash
# A prepared GPU session, from a fresh GPU machine (the machine reaches no package index).
#
# With --next (what a session lent a GPU runs): install, unpack CIFAR-10, a short GPU smoke
# test (the train-step tests on the GPU, the real CUDA-graph capture among them), then the
# first entries of the GPU queue (benchmarks/gpu_queue.yaml, benchmarks/gpu_queue.py) that
# fit in what is left of --budget-s; each writes its results into the queue file and the
# docs (docs/speedrun.md, docs/experiments.md, docs/benchmarks.md), which come back in $OUT
# under the same paths with the curves and the log. A second call while the machine is warm
# resumes a run the first one capped. --dry-run --next: the same path on the CPU, every entry
# shrunk, on scratch copies of the queue and docs in $OUT (about a minute).
#   benchmarks/gpu_session.sh --next --budget-s 540     there (device tool: carry .whl and .gpu)
#   benchmarks/gpu_session.sh --dry-run --next          here
#
# Without --next, every GPU table of docs/benchmarks.md in about 9 minutes (--budget-s):
#   1. install the project and the wheels of .whl/ (the machine reaches no package index);
#   2. unpack CIFAR-10 from .gpu/data/ (benchmarks/gpu_prepare.sh makes both, here);
#   3. the train-step tests on the GPU (a subset: placement, host reads, CUDA graphs, trainer);
#   4. host-device synchronisations per step (CUDA's sync debug mode), every method;
#   5. every method's step vs the best of its bare network passes, eager and captured (CUDA
#      graphs), and SimCLR's compiled and compiled + captured too;
#   6. view generation against torchvision's per-sample transforms;
#   7. the time-to-accuracy run (experiment=cifar10_simclr_fast, with the fastest of SimCLR's
#      variants measured in 5) under a hard wall-clock cap: the rest of the budget. It stops
#      with a checkpoint; calling the script again on the same machine (warm) resumes it.
# Every table goes into docs/benchmarks.md ("## GPU", with date, device and command), which
# comes back in $OUT with the session's log, the accuracy-against-wall-clock plot and the
# step times. A stage that would not fit in what is left of the budget is skipped, named.
#
#   benchmarks/gpu_session.sh               on the GPU machine (device tool: carry .whl and .gpu)
#   benchmarks/gpu_session.sh --dry-run     on a CPU: every stage shrunk, about a minute
#   --recipe cifar10_byol_fast              the time-to-accuracy run of BYOL (or cifar10_r2d2_fast)
#   --tta-dir DIR                           its run directory (default /tmp/mc-RECIPE; a second call resumes)
#   --skip step_syncs,views                 stages not to run (their tables already recorded)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
NEXT=0
BUDGET=
TTA_DIR=
RECIPE=cifar10_simclr_fast
SKIP=,
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --next) NEXT=1 ;;
        --budget-s) BUDGET=$2; shift ;;
        --tta-dir) TTA_DIR=$2; shift ;;
        --recipe) RECIPE=$2; shift ;;
        --skip) SKIP=",$2,"; shift ;;
        *) echo "gpu_session.sh: unknown option $1 (use --next, --dry-run, --budget-s N, --tta-dir DIR, --skip A,B," \
                "--recipe cifar10_simclr_fast|cifar10_byol_fast|cifar10_r2d2_fast)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$BUDGET" ] || { [ "$NEXT$DRY" = 11 ] && BUDGET=90 || BUDGET=540; }
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_session.sh: --budget-s takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
[ -n "$TTA_DIR" ] || TTA_DIR="/tmp/mc-$RECIPE"
START=$(date +%s)
OUT=${OUT:-/tmp/mc-gpu-session}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
DATA=.cache/data
if [ "$DRY" = 1 ]; then
    PY=${PY:-.venv/bin/python}
    DEVICE=cpu
    DOC="$OUT/benchmarks.md"  # a dry run writes into a scratch copy of the document
    cp docs/benchmarks.md "$DOC"
    [ "$TTA_DIR" = "/tmp/mc-$RECIPE" ] && TTA_DIR="/tmp/mc-$RECIPE-dry" && rm -rf "$TTA_DIR"
else
    PY=${PY:-python3}
    DEVICE=cuda
    DOC=docs/benchmarks.md
fi
export METACONTRAST_BENCHMARKS_DOC="$PWD/$DOC"
[ "${DOC#/}" != "$DOC" ] && export METACONTRAST_BENCHMARKS_DOC="$DOC"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "$*" | tee -a "$LOG"; }

# stage NAME SECONDS_NEEDED COMMAND...: run it (output in the log) unless the budget is short
stage() {
    local name=$1 need=$2
    shift 2
    if [ "${SKIP#*,"$name",}" != "$SKIP" ]; then
        say "== $name: skipped (--skip)"
        return 1
    fi
    if [ "$(left)" -lt "$need" ]; then
        say "== $name: skipped, $(left) s left of the budget and it needs about $need"
        return 1
    fi
    say "== $name ($(left) s left): $*"
    local t0 rc
    t0=$(date +%s)
    "$@" >> "$LOG" 2>&1
    rc=$?
    say "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
    return $rc
}

install() {
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl || return 1
    local editable=(-e .)
    for p in plugins/*/; do editable+=(-e "$p"); done
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir "${editable[@]}" || return 1
    "$PY" -c "import faiss, hydra, kornia, metacontrast, metacontrast_kornia, torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
}

data() {
    local source=.gpu/data
    [ -f "$source/prepare.py" ] || source=../shared/data
    "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, '$source'); import prepare; prepare.cifar10(Path('$DATA'))"
}

say "gpu_session.sh: budget $BUDGET s, device $DEVICE, dry run $DRY, next $NEXT, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ "$DRY" = 0 ]; then
    if "$PY" -c "import metacontrast, metacontrast_kornia" 2> /dev/null; then
        say "== install: already installed (a warm machine)"
    else
        stage install 60 install || { say "install failed: see the log"; exit 1; }
    fi
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG"
fi
stage data 40 data || { say "no CIFAR-10: run benchmarks/gpu_prepare.sh and carry .gpu"; exit 1; }

if [ "$NEXT" = 1 ]; then
    # the queue and the docs it writes: the checkout's on the GPU (brought back in $OUT), scratch
    # copies in $OUT on a dry run
    QUEUE_FILE=benchmarks/gpu_queue.yaml
    DOCS_DIR=docs
    SMOKE=(tests/test_graphs.py tests/test_device_placement.py)
    SMOKE_S=60
    if [ "$DRY" = 1 ]; then
        mkdir -p "$OUT/benchmarks" "$OUT/docs"
        cp benchmarks/gpu_queue.yaml "$OUT/benchmarks/"
        cp docs/speedrun.md docs/experiments.md docs/benchmarks.md "$OUT/docs/"
        QUEUE_FILE=$OUT/benchmarks/gpu_queue.yaml
        DOCS_DIR=$OUT/docs
        SMOKE=(tests/test_graphs.py::test_capture_is_refused_where_it_cannot_work_naming_the_option)
        SMOKE_S=15
    fi
    if [ "$DRY" = 0 ] && [ -f /tmp/mc-queue/.smoke-passed ]; then
        say "== smoke: passed earlier on this machine"
    else
        stage smoke "$SMOKE_S" env "METACONTRAST_TEST_DEVICE=$DEVICE" "$PY" -m pytest -x -q -p no:cacheprovider \
            "${SMOKE[@]}" || { say "no smoke test passed (failed, or no time for it): the queue is left as it is"; exit 1; }
        [ "$DRY" = 0 ] && mkdir -p /tmp/mc-queue && touch /tmp/mc-queue/.smoke-passed
    fi
    QUEUE_ARGS=(next --budget-s "$(( $(left) - 10 ))" --out "$OUT" --data-root "$DATA" --python "$PY")
    [ "$DRY" = 1 ] && QUEUE_ARGS+=(--dry-run --workdir "$OUT/runs")
    say "== queue ($(left) s left): benchmarks/gpu_queue.py ${QUEUE_ARGS[*]}"
    "$PY" benchmarks/gpu_queue.py --queue "$QUEUE_FILE" --docs "$DOCS_DIR" "${QUEUE_ARGS[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$DRY" = 0 ]; then
        mkdir -p "$OUT/benchmarks" "$OUT/docs"
        cp benchmarks/gpu_queue.yaml "$OUT/benchmarks/"
        cp docs/speedrun.md docs/experiments.md docs/benchmarks.md "$OUT/docs/"
        [ -d docs/speedrun ] && cp -r docs/speedrun "$OUT/docs/"
    fi
    say "gpu_session.sh: done after $(( $(date +%s) - START )) s (queue exit $rc); queue $QUEUE_FILE, docs $DOCS_DIR"
    exit "$rc"
fi

if [ "$DRY" = 1 ]; then
    stage tests 60 env METACONTRAST_TEST_DEVICE=cpu "$PY" -m pytest -x -q -p no:cacheprovider tests/test_graphs.py
    stage step_syncs 30 "$PY" benchmarks/step_syncs.py --data-root "$DATA" --device cpu --batch 16 --methods simclr --write
    stage throughput 90 "$PY" benchmarks/method_throughput.py --data-root "$DATA" --device cpu --batch 16 \
        --methods simclr --variants eager,compiled --compile-backend aot_eager --rounds 1 \
        --section compile_effect_cpu --json "$OUT/throughput.json" --write
    stage views 40 "$PY" benchmarks/view_throughput.py --data-root "$DATA" --device cpu --batch 32 --repeats 1 \
        --workers 1
    TTA_EXTRA=(encoder=conv4 data.train_subset=512 data.test_subset=256 trainer.batch_size=64 trainer.epochs=4
               trainer.eval_every_epochs=1 trainer.checkpoint_every=4 evaluation.batch_size=256 trainer.device=cpu)
    CAP_MAX=60
else
    stage tests 150 env METACONTRAST_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_device_placement.py tests/test_host_reads.py tests/test_graphs.py tests/test_trainer.py
    stage step_syncs 45 "$PY" benchmarks/step_syncs.py --data-root "$DATA" --device cuda --write
    stage throughput 120 "$PY" benchmarks/method_throughput.py --data-root "$DATA" --device cuda --batch 256 \
        --variants eager,graphs --steps 5 --rounds 3 --write
    # the compiled step captured, alone first: a fault there would end the table's process
    SIMCLR_VARIANTS=eager,graphs,compiled
    stage compiled_graphs_probe 60 env CUDA_LAUNCH_BLOCKING=1 "$PY" benchmarks/method_throughput.py \
        --data-root "$DATA" --device cuda --batch 256 --methods simclr --variants compiled+graphs --steps 2 \
        --rounds 1 && SIMCLR_VARIANTS=$SIMCLR_VARIANTS,compiled+graphs
    stage throughput_simclr 120 "$PY" benchmarks/method_throughput.py --data-root "$DATA" --device cuda \
        --batch 256 --methods simclr --variants "$SIMCLR_VARIANTS" --steps 5 --rounds 3 \
        --section simclr_variants_cuda --json "$OUT/throughput.json" --write
    stage views 45 "$PY" benchmarks/view_throughput.py --data-root "$DATA" --device cuda --write
    TTA_EXTRA=()
    CAP_MAX=100000
fi

# the time-to-accuracy run with SimCLR's fastest variant of stage 5 (the recipe's own when unmeasured)
VARIANT=$("$PY" - "$OUT/throughput.json" <<'PYEOF'
import json, sys
try:
    times = json.load(open(sys.argv[1]))["times_ms"]
except (OSError, ValueError, KeyError):
    print("compiled"); raise SystemExit  # unmeasured: compiled, not captured
steps = {k.split("/", 1)[1]: v for k, v in times.items() if k.startswith("simclr/") and "/bare" not in k}
print(min(steps, key=steps.get) if steps else "recipe")
PYEOF
)
[ "$DRY" = 1 ] && VARIANT=eager  # no graphs on a CPU
case "$VARIANT" in
    eager) VARIANT_OVERRIDES=(trainer.compile=off trainer.cuda_graphs=false) ;;
    graphs) VARIANT_OVERRIDES=(trainer.compile=off trainer.cuda_graphs=true) ;;
    compiled) VARIANT_OVERRIDES=(trainer.compile=step trainer.cuda_graphs=false) ;;
    *) VARIANT_OVERRIDES=() ;;
esac
CAP=$(( $(left) - 40 ))
[ "$CAP" -gt "$CAP_MAX" ] && CAP=$CAP_MAX
TTA=(train "experiment=$RECIPE" "data.root=$DATA" "trainer.run_dir=$TTA_DIR" trainer.progress=false
     'logger=[jsonl]' "${VARIANT_OVERRIDES[@]}" "${TTA_EXTRA[@]}")
if [ "$CAP" -ge 30 ]; then
    say "== time to accuracy ($VARIANT variant), capped at $CAP s: metacontrast ${TTA[*]}"
    t0=$(date +%s)
    timeout -s TERM -k 30 "$CAP" "$PY" -m metacontrast.cli "${TTA[@]}" >> "$LOG" 2>&1
    rc=$?
    say "== time to accuracy: exit $rc after $(( $(date +%s) - t0 )) s (0: finished, 143: capped, resumable)"
    "$PY" benchmarks/time_to_accuracy.py "$TTA_DIR" --cap-s "$CAP" --report /tmp/mc-tta-report \
        --section "time_to_accuracy_$DEVICE" --command "metacontrast ${TTA[*]}" --write >> "$LOG" 2>&1
    cp /tmp/mc-tta-report/accuracy_vs_wall_clock.png "$OUT/" 2>/dev/null
else
    say "== time to accuracy: skipped, $(left) s left of the budget"
fi
[ "$DRY" = 0 ] && cp "$DOC" "$OUT/benchmarks.md"
say "gpu_session.sh: done after $(( $(date +%s) - START )) s; tables in $DOC"
