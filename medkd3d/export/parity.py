"""Parity of an exported model with the eager network it came from.

Every export is checked on groups of inputs (seeded random inputs, and real volumes after the bundle's
preprocessing): the largest and mean absolute logit difference, and the agreement of the predicted classes.
The logit difference may reach ``max_abs_diff + rtol * scale``, ``scale`` being the group's largest eager
|logit|, as in ``numpy.allclose``: random inputs are far from the data a trained network's normalisation
statistics come from, and can give logits in the thousands, where FP32 rounding in a different kernel order
(ONNX Runtime's convolutions are not PyTorch's) changes the fourth significant digit.
Agreement is required on *decisive* inputs, those whose eager top-two logit margin exceeds the tolerance's
``tie_margin``: a near tie may legitimately flip on rounding. For FP32 and FP16 the logit difference is the
binding limit (a difference below half the tie margin cannot flip a decisive input); INT8 changes logits
noticeably, so its logit limit is loose and its agreement limit is what holds it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.utils import atomic_write_text

__all__ = [
    "PRECISION_TOLERANCES",
    "GroupParity",
    "ParityError",
    "ParityReport",
    "ParityTolerance",
    "check_parity",
    "compare_logits",
]


@dataclass(frozen=True)
class ParityTolerance:
    """What an exported model must meet.

    Args:
        max_abs_diff: allowed absolute logit difference (at logits of magnitude up to 1).
        rtol: further allowed difference per unit of the group's largest eager |logit|.
        min_agreement: smallest allowed fraction of decisive inputs with the same predicted class.
        tie_margin: inputs whose eager top-two logit margin is at most this are near ties, left out of the
            agreement requirement (still reported in the overall agreement).
    """

    max_abs_diff: float = 1e-3
    rtol: float = 1e-3
    min_agreement: float = 1.0
    tie_margin: float = 2e-3

    def allowed_diff(self, scale: float) -> float:
        """The largest allowed logit difference for logits up to ``scale`` in magnitude."""
        return self.max_abs_diff + self.rtol * scale


#: Default tolerance per numeric precision of the exported model. FP32 formats (TorchScript, ONNX Runtime, a
#: TensorRT FP32 engine without TF32) agree with eager to rounding; FP16 keeps 10 mantissa bits; INT8 changes
#: logits noticeably, and is held mostly to its predictions.
PRECISION_TOLERANCES: dict[str, ParityTolerance] = {
    "fp32": ParityTolerance(max_abs_diff=1e-3, rtol=1e-3, min_agreement=1.0, tie_margin=2e-3),
    "fp16": ParityTolerance(max_abs_diff=5e-2, rtol=1e-2, min_agreement=1.0, tie_margin=0.1),
    "int8": ParityTolerance(max_abs_diff=1.0, rtol=0.1, min_agreement=0.9, tie_margin=0.1),
}


@dataclass
class GroupParity:
    """Parity on one group of inputs (e.g. ``"random"`` or ``"real"``)."""

    name: str
    num_inputs: int
    scale: float
    max_abs_diff: float
    mean_abs_diff: float
    agreement: float
    num_decisive: int
    decisive_agreement: float


def compare_logits(name: str, reference: np.ndarray, candidate: np.ndarray, margin: float) -> GroupParity:
    """Compare two ``[N, num_classes]`` logit arrays.

    Args:
        name: group name.
        reference: eager logits.
        candidate: exported-model logits.
        margin: inputs whose reference top-two margin exceeds it count as decisive.

    Returns:
        The group's parity; differences are ``inf`` when the candidate has non-finite values.

    Raises:
        ValueError: if the shapes differ.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: the exported model returned shape {candidate.shape}, eager {reference.shape}.")
    if reference.size == 0:
        return GroupParity(name, 0, 0.0, 0.0, 0.0, 1.0, 0, 1.0)
    diff = np.abs(reference - candidate)
    finite = bool(np.isfinite(candidate).all())
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    decisive = (top2[:, 1] - top2[:, 0]) > margin
    return GroupParity(
        name=name,
        num_inputs=len(reference),
        scale=float(np.abs(reference).max()),
        max_abs_diff=float(diff.max()) if finite else math.inf,
        mean_abs_diff=float(diff.mean()) if finite else math.inf,
        agreement=float(same.mean()),
        num_decisive=int(decisive.sum()),
        decisive_agreement=float(same[decisive].mean()) if decisive.any() else 1.0,
    )


@dataclass
class ParityReport:
    """Parity of one exported artefact, with the verdict; written as JSON next to the artefact."""

    artefact: str
    backend: str
    precision: str
    tolerance: ParityTolerance
    groups: list[GroupParity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """Why the artefact fails its tolerance (empty when it passes)."""
        failures = []
        for group in self.groups:
            allowed = self.tolerance.allowed_diff(group.scale)
            if not group.max_abs_diff <= allowed:  # also catches inf/nan
                failures.append(f"{group.name} inputs: max |logit diff| {group.max_abs_diff:.3g} > {allowed:.3g}")
            if group.decisive_agreement < self.tolerance.min_agreement:
                failures.append(
                    f"{group.name} inputs: class agreement {group.decisive_agreement:.3f} on {group.num_decisive} "
                    f"decisive inputs < {self.tolerance.min_agreement:.3f}"
                )
        return failures

    @property
    def passed(self) -> bool:
        return bool(self.groups) and not self.failures

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute logit difference over all groups (``nan`` when nothing was compared)."""
        return max((g.max_abs_diff for g in self.groups), default=math.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artefact": self.artefact,
            "backend": self.backend,
            "precision": self.precision,
            "passed": self.passed,
            "failures": self.failures,
            "tolerance": asdict(self.tolerance),
            "groups": [asdict(g) for g in self.groups],
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line per group and the verdict, for the console."""
        lines = [f"Parity of {self.artefact} ({self.backend}, {self.precision}) against eager PyTorch:"]
        for g in self.groups:
            lines.append(
                f"  {g.name:>6}: {g.num_inputs} inputs, max |logit| {g.scale:.3g}, max |diff| {g.max_abs_diff:.3g} "
                f"(allowed {self.tolerance.allowed_diff(g.scale):.3g}), mean |diff| {g.mean_abs_diff:.3g}, "
                f"class agreement {g.agreement:.3f} "
                f"({g.decisive_agreement:.3f} on {g.num_decisive} decisive)"
            )
        lines += [f"  note: {note}" for note in self.notes]
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures or ["no inputs were compared"])
        t = self.tolerance
        lines.append(
            f"  {verdict} (tolerance: |diff| <= {t.max_abs_diff:g} + {t.rtol:g} * max |logit|, agreement >= "
            f"{t.min_agreement:g} where the top-two margin > {t.tie_margin:g})"
        )
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


class ParityError(RuntimeError):
    """An exported model is out of tolerance; ``report`` holds the measurements."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(
            f"Export of {report.artefact} failed its parity check ({'; '.join(report.failures) or 'no inputs'}). "
            "The artefact was not kept. Check the network's prepare_for_export, try --precision fp32, or "
            "loosen --atol/--min-agreement if the difference is expected."
        )
        self.report = report


def check_parity(
    candidate: Callable[[np.ndarray], np.ndarray],
    input_groups: Mapping[str, Sequence[np.ndarray]],
    reference_outputs: Mapping[str, Sequence[np.ndarray]],
    tolerance: ParityTolerance,
    artefact: str,
    backend: str,
    precision: str = "fp32",
    notes: Sequence[str] = (),
) -> ParityReport:
    """Run the exported model on every batch of every group and compare its logits with the eager ones.

    Args:
        candidate: the exported model's runtime, ``[B, *input_shape]`` float32 -> ``[B, num_classes]`` logits.
        input_groups: group name -> batches; each batch goes through the runtime as it is, so batches of
            different sizes also exercise the dynamic batch axis.
        reference_outputs: group name -> the eager logits of each batch (computed once for all artefacts).
        tolerance: the limits the verdict applies.
        artefact: artefact name for the report.
        backend: runtime name for the report.
        precision: numeric precision of the artefact.
        notes: remarks for the report (e.g. where the real inputs came from).

    Returns:
        The report; the caller decides what a failure does.
    """
    report = ParityReport(
        artefact=artefact, backend=backend, precision=precision, tolerance=tolerance, notes=list(notes)
    )
    for name, batches in input_groups.items():
        if not batches:
            continue
        expected = np.concatenate(list(reference_outputs[name]))
        actual = np.concatenate([candidate(b) for b in batches])
        report.groups.append(compare_logits(name, expected, actual, margin=tolerance.tie_margin))
    return report
