"""FastNibabelReader gives NibabelReader's arrays and metadata bit for bit; NormalizeNonzerod is NormalizeIntensityd."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage, NormalizeIntensityd

from medkd3d.data import readers
from medkd3d.data.discovery import discover_brats
from medkd3d.data.intensity import NormalizeNonzerod
from medkd3d.data.pipelines import volume_transforms
from medkd3d.data.readers import FastNibabelReader, gzip_decompress, resolve_gzip_backend, resolve_reader

SHAPE = (23, 19, 17)  # odd sizes: a transpose bug cannot hide behind symmetry
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # the BraTS orientation
OBLIQUE = np.array([[0.0, -1.2, 0.1, 90.0], [0.9, 0.0, 0.0, -126.0], [0.0, 0.05, 1.5, -72.0], [0.0, 0.0, 0.0, 1.0]])
BACKENDS = ["zlib", pytest.param("isal", marks=pytest.mark.skipif(not readers.HAS_ISAL, reason="isal not installed"))]


def write_nifti(
    path: Path, array: np.ndarray, affine: np.ndarray, slope: float | None = None, inter: float = 0.0, order: str = "<"
) -> Path:
    """Write ``array`` with ``affine``, in byte ``order``; with ``slope``, scl_slope/scl_inter (data = raw*s+i)."""
    image = nib.Nifti1Image(array, affine, header=nib.Nifti1Header(endianness=order))
    image.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Small BraTS-like files: four int16 modalities (gz and plain), scaled ints, float32, uint8 labels."""
    root = tmp_path_factory.mktemp("readers")
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[3:20, 2:17, 2:15] = True
    modalities = [np.where(brain, rng.integers(1, 3000, SHAPE), 0).astype(np.int16) for _ in range(4)]
    cases = {
        "int16_gz": [write_nifti(root / f"m{i}.nii.gz", m, LPS) for i, m in enumerate(modalities)],
        "int16_nii": [write_nifti(root / f"m{i}.nii", m, LPS) for i, m in enumerate(modalities)],
        "mixed_gz_and_nii": [root / "m0.nii.gz", root / "m1.nii", root / "m2.nii.gz", root / "m3.nii"],
        "scaled_int16": [
            write_nifti(root / f"s{i}.nii.gz", m, OBLIQUE, slope=0.5 + i, inter=-3.0) for i, m in enumerate(modalities)
        ],
        "float32": [write_nifti(root / "f.nii.gz", rng.normal(size=SHAPE).astype(np.float32), OBLIQUE)],
        "uint8_seg": [write_nifti(root / "seg.nii.gz", rng.choice([0, 1, 2, 4], SHAPE).astype(np.uint8), LPS)],
        "4d": [write_nifti(root / "t.nii.gz", rng.integers(0, 9, (*SHAPE, 3)).astype(np.int16), LPS)],
        "big_endian": [write_nifti(root / f"be{i}.nii.gz", m, LPS, order=">") for i, m in enumerate(modalities[:2])],
        "two_gzip_members": [root / "two.nii.gz"],
    }
    # gzip allows a file of several members, one after the other (some tools write NIfTI that way)
    plain = (root / "m0.nii").read_bytes()
    (root / "two.nii.gz").write_bytes(gzip.compress(plain[:5000], mtime=0) + gzip.compress(plain[5000:], mtime=0))
    return cases


def load(reader, paths: list[Path]) -> MetaTensor:
    names = [str(p) for p in paths]
    return LoadImage(reader=reader, image_only=True, dtype=None)(names if len(names) > 1 else names[0])


def assert_same_image(actual: MetaTensor, expected: MetaTensor) -> None:
    """Same values (bit for bit), dtype, shape, affine and every metadata entry."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual.as_tensor(), expected.as_tensor())
    assert torch.equal(actual.affine, expected.affine)
    assert actual.meta.keys() == expected.meta.keys()
    for key, value in expected.meta.items():
        if isinstance(value, str):
            assert actual.meta[key] == value, key
        else:
            assert np.array_equal(np.asarray(actual.meta[key]), np.asarray(value), equal_nan=True), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case",
    [
        "int16_gz",
        "int16_nii",
        "mixed_gz_and_nii",
        "scaled_int16",
        "float32",
        "uint8_seg",
        "4d",
        "big_endian",
        "two_gzip_members",
    ],
)
def test_fast_reader_gives_nibabel_readers_image(files: dict, case: str, backend: str) -> None:
    expected = load(NibabelReader(), files[case])
    actual = load(FastNibabelReader(gzip_backend=backend), files[case])
    assert_same_image(actual, expected)
    assert actual.as_tensor().is_contiguous()
    if case == "big_endian":
        assert nib.load(files[case][0]).dataobj.dtype == np.dtype(">i2")
    if case == "scaled_int16":  # nibabel applied the scaling: the data are no longer integers
        assert actual.dtype.is_floating_point and not torch.equal(actual, actual.round())


def test_a_reader_shared_by_threads_keeps_each_image_whole(files: dict) -> None:
    """CacheDataset and ThreadDataLoader share one reader between threads: lists and single files interleave."""
    loader = LoadImage(reader=FastNibabelReader(), image_only=True, dtype=None)
    jobs = [[str(p) for p in files["int16_gz"]], str(files["uint8_seg"][0])] * 6
    expected = [loader(job) for job in jobs[:2]]  # one after the other
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(loader, jobs))
    assert [tuple(image.shape) for image in images] == [(4, *SHAPE), SHAPE] * 6
    for index, image in enumerate(images):
        assert torch.equal(image.as_tensor(), expected[index % 2].as_tensor())


def test_the_real_layout_is_kept(files: dict) -> None:
    """Channels in list order, voxel [x, y, z] of each file at [c, x, y, z], affine and spacing as in nibabel."""
    paths = files["scaled_int16"]
    image = load(FastNibabelReader(), paths)
    for channel, path in enumerate(paths):
        np.testing.assert_array_equal(image[channel].numpy(), nib.load(path).get_fdata(dtype=np.float32))
    np.testing.assert_allclose(image.affine.numpy(), OBLIQUE, atol=1e-5)


def test_channel_dim_and_squeeze_options_match(files: dict) -> None:
    options = {"channel_dim": -1, "squeeze_non_spatial_dims": True}
    assert_same_image(load(FastNibabelReader(**options), files["4d"]), load(NibabelReader(**options), files["4d"]))


def test_files_of_a_list_must_agree_in_affine(tmp_path: Path, files: dict) -> None:
    moved = write_nifti(tmp_path / "moved.nii.gz", np.zeros(SHAPE, np.int16), OBLIQUE)
    reader = FastNibabelReader()
    with pytest.raises(RuntimeError, match="affine matrix of all images should be the same"):
        reader.get_data(reader.read([files["int16_gz"][0], moved]))


def test_a_damaged_gzip_file_gets_nibabels_error(tmp_path: Path, files: dict) -> None:
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(files["int16_gz"][0].read_bytes()[:-200])
    for reader in (NibabelReader(), FastNibabelReader()):
        with pytest.raises(EOFError):
            np.asarray(reader.get_data(reader.read(truncated))[0])


def test_gzip_backends_decompress_alike(files: dict) -> None:
    blob = files["int16_gz"][0].read_bytes()
    assert gzip_decompress(blob, "zlib") == gzip.decompress(blob)
    assert gzip_decompress(blob, "auto") == gzip.decompress(blob)
    assert resolve_gzip_backend("auto") == ("isal" if readers.HAS_ISAL else "zlib")
    with pytest.raises(ValueError, match="gzip_backend must be one of"):
        FastNibabelReader(gzip_backend="lz4")


def test_isal_backend_without_isal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "HAS_ISAL", False)
    assert resolve_gzip_backend("auto") == "zlib"
    with pytest.raises(ValueError, match="pip install isal"):
        resolve_gzip_backend("isal")


def test_without_isal_the_reader_falls_back_to_zlib(files: dict) -> None:
    """With ``isal`` unimportable, the module imports and reads through zlib (a fresh interpreter)."""
    code = (
        "import sys; sys.modules['isal'] = None\n"  # makes `import isal` fail, as when it is not installed
        "import numpy as np, nibabel as nib\n"
        "from medkd3d.data.readers import HAS_ISAL, FastNibabelReader\n"
        "reader = FastNibabelReader()\n"
        f"array, _ = reader.get_data(reader.read({str(files['int16_gz'][0])!r}))\n"
        f"expected = np.asanyarray(nib.load({str(files['int16_gz'][0])!r}).dataobj)\n"
        "print(HAS_ISAL, reader.gzip_backend, np.array_equal(array, expected))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["False", "zlib", "True"]


def test_pipelines_select_the_reader_by_name(synthetic_brats_root: Path) -> None:
    assert resolve_reader("FastNibabelReader") is FastNibabelReader
    assert resolve_reader("fastnibabelreader") is FastNibabelReader
    assert resolve_reader("NibabelReader") == "NibabelReader"  # MONAI resolves its own names
    record = discover_brats(synthetic_brats_root)["training"][0]
    fast = volume_transforms((24, 24, 24), reader="FastNibabelReader", load_seg=True)(record)
    reference = volume_transforms((24, 24, 24), reader="NibabelReader", load_seg=True)(record)
    for key in ("image", "seg"):
        assert torch.equal(fast[key].as_tensor(), reference[key].as_tensor())
        assert torch.equal(fast[key].affine, reference[key].affine)


def reference_and_fast_normalisation(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reference = NormalizeIntensityd("image", nonzero=True, channel_wise=True)({"image": image.clone()})["image"]
    fast = NormalizeNonzerod("image")({"image": image.clone()})["image"]
    return reference, fast


def test_normalisation_matches_monai() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((5, 30, 26, 22), generator=generator) * 400 + 900
    image[:, :4] = 0  # background and padding
    image[:, 10:12, 5:9] = 0
    image[1] = 0  # an empty channel stays as it is
    image[2][image[2] != 0] = 7.0  # a constant brain: std counts as 1
    image[3, 20:, :, 3:5] = -250.0  # negative values are brain too
    meta = MetaTensor(image, affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))
    reference, fast = reference_and_fast_normalisation(meta)
    assert isinstance(fast, MetaTensor) and fast.dtype == torch.float32
    torch.testing.assert_close(fast.as_tensor(), reference.as_tensor(), atol=1e-6, rtol=0)
    assert torch.equal(fast.affine, meta.affine)
    assert torch.equal(fast[1], torch.zeros_like(fast[1])) and not fast[meta == 0].any()  # background stays 0


def test_normalisation_matches_monai_on_the_pipeline_and_on_ints(synthetic_brats_root: Path) -> None:
    record = discover_brats(synthetic_brats_root)["training"][1]
    pipeline = volume_transforms((24, 24, 24))
    before = pipeline(record, end=len(pipeline.transforms) - 2)["image"]  # everything up to the normalisation
    reference, fast = reference_and_fast_normalisation(before)
    torch.testing.assert_close(fast.as_tensor(), reference.as_tensor(), atol=1e-6, rtol=0)
    as_int = MetaTensor((before * 100).to(torch.int16))  # NormalizeIntensity makes ints float32 first
    reference, fast = reference_and_fast_normalisation(as_int)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.as_tensor(), reference.as_tensor(), atol=1e-6, rtol=0)


def test_declarative_artefacts_accept_every_pipeline_reader():
    """An exported artefact may name any reader the pipelines take (the allow-list mirrors READERS)."""
    from medkd3d.data.readers import READERS
    from medkd3d.export import declarative

    assert set(declarative._PIPELINE_READERS) == set(READERS)
