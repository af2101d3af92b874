#!/usr/bin/env bash
# KD gain, measured, on one GPU machine in a fixed time box: benchmarks/bench_kd.py as a parallel study.
#
# The study (one folder, $STUDY) is split into the stages of bench_kd.py --stage:
#   1. setup     one process: synthetic dataset (the bench's default), study.json, datalist, split, trivial baseline
#   2. teachers  one process per (teacher bundle, fold), in parallel, and at the same time
#   3. students  one process per (student bundle, seed, fold), in parallel on the one GPU, each with $THREADS
#                PyTorch threads; each trains its own runs (data-limited, unlabelled, then all labelled); a KD run
#                waits for its fold's teacher (until 2/3 of the budget, then it is reported missing)
#   4. report    always runs, even when stages 1-3 ran out of time: writes kd_synthetic.md/.csv from every finished
#                run and lists the planned runs that did not finish
# Every stage is time-boxed with `timeout` so that the report keeps $REPORT_S seconds of the $BUDGET_S budget.
#
# Usage (on the device machine, repository root; .whl/ carried with monai, nibabel, pytorch-ignite, nilearn, isal):
#   OUT=/some/dir bash benchmarks/run_kd_gpu.sh
# CPU rehearsal (small dataset made beforehand, 1 epoch, one fold, a short budget):
#   DEVICE=cpu INSTALL_WHEELS=0 OUT=/tmp/kd_out STUDY=/tmp/kd_study DATASET_DIR=/tmp/kd_data BUDGET_S=200 SEEDS=0 \
#   RUN_FOLDS=0 EXTRA="--epochs 1 --teacher-epochs 1 --labelled-per-class 4" bash benchmarks/run_kd_gpu.sh
# Without mixed precision (the bundles turn AMP on wherever CUDA is): EXTRA="--override amp=false" ...
# Writes to $OUT (flat): kd_synthetic.md, kd_synthetic.csv, kd_gpu.log, kd_runs.tar.gz (every result JSON).
set -u
START=$(date +%s)
: "${OUT:?set OUT to the folder that receives the results}"
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-300}          # whole script, wheels to report
REPORT_S=${REPORT_S:-30}           # kept for the report stage and the packing
STUDY=${STUDY:-/tmp/kd_study}      # study folder (datalist, splits, runs, bundle runs, caches)
SEEDS=${SEEDS:-"0 1 2"}
FOLDS=${FOLDS:-2}                  # folds of the study (>= 2)
RUN_FOLDS=${RUN_FOLDS:-"0 1"}      # folds actually trained (the others are reported missing)
STUDENTS=${STUDENTS:-"brats_student_effnet3d brats_student_effnet25d brats_hdkd_student3d"}
PROFILE=${PROFILE:-quick}          # configs/profiles/<PROFILE>.json of every bundle, read at run time
THREADS=${THREADS:-1}              # PyTorch CPU threads per process
EXTRA=${EXTRA:-}                   # more bench_kd.py options (e.g. --epochs 1 for a rehearsal)
DATASET_DIR=${DATASET_DIR:-}       # default: the bench's synthetic default, generated in $STUDY/data
INSTALL_WHEELS=${INSTALL_WHEELS:-1}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}

mkdir -p "$OUT" "$STUDY/logs"
LOG="$OUT/kd_gpu.log"
log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((START + BUDGET_S - REPORT_S - $(date +%s))); }  # seconds left for training stages

if [ "$INSTALL_WHEELS" = 1 ]; then
    # exactly as /work/.library/device/README.md's Notes: the carried monai, nibabel, ignite wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { log "wheel install failed"; exit 1; }
    export PYTHONPATH="$SITE:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
if [ -z "$DATASET_DIR" ] && ! $PY -c "import nilearn" 2>/dev/null; then
    # without nilearn the generator falls back to the procedural brain: other data than on a full install
    log "nilearn does not import (carry its wheel in .whl/): the synthetic dataset would differ"; exit 1
fi
log "start: device $DEVICE, budget ${BUDGET_S}s, seeds [$SEEDS], folds $FOLDS (trained: $RUN_FOLDS), profile $PROFILE"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  echo "$(nproc --all) CPUs"; } >>"$LOG"

COMMON=(--out "$STUDY" --results-dir "$OUT" --seeds $SEEDS --folds "$FOLDS" --profile "$PROFILE" --device "$DEVICE"
        --threads "$THREADS" --since "$START" $EXTRA)
[ -n "$DATASET_DIR" ] && COMMON+=(--dataset-dir "$DATASET_DIR")
BENCH=($PY benchmarks/bench_kd.py "${COMMON[@]}")

# stage: run "$@" (name first) under the time left, logging to $STUDY/logs/<name>.log; returns at once (background)
stage() {
    local name=$1; shift
    local t; t=$(left)
    if [ "$t" -le 5 ]; then log "skip $name: no time left"; return; fi
    ( s=$(date +%s); timeout -k 10 "$t" "$@" >"$STUDY/logs/$name.log" 2>&1; rc=$?
      echo "[$name] rc=$rc in $(($(date +%s) - s))s$([ $rc = 124 ] && echo ' (stopped by the time box)')" \
          | tee -a "$LOG" ) &
}

log "stage setup"
stage setup "${BENCH[@]}" --stage setup --students $STUDENTS; wait
log "stage teachers + students"  # at once: a KD run waits for its fold's teacher, the no-KD runs go first
TEACHER_WAIT_UNTIL=$((START + BUDGET_S * 2 / 3))  # a teacher not done by then: its KD runs are reported missing
declare -A TEACHER_OF=([brats_student_effnet3d]=vggvit [brats_student_effnet25d]=vggvit [brats_hdkd_student3d]=hdkd)
declare -A SEEN=()
for fold in $RUN_FOLDS; do
    for student in $STUDENTS; do  # one process per (teacher, fold): students sharing a teacher share its process
        key="${TEACHER_OF[$student]:-$student}_f$fold"
        [ -n "${SEEN[$key]:-}" ] && continue
        SEEN[$key]=1
        stage "teacher_$key" "${BENCH[@]}" --stage teachers --students "$student" --run-folds "$fold"
    done
done
for fold in $RUN_FOLDS; do
    for seed in $SEEDS; do
        for student in $STUDENTS; do
            stage "student_${student}_s${seed}_f${fold}" "${BENCH[@]}" --stage students --students "$student" \
                --seeds "$seed" --run-folds "$fold" --teacher-wait-until "$TEACHER_WAIT_UNTIL"
        done
    done
done
wait
log "stage report"
t=$((START + BUDGET_S - $(date +%s))); [ "$t" -lt 20 ] && t=20  # the report runs even when over budget
WHAT="BUDGET_S=$BUDGET_S SEEDS='$SEEDS' FOLDS=$FOLDS RUN_FOLDS='$RUN_FOLDS' STUDENTS='$STUDENTS' PROFILE=$PROFILE \
DEVICE=$DEVICE"
timeout -k 5 "$t" "${BENCH[@]}" --stage report --students $STUDENTS --command "$WHAT bash benchmarks/run_kd_gpu.sh (bench_kd.py stages: \
$PY benchmarks/bench_kd.py ${COMMON[*]} --stage setup|teachers|students|report)" >"$STUDY/logs/report.log" 2>&1
log "report rc=$?"

# the log: every process's output (its end), then a summary of the run times; the result JSONs in one archive
for f in "$STUDY"/logs/*.log; do
    { echo "===== $(basename "$f")"; grep -E "FAILED|Traceback|Error:|skipping" "$f" | head -n 10; tail -n 25 "$f"; } \
        >>"$LOG"
done
$PY - "$STUDY" 2>&1 <<'EOF' | tee -a "$LOG"
import json, pathlib, statistics, sys
runs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1], "runs").glob("*.json"))]
by = {}
for r in runs:
    by.setdefault(r["student"], []).append(r.get("train_time_s") or 0.0)
print(f"===== {len(runs)} finished student runs; train time per run (s): median / max")
for student, times in by.items():
    print(f"{student}: {len(times)} runs, {statistics.median(times):.1f} / {max(times):.1f}")
for p in sorted(pathlib.Path(sys.argv[1], "teachers").glob("*/fold*/result.json")):
    r = json.loads(p.read_text())
    print(f"teacher {p.parent.parent.name}/{p.parent.name}: AUC {r.get('auc')}, train {r.get('train_time_s', 0):.1f}s")
EOF
(cd "$STUDY" && tar -czf "$OUT/kd_runs.tar.gz" study.json splits.json baseline.json runs profiles \
    $(ls -d teachers/*/fold*/result.json bundle_runs/*/result.json 2>/dev/null) 2>/dev/null)
log "done: $(ls "$OUT" | tr '\n' ' ')"
[ -f "$OUT/kd_synthetic.md" ] && sed -n '/^## Verdict/,$p' "$OUT/kd_synthetic.md" | head -n 30
true
