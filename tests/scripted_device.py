"""A scripted device for certification tests: constant timings chosen by the test, every request recorded."""

from __future__ import annotations

from hwprune.baseline import BASELINE_REFERENCE_KEY
from profilers.stats import summarize


def constant(cfg, value_ms: float, n: int) -> dict:
    """A real TimingStats dict whose every sample is ``value_ms``."""
    return summarize([value_ms] * n, cfg.statistic, cfg.confidence, cfg.cv_threshold, cfg.rel_ci).to_dict()


class Script:
    """A scripted device. ``value(kind, call, key, budget_ms) -> (ms, samples)`` for every model but
    the dense one; the dense model runs at ``dense_ms`` times ``dense_scale[kind]``. Kinds:
    ``alone`` (the dense model at the start), ``round`` (a round's candidates), ``final`` (the
    measurement with the drift reference) and ``again`` (a pooled re-measurement of one model).
    ``calls`` records the kinds asked, and ``("wait", s)`` for each pause before a retake.
    ``calibration(key) -> ms`` times the in-process calibration's sub-networks, measured beside the
    dense model at the start."""

    def __init__(self, cfg, value, dense_ms: float = 1.0, speedup: float = 1.3, dense_scale=None, calibration=None):
        self.cfg, self.value, self.dense_ms, self.speedup = cfg, value, dense_ms, speedup
        # the calibration sub-networks' ms, by key ("calibration:floor", "calibration:1", ...)
        self.calibration = calibration or (lambda key: 0.5 * dense_ms)
        self.dense_scale = dense_scale or {}
        self.calls: list = []

    def kind(self, keys: list[str], label: str) -> str:
        if keys == ["dense"] or all(k.startswith("calibration:") for k in keys[1:]):
            return "alone"  # the dense model at the start, with the calibration sub-networks if any
        if BASELINE_REFERENCE_KEY in keys:
            return "final"
        return "again" if label == "dense vs pruned" else "round"

    def __call__(self, items, cfg, label):
        keys = [k for k, _ in items]
        kind = self.kind(keys, label)
        if kind != "alone":
            self.calls.append(kind)
        out = {"dense": constant(cfg, self.dense_ms * self.dense_scale.get(kind, 1.0), 50)}
        for key in keys[1:]:
            if key.startswith("calibration:"):
                ms, n = self.calibration(key), 50
            else:
                ms, n = (self.dense_ms, 50) if key == BASELINE_REFERENCE_KEY else \
                    self.value(kind, self.calls.count("round"), key, self.dense_ms / self.speedup)
            out[key] = constant(cfg, ms, n)
        return out

    def wait(self, seconds: float) -> None:
        self.calls.append(("wait", seconds))
