#!/usr/bin/env bash
# The main job (`medkd3d pipeline --quick`) on one GPU, in several precision settings and folds at once, to compare
# with the same job on a CPU (benchmarks/results/main_job_folds.md): does training on a GPU change what the models
# learn?
#
# Every variant is one `python -m medkd3d pipeline --quick --fold F [--override ...]` on the same synthetic dataset
# (generated once, with the MNI152 anatomy: nilearn must import, or the data would differ from the CPU runs'),
# pinned to its own $CPUS_PER_RUN CPUs (taskset) so that the pipeline's two trainings get one PyTorch thread each,
# as on the 2-core CPU. All variants share the one GPU.
#
# Usage (on the GPU machine, repository root; .whl/ carried with monai, nibabel, pytorch-ignite, nilearn, isal):
#   OUT=/some/dir bash benchmarks/main_job_gpu.sh
# CPU rehearsal: OUT=/tmp/o DEVICE_CHECK=0 INSTALL_WHEELS=0 VARIANTS="cpu_f0:0::epochs=1" bash benchmarks/main_job_gpu.sh
#
# VARIANTS: space-separated NAME:FOLD:ENV:OVERRIDES; ENV is one VAR=VALUE for the pipeline's environment (or empty),
# OVERRIDES comma-separated KEY=VALUE for `--override` (or empty); PIPELINE_ARGS (e.g. --no-kd-baselines) go to every
# variant's pipeline. Default: AMP (the bundles' choice wherever CUDA
# is) and float32 (amp=false) on folds 0-2, and float32 without TF32 (NVIDIA_TF32_OVERRIDE=0) on fold 0.
# Writes to $OUT: summary.md (test AUC / balanced accuracy of every model per variant, wall times) and
# main_job_gpu.tar.gz (each variant's report.md, report.csv, pipeline log and training logs).
set -u
START=$(date +%s)
: "${OUT:?set OUT to the folder that receives the results}"
WORK=${WORK:-/tmp/main_job_gpu_$START}  # an existing WORK resumes: finished trainings are not retrained
BUDGET_S=${BUDGET_S:-540}          # the pipelines' time box; the summary and packing come after it
CPUS_PER_RUN=${CPUS_PER_RUN:-2}
INSTALL_WHEELS=${INSTALL_WHEELS:-1}
DEVICE_CHECK=${DEVICE_CHECK:-1}    # 1: stop unless CUDA is available
PY=${PY:-python3}
PIPELINE_ARGS=${PIPELINE_ARGS:-}
VARIANTS=${VARIANTS:-"amp_f0:0:: fp32_f0:0::amp=false fp32_notf32_f0:0:NVIDIA_TF32_OVERRIDE=0:amp=false \
amp_f1:1:: fp32_f1:1::amp=false amp_f2:2:: fp32_f2:2::amp=false"}

mkdir -p "$OUT" "$WORK"
LOG="$OUT/main_job_gpu.log"
log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

if [ "$INSTALL_WHEELS" = 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { log "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  echo "$(nproc --all) CPUs"
  $PY -c "import torch, monai, nilearn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'monai', monai.__version__, 'nilearn', nilearn.__version__)"; } 2>&1 | tee -a "$LOG"
$PY -c "import nilearn" 2>/dev/null || { log "nilearn does not import: the synthetic data would differ"; exit 1; }
if [ "$DEVICE_CHECK" = 1 ]; then
    $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { log "CUDA is not available"; exit 1; }
fi

DATA="$WORK/data/synthetic_brats2019"
log "dataset: the main job's synthetic default in $DATA"
$PY -c "import sys; from medkd3d.bundles.data import ensure_dataset; from medkd3d.pipeline.run import QUICK
ensure_dataset(sys.argv[1], QUICK['synthetic'])" "$DATA" >"$WORK/data.log" 2>&1 || { log "dataset failed"; exit 1; }

ncpu=$(nproc --all)
# pin CPUS COMMAND...: run COMMAND on those CPUs (on every CPU where taskset is missing)
pin() { if command -v taskset >/dev/null; then taskset -c "$@"; else shift; "$@"; fi; }
command -v taskset >/dev/null || log "no taskset: the variants share every CPU"
i=0
for variant in $VARIANTS; do
    IFS=: read -r name fold env overrides <<<"$variant"
    first=$(((i * CPUS_PER_RUN) % ncpu))
    cpus=$(seq -s, "$first" $((first + CPUS_PER_RUN - 1)))
    # shellcheck disable=SC2206  # PIPELINE_ARGS is split into words on purpose
    args=(--quick --dataset-dir "$DATA" --fold "$fold" --out "$WORK/$name" $PIPELINE_ARGS)
    for o in ${overrides//,/ }; do args+=(--override "$o"); done
    t=$((START + BUDGET_S - $(date +%s)))
    log "variant $name: fold $fold, CPUs $cpus${env:+, $env}${overrides:+, overrides $overrides}"
    ( s=$(date +%s)
      pin "$cpus" env ${env:+"$env"} timeout -k 10 "$t" $PY -m medkd3d pipeline "${args[@]}" \
          >"$WORK/$name.log" 2>&1
      rc=$?; echo "[$name] rc=$rc in $(($(date +%s) - s)) s$([ $rc = 124 ] && echo ' (stopped by the time box)')" \
          | tee -a "$LOG" ) &
    i=$((i + 1))
done
wait

log "summary"
$PY - "$WORK" $VARIANTS <<'EOF' | tee "$OUT/summary.md"
import csv, sys
from pathlib import Path

work, variants = Path(sys.argv[1]), [v.split(":") for v in sys.argv[2:]]
print("| variant | fold | env | overrides | model | n | AUC | balanced accuracy |")
print("|---|---|---|---|---|---|---|---|")
for name, fold, env, overrides in variants:
    report = work / name / "report.csv"
    if not report.is_file():
        print(f"| {name} | {fold} | {env} | {overrides} | (no report) | | | |")
        continue
    for row in csv.DictReader(report.open()):
        model = row["bundle"].split(" (")[0]
        print(f"| {name} | {fold} | {env} | {overrides} | {model} | {row['n']} | {float(row['auc']):.3f} "
              f"| {float(row['balanced_accuracy']):.3f} |")
EOF
(cd "$WORK" && grep -H "trained in\|Traceback\|Error" *.log | cut -c1-220 >>"$LOG")
(cd "$WORK" && tar -czf "$OUT/main_job_gpu.tar.gz" --exclude='*.pt' --exclude='*.ts' --exclude='*.onnx' \
    --exclude='data' $(ls -d */report.md */report.csv *.log */*/train.log */*/evaluate.log 2>/dev/null))
log "done: $(ls "$OUT" | tr '\n' ' ')"
