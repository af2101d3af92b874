"""NIfTI reading for MONAI's ``LoadImage``: nibabel's semantics, with faster gzip decompression.

:class:`FastNibabelReader` is MONAI's :class:`~monai.data.NibabelReader` with three changes in *how* a volume is
read, none in *what* is read:

* a ``.nii.gz`` file is read into memory and decompressed in one call, by ISA-L (the ``isal`` package) when it is
  installed and by zlib (the standard library) otherwise, and nibabel parses the result from memory: the image
  class is chosen by nibabel's own sniffing, and the header, affine, scaling (``scl_slope``/``scl_inter``) and
  data type come from nibabel exactly as :func:`nibabel.load` gives them. nibabel itself streams the file through
  ``gzip.GzipFile`` in small blocks, which costs ~1.1-1.3x a one-shot zlib decompression, and ISA-L decompresses
  BraTS files ~1.4-1.6x faster than zlib (``benchmarks/results/data_loading.md``);
* the voxels are viewed where the decompression put them and scaled as nibabel's ``ArrayProxy`` scales them,
  instead of being copied into a new buffer first;
* the array is handed to MONAI in C order. NIfTI stores voxels in Fortran order, and ``LoadImage`` makes every
  array C-contiguous; done by NumPy on the stacked ``[C, X, Y, Z]`` array that copy is a cache-unfriendly 4D
  transpose, done here plane by plane (a 2D transpose each) straight into the stacked array it is ~1.4x cheaper
  and saves ``np.stack``'s copy.

Files that are not gzip-compressed NIfTI (``.nii``, memory-mapped as usual) and gzip files that fail to
decompress in one piece go through :func:`nibabel.load` unchanged, so a damaged file gets nibabel's own error.
The arrays and metadata are bit-identical to ``NibabelReader``'s (``tests/data/test_readers.py``: int16, scaled
int16, float32, uint8, 4D, big-endian, multi-member gzip and plain ``.nii`` files).

The pipelines of :mod:`medkd3d.data.pipelines` take the reader by name (:data:`READERS`).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.image_reader import _copy_compatible_dict  # private: MONAI is pinned to 1.6.x
from monai.data.utils import correct_nifti_header_if_necessary, is_no_channel
from monai.utils import MetaKeys, ensure_tuple, optional_import
from nibabel.arrayproxy import ArrayProxy
from nibabel.imageclasses import all_image_classes
from nibabel.spatialimages import SpatialImage
from nibabel.volumeutils import apply_read_scaling

igzip, HAS_ISAL = optional_import("isal.igzip")
isal_zlib, _ = optional_import("isal.isal_zlib")

__all__ = [
    "DEFAULT_READER",
    "GZIP_BACKENDS",
    "HAS_ISAL",
    "READERS",
    "FastNibabelReader",
    "gzip_decompress",
    "resolve_gzip_backend",
    "resolve_reader",
]

#: Reader names the pipelines accept; any other string is handed to MONAI's ``LoadImage`` unchanged.
READERS = ("FastNibabelReader", "NibabelReader", "ITKReader")
#: The pipelines' default reader (bit-identical to ``NibabelReader``, faster on ``.nii.gz``).
DEFAULT_READER = "FastNibabelReader"
#: ``gzip_backend`` values of :class:`FastNibabelReader`: ``"auto"`` is ``"isal"`` when installed, else ``"zlib"``.
GZIP_BACKENDS = ("auto", "isal", "zlib")

# Errors of a one-shot decompression (a damaged, truncated or not-really-gzip file): the file is then left to
# nibabel, which reads only the bytes the header asks for and reports problems in its own words.
_DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error) + (
    (isal_zlib.error,) if HAS_ISAL else ()
)
# nibabel sniffs this many bytes to tell NIfTI-1 from NIfTI-2 and CIFTI-2 (``path_maybe_image``'s default).
_SNIFF_BYTES = 1024


def resolve_gzip_backend(backend: str = "auto") -> str:
    """The gzip implementation ``backend`` stands for on this machine.

    Args:
        backend: ``"auto"`` (ISA-L when the ``isal`` package is installed, else zlib), ``"isal"`` or ``"zlib"``.

    Returns:
        ``"isal"`` or ``"zlib"``.

    Raises:
        ValueError: for an unknown backend, or ``"isal"`` when the ``isal`` package is not installed.
    """
    if backend not in GZIP_BACKENDS:
        raise ValueError(f"gzip_backend must be one of {GZIP_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "isal" if HAS_ISAL else "zlib"
    if backend == "isal" and not HAS_ISAL:
        raise ValueError("gzip_backend='isal' needs the isal package: pip install isal (or use 'auto' or 'zlib')")
    return backend


def gzip_decompress(data: bytes, backend: str = "auto") -> bytes:
    """Decompress a whole gzip stream (every member, checksums verified), as :func:`gzip.decompress` does.

    Args:
        data: the gzip file's bytes.
        backend: see :func:`resolve_gzip_backend`.

    Returns:
        The decompressed bytes.
    """
    if resolve_gzip_backend(backend) == "zlib":
        return gzip.decompress(data)
    # A NIfTI file is one gzip member: ISA-L's decompressor object takes it in one call, faster here than
    # igzip.decompress (which streams through a reader object); the gzip container's CRC32 and length are checked.
    decompressor = isal_zlib.decompressobj(wbits=31)
    decompressed = decompressor.decompress(data)
    if decompressor.eof and not decompressor.unused_data:
        return decompressed
    return igzip.decompress(data)  # several members, or a damaged stream: gzip's semantics and errors


class _InMemoryFile(io.BytesIO):
    """A decompressed file that nibabel reads as a stream, keeping its bytes at hand for a zero-copy array."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self.raw = raw


def _array_from_memory(proxy: ArrayProxy, raw: bytes) -> np.ndarray | None:
    """``np.asanyarray(proxy)`` for a proxy of an in-memory file, without nibabel's copy of the voxel bytes.

    nibabel reads the voxels into a new buffer (``array_from_file``); here they are viewed where they are (read
    only: the caller copies them into the stacked array anyway), then scaled as ``ArrayProxy.__array__`` scales
    them. ``None`` when the bytes do not hold the voxels the header promises (or none at all), so that nibabel
    reads them and reports the problem itself.
    """
    shape, dtype, offset = proxy.shape, np.dtype(proxy.dtype), proxy.offset
    n_bytes = math.prod(shape) * dtype.itemsize
    if not shape or n_bytes == 0 or offset + n_bytes > len(raw):
        return None
    unscaled = np.ndarray(shape, dtype, buffer=raw, offset=offset, order=proxy.order)
    # ArrayProxy._get_scaled with dtype=None: the scale factors keep their own dtypes
    return apply_read_scaling(unscaled, np.asanyarray(proxy.slope), np.asanyarray(proxy.inter))


def _image_from_memory(filename: str, raw: bytes, **kwargs) -> SpatialImage | None:
    """The image :func:`nibabel.load` would make of ``filename``, parsed from its decompressed bytes ``raw``.

    The image class is chosen as ``nibabel.load`` chooses it (same classes, same order, same sniffed bytes).
    ``None`` when that class keeps header and data in separate files, which only ``nibabel.load`` can open.
    """
    sniff = (raw[:_SNIFF_BYTES], filename)
    for image_class in all_image_classes:
        is_valid, sniff = image_class.path_maybe_image(filename, sniff)
        if is_valid:
            if len(image_class.files_types) != 1:
                return None
            file_map = image_class.make_file_map({image_class.files_types[0][0]: _InMemoryFile(raw)})
            # the bytes are already in memory: there is no file to memory-map
            return image_class.from_file_map(file_map, **{**kwargs, "mmap": False})
    return None


def _copy_in_c_order(source: np.ndarray, target: np.ndarray) -> None:
    """Copy ``source`` into the C-contiguous ``target`` of the same shape.

    A Fortran-ordered 3D volume (how NIfTI stores voxels) is transposed one ``[X, Z]`` plane at a time: each
    plane fits in cache, while NumPy's one-call copy walks the whole volume with a large stride on one side.
    """
    if source.ndim == 3 and source.flags.f_contiguous and not source.flags.c_contiguous:
        for y in range(source.shape[1]):
            target[:, y] = source[:, y]
    else:
        target[...] = source


def _to_c_order(source: np.ndarray) -> np.ndarray:
    """``source`` as a writeable C-contiguous ndarray (a copy unless it is one), the layout ``LoadImage`` needs."""
    if source.flags.c_contiguous and source.flags.writeable:
        return np.asarray(source)
    target = np.empty(source.shape, dtype=source.dtype)
    _copy_in_c_order(source, target)
    return target


def _stack_in_c_order(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.ascontiguousarray(np.stack(arrays))`` (what ``NibabelReader`` and ``LoadImage`` do), in one copy."""
    if any(array.shape != arrays[0].shape for array in arrays):
        return np.ascontiguousarray(np.stack(arrays))  # NumPy's own error for mismatched shapes
    stacked = np.empty((len(arrays), *arrays[0].shape), dtype=np.result_type(*arrays))
    for array, target in zip(arrays, stacked):
        _copy_in_c_order(array, target)
    return stacked


class FastNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader``, reading ``.nii.gz`` in one decompression (ISA-L when installed) and in C order.

    It returns the same arrays (values, dtype, scaling) and metadata (header fields, affine, original affine,
    spatial shape) as ``NibabelReader``; see the module docstring for what differs in the reading.

    Args:
        gzip_backend: ``"auto"`` (ISA-L when the ``isal`` package is installed, else zlib), ``"isal"`` or
            ``"zlib"``.
        channel_dim, as_closest_canonical, squeeze_non_spatial_dims, to_gpu, kwargs: as for ``NibabelReader``
            (``kwargs`` go to ``nibabel.load``, or to the image class's ``from_file_map`` for a file read into
            memory).

    Raises:
        ValueError: for an unknown ``gzip_backend``, or ``"isal"`` without the ``isal`` package.
    """

    def __init__(
        self,
        gzip_backend: str = "auto",
        channel_dim: str | int | None = None,
        as_closest_canonical: bool = False,
        squeeze_non_spatial_dims: bool = False,
        to_gpu: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(channel_dim, as_closest_canonical, squeeze_non_spatial_dims, to_gpu, **kwargs)
        self.gzip_backend = resolve_gzip_backend(gzip_backend)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Read one file or a list of files (the channels of one image), like ``NibabelReader.read``.

        Args:
            data: a file name or a list of file names.
            kwargs: arguments of ``nibabel.load``, overriding those given to the constructor.

        Returns:
            A nibabel image, or a list of them for a list of files.
        """
        filenames: Sequence[PathLike] = ensure_tuple(data)
        self.filenames = filenames
        load_kwargs = {**self.kwargs, **kwargs}
        images = [correct_nifti_header_if_necessary(self._load(name, **load_kwargs)) for name in filenames]
        return images if len(filenames) > 1 else images[0]

    def _load(self, filename: PathLike, **kwargs) -> SpatialImage:
        """One file as ``nibabel.load`` reads it; a ``.nii.gz`` decompressed in one piece, in memory."""
        name = os.fspath(filename)
        if self.to_gpu or not name.lower().endswith(".nii.gz"):
            return nib.load(name, **kwargs)
        try:
            with open(name, "rb") as stream:
                raw = gzip_decompress(stream.read(), self.gzip_backend)
        except _DECOMPRESSION_ERRORS:
            return nib.load(name, **kwargs)  # nibabel's own reading, and its own error message
        image = _image_from_memory(name, raw, **kwargs)
        return nib.load(name, **kwargs) if image is None else image

    def _get_array_data(self, img, filename) -> np.ndarray:
        """nibabel's (scaled) voxel array; for a file read into memory, viewed in place rather than copied."""
        proxy = getattr(img, "dataobj", None)
        stream = getattr(proxy, "file_like", None)
        if not self.to_gpu and isinstance(proxy, ArrayProxy) and isinstance(stream, _InMemoryFile):
            array = _array_from_memory(proxy, stream.raw)
            if array is not None:
                return array
        return super()._get_array_data(img, filename)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """The voxel array and metadata, exactly as ``NibabelReader.get_data`` gives them, the array in C order.

        ``NibabelReader`` stacks the files of a list with ``np.stack``, and ``LoadImage`` then makes the result
        C-contiguous: two full copies, one of them a slow 4D transpose. Here each file's array is transposed
        once, straight into its place in the stack; the metadata of each file comes from ``NibabelReader`` and
        is merged as it merges it (the first file's, after checking that all affines and shapes agree).

        Args:
            img: a nibabel image or a list of them, from :meth:`read`.

        Returns:
            The array (``[C, ...]`` for a list of files without a channel dimension) and its metadata.

        Raises:
            RuntimeError: when the files of a list differ in affine or spatial shape.
        """
        images = ensure_tuple(img)
        if self.to_gpu:
            return super().get_data(img)
        arrays, meta = [], {}
        for image in images:
            # One image at a time, so NibabelReader does not stack. It pairs the image with the first entry of
            # self.filenames, which it reads only for to_gpu (handled above); self.filenames is left alone, as a
            # reader shared by threads (CacheDataset, ThreadDataLoader) may be between read() and get_data().
            array, image_meta = super().get_data(image)
            arrays.append(array)
            _copy_compatible_dict(image_meta, meta)
        if len(arrays) == 1:
            return _to_c_order(arrays[0]), meta
        if not is_no_channel(meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM)):
            channel_dim = int(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])
            return np.ascontiguousarray(np.concatenate(arrays, axis=channel_dim)), meta
        # stacked along a new first dimension, which becomes the channel dimension (as in NibabelReader)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return _stack_in_c_order(arrays), meta


def resolve_reader(reader: str | type[ImageReader] | ImageReader) -> str | type[ImageReader] | ImageReader:
    """What to hand ``LoadImaged(reader=...)`` for a pipeline's ``reader`` argument.

    Args:
        reader: a name of :data:`READERS` (case-insensitive, as MONAI matches its reader names), any other
            MONAI reader name, or a reader class or instance.

    Returns:
        :class:`FastNibabelReader` for its name; anything else unchanged (MONAI resolves its own names).
    """
    if isinstance(reader, str) and reader.lower() == FastNibabelReader.__name__.lower():
        return FastNibabelReader
    return reader
