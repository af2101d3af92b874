"""``medkd3d pipeline``: the whole distillation job through the MONAI bundles, and its report.

- :mod:`medkd3d.pipeline.run`: :func:`run_pipeline` and its :class:`PipelineSettings` (synthesise or validate the
  data, train each teacher, distill each student and its no-KD twin, evaluate on the held-out test subjects,
  export, report), and :func:`finished_trainings` (an output folder's trained runs, to evaluate them again);
- :mod:`medkd3d.pipeline.report`: the teacher/student comparison report (:class:`ModelResult`,
  :func:`write_report`: Markdown and CSV, with chance levels, a trivial baseline, retentions and KD gains);
- :mod:`medkd3d.pipeline.scheduler`: the trainings and evaluations on several worker processes (``--jobs``),
  each teacher before its distilled students, each evaluation after its training;
- :mod:`medkd3d.pipeline.cli`: the command line.
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule. Attributes load on first access (PEP 562), so ``medkd3d --help`` (which imports
#: :mod:`medkd3d.pipeline.cli`) does not pull in torch and MONAI.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "MODELS",
            "NO_KD_SUFFIX",
            "QUICK",
            "ExportParityError",
            "PipelineModel",
            "PipelineSettings",
            "StepClock",
            "finished_trainings",
            "format_duration",
            "parse_bundle_override",
            "run_pipeline",
        ],
        "run",
    ),
    **dict.fromkeys(
        [
            "METRIC_COLUMNS",
            "ModelResult",
            "add_honesty",
            "add_kd_gains",
            "add_teacher_ratios",
            "baseline_result",
            "bundle_evaluation_split",
            "read_predictions",
            "write_report",
        ],
        "report",
    ),
    **dict.fromkeys(
        ["TrainingJob", "TrainingJobError", "next_jobs", "run_training_jobs", "threads_per_job"], "scheduler"
    ),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
