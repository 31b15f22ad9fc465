"""Measurements across fresh processes: the same models timed, interleaved, in N new interpreters one after another.

On a shared machine each process runs at its own speed level (issue 2 measured the dense
resnet20 at 0.52 ms in one process and 0.7–0.95 ms in others), so a latency, or a verdict on
one, measured in a single process is a statement about that process. ``--processes N`` asks
the same question in N fresh processes and reports the spread; a certificate holds when it
holds in every one of them.

Locally each process is ``python -m profilers interleave`` (:mod:`profilers.__main__`); a
remote device already times every request in a fresh process on the device (one bundle run
over SSH each), so there N requests are N processes.

Example:
    >>> runs = measure_in_processes([("dense", dense_onnx), ("pruned", pruned_onnx)], cfg, 5)  # doctest: +SKIP
    >>> spread(runs, "pruned", "p50").spread_pct                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwprune.errors import HwpruneError, check_integer
from profilers.config import DeviceConfig
from profilers.scratch import scratch

Timing = dict[str, Any]
MeasureProcesses = Callable[[Sequence[tuple[str, bytes]], DeviceConfig, int], list[dict[str, Timing]]]


@dataclass
class Spread:
    """One model's statistic in each process, and how far apart the processes were."""

    key: str
    statistic: str
    values_ms: list[float]

    @property
    def median_ms(self) -> float:
        import numpy as np

        return float(np.median(self.values_ms))

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent."""
        return (max(self.values_ms) - min(self.values_ms)) / self.median_ms * 100

    def median_interval(self, confidence: float = 0.95) -> tuple[float, float, float]:
        """A distribution-free interval for the median process's statistic: order statistics
        ``(k, n - k + 1)`` with the largest ``k`` whose coverage reaches ``confidence``, else the
        range; returns (low, high, its exact coverage). Five processes give the range at 93.75%."""
        from math import comb

        vals, n = sorted(self.values_ms), len(self.values_ms)

        def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n-k+1)) for a continuous statistic
            return 1 - 2 * sum(comb(n, i) for i in range(k)) / 2 ** n

        k = 1
        while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
            k += 1
        return vals[k - 1], vals[n - k], coverage(k)

    def to_dict(self) -> dict[str, Any]:
        lo, hi, cover = self.median_interval()
        return {**asdict(self), "median_ms": self.median_ms, "min_ms": min(self.values_ms),
                "max_ms": max(self.values_ms), "spread_pct": self.spread_pct,
                "median_ci_low_ms": lo, "median_ci_high_ms": hi, "median_ci_confidence": cover}


def check_processes(processes: Any, flag: str = "--processes") -> int:
    return check_integer(processes, flag, 1)


def spread(runs: Sequence[dict[str, Timing]], key: str, statistic: str) -> Spread:
    from hwprune.measure import statistic_ms

    return Spread(key, statistic, [statistic_ms(r[key], statistic) for r in runs])


@dataclass
class StateSpread:
    """One model's statistic in one machine state, in each process that ran long enough in it."""

    probe_us: float
    spread: Spread

    def to_dict(self) -> dict[str, Any]:
        return {"probe_us": self.probe_us, "processes": len(self.spread.values_ms), **self.spread.to_dict()}


def state_spreads(runs: Sequence[dict[str, Timing]], key: str, cfg: DeviceConfig) -> list[StateSpread]:
    """``key``'s statistic per machine state across ``runs`` (states matched by probe time), fastest
    state first; empty when no process saw more than one state and all saw the same one."""
    from hwprune.measure import statistic_ms
    from hwprune.states import in_state, judgeable
    from profilers.machine_state import find_state

    found: dict[float, list[float]] = {}
    for r in runs:
        for c, samples in judgeable(r[key]).items():
            i = find_state(list(found), c)
            known = c if i is None else list(found)[i]
            found.setdefault(known, []).append(statistic_ms(in_state(r[key], samples, c, cfg), cfg.statistic))
    if len(found) < 2:
        return []
    return [StateSpread(c, Spread(key, cfg.statistic, v)) for c, v in sorted(found.items())]


def measure_in_processes(items: Sequence[tuple[str, bytes]], cfg: DeviceConfig, processes: int,
                         progress: Callable[[int], None] | None = None) -> list[dict[str, Timing]]:
    """``items`` timed interleaved in each of ``processes`` fresh processes, one after another
    (never side by side: two measuring processes would slow each other). One dict per process."""
    check_processes(processes)
    if cfg.remote is not None:
        from hwprune.measure import measure_many

        runs = []
        for i in range(processes):
            runs.append(measure_many(items, cfg, f"process {i + 1}/{processes}", show_progress=False))
            if progress:
                progress(i + 1)
        return runs
    with scratch("processes") as work:
        device = work / "device.json"
        device.write_text(json.dumps(cfg.to_dict()))
        from hwprune.measure import device_items
        from profilers.torch_cuda import blob_suffix

        names, files = {}, []
        for i, (key, blob) in enumerate(device_items(items, cfg)):
            path = work / f"m{i}{blob_suffix(blob)}"
            path.write_bytes(blob)
            names[f"m{i}"] = key
            files.append(f"m{i}={path}")
        command = [sys.executable, "-m", "profilers", "interleave", "--device", str(device), *files]
        runs = []
        for i in range(processes):
            out = _run_one(command, i, processes)
            runs.append({names[n]: t for n, t in out.items()})
            if progress:
                progress(i + 1)
        return runs


def child_env() -> dict[str, str]:
    """This environment, with the checkout that holds ``profilers`` first on the child's path."""
    import profilers

    root = str(Path(profilers.__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))


def _run_one(command: list[str], i: int, processes: int) -> dict[str, Timing]:
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HwpruneError(f"measuring process {i + 1} of {processes} failed: {last}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise HwpruneError(f"measuring process {i + 1} of {processes} printed no timings") from None
