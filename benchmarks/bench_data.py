"""Data benchmark: load+preprocess vs the gzip floor, and uncached vs cached epochs, measured in one run.

On the same ``.nii.gz`` files it prints

* the per-subject time of the 3D preprocessing pipeline (load 4 modalities, RAS, foreground crop, resize to
  ``spatial_size``, z-score) - ``medkd3d.data.volume_transforms(train=False)``;
* the per-subject time of plain ``gzip.decompress`` of the same four files' bytes (already in memory): the floor
  no NIfTI loader can beat;
* their ratio (target: <= 2), and each pipeline step's share in multiples of the floor;
* the time of one epoch over the dataset, uncached (``Dataset``) vs cached (``CacheDataset``, cache filled
  beforehand), for the deterministic evaluation pipeline and for the training pipeline, whose random
  augmentations still run every epoch (target: cached >= 10x faster).

Per subject the fastest of ``--repeats`` runs is kept (load from other processes only ever adds time), then
the median over subjects is reported. By default it writes a small synthetic BraTS set (240x240x155, the real
size) to a temporary folder; pass ``--root`` to measure a real dataset instead::

    python benchmarks/bench_data.py --subjects 4
    python benchmarks/bench_data.py --root /data/BraTS2019 --subjects 20
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _best_seconds(function: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs: other load on the machine only ever adds time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _step_seconds(
    transforms: Sequence[Callable], record: dict, repeats: int, reduce: Callable[[list[float]], float] = min
) -> list[float]:
    """Time of each transform of a pipeline applied one after the other to ``record``, reduced over repeats."""
    times: list[list[float]] = [[] for _ in transforms]
    for _ in range(repeats):
        data = dict(record)
        for index, transform in enumerate(transforms):
            start = time.perf_counter()
            data = transform(data)
            times[index].append(time.perf_counter() - start)
    return [reduce(t) for t in times]


def _epoch_seconds(dataset: Sequence) -> float:
    """One pass of a batch-size-2 MONAI ``DataLoader`` (in-process) over ``dataset``."""
    from monai.data import DataLoader

    start = time.perf_counter()
    for _batch in DataLoader(dataset, batch_size=2, num_workers=0):
        pass
    return time.perf_counter() - start


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="existing BraTS dataset (default: generate one)")
    parser.add_argument("--subjects", type=int, default=4, help="subjects to measure (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), help="synthetic volume shape")
    parser.add_argument("--spatial-size", type=int, nargs=3, default=(128, 128, 128), help="pipeline output size")
    parser.add_argument("--reader", default="NibabelReader", choices=("NibabelReader", "ITKReader"))
    parser.add_argument("--repeats", type=int, default=3, help="timings per subject, the fastest is kept (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: PyTorch runs DataLoader workers single-threaded, and gzip is too)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    import monai
    import torch
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Randomizable

    from medkd3d.data import discover_brats, generate_synthetic_brats
    from medkd3d.data.pipelines import volume_transforms

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="medkd3d-bench-") as tmp:
        root = args.root
        if root is None:
            start = time.perf_counter()
            root = generate_synthetic_brats(
                Path(tmp) / "brats",
                n_hgg=(args.subjects + 1) // 2,
                n_lgg=args.subjects // 2,
                shape=args.shape,
                seed=args.seed,
            )
            seconds = time.perf_counter() - start
            print(f"generated {args.subjects} synthetic subjects {tuple(args.shape)} in {seconds:.1f} s")
        records = discover_brats(root)["training"][: args.subjects]
        evaluate = volume_transforms(args.spatial_size, reader=args.reader)
        evaluate(records[0])  # warm-up: imports, reader registry, first allocations

        floor, pipeline, steps = [], [], []
        for record in records:
            blobs = [Path(p).read_bytes() for p in record["image"]]
            floor.append(_best_seconds(lambda blobs=blobs: [gzip.decompress(b) for b in blobs], args.repeats))
            pipeline.append(_best_seconds(lambda record=record: evaluate(record), args.repeats))
            steps.append(_step_seconds(evaluate.transforms, record, args.repeats))
        mb = sum(os.path.getsize(p) for r in records for p in r["image"]) / len(records) / 1e6

        train = volume_transforms(args.spatial_size, train=True, reader=args.reader)
        epochs = {}
        for name, transform in (("eval", evaluate), ("train", train)):
            uncached = _epoch_seconds(Dataset(records, transform))
            cached = _epoch_seconds(CacheDataset(records, transform, num_workers=None, progress=False))
            epochs[name] = (uncached, cached)
        # what a cached training epoch still pays per item: the random transforms after the cached prefix
        first_random = train.get_index_of_first(lambda t: isinstance(t, Randomizable))
        preprocessed = train(records[0], end=first_random)
        random_steps = train.transforms[first_random:]
        # mean, not fastest: a random transform with prob < 1 is sometimes skipped
        augment = _step_seconds(random_steps, preprocessed, 4 * args.repeats, reduce=statistics.mean)

    floor_s, pipeline_s = statistics.median(floor), statistics.median(pipeline)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), monai {monai.__version__}, {args.reader}"
    )
    print(
        f"{len(records)} subjects, 4 modalities, {mb:.1f} MB of .nii.gz per subject, spatial_size "
        f"{tuple(args.spatial_size)}; per subject: best of {args.repeats} runs, median over subjects"
    )
    print(f"gzip floor         {floor_s * 1e3:8.1f} ms/subject")
    print(f"load+preprocess    {pipeline_s * 1e3:8.1f} ms/subject")
    print(f"ratio              {pipeline_s / floor_s:8.2f} x the floor (target <= 2)")
    print(
        "  of which (x floor): "
        + ", ".join(
            f"{type(t).__name__} {statistics.median(s[i] for s in steps) / floor_s:.2f}"
            for i, t in enumerate(evaluate.transforms)
        )
    )
    for name, (uncached, cached) in epochs.items():
        print(
            f"{name:5s} epoch        uncached {uncached:7.3f} s, cached {cached:7.3f} s -> "
            f"{uncached / cached:6.1f}x faster cached (target >= 10)"
        )
    print(
        "the train epoch still augments every item, cached or not; mean per item (ms): "
        + ", ".join(f"{type(t).__name__} {seconds * 1e3:.0f}" for t, seconds in zip(random_steps, augment))
    )


if __name__ == "__main__":
    main()
