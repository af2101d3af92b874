"""Deployment benchmark of every bundle's model on every available runtime (same as ``medkd3d bench``).

Measures, in one run and each runtime in a fresh process: batch-1 latency (median, p90), subject latency
(a 2.5D subject is several slice stacks), throughput at a larger batch, peak memory, parameters and GFLOPs;
then the ratios student vs teacher, ONNX Runtime / TorchScript vs eager and, on a GPU, TensorRT vs eager.
Results go to ``benchmarks/results/deploy_<device>.md`` and ``.csv`` with the machine's description.

Usage (from the repository root)::

    python benchmarks/bench_deploy.py                        # CPU, the bundles' default input size
    python benchmarks/bench_deploy.py --threads 2 --runtimes eager onnxruntime torchscript
    python benchmarks/bench_deploy.py --device cuda          # adds TensorRT FP32/FP16/INT8 where available
    python benchmarks/bench_deploy.py --size tiny --max-repeats 3 --stem smoke   # a quick smoke run
"""

from __future__ import annotations

import sys

from medkd3d.export.bench import main

if __name__ == "__main__":
    sys.exit(main())
