"""What the benchmark scripts share: finding the hwprune console script they run as a user would."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def hwprune_script() -> str:
    """The ``hwprune`` next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "hwprune"
    found = str(local) if local.is_file() else shutil.which("hwprune")
    if not found:
        sys.exit("error: the hwprune console script is not installed (pip install -e .)")
    return found
