"""Deployment benchmark of every bundle's model on every available runtime (``medkd3d bench`` plus the targets).

Measures, in one run and each runtime in a fresh process: batch-1 latency (median, p90), subject latency
(a 2.5D subject is several slice stacks), throughput at a larger batch, peak memory, parameters and GFLOPs;
then the ratios student vs teacher, ONNX Runtime / TorchScript vs eager and, on a GPU, TensorRT vs eager.
Results go to ``benchmarks/results/deploy_<device>.md`` and ``.csv`` with the machine's description.

The project's targets (:data:`TARGETS`) are stated here, not in the library, and the report says for each one the
run measured whether it was MET or MISSED:

- ONNX Runtime at most 0.6x eager latency, 3D student;
- 3D student at least 10x faster than its teacher (per subject);
- 2.5D student at least 30x faster than its teacher, per subject and per slice-stack input;
- TensorRT FP16 at least 3x faster than eager on the GPU, 3D student.

Usage (from the repository root)::

    python benchmarks/bench_deploy.py                        # CPU, the bundles' default input size
    python benchmarks/bench_deploy.py --threads 2 --runtimes eager onnxruntime torchscript
    python benchmarks/bench_deploy.py --device cuda          # adds TensorRT FP32/FP16/INT8 where available
    python benchmarks/bench_deploy.py --size tiny --max-repeats 3 --stem smoke   # a quick smoke run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from medkd3d.export.bench import main as bench_main
from medkd3d.export.bench_report import Target

STUDENT_3D = "brats_student_effnet3d"
STUDENT_25D = "brats_student_effnet25d"

#: The project's deployment targets, checked against the ratios of the same run.
TARGETS: tuple[Target, ...] = (
    Target(STUDENT_3D, "onnxruntime", "latency vs eager", "input", "<=", 0.6,
           "ONNX Runtime <= 0.6x eager latency, 3D student"),
    Target(STUDENT_3D, "eager", "speedup vs teacher", "subject", ">=", 10.0,
           "3D student >= 10x faster than the teacher"),
    Target(STUDENT_25D, "eager", "speedup vs teacher", "subject", ">=", 30.0,
           "2.5D student >= 30x faster than the teacher (per subject)"),
    Target(STUDENT_25D, "eager", "speedup vs teacher", "input", ">=", 30.0,
           "2.5D student >= 30x faster than the teacher (per slice-stack input)"),
    Target(STUDENT_3D, "tensorrt-fp16", "latency vs eager", "input", "<=", 1 / 3,
           "TensorRT FP16 >= 3x faster than eager (GPU), 3D student"),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the deployment benchmark with :data:`TARGETS` (options: ``--help``)."""
    return bench_main(argv, targets=TARGETS, prog="python benchmarks/bench_deploy.py")


if __name__ == "__main__":
    sys.exit(main())
