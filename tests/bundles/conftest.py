"""Fixtures of the bundle tests: tiny overrides per bundle and the bundles trained once per session.

Tests override configs, never edit them: tiny networks (each model's registry ``tiny_kwargs``), 32^3 volumes,
one epoch, batch 2, no workers; of the session's 12 synthetic subjects the bundles' default ``test_fraction`` (0.2)
holds out 2 for test, and fold 0 of 3 folds trains on 6 and validates on 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medkd3d.bundles import BUNDLE_NAMES

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
SPATIAL = [32, 32, 32]


class BundleKit:
    """Overrides and runners shared by the bundle tests (a fixture, as test modules cannot import conftest)."""

    bundles_dir = BUNDLES_DIR
    spatial = SPATIAL
    teacher_of = {
        "brats_student_effnet3d": "brats_teacher_vggvit3d",
        "brats_student_effnet25d": "brats_teacher_vggvit3d",
        "brats_hdkd_student3d": "brats_hdkd_teacher3d",
    }
    model_of = {
        "brats_teacher_vggvit3d": "vggvit3d",
        "brats_hdkd_teacher3d": "hdkd_teacher3d",
        "brats_student_effnet3d": "efficientnet3d_b0",
        "brats_student_effnet25d": "efficientnet25d_multi",
        "brats_hdkd_student3d": "hdkd_student3d",
    }

    def network_overrides(self, bundle: str, prefix: str = "network_def") -> dict[str, Any]:
        """``<prefix>#<arg>`` overrides making the bundle's network tiny (its registry ``tiny_kwargs``)."""
        from medkd3d.networks import get_model_entry

        kwargs = dict(get_model_entry(self.model_of[bundle]).tiny_kwargs)
        kwargs.pop("img_size", None)  # the configs tie it to spatial_size
        if bundle == "brats_student_effnet25d":
            kwargs["backbone"] = "mobilenetv3_small_050"  # a tiny timm backbone keeps the 2.5D tests fast
        return {f"{prefix}#{key}": list(value) if isinstance(value, tuple) else value for key, value in kwargs.items()}

    def inference_overrides(self, bundle: str, dataset_dir: Path, out: Path) -> dict[str, Any]:
        """Overrides of ``inference.json`` (a standalone config: no teacher, no training knobs)."""
        return {
            "bundle_root": str(BUNDLES_DIR / bundle),
            "dataset_dir": str(dataset_dir),
            "output_dir": str(out / "eval"),
            "ckpt_path": str(out / "models" / "model.pt"),
            "spatial_size": SPATIAL,
            "num_workers": 0,
            **self.network_overrides(bundle),
        }

    def train_overrides(self, bundle: str, dataset_dir: Path, out: Path, outputs: Path) -> dict[str, Any]:
        """Overrides of ``train.json`` (and ``evaluate.json`` on top of it); teachers' checkpoints under ``outputs``."""
        overrides = {
            "bundle_root": str(BUNDLES_DIR / bundle),
            "dataset_dir": str(dataset_dir),
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "eval"),
            "epochs": 1,
            "batch_size": 2,
            "spatial_size": SPATIAL,
            "num_workers": 0,
            "num_folds": 3,
            **self.network_overrides(bundle),
        }
        teacher = self.teacher_of.get(bundle)
        if teacher:
            # the student builds its tiny teacher from the teacher checkpoint's record: no teacher overrides
            overrides["teacher_ckpt"] = str(outputs / teacher / "models" / "model.pt")
        return overrides

    def teacher_pipeline(self, root: Path, shape: tuple[int, int, int]) -> Any:
        """Run ``medkd3d pipeline`` (``quick`` profile) for the tiny VGG-ViT teacher alone, one epoch, on 12 synthetic
        subjects of ``shape`` in ``root/brats``, into ``root/run``; return its ``PipelineSettings``."""
        from medkd3d.pipeline.run import PipelineSettings, run_pipeline

        teacher = "brats_teacher_vggvit3d"
        settings = PipelineSettings(
            out_dir=root / "run",
            dataset_dir=root / "brats",
            synthetic={"n_hgg": 6, "n_lgg": 6, "shape": shape, "seed": 0},
            profiles=["quick"],
            epochs=1,
            batch_size=2,
            num_workers=0,
            num_folds=3,
            bundles=[teacher],
            bundle_overrides={teacher: {**self.network_overrides(teacher), "network_def#name": "vggvit3d"}},
            latency_repeats=1,
            export_formats=(),
        )
        run_pipeline(settings)
        return settings

    def config_files(self, bundle: str, *names: str) -> list[str]:
        return [str(BUNDLES_DIR / bundle / "configs" / name) for name in names]

    def workflow(self, bundle: str, configs: list[str], workflow_type: str, **overrides: Any) -> Any:
        """An initialised ``ConfigWorkflow``. ``logging.conf`` is left out in-process (it would reset the root
        logger of the whole test session); the ``torchrun`` test runs the command line, which applies it."""
        from monai.bundle import ConfigWorkflow

        workflow = ConfigWorkflow(
            config_file=self.config_files(bundle, *configs),
            meta_file=str(BUNDLES_DIR / bundle / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type=workflow_type,
            **overrides,
        )
        workflow.initialize()
        return workflow

    def run(self, bundle: str, configs: list[str], workflow_type: str, **overrides: Any) -> Any:
        """Run a config the way MONAI's model zoo tests bundles: initialize, check_properties, run, finalize."""
        workflow = self.workflow(bundle, configs, workflow_type, **overrides)
        assert workflow.check_properties() == [], f"{bundle} {configs} misses model-zoo properties"
        workflow.run()
        workflow.finalize()
        return workflow


@pytest.fixture(scope="session")
def bundle_kit() -> BundleKit:
    return BundleKit()


@pytest.fixture(scope="session")
def trained_bundles(
    bundle_kit: BundleKit, synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Every bundle trained for one epoch at tiny size, teachers first; returns the folder of their outputs.

    ``<returned>/<bundle>/models/model.pt`` (the model ``model_selection`` keeps: the final one by default) and
    ``last.pt`` (training state).
    """
    outputs = tmp_path_factory.mktemp("bundle_outputs")
    for bundle in BUNDLE_NAMES:  # teachers come before their students
        overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, outputs / bundle, outputs)
        bundle_kit.run(bundle, ["train.json"], "train", **overrides)
    return outputs
