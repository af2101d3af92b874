"""DistillationTrainer under DistributedDataParallel: 2 CPU processes (gloo) equal one process with the full batch,
and classification metrics gather the predictions of every process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from medkd3d.engines import classification_metrics

WORKER = textwrap.dedent(
    """
    import os
    import socket
    import sys

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from monai.data import DataLoader, Dataset
    from torch import nn
    from torch.utils.data.distributed import DistributedSampler

    from medkd3d.engines import ClassificationReport, DistillationTrainer
    from medkd3d.losses.kd import KDLoss

    EPOCHS, ACCUMULATION, PER_RANK_BATCH, WORLD = 2, 2, 2, 2


    class Net(nn.Module):  # no BatchNorm: per-process batch statistics would differ from the full batch's
        def __init__(self, width):
            super().__init__()
            self.stage = nn.Sequential(nn.Conv3d(2, width, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Linear(width, 2)

        def forward(self, x):
            return self.head(self.stage(x).mean(dim=(2, 3, 4)))


    class ProjectedFeatureLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.projector = nn.Conv3d(4, 6, 1)

        def forward(self, student_features, teacher_features):
            term = nn.functional.mse_loss(self.projector(student_features[0]), teacher_features[0])
            return term, {"feat": term}


    def fixed_predictions():
        probabilities = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.2, 0.8],
                                      [0.6, 0.4], [0.1, 0.9], [0.7, 0.3], [0.45, 0.55], [0.35, 0.65]])
        return probabilities, torch.tensor([0, 0, 1, 0, 1, 1, 1, 0, 0, 1])


    def build():
        torch.manual_seed(0)
        student, teacher, feature_loss = Net(4), Net(6), ProjectedFeatureLoss()
        generator = torch.Generator().manual_seed(1)
        items = [
            {"image": torch.randn(2, 6, 6, 6, generator=generator), "label": torch.tensor(i % 2)} for i in range(16)
        ]
        return student, teacher, feature_loss, Dataset(items)


    def train(student, teacher, feature_loss, loader, network):
        optimizer = torch.optim.SGD([*student.parameters(), *feature_loss.parameters()], lr=0.2)
        DistillationTrainer(
            "cpu", EPOCHS, loader, network, teacher, optimizer, KDLoss(0.5, 2.0), feature_loss=feature_loss,
            student_feature_taps=["stage"], teacher_feature_taps=["stage"], accumulation_steps=ACCUMULATION,
        ).run()
        hooks = sum(len(m._forward_hooks) for m in [*student.modules(), *teacher.modules()])
        return {"student": student.state_dict(), "projector": feature_loss.state_dict(), "hooks": hooks}


    def rank_main(rank, port, out_dir):
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        student, teacher, feature_loss, dataset = build()
        sampler = DistributedSampler(dataset, num_replicas=WORLD, rank=rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=PER_RANK_BATCH, sampler=sampler)
        result = train(student, teacher, feature_loss, loader, nn.parallel.DistributedDataParallel(student))
        # uneven evaluation shards (7 and 3 samples): the metric gathers every prediction before computing
        report = ClassificationReport(from_logits=False)
        probabilities, labels = fixed_predictions()
        shard = slice(0, 7) if rank == 0 else slice(7, 10)
        report.update((probabilities[shard], labels[shard]))
        result["report"] = report.compute()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


    if __name__ == "__main__":
        out_dir = sys.argv[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # fork (not spawn): the ranks inherit the imported modules instead of importing torch and MONAI again
        ranks = mp.start_processes(rank_main, (port, out_dir), nprocs=WORLD, join=False, start_method="fork")
        student, teacher, feature_loss, dataset = build()
        # DistributedSampler(shuffle=False) gives rank r the items r, r + 2, ...: one process with twice the batch
        # sees the same items in each step
        loader = DataLoader(dataset, batch_size=PER_RANK_BATCH * WORLD)
        result = train(student, teacher, feature_loss, loader, student)
        result["report_inputs"] = fixed_predictions()
        torch.save(result, os.path.join(out_dir, "single.pt"))
        while not ranks.join():
            pass
    """
)


def test_two_process_ddp_matches_single_process(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    single, *ranks = (torch.load(tmp_path / f"{name}.pt") for name in ("single", "rank0", "rank1"))
    expected_report = classification_metrics(*single["report_inputs"])
    for rank in ranks:
        assert rank["hooks"] == 0 and set(rank["student"]) == set(single["student"])
        assert rank["report"] == expected_report and rank["report"]["num_samples"] == 10
        for part in ("student", "projector"):  # the projector is synchronised by the trainer, not by DDP
            for name, value in single[part].items():
                torch.testing.assert_close(rank[part][name], value, rtol=1e-4, atol=1e-6, msg=f"{part}.{name}")
