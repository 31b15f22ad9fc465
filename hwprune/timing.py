"""The result of timing one model on a device (``hwprune.time_model``, ``hwprune time``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from profilers.stats import TimingStats


@dataclass(frozen=True)
class TimingResult(Mapping):
    """One model's latency on one device: the statistic and its interval, per machine state and,
    with ``processes`` > 1, across fresh processes.

    Attributes are typed (``result.timing.p50_ms``, ``result.p50_ms``). The object is also a
    read-only mapping of its JSON form (``result["timing"]["p50_ms"]``), the shape ``--json``
    writes, so code written against the JSON reads it unchanged.
    """

    device: str
    model: str
    timing: TimingStats
    timed_scope: str | None = None
    # each machine state's probe µs, share of the samples and timing (empty: one state)
    by_machine_state: list[dict[str, Any]] = field(default_factory=list)
    extra_timings: dict[str, TimingStats] = field(default_factory=dict)
    # the model's inputs as the runtime took them: name, shape, dtype
    inputs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict, repr=False)
    processes: int = 1
    # with processes > 1: each process's statistic, their spread, and the same per state
    across_processes: dict[str, Any] | None = None

    @property
    def p50_ms(self) -> float:
        return self.timing.p50_ms

    @property
    def p90_ms(self) -> float:
        return self.timing.p90_ms

    @property
    def p99_ms(self) -> float:
        return self.timing.p99_ms

    @property
    def ci_ms(self) -> tuple[float, float]:
        """The confidence interval of the device's statistic (``timing.statistic``)."""
        return self.timing.ci_low_ms, self.timing.ci_high_ms

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"device": self.device, "model": self.model, "timed_scope": self.timed_scope,
                             "timing": self.timing.to_dict(), "by_machine_state": list(self.by_machine_state),
                             "extra_timings": {k: v.to_dict() for k, v in self.extra_timings.items()},
                             "inputs": list(self.inputs), "warnings": list(self.warnings),
                             "environment": self.environment}
        if self.processes > 1:
            d["processes"] = self.processes
            d["across_processes"] = self.across_processes
        return d

    # the read-only mapping of the JSON form, built once (it copies every sample)
    @cached_property
    def _json(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)
