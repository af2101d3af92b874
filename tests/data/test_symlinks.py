"""Discovery follows symbolic links to subject folders, survives link loops and reports broken links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medkd3d.data import DataValidationError, check_data, discover_brats, generate_synthetic_brats

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symbolic links")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BraTS 2019 dataset (2 HGG + 2 LGG) standing for a shared store that linked datasets point into."""
    root = tmp_path_factory.mktemp("store")
    return generate_synthetic_brats(root, layout="brats2019", n_hgg=2, n_lgg=2, shape=(32, 32, 24), seed=2)


def _linked_dataset(store: Path, root: Path) -> Path:
    """``root/{HGG,LGG}/<subject>`` as links to the store's subject folders."""
    for grade in ("HGG", "LGG"):
        (root / grade).mkdir(parents=True)
        for subject in sorted((store / grade).iterdir()):
            (root / grade / subject.name).symlink_to(subject, target_is_directory=True)
    return root


def test_symlinked_subject_folders_are_found(store: Path, tmp_path: Path) -> None:
    root = _linked_dataset(store, tmp_path / "linked")
    datalist = discover_brats(root)
    expected = {r["subject"]: r["label"] for r in discover_brats(store)["training"]}
    assert len(expected) == 4
    assert {r["subject"]: r["label"] for r in datalist["training"]} == expected
    assert all(Path(p).is_file() for r in datalist["training"] for p in r["image"])


def test_a_link_loop_is_searched_once(store: Path, tmp_path: Path) -> None:
    root = _linked_dataset(store, tmp_path / "looped")
    (root / "HGG" / "again").symlink_to(root, target_is_directory=True)  # a loop back to the root
    (root / "LGG" / "twin").symlink_to(root / "HGG", target_is_directory=True)  # a second way to the same folder
    subjects = [r["subject"] for r in discover_brats(root)["training"]]
    assert len(subjects) == 4 and len(set(subjects)) == 4


def test_broken_links_are_problems_naming_the_link(store: Path, tmp_path: Path) -> None:
    root = _linked_dataset(store, tmp_path / "broken")
    ghost = root / "HGG" / "BraTS19_ghost_1"
    ghost.symlink_to(tmp_path / "unmounted" / "BraTS19_ghost_1", target_is_directory=True)
    subject = next((root / "LGG").iterdir())
    real = subject.resolve()
    subject.unlink()
    subject.mkdir()  # a real folder whose FLAIR is a link to a missing file
    for file in real.iterdir():
        if "flair" in file.name:
            (subject / file.name).symlink_to(tmp_path / "gone" / file.name)
        else:
            (subject / file.name).symlink_to(file)

    with pytest.raises(DataValidationError) as caught:
        discover_brats(root)
    message = str(caught.value)
    assert f"{ghost}: broken symbolic link" in message
    assert "flair" in message and "broken symbolic link" in message.split(str(subject))[1]

    problems = [str(p) for p in check_data(root)]
    assert any(str(ghost) in p and "broken symbolic link" in p for p in problems)
