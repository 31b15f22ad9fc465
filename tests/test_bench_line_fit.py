"""bench/line_fit.py: both estimators recover an exact line, and the script reads a `lut check` JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import line_fit  # noqa: E402  (bench/ scripts import their siblings by name)


def test_both_estimators_recover_an_exact_line():
    x = np.array([0.1, 0.15, 0.2, 0.3, 0.4])
    y = 0.01 + 0.9 * x
    for est in (line_fit.theil_sen, line_fit.huber):
        a, b = est(x, y)
        assert a == pytest.approx(0.01, abs=1e-9) and b == pytest.approx(0.9, abs=1e-9)


def test_the_script_reads_a_check_json_and_prints_both_estimators(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.1, 0.4, 50)
    rows = [{"raw_predicted_ms": float(r), "measured_ms": float((0.01 + 0.9 * r) * (1 + rng.normal(0, 0.01)))}
            for r in raw]
    points = [{"raw_ms": r["raw_predicted_ms"], "measured_ms": r["measured_ms"]} for r in rows[:8]]
    path = tmp_path / "check.json"
    path.write_text(json.dumps({"rows": rows, "in_process_calibration": {"points": points}}))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "line_fit.py"), str(path), "--subsets", "20"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("theil-sen (before)") == 2 and out.count("huber (fit_calibration)") == 2
    assert "random 9-point subsets" in out and "its 8 in-process points" in out
