"""3D, 2.5D, multi-slice 2.5D and 2D pipelines on the shared synthetic BraTS files (48x48x40, real NIfTI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, MetaTensor

from medkd3d.data.discovery import discover_brats
from medkd3d.data.pipelines import (
    preprocess_transforms,
    slice_stack_transforms,
    slice_transforms,
    volume_transforms,
)

SIZE = (32, 32, 32)
# ITK's SWIG bindings warn on import under Python 3.12+; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


@pytest.fixture(scope="module")
def records(synthetic_brats_root: Path) -> list[dict]:
    return discover_brats(synthetic_brats_root)["training"]


def assert_zscored(image: torch.Tensor) -> None:
    """Every channel has mean 0 and std 1 over its nonzero (brain) voxels."""
    for channel in image.as_tensor() if isinstance(image, MetaTensor) else image:
        brain = channel[channel != 0]
        assert brain.numel() > 1000
        assert abs(brain.mean().item()) < 1e-3
        assert brain.std().item() == pytest.approx(1.0, abs=1e-2)


def test_volume_pipeline_outputs(records: list[dict]) -> None:
    record = records[0]
    out = volume_transforms(SIZE)(record)
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32 and image.shape == (4, *SIZE)
    assert out["label"].dtype == torch.int64 and out["label"].ndim == 0 and out["label"].item() == record["label"]
    assert not isinstance(out["label"], MetaTensor)
    assert out["subject"] == record["subject"]
    assert_zscored(image)
    # "fit" keeps the brain's aspect ratio: its longest side fills the volume, the others are zero-padded
    extent = [int(image.ne(0).any(0).any(dim=tuple(d for d in range(3) if d != a)).sum()) for a in range(3)]
    assert max(extent) == 32 and min(extent) < 32


def test_channels_follow_the_order_of_the_image_list(records: list[dict]) -> None:
    record = records[1]
    reversed_record = {**record, "image": record["image"][::-1]}
    transform = volume_transforms(SIZE)
    torch.testing.assert_close(transform(reversed_record)["image"], transform(record)["image"].flip(0))


def test_nibabel_and_itk_readers_give_the_same_volume(records: list[dict]) -> None:
    nib_image = volume_transforms(SIZE, reader="NibabelReader")(records[2])["image"]
    itk_image = volume_transforms(SIZE, reader="ITKReader")(records[2])["image"]
    torch.testing.assert_close(itk_image.as_tensor(), nib_image.as_tensor())
    torch.testing.assert_close(itk_image.affine, nib_image.affine)


@pytest.mark.parametrize("resize", ["stretch", "pad_crop"])
def test_other_resize_modes_and_resampling(records: list[dict], resize: str) -> None:
    out = volume_transforms((24, 28, 20), resize=resize, pixdim=(1.5, 1.5, 1.5))(records[0])
    assert out["image"].shape == (4, 24, 28, 20)
    assert_zscored(out["image"])


def test_segmentation_follows_the_image(records: list[dict]) -> None:
    out = volume_transforms(SIZE, load_seg=True)(records[0])
    seg = out["seg"]
    assert seg.shape == (1, *SIZE) and seg.dtype == torch.uint8
    assert set(torch.unique(seg).tolist()) <= {0, 1, 2, 4} and seg.any()
    assert not (seg.bool() & (out["image"] == 0).all(0, keepdim=True)).any()  # tumour lies inside the brain


def test_training_augmentation_is_seeded_and_varies(records: list[dict]) -> None:
    def run(seed: int) -> torch.Tensor:
        transform = volume_transforms(SIZE, train=True, load_seg=True)
        transform.set_random_state(seed)
        return torch.stack([transform(records[0])["image"].as_tensor() for _ in range(2)])

    first = run(0)
    torch.testing.assert_close(first, run(0), rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])  # new draws every call
    assert not torch.equal(first, run(1))


def test_random_transforms_come_after_the_whole_deterministic_prefix() -> None:
    """MONAI caches up to the first randomizable transform: that must be exactly ``preprocess_transforms``."""
    from monai.transforms import Randomizable

    for transform, load_seg in (
        (volume_transforms(SIZE, train=True), False),
        (slice_stack_transforms(SIZE, train=True), False),  # the default training stacks need no segmentation
        (slice_stack_transforms(SIZE, train=True, sampling="tumour"), True),  # tumour sampling loads it
    ):
        first_random = next(i for i, t in enumerate(transform.transforms) if isinstance(t, Randomizable))
        prefix = preprocess_transforms(SIZE, load_seg=load_seg)
        assert [type(t) for t in transform.transforms[:first_random]] == [type(t) for t in prefix]


def test_slice_stack_pipeline_takes_adjacent_slices_of_the_volume(records: list[dict]) -> None:
    out = slice_stack_transforms(SIZE, num_slices=3, keep_volume=True)(records[3])
    image, volume = out["image"], out["volume"]
    assert image.shape == (12, 32, 32) and image.dtype == torch.float32
    assert volume.shape == (4, *SIZE)
    torch.testing.assert_close(volume, volume_transforms(SIZE)(records[3])["image"])
    centre = int(out["slice_index"].item() * 32)
    for m in range(4):
        for k in range(3):
            torch.testing.assert_close(image[m * 3 + k], volume[m, :, :, centre - 1 + k])
    assert out["label"].dtype == torch.int64 and "seg" in records[3] and out["seg"] == records[3]["seg"]


def test_augmented_slices_and_kept_volume_stay_consistent(records: list[dict]) -> None:
    """Volume-to-slice distillation needs the teacher's volume to carry exactly the student's slices."""
    transform = slice_stack_transforms(SIZE, num_slices=3, num_stacks=2, train=True, keep_volume=True)
    transform.set_random_state(5)
    for _ in range(2):
        out = transform(records[3])
        for stack, fraction in zip(out["image"], out["slice_index"]):
            centre = int(fraction.item() * 32)
            window = out["volume"][:, :, :, centre - 1 : centre + 2]  # [4, X, Y, 3]
            torch.testing.assert_close(stack, window.movedim(-1, 1).flatten(0, 1))  # modality-major


def test_inference_slice_selection_needs_no_segmentation(records: list[dict]) -> None:
    record = {**records[4], "seg": None}
    for sampling in ("foreground", "largest_area", "even"):
        out = slice_stack_transforms(SIZE, num_slices=3, sampling=sampling)(record)
        assert out["image"].shape == (12, 32, 32) and "seg" not in out
    unlabeled = {"subject": "new", "image": records[4]["image"], "seg": None, "label": None, "class_name": None}
    out = slice_transforms(SIZE)(unlabeled)
    assert set(out) == {"subject", "image", "slice_index"} and out["image"].shape == (4, 32, 32)


def test_tumour_sampling_picks_slices_with_tumour(records: list[dict]) -> None:
    record = records[0]
    seg = volume_transforms(SIZE, load_seg=True)(record)["seg"][0]
    tumour_slices = set(torch.nonzero(seg.any(0).any(0)).flatten().tolist())
    transform = slice_stack_transforms(SIZE, num_slices=1, sampling="tumour")
    transform.set_random_state(0)
    centres = {int(transform(record)["slice_index"].item() * 32) for _ in range(6)}
    assert centres <= tumour_slices and len(tumour_slices) < 32
    unsegmented = transform({**record, "seg": None})  # falls back to brain slices
    assert unsegmented["image"].shape == (4, 32, 32) and "seg" not in unsegmented


def test_multi_slice_and_2d_pipelines(records: list[dict]) -> None:
    multi = slice_stack_transforms(SIZE, num_slices=3, num_stacks=4, train=True, keep_volume=True)
    multi.set_random_state(0)
    out = multi(records[5])
    assert out["image"].shape == (4, 12, 32, 32) and out["slice_index"].shape == (4,)
    assert torch.all(out["slice_index"][1:] >= out["slice_index"][:-1])
    assert isinstance(out["seg"], str)  # the default training stacks never read the segmentation
    assert out["volume"].shape == (4, *SIZE)
    two_d = slice_transforms(SIZE, axis=0, num_stacks=2)(records[5])
    assert two_d["image"].shape == (2, 4, 32, 32)
    two_d_train = slice_transforms(SIZE, train=True, sampling="random_foreground")(records[5])
    assert two_d_train["image"].shape == (4, 32, 32) and isinstance(two_d_train["seg"], str)  # seg never loaded
    with pytest.raises(ValueError, match="one slice"):
        slice_transforms(SIZE, num_slices=3)


def test_mil_training_and_evaluation_stacks_lie_in_the_brain_without_a_segmentation(records: list[dict]) -> None:
    """The multi-stack student's default pipelines: S random stacks in training, the S bin midpoints in evaluation,
    both over the brain's extent, neither reading a segmentation."""
    record = {k: v for k, v in records[6].items() if k != "seg"}  # no segmentation at all
    volume = volume_transforms(SIZE)(record)["image"]
    brain = torch.nonzero(volume.ne(0).any(0).any(0).any(0)).flatten()
    first, last = int(brain[0]), int(brain[-1])
    evaluation = slice_stack_transforms(SIZE, num_slices=3, num_stacks=4)(record)
    fixed = (evaluation["slice_index"] * 32 - 0.5).round()
    assert evaluation["image"].shape == (4, 12, 32, 32)
    assert ((fixed >= first) & (fixed <= last)).all()
    training = slice_stack_transforms(SIZE, num_slices=3, num_stacks=4, train=True, keep_volume=True)
    training.set_random_state(0)
    for _ in range(3):
        out = training(record)
        centres = (out["slice_index"] * 32 - 0.5).round()
        assert out["image"].shape == (4, 12, 32, 32) and "seg" not in out
        # the small affine may move the brain by a slice or two; the stacks stay within the brain's bins
        assert ((centres >= first - 2) & (centres <= last + 2)).all()
        assert ((centres - fixed).abs() <= (last - first + 1) / 4 + 2).all()
        brain_voxels = out["volume"].ne(0).any(0)[..., centres.long()]  # [X, Y, S] of the augmented volume
        assert (brain_voxels.flatten(0, 1).sum(0) > 0).all()  # every stack's centre slice shows brain


def test_pipelines_batch_with_the_monai_dataloader(records: list[dict]) -> None:
    from monai.data import Dataset

    transform = slice_stack_transforms(SIZE, num_slices=3, train=True, keep_volume=True)
    batch = next(iter(DataLoader(Dataset(records[:2], transform), batch_size=2)))
    assert batch["image"].shape == (2, 12, 32, 32) and batch["volume"].shape == (2, 4, *SIZE)
    assert batch["label"].dtype == torch.int64 and batch["slice_index"].shape == (2,)
    assert batch["subject"] == [r["subject"] for r in records[:2]]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="resize"):
        volume_transforms(SIZE, resize="squash")
    with pytest.raises(ValueError, match="unknown sampling 'middle'"):
        slice_stack_transforms(SIZE, sampling="middle")
