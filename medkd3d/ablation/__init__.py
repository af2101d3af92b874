"""Distillation x data-size studies run through the bundles: the grid, the runner, statistics and reports.

``medkd3d ablate`` (:mod:`medkd3d.ablation.cli`) or, from Python::

    from medkd3d.ablation import StudyConfig, run_study

    outcome = run_study(StudyConfig.quick("data/synthetic", "runs/ablation"))
    print(outcome.reports["summary_md"])

Modules: :mod:`~medkd3d.ablation.grid` (grid, run keys, resumable result files), :mod:`~medkd3d.ablation.runner`
(every teacher and student is a bundle run with overrides, evaluated by the bundle's ``evaluate.json`` on the
held-out test split), :mod:`~medkd3d.ablation.stats` (means, bootstrap CIs, KD gains),
:mod:`~medkd3d.ablation.report` (CSV, Markdown, plots).
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule. Attributes load on first access (PEP 562), so ``medkd3d --help`` (which imports
#: :mod:`medkd3d.ablation.cli`) does not pull in torch and MONAI.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["KD_MODES", "ResultStore", "RunSpec", "StudyGrid", "labelled_per_class", "parse_size"], "grid"),
    **dict.fromkeys(
        ["RESULT_COLUMNS", "format_summary", "plot_metric_vs_size", "plot_pareto", "write_report", "write_results_csv"],
        "report",
    ),
    **dict.fromkeys(
        [
            "STUDENTS",
            "StudyConfig",
            "StudyOutcome",
            "run_study",
            "student_teacher",
            "train_teachers",
            "training_subset",
        ],
        "runner",
    ),
    **dict.fromkeys(["CellSummary", "KDGain", "bootstrap_ci", "kd_gains", "mean_std", "summarize_cells"], "stats"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
