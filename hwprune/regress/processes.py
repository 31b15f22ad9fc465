"""``regress --processes N``: the same model check in N fresh processes, one verdict that all of them support.

A verdict from one process is a statement about that process's speed level. Each fresh process
here is a whole ``hwprune regress`` of the same model (its own interleaved measurement, drift
reference and bootstrap); the combined verdict is theirs when they agree, ``pass`` when they
only differ between pass and improved, and ``inconclusive`` (exit 3) when they disagree
otherwise, naming each process's verdict.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from hwprune.errors import HwpruneError
from hwprune.regress.compare import VERDICT_EXIT
from hwprune.regress.options import RegressOptions, command_line
from profilers.scratch import scratch

EXIT_BAD_INPUT = 2


def combined_verdict(verdicts: Sequence[str]) -> str:
    """Every process's verdict as one: unanimous, pass for a pass/improved mix, else inconclusive."""
    kinds = set(verdicts)
    if len(kinds) == 1:
        return verdicts[0]
    if kinds <= {"pass", "improved"}:
        return "pass"
    return "inconclusive"


def child_args(opts: RegressOptions, json_path: str) -> list[str]:
    """``hwprune regress``'s arguments for one process: the check itself, its JSON, no other outputs."""
    args = shlex.split(command_line(replace(opts, processes=1)))[2:]  # drop "hwprune regress"
    return ["regress", *args, "--confidence", repr(opts.confidence), "--resamples", str(opts.resamples),
            "--json", json_path]


def regress_in_processes(opts: RegressOptions, log: Callable[[str], None] = lambda m: None,
                         run: Callable[[list[str]], subprocess.CompletedProcess] | None = None) -> dict[str, Any]:
    """Run the model check of ``opts`` in ``opts.processes`` fresh processes and combine their verdicts.

    ``run(argv)`` starts one process (a seam for tests); by default ``python -m hwprune.cli``.
    Returns the first process's result with the combined verdict and every process's figures.
    """
    run = run or (lambda argv: subprocess.run([sys.executable, "-m", "hwprune.cli", *argv], capture_output=True,
                                              text=True))
    results = []
    with scratch("regress-processes") as tmp:
        for i in range(opts.processes):
            path = str(Path(tmp) / f"p{i}.json")
            proc = run(child_args(opts, path))
            if proc.returncode == EXIT_BAD_INPUT or not Path(path).is_file():
                last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise HwpruneError(f"regress process {i + 1} of {opts.processes} failed: "
                                   f"{last.removeprefix('error: ')}")
            results.append(json.loads(Path(path).read_text()))
            log(f"process {i + 1}/{opts.processes}: {results[-1]['verdict']}")
    verdicts = [r["verdict"] for r in results]
    verdict = combined_verdict(verdicts)
    out = dict(results[0])
    out["verdict"], out["exit_code"] = verdict, VERDICT_EXIT[verdict]
    out["processes"] = [{"verdict": r["verdict"], "comparisons": r["comparisons"], "timings": r.get("timings")}
                        for r in results]
    if verdict == "inconclusive" and len(set(verdicts)) > 1:
        out["warnings"] = list(out.get("warnings", [])) + [
            f"the {opts.processes} processes disagree ({', '.join(verdicts)}): the machine's speed level differs "
            f"between processes more than the tolerance can absorb"]
    return out
