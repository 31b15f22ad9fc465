"""The calibration line's estimator, compared on committed `lut check` results: Theil-Sen against
`hwprune.lut.fit_calibration` (Huber on relative residuals).

Needs no device and no LUT: each check JSON keeps every checked sub-network's raw LUT prediction and
measurement, and its in-process calibration points. Two comparisons per file:

1. the check's own in-process calibration points (8 sub-networks; the dense model is left out, its
   raw prediction is not in the file): each estimator's line scored on the 50 checked sub-networks;
2. random 9-point subsets of the checked sub-networks, one subset in three with a point made 20%
   slow (a busy moment), each line scored on the other 41.

    .venv/bin/python bench/line_fit.py bench/results/calibration_resnet20_ctx.json bench/results/calibration_resnet20.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.stats import theilslopes

from hwprune.lut import fit_calibration


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The estimator fit_calibration used before, behind the same guards it still applies."""
    def line(x_: np.ndarray, y_: np.ndarray) -> tuple[float, float]:
        b, a = theilslopes(y_, x_)[:2]
        return float(a), float(b)

    fit = fit_calibration(x, y, line=line)
    return fit["a"], fit["b"]


def huber(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    fit = fit_calibration(x, y)
    return fit["a"], fit["b"]


def score(line: tuple[float, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(line[0] + line[1] * x - y) / y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checks", nargs="+")
    ap.add_argument("--subsets", type=int, default=300)
    args = ap.parse_args()
    estimators = {"theil-sen (before)": theil_sen, "huber (fit_calibration)": huber}
    for path in args.checks:
        check = json.loads(open(path).read())
        x = np.array([r["raw_predicted_ms"] for r in check["rows"]])
        y = np.array([r["measured_ms"] for r in check["rows"]])
        print(f"{path}: {len(y)} checked sub-networks")
        cal = check.get("in_process_calibration")
        if cal:
            px = np.array([p["raw_ms"] for p in cal["points"]])
            py = np.array([p["measured_ms"] for p in cal["points"]])
            for name, est in estimators.items():
                err = score(est(px, py), x, y)
                print(f"  its {len(px)} in-process points, {name:24s} median {100 * np.median(err):.2f}%, "
                      f"within ±5% {100 * np.mean(err <= 0.05):.0f}%")
        rng = np.random.default_rng(0)
        errs: dict[str, list] = {name: [] for name in estimators}
        for k in range(args.subsets):
            idx = rng.permutation(len(y))
            fit, test = idx[:9], idx[9:]
            fy = y[fit].copy()
            if k % 3 == 0:
                fy[0] *= 1.2
            for name, est in estimators.items():
                errs[name].append(score(est(x[fit], fy), x[test], y[test]))
        for name, e in errs.items():
            e = np.concatenate(e)
            print(f"  random 9-point subsets, {name:24s} median {100 * np.median(e):.2f}%, "
                  f"within ±5% {100 * np.mean(e <= 0.05):.1f}%")


if __name__ == "__main__":
    main()
