"""What the benchmark scripts share: finding the hwprune console script they run as a user would."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path


def hwprune_script() -> str:
    """The ``hwprune`` next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "hwprune"
    found = str(local) if local.is_file() else shutil.which("hwprune")
    if not found:
        sys.exit("error: the hwprune console script is not installed (pip install -e .)")
    return found


def mean_std(vals: list[float], fmt: str) -> str:
    """``mean ± std`` over seeds in ``fmt`` (std 0 for one value, a dash for none)."""
    if not vals:
        return "—"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{format(statistics.mean(vals), fmt)} ± {format(sd, fmt)}"
