"""The runner interface every timing backend implements: activate, infer, time, deactivate.

A runner is a context manager: entering it builds the session or engine (``activate``),
leaving it frees it (``deactivate``). ``time_once_ms`` runs one inference on prepared inputs
and returns its duration; ``measure`` wraps it in the adaptive loop of ``profilers.stats``.
Subclasses fill in only the backend-specific steps.

Example:
    >>> from profilers.config import load_device_config
    >>> from profilers.runners import make_runner
    >>> with make_runner("model.onnx", load_device_config("x86-cpu-ort")) as r:  # doctest: +SKIP
    ...     print(r.measure().p50_ms)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from profilers.config import DeviceConfig
from profilers.stats import TimingStats, measure


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, concrete shape (batch applied) and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def random_inputs(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs matching the declared shapes and dtypes (values do not affect latency)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            feeds[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind in "iu":
            feeds[s.name] = rng.integers(0, 2, size=s.shape).astype(dt)
        elif dt.kind == "b":
            feeds[s.name] = rng.integers(0, 2, size=s.shape).astype(bool)
        else:
            feeds[s.name] = np.zeros(s.shape, dtype=dt)
    return feeds


class BaseRunner(abc.ABC):
    """Common shape of a timing backend. Subclasses implement the four steps."""

    #: what ``time_once_ms`` measures, recorded next to every result
    timed_scope: str = "compute"

    def __init__(self, model: str | bytes, config: DeviceConfig, name: str | None = None):
        self.model = model
        self.config = config
        self.name = name or (model if isinstance(model, str) else "<in-memory model>")
        self.is_active = False

    # -- the backend-specific steps ---------------------------------------------------
    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Build the session/engine and prepare inputs."""

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run one inference and return outputs by name (used for correctness checks)."""

    @abc.abstractmethod
    def time_once_ms(self) -> float:
        """Run one inference on the prepared inputs and return its duration in ms."""

    def deactivate_impl(self) -> None:
        """Free the session/engine."""

    # -- the shared part ----------------------------------------------------------------
    def activate(self) -> "BaseRunner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def methodology(self) -> dict[str, Any]:
        """The config's timing methodology as keyword arguments of ``profilers.stats.measure``."""
        c = self.config
        return dict(warmup=c.warmup, min_repeats=c.min_repeats, max_repeats=c.max_repeats,
                    max_seconds=c.max_seconds, min_seconds=c.min_seconds, statistic=c.statistic,
                    rel_ci=c.rel_ci, confidence=c.confidence, cv_threshold=c.cv_threshold)

    def measure(self, **overrides: Any) -> TimingStats:
        """Adaptive timing with the config's methodology; keyword overrides win."""
        kwargs = {**self.methodology(), **overrides}
        if not self.is_active:
            raise RuntimeError("runner is not active: use it as a context manager")
        return measure(self.time_once_ms, **kwargs)

    def extra_timings(self) -> dict[str, TimingStats]:
        """Further timings a backend reports beside compute (TensorRT: end-to-end)."""
        return {}
