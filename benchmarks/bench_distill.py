"""Training step time of distillation relative to plain student training, measured in one run.

Four trainers run the same 3D EfficientNet student on the same in-memory batches:

- ``plain``: MONAI ``SupervisedTrainer`` with cross-entropy (the baseline);
- ``kd_online``: ``DistillationTrainer`` with the VGG-ViT hybrid teacher run every step;
- ``kd_cached``: ``DistillationTrainer`` reading the teacher's precomputed logits (``SoftTargetCache``);
- ``kd_features``: online KD plus cross-architecture feature distillation (forward hooks on the student's
  stages, the teacher's ``forward_features``, PCA + group-wise linear projectors).

Each iteration is timed between Ignite's ``ITERATION_STARTED`` and ``ITERATION_COMPLETED``, in wall time and in
CPU time of this process (less sensitive to other processes on a shared machine). The trainers take turns
step by step (each engine runs one-iteration epochs), so load from other processes hits them alike; the
median step is reported with its ratio to the plain student's. Target: ``kd_cached`` within 1.15x of ``plain``.

Run: ``python benchmarks/bench_distill.py`` (about 20 s; ``--help`` for sizes and threads).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from medkd3d.engines import DistillationTrainer, SoftTargetCache, precompute_soft_targets
from medkd3d.losses import CrossArchitectureKDLoss, KDLoss
from medkd3d.networks import create_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic input volume (default 48)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer, taken in turns")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per trainer")
    parser.add_argument("--student-width", type=float, default=0.5, help="EfficientNet-B0 width multiplier")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: with other processes on the cores, OpenMP threads spin-wait "
        "for each other and steps get many times slower and erratic)",
    )  # fmt: skip
    return parser.parse_args()


def build_teacher(size: int) -> torch.nn.Module:
    return create_model(
        "vggvit3d", img_size=size, vgg_depth=11, width_multiplier=1 / 8, patch_size=8, vit_hidden_size=48,
        vit_layers=2, vit_heads=4, msgff_dim=32, msgff_heads=2, max_tokens_per_axis=2,
    )  # fmt: skip


def make_loader(size: int, batch_size: int, num_batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    items = [
        {
            "image": torch.randn(4, size, size, size, generator=generator),
            "label": torch.tensor(i % 2),
            "subject": f"s{i}",
        }
        for i in range(batch_size * num_batches)
    ]
    return DataLoader(items, batch_size=batch_size, shuffle=False)


class StepTimer:
    """Wall and CPU time of every iteration of an Ignite engine."""

    def __init__(self, engine) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _started(self, _) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def _completed(self, _) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def build_trainers(args: argparse.Namespace) -> dict[str, tuple[SupervisedTrainer, StepTimer]]:
    torch.manual_seed(0)
    loader = make_loader(args.size, args.batch_size, num_batches=4)
    teacher = build_teacher(args.size)
    cache: SoftTargetCache = precompute_soft_targets(teacher, loader, progress=False)

    def student() -> torch.nn.Module:
        torch.manual_seed(1)
        return create_model("efficientnet3d_b0", width_multiplier=args.student_width)

    def adam(*modules: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-3)

    trainers: dict[str, SupervisedTrainer] = {}
    net = student()
    trainers["plain"] = SupervisedTrainer("cpu", 1, loader, net, adam(net), torch.nn.CrossEntropyLoss(), epoch_length=1)
    for name in ("kd_online", "kd_cached"):
        net = student()
        trainers[name] = DistillationTrainer(
            "cpu", 1, loader, net, teacher, adam(net), KDLoss(0.5, 4.0),
            soft_target_cache=cache if name == "kd_cached" else None, epoch_length=1,
        )  # fmt: skip

    net = student()
    student_stages = net.feature_info[2:4]  # strides 8 and 16
    teacher_stages = [2, 3]  # VGG stages of the same strides
    feature_loss = CrossArchitectureKDLoss(
        student_channels=[info["num_chs"] for info in student_stages],
        teacher_channels=[teacher.feature_info[i]["num_chs"] for i in teacher_stages],
        teacher_indices=teacher_stages, pca_grid=2,
    )  # fmt: skip
    trainers["kd_features"] = DistillationTrainer(
        "cpu", 1, loader, net, teacher, adam(net, feature_loss), KDLoss(0.5, 4.0), feature_loss=feature_loss,
        student_feature_taps=[info["module"] for info in student_stages], teacher_feature_taps="forward_features",
        epoch_length=1,
    )  # fmt: skip
    return {name: (trainer, StepTimer(trainer)) for name, trainer in trainers.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("ignite").setLevel(logging.WARNING)  # one "run resuming" line per step otherwise
    trainers = build_trainers(args)
    for step in range(args.warmup + args.steps):
        for trainer, timer in trainers.values():
            trainer.state.max_epochs = step + 1  # each epoch is one iteration: the engine resumes for one more
            trainer.run()
            if step < args.warmup:
                timer.wall.clear()
                timer.cpu.clear()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"input: batch {args.batch_size} x 4 x {args.size}^3; student efficientnet3d_b0 (width "
          f"{args.student_width}); teacher vggvit3d; median of {args.steps} steps per trainer")  # fmt: skip
    plain = {kind: statistics.median(getattr(trainers["plain"][1], kind)) for kind in ("wall", "cpu")}
    print(f"{'trainer':<12} {'wall ms':>9} {'ratio':>7} {'cpu ms':>9} {'ratio':>7}")
    for name, (_, timer) in trainers.items():
        wall, cpu = statistics.median(timer.wall), statistics.median(timer.cpu)
        print(
            f"{name:<12} {wall * 1e3:>9.1f} {wall / plain['wall']:>6.2f}x {cpu * 1e3:>9.1f} {cpu / plain['cpu']:>6.2f}x"
        )
    cached = statistics.median(trainers["kd_cached"][1].wall) / plain["wall"]
    print(f"kd_cached / plain (wall) = {cached:.2f}x, target <= 1.15x: {'met' if cached <= 1.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
