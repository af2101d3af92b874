"""BraTS discovery, validation, splits, transform pipelines, datasets and the synthetic BraTS generator."""

# --- discovery, validation, synthetic data ---
# (``name as name`` marks an explicit re-export, so this section needs no shared ``__all__``)
from medkd3d.data.discovery import DISCOVERY_LAYOUTS as DISCOVERY_LAYOUTS
from medkd3d.data.discovery import GRADE_CLASS_NAMES as GRADE_CLASS_NAMES
from medkd3d.data.discovery import MODALITIES as MODALITIES
from medkd3d.data.discovery import detect_layout as detect_layout
from medkd3d.data.discovery import discover_brats as discover_brats
from medkd3d.data.discovery import load_datalist as load_datalist
from medkd3d.data.discovery import match_modality as match_modality
from medkd3d.data.discovery import parse_modality_patterns as parse_modality_patterns
from medkd3d.data.discovery import read_datalist as read_datalist
from medkd3d.data.discovery import write_datalist as write_datalist
from medkd3d.data.synthetic import SYNTHETIC_LAYOUTS as SYNTHETIC_LAYOUTS
from medkd3d.data.synthetic import describe_synthetic as describe_synthetic
from medkd3d.data.synthetic import generate_synthetic_brats as generate_synthetic_brats
from medkd3d.data.synthetic import read_synthetic_info as read_synthetic_info
from medkd3d.data.synthetic import synthesize_subject as synthesize_subject
from medkd3d.data.validation import DataProblem as DataProblem
from medkd3d.data.validation import DataValidationError as DataValidationError
from medkd3d.data.validation import assert_data_valid as assert_data_valid
from medkd3d.data.validation import check_data as check_data

# --- splits (light); transforms, pipelines and datasets load on first use (below) ---
# isort: split
from medkd3d.data.splits import load_splits as load_splits
from medkd3d.data.splits import make_splits as make_splits
from medkd3d.data.splits import per_class_subset as per_class_subset
from medkd3d.data.splits import split_records as split_records
from medkd3d.data.splits import stratified_kfold as stratified_kfold
from medkd3d.data.splits import train_val_test_split as train_val_test_split
from medkd3d.data.splits import write_splits as write_splits
from medkd3d.utils import lazy_exports

# Transforms, pipelines and datasets import MONAI and torch, so they are loaded on first access (PEP 562):
# `medkd3d --help` and `medkd3d split` stay fast.
_LAZY_EXPORTS = {
    **dict.fromkeys(
        ("DropNoned", "RandSliceStackd", "SliceStackd", "brain_mask", "extract_slice_stacks", "foreground_area"),
        "transforms",
    ),
    **dict.fromkeys(
        (
            "network_input_shape",
            "preprocess_transforms",
            "volume_transforms",
            "slice_stack_transforms",
            "slice_transforms",
        ),
        "pipelines",
    ),
    **dict.fromkeys(("build_dataset", "estimate_cache_bytes"), "datasets"),
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY_EXPORTS)
