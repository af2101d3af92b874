#!/usr/bin/env bash
# One prepared GPU check, run in a single call on a machine with an NVIDIA GPU (from the repository root):
#   1. the tests marked gpu or tensorrt;  2. AMP training memory and step time of every bundle x recipe
#   (benchmarks/bench_gpu.py amp);  3. batch-1 latency per runtime (benchmarks/bench_gpu.py latency).
# Each step is time-boxed so the later ones still run; results and the log go to $OUT (default /tmp/gpu_check_out).
#
#   bash benchmarks/gpu_check.sh                                     # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # CPU smoke run of the same steps
#
# Wheels in .whl/ (monai, nibabel, pytorch-ignite for an image without them) are installed to /tmp/site first.
# Time boxes (seconds): GPU_CHECK_T_TESTS (90: 18 CUDA tests and the TensorRT ones), GPU_CHECK_T_AMP (140),
# GPU_CHECK_T_LATENCY (75);
# GPU_CHECK_SKIP_TESTS=1 skips step 1.
set -o pipefail
OUT=${OUT:-${TMPDIR:-/tmp}/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
T_TESTS=${GPU_CHECK_T_TESTS:-90}
T_AMP=${GPU_CHECK_T_AMP:-140}
T_LATENCY=${GPU_CHECK_T_LATENCY:-75}
PY=${PYTHON:-python3}

if [ "$DEVICE" = cuda ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -n "$GPU_CHECK_TINY" ]; then
    # the smallest run of every step: one bundle, the quick recipe, one timed step, 32^3 latency
    AMP_ARGS=(--bundles brats_hdkd_student3d --recipes quick --warmup 0 --steps 1)
    LATENCY_ARGS=(--bundles brats_hdkd_student3d --spatial 32 --warmup 1 --steps 2 --max-seconds 1)
else
    AMP_ARGS=(--warmup 2 --steps 3 --budget-s $((T_AMP - 25)))
    LATENCY_ARGS=(--warmup 3 --steps 20 --max-seconds 2 --budget-s $((T_LATENCY - 20)))
fi

run_steps() {
    local start=$SECONDS
    echo "== machine ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
    else
        echo "no nvidia-smi" | tee "$OUT/nvidia_smi.txt"
    fi
    "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
    "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1

    echo "== 1. tests marked gpu or tensorrt (time box ${T_TESTS} s)"
    if [ -z "$GPU_CHECK_SKIP_TESTS" ]; then
        timeout "$T_TESTS" "$PY" -m pytest -m "gpu or tensorrt" -q -x -p no:cacheprovider -rs tests/
        echo "tests exit code: $?"
    else
        echo "skipped (GPU_CHECK_SKIP_TESTS)"
    fi

    echo "== 2. AMP training memory, every bundle x recipe (time box ${T_AMP} s)"
    timeout "$T_AMP" "$PY" benchmarks/bench_gpu.py amp --device "$DEVICE" --out "$OUT" "${AMP_ARGS[@]}"
    echo "amp exit code: $?"

    echo "== 3. batch-1 latency per runtime (time box ${T_LATENCY} s)"
    timeout "$T_LATENCY" "$PY" benchmarks/bench_gpu.py latency --device "$DEVICE" --out "$OUT" "${LATENCY_ARGS[@]}"
    echo "latency exit code: $?"

    echo "== summary ($((SECONDS - start)) s)"
    "$PY" - "$OUT" <<'PYEOF'
import csv, sys
from pathlib import Path

out = Path(sys.argv[1])
for name, cols in (
    ("amp.csv", ["bundle", "recipe", "batch_size", "input_shape", "status", "peak_allocated_mb", "step_ms"]),
    ("latency.csv", ["bundle", "runtime", "input_shape", "status", "latency_median_ms", "ratio_to_eager_fp32"]),
):
    path = out / name
    if not path.is_file():
        print(f"{name}: missing")
        continue
    rows = list(csv.DictReader(path.open()))
    print(f"{name}: {len(rows)} rows, {sum(r.get('status') == 'ok' for r in rows)} ok")
    for r in rows:
        print("  " + " | ".join(str(r.get(c, ""))[:40] for c in cols))
PYEOF
}

run_steps 2>&1 | tee "$OUT/log.txt"
