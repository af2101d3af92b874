"""Data benchmark: load+preprocess vs the gzip floors, per reader, and uncached vs cached epochs, in one run.

On the same ``.nii.gz`` files it measures

* two floors per subject: decompressing the four files' bytes (already in memory) with zlib (``gzip.decompress``)
  and with ISA-L (``isal.igzip.decompress``, when the ``isal`` package is installed) - no NIfTI loader built on
  that decompressor can beat it;
* for each reader of ``--readers`` (default: MONAI's ``NibabelReader`` and medkd3d's ``FastNibabelReader``), the
  per-subject time of the 3D preprocessing pipeline (load 4 modalities, foreground crop, RAS, resize to
  ``spatial_size``, z-score) - ``medkd3d.data.volume_transforms(train=False, reader=...)`` - as multiples of
  both floors (target: <= 2x the zlib floor), and each pipeline step's share in multiples of the zlib floor;
  with ``NibabelReader`` among them, also the pipeline as it was before ``FastNibabelReader`` and
  ``NormalizeNonzerod`` (MONAI's reader and MONAI's ``NormalizeIntensityd``);
* the z-scoring step both ways: MONAI's ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` and the
  pipeline's ``NormalizeNonzerod``, on the same input, with the largest difference of their outputs;
* the time of one epoch over the dataset, uncached (``Dataset``) vs cached (``CacheDataset``, cache filled
  beforehand), for the deterministic evaluation pipeline and for the training pipeline, whose random
  augmentations still run every epoch (target: cached >= 10x faster), with the last reader of ``--readers``.

The floors and pipelines of a subject are timed in turn within each repeat (interleaved, so a change in the load
of a shared machine touches them alike); per subject the fastest of ``--repeats`` runs is kept (load from other
processes only ever adds time), then the median over subjects is reported. Compare the ratios, which are measured
in the same run, not the absolute times. By default it writes a small synthetic BraTS set (240x240x155, the real
size, int16 like BraTS) to a temporary folder; pass ``--root`` to measure a real dataset instead. The results
also go to ``benchmarks/results/data_loading.md`` (``--output``)::

    python benchmarks/bench_data.py --subjects 4
    python benchmarks/bench_data.py --root /data/BraTS2019 --subjects 20 --output ''
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Where the results are written unless ``--output`` says otherwise.
RESULTS = Path(__file__).resolve().parent / "results" / "data_loading.md"
#: The target of load+preprocess, in multiples of the zlib floor.
TARGET_RATIO = 2.0
#: Label of the pipeline as it was before: MONAI's NibabelReader and NormalizeIntensityd.
BEFORE = "NibabelReader + MONAI NormalizeIntensityd (before)"


def _interleaved_best(cases: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs of each case in seconds, the cases run in turn within each repeat."""
    from medkd3d.networks.profile import time_interleaved

    times = time_interleaved(cases, repeats, warmup=0)
    return {name: min(values) / 1000 for name, values in times.items()}


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


def _timed_on_copies(transform: Callable, data: dict, key: str, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` runs of ``transform`` on fresh copies of ``data[key]`` (copying not timed)."""
    times, out = [], None
    for _ in range(repeats):
        copy = {**data, key: data[key].clone()}
        start = time.perf_counter()
        out = transform(copy)
        times.append(time.perf_counter() - start)
    return min(times), out


def _epoch_seconds(dataset: Sequence) -> float:
    """One pass of a batch-size-2 MONAI ``DataLoader`` (in-process) over ``dataset``."""
    from monai.data import DataLoader

    start = time.perf_counter()
    for _batch in DataLoader(dataset, batch_size=2, num_workers=0):
        pass
    return time.perf_counter() - start


def _decompressors() -> dict[str, Callable[[bytes], bytes]]:
    """The floors' one-shot gzip decompressors: zlib always, ISA-L when the ``isal`` package is installed."""
    from medkd3d.data.readers import HAS_ISAL, gzip_decompress

    floors: dict[str, Callable[[bytes], bytes]] = {"zlib": gzip.decompress}
    if HAS_ISAL:
        floors["isal"] = lambda blob: gzip_decompress(blob, "isal")
    return floors


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from medkd3d.data.readers import READERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="existing BraTS dataset (default: generate one)")
    parser.add_argument("--subjects", type=int, default=4, help="subjects to measure (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), help="synthetic volume shape")
    parser.add_argument("--spatial-size", type=int, nargs=3, default=(128, 128, 128), help="pipeline output size")
    parser.add_argument(
        "--readers",
        nargs="+",
        default=["NibabelReader", "FastNibabelReader"],
        choices=READERS,
        help="readers to compare (default: NibabelReader FastNibabelReader; the last one also runs the epochs)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timings per subject, the fastest is kept (default 3)")
    parser.add_argument("--skip-epochs", action="store_true", help="measure loading only, not the epochs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: PyTorch runs DataLoader workers single-threaded, and gzip is too)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", default=str(RESULTS), help=f"markdown results file (default {RESULTS.name}; '' writes none)"
    )
    return parser.parse_args(argv)


def _machine(threads: int) -> dict[str, str]:
    """What the ratios were measured on."""
    import monai
    import nibabel
    import numpy
    import torch

    from medkd3d.data.readers import HAS_ISAL

    isal_version = "not installed"
    if HAS_ISAL:
        import isal

        isal_version = isal.__version__
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": f"{os.cpu_count()} (load average {os.getloadavg()[0]:.1f} at the start)",
        "torch": f"{torch.__version__} ({threads} intra-op threads)",
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": numpy.__version__,
        "isal": isal_version,
    }


def _measure(args: argparse.Namespace, root: Path) -> dict:
    """Every timing of the benchmark on the subjects under ``root``, as a dictionary of results."""
    import torch
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose, NormalizeIntensityd, Randomizable

    from medkd3d.data import discover_brats
    from medkd3d.data.intensity import NormalizeNonzerod
    from medkd3d.data.pipelines import volume_transforms

    records = discover_brats(root)["training"][: args.subjects]
    pipelines = {reader: volume_transforms(args.spatial_size, reader=reader) for reader in args.readers}
    if "NibabelReader" in pipelines:
        # the pipeline as it was before FastNibabelReader and NormalizeNonzerod: MONAI's reader and z-scoring
        before = [
            NormalizeIntensityd("image", nonzero=True, channel_wise=True) if isinstance(t, NormalizeNonzerod) else t
            for t in pipelines["NibabelReader"].transforms
        ]
        pipelines = {BEFORE: Compose(before), **pipelines}
    for pipeline in pipelines.values():
        pipeline(records[0])  # warm-up: imports, reader registry, first allocations
    decompressors = _decompressors()

    floors: dict[str, list[float]] = {name: [] for name in decompressors}
    totals: dict[str, list[float]] = {reader: [] for reader in pipelines}
    steps: dict[str, list[list[float]]] = {reader: [] for reader in pipelines}
    normalisation: dict[str, list[float]] = {"NormalizeIntensityd": [], "NormalizeNonzerod": []}
    max_difference = 0.0
    for record in records:
        blobs = [Path(p).read_bytes() for p in record["image"]]
        cases: dict[str, Callable[[], object]] = {
            f"floor {name}": lambda blobs=blobs, d=decompress: [d(b) for b in blobs]
            for name, decompress in decompressors.items()
        }
        cases.update({reader: lambda r=record, p=pipeline: p(r) for reader, pipeline in pipelines.items()})
        best = _interleaved_best(cases, args.repeats)
        for name in decompressors:
            floors[name].append(best[f"floor {name}"])
        for reader, pipeline in pipelines.items():
            totals[reader].append(best[reader])
            steps[reader].append(_step_seconds(pipeline.transforms, record, args.repeats))
        # both z-scorings on the input the pipeline's normalisation step gets
        last = pipelines[args.readers[-1]]
        index = next(i for i, t in enumerate(last.transforms) if isinstance(t, NormalizeNonzerod))
        unnormalised = last(record, end=index)
        outputs = {}
        for name, transform in (
            ("NormalizeIntensityd", NormalizeIntensityd("image", nonzero=True, channel_wise=True)),
            ("NormalizeNonzerod", NormalizeNonzerod("image")),
        ):
            seconds, outputs[name] = _timed_on_copies(transform, unnormalised, "image", args.repeats)
            normalisation[name].append(seconds)
        difference = outputs["NormalizeIntensityd"]["image"] - outputs["NormalizeNonzerod"]["image"]
        max_difference = max(max_difference, float(difference.abs().max()))
    mb = sum(os.path.getsize(p) for r in records for p in r["image"]) / len(records) / 1e6

    epochs, augment, random_steps = {}, [], []
    if not args.skip_epochs:
        reader = args.readers[-1]
        evaluate = pipelines[reader]
        train = volume_transforms(args.spatial_size, train=True, reader=reader)
        for name, transform in (("eval", evaluate), ("train", train)):
            uncached = _epoch_seconds(Dataset(records, transform))
            cached = _epoch_seconds(CacheDataset(records, transform, num_workers=None, progress=False))
            epochs[name] = (uncached, cached)
        # what a cached training epoch still pays per item: the random transforms after the cached prefix
        first_random = train.get_index_of_first(lambda t: isinstance(t, Randomizable))
        preprocessed = train(records[0], end=first_random)
        random_steps = [type(t).__name__ for t in train.transforms[first_random:]]
        # mean, not fastest: a random transform with prob < 1 is sometimes skipped
        augment = _step_seconds(train.transforms[first_random:], preprocessed, 4 * args.repeats, statistics.mean)

    median = statistics.median
    return {
        "subjects": len(records),
        "mb_per_subject": mb,
        "floors": {name: median(values) for name, values in floors.items()},
        "totals": {reader: median(values) for reader, values in totals.items()},
        "steps": {
            reader: [(type(t).__name__, median(s[i] for s in steps[reader])) for i, t in enumerate(pipeline.transforms)]
            for reader, pipeline in pipelines.items()
        },
        "normalisation": {name: median(values) for name, values in normalisation.items()},
        "normalisation_max_difference": max_difference,
        "epochs": epochs,
        "augment": list(zip(random_steps, augment)),
        "threads": torch.get_num_threads(),
    }


def _report(args: argparse.Namespace, results: dict, machine: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """The results as markdown lines (the file) - also what is printed."""
    zlib = results["floors"]["zlib"]
    isal = results["floors"].get("isal")
    lines = [
        "# Data loading benchmark",
        "",
        f"Written by `{shlex.join(['python', 'benchmarks/bench_data.py', *argv])}`.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
        f"{results['subjects']} subjects, 4 modalities, {results['mb_per_subject']:.1f} MB of .nii.gz per subject, "
        f"spatial_size {tuple(args.spatial_size)}; per subject the fastest of {args.repeats} interleaved runs, "
        "then the median over subjects. The machine may be shared: compare the ratios (measured in the same run), "
        "not the absolute times.",
        "",
        "## Floors (decompressing the 4 files' bytes, already in memory)",
        "",
        "| decompressor | ms/subject | x zlib floor |",
        "|---|---|---|",
        f"| zlib (`gzip.decompress`) | {zlib * 1e3:.1f} | 1.00 |",
        f"| ISA-L (`medkd3d.data.readers.gzip_decompress`, one `isal_zlib` call) | {isal * 1e3:.1f} | {isal / zlib:.2f} |"
        if isal
        else "| ISA-L | isal not installed | |",
        "",
        f"## Load+preprocess (`volume_transforms`, target <= {TARGET_RATIO:g}x the zlib floor)",
        "",
        "| reader | ms/subject | x zlib floor | x ISA-L floor | target |",
        "|---|---|---|---|---|",
    ]
    for reader, seconds in results["totals"].items():
        versus_isal = f"{seconds / isal:.2f}" if isal else "-"
        met = "met" if seconds / zlib <= TARGET_RATIO else "**missed**"
        lines.append(f"| {reader} | {seconds * 1e3:.1f} | {seconds / zlib:.2f} | {versus_isal} | {met} |")
    lines += ["", "Each step, in multiples of the zlib floor:", ""]
    names = [name for name, _ in list(results["steps"].values())[-1]]
    lines += ["| reader | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for reader, steps in results["steps"].items():
        lines.append(f"| {reader} | " + " | ".join(f"{seconds / zlib:.2f}" for _, seconds in steps) + " |")
    if BEFORE in results["steps"]:
        lines += ["", f"(In the row {BEFORE!r} the z-scoring column is MONAI's `NormalizeIntensityd`.)"]
    normalisation = results["normalisation"]
    lines += [
        "",
        "## Z-scoring over the brain voxels (same input, x zlib floor)",
        "",
        "| transform | x zlib floor |",
        "|---|---|",
        *(f"| {name} | {seconds / zlib:.2f} |" for name, seconds in normalisation.items()),
        "",
        f"Largest difference of their outputs: {results['normalisation_max_difference']:.3g}.",
    ]
    if results["epochs"]:
        lines += [
            "",
            f"## Epochs (reader {args.readers[-1]}, target: cached >= 10x faster)",
            "",
            "| pipeline | uncached (s) | cached (s) | cached speed-up |",
            "|---|---|---|---|",
            *(
                f"| {name} | {uncached:.3f} | {cached:.3f} | {uncached / cached:.1f}x |"
                for name, (uncached, cached) in results["epochs"].items()
            ),
            "",
            "The train epoch still augments every item, cached or not; mean per item (ms): "
            + ", ".join(f"{name} {seconds * 1e3:.0f}" for name, seconds in results["augment"])
            + ".",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    import torch

    from medkd3d.data import generate_synthetic_brats
    from medkd3d.utils import atomic_write_text

    torch.set_num_threads(args.threads)
    machine = _machine(args.threads)
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
        results = _measure(args, root)
    machine["cpus"] += f", {os.getloadavg()[0]:.1f} at the end"
    lines = _report(args, results, machine, argv)
    print("\n".join(lines))
    if args.output:
        path = atomic_write_text(args.output, "\n".join(lines) + "\n")
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
