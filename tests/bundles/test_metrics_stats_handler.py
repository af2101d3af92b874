"""Each epoch metric on its own line (MONAI's StatsHandler runs nested reports together)."""

from __future__ import annotations

import logging

import numpy as np
from ignite.engine import Engine, Events

from medkd3d.engines.handlers import MetricsStatsHandler, metric_lines
from medkd3d.engines.metrics import classification_metrics


def _report() -> dict:
    probabilities = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1], [0.55, 0.45]])
    return classification_metrics(probabilities, np.array([0, 0, 0, 1, 1]), ["LGG", "HGG"])


def test_metric_lines_one_per_metric() -> None:
    lines = metric_lines({"eval_auc": 0.25, "classification": _report()})
    assert "eval_auc: 0.2500" in lines
    assert "classification/confusion_matrix (rows = true LGG, HGG; columns = predicted): [[3, 0], [2, 0]]" in lines
    assert not any("class_names" in line for line in lines)
    # per-class entries keep their parent name: precision/LGG and recall/LGG are two lines
    assert any(line.startswith("classification/precision/LGG: ") for line in lines)
    assert any(line.startswith("classification/recall/LGG: ") for line in lines)
    assert "classification/num_samples: 5" in lines
    # one "name: value" per line: no line holds a second metric
    assert all(line.count(": ") == 1 for line in lines)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_handler_logs_each_metric_on_its_own_line() -> None:
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set_metrics(engine: Engine) -> None:  # what an evaluator's metrics leave in the state
        engine.state.metrics = {"eval_auc": 0.25, "classification": _report()}

    handler = MetricsStatsHandler(iteration_log=False, name="test.metrics")
    records = _Records()
    handler.logger.addHandler(records)  # MONAI's logger does not propagate to pytest's
    try:
        handler.attach(engine)
        engine.run([0], max_epochs=1)
    finally:
        handler.logger.removeHandler(records)
    messages = records.messages
    assert "Epoch[1] Metrics -- eval_auc: 0.2500" in messages
    assert (
        "Epoch[1] Metrics -- classification/confusion_matrix (rows = true LGG, HGG; columns = predicted): "
        "[[3, 0], [2, 0]]" in messages
    )
    assert all(m.count(": ") == 1 for m in messages if m.startswith("Epoch[1] Metrics"))
    # the metrics are left on the state for the handlers that run after
    assert engine.state.metrics["eval_auc"] == 0.25
