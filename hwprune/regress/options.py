"""What ``hwprune regress`` takes: its options, their checks, and the command line that repeats them."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Sequence

from hwprune.errors import HwpruneError
from hwprune.regress.compare import STATISTICS
from profilers.fileio import check_writable


@dataclass
class RegressOptions:
    """Everything ``hwprune regress`` takes; see ``hwprune.regress``'s docstring for the modes."""

    device: str
    model: str | None = None
    baseline: str | None = None
    against: str | None = None
    lut: str | None = None
    sample: int = 20
    num_classes: int = 10
    write_baseline: str | None = None
    tolerance: str | float = "5%"
    statistics: Sequence[str] = ()
    confidence: float = 0.95
    max_seconds: float = 60.0
    resamples: int = 2000
    seed: int = 0
    junit: str | None = None
    markdown: str | None = None
    json: str | None = None
    allow_env_change: bool = False
    processes: int = 1  # fresh processes the model check runs in (hwprune.regress.processes)

    @property
    def mode(self) -> str:
        given = [m for m, v in (("baseline", self.baseline), ("against", self.against), ("lut", self.lut),
                                ("write-baseline", self.write_baseline)) if v]
        if not given:
            raise HwpruneError("give one of --baseline, --against, --lut or --write-baseline")
        if len(given) > 1:
            raise HwpruneError(f"give only one of --baseline, --against, --lut, --write-baseline (got "
                               f"{', '.join('--' + g for g in given)})")
        return given[0]


def parse_tolerance(value: str | float) -> float:
    """``"5%"`` or ``0.05`` -> 0.05; must lie in (0, 1)."""
    text = str(value).strip()
    try:
        t = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise HwpruneError(f"--tolerance must be a percentage like 5% or a fraction like 0.05, got '{value}'") from None
    if not 0 < t < 1 or math.isnan(t):
        raise HwpruneError(f"--tolerance must lie between 0% and 100% (exclusive), got '{value}'")
    return t


def _check_statistics(statistics: Sequence[str]) -> list[str]:
    out = []
    for s in statistics:
        if s not in STATISTICS:
            raise HwpruneError(f"unknown statistic '{s}' (known: {', '.join(STATISTICS)})")
        if s not in out:
            out.append(s)
    return out


def _check_outputs(opts: RegressOptions) -> None:
    import os

    outputs = [(flag, path, kind) for flag, path, kind in (
        ("--junit", opts.junit, "xml"), ("--markdown", opts.markdown, "text"), ("--json", opts.json, "json"),
        ("--write-baseline", opts.write_baseline, "json")) if path]
    written: dict[str, str] = {}
    for flag, path, _ in outputs:
        same = written.setdefault(os.path.realpath(path), flag)
        if same != flag:  # the second write would replace the first without a word
            raise HwpruneError(f"{same} and {flag} name the same file {path}: give each output its own")
    # an input named as an output first: that message names the input, the kind check would not
    for flag, path in (("--model", opts.model), ("--against", opts.against), ("--baseline", opts.baseline),
                       ("--lut", opts.lut)):
        if path and os.path.realpath(path) in written:
            raise HwpruneError(f"{written[os.path.realpath(path)]} would overwrite the {flag} file {path}")
    for flag, path, kind in outputs:
        check_writable(path, flag, kind)
    if opts.write_baseline:
        _check_replaces_a_baseline(opts.write_baseline)


def _check_replaces_a_baseline(path: str) -> None:
    """--write-baseline over an existing JSON file that is not a baseline (a plan.json, a report) is refused."""
    import json
    import os

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    # any format's baseline: the model's hash and its timing
    if not (isinstance(data, dict) and "onnx_sha256" in data and "timing" in data):
        raise HwpruneError(f"--write-baseline {path} already holds a JSON file that is not a baseline; refusing to "
                           "overwrite it (give another path, or remove the file)")


def command_line(opts: RegressOptions) -> str:
    """The ``hwprune regress`` command that repeats this check (printed beside every figure)."""
    parts = ["hwprune", "regress", "--device", opts.device]
    for flag, value in (("--model", opts.model), ("--baseline", opts.baseline), ("--against", opts.against),
                        ("--lut", opts.lut), ("--write-baseline", opts.write_baseline)):
        if value:
            parts += [flag, str(value)]
    if opts.lut:
        parts += ["--sample", str(opts.sample)]
    if not opts.write_baseline:
        parts += ["--tolerance", str(opts.tolerance)]
        for s in opts.statistics:
            parts += ["--statistic", s]
        if not opts.lut:  # a LUT check measures each row once: no budget to repeat
            parts += ["--max-seconds", f"{opts.max_seconds:g}"]
        parts += ["--seed", str(opts.seed)]
    if opts.allow_env_change:
        parts.append("--allow-env-change")
    if opts.processes != 1:
        parts += ["--processes", str(opts.processes)]
    return " ".join(shlex.quote(p) for p in parts)

